#!/usr/bin/env bash
# Installs PostgreSQL 15 with pgvector (built from Debian trixie's source package, since bookworm has no
# pgvector package), starts the cluster and creates the test role. Idempotent: safe to run on every CI run.
# Prints the URL tests use (LOOM_TEST_DATABASE_URL) on its last line.
set -euo pipefail

PGVER=15
log() { echo "postgres.sh: $*" >&2; }

if ! dpkg -s "postgresql-${PGVER}" >/dev/null 2>&1; then
  log "installing postgresql-${PGVER}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "postgresql-${PGVER}" >/dev/null
fi

if [ ! -f "/usr/share/postgresql/${PGVER}/extension/vector.control" ]; then
  log "building pgvector from Debian trixie source"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "postgresql-server-dev-${PGVER}" make gcc dpkg-dev >/dev/null
  work=$(mktemp -d)
  # The mirror is whatever Debian URI the system's own apt sources already use.
  mirror=$( (grep -hE '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}';
    grep -hE '^deb ' /etc/apt/sources.list 2>/dev/null | awk '{print $2}') | grep -E 'debian/?$' | head -n1 || true)
  mirror=${mirror:-http://deb.debian.org/debian}
  mkdir -p "$work/lists/partial"
  echo "deb-src ${mirror} trixie main" > "$work/sources.list"
  opts=(-o "Dir::Etc::sourcelist=$work/sources.list" -o "Dir::Etc::sourceparts=-" -o "Dir::State::Lists=$work/lists")
  apt-get "${opts[@]}" update -qq
  (cd "$work" && apt-get "${opts[@]}" source --download-only pgvector >/dev/null)
  (cd "$work" && dpkg-source -x pgvector_*.dsc src >/dev/null)
  make -s -C "$work/src" OPTFLAGS="" PG_CONFIG="/usr/lib/postgresql/${PGVER}/bin/pg_config" >/dev/null
  make -s -C "$work/src" OPTFLAGS="" PG_CONFIG="/usr/lib/postgresql/${PGVER}/bin/pg_config" install >/dev/null
  rm -rf "$work"
fi

if ! pg_lsclusters -h | awk '{print $1,$2}' | grep -q "^${PGVER} main$"; then
  pg_createcluster "${PGVER}" main >/dev/null
fi
if ! pg_lsclusters -h | grep -q "^${PGVER} *main .*online"; then
  log "starting cluster ${PGVER}/main"
  pg_ctlcluster "${PGVER}" main start
fi
for _ in $(seq 1 30); do
  pg_isready -q -h 127.0.0.1 -p 5432 && break
  sleep 0.5
done

su postgres -c "psql -qtAc \"SELECT 1 FROM pg_roles WHERE rolname='loom'\"" | grep -q 1 \
  || su postgres -c "psql -qc \"CREATE ROLE loom LOGIN SUPERUSER PASSWORD 'loom'\""
su postgres -c "psql -qtAc \"SELECT 1 FROM pg_database WHERE datname='loom_test'\"" | grep -q 1 \
  || su postgres -c "createdb -O loom loom_test"
su postgres -c "psql -q -d loom_test -c 'CREATE EXTENSION IF NOT EXISTS vector'"

echo "postgres://loom:loom@127.0.0.1:5432/loom_test?sslmode=disable"
