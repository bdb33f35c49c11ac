#!/usr/bin/env bash
# Contract checks: buf lint; `buf generate` must not change gen/ (generated code is committed and never edited by
# hand); and no commit that touched proto/ may break its parent (buf breaking, FILE rules), so main never breaks
# the main before it.
set -euo pipefail
cd "$(dirname "$0")/.."
buf() { go tool -modfile=tools/buf/go.mod buf "$@"; }

buf lint
if ! buf format --diff --exit-code >/dev/null; then echo "proto/ is not formatted: run buf format -w" >&2; exit 1; fi

buf generate
if ! git diff --quiet -- gen || [ -n "$(git ls-files --others --exclude-standard -- gen)" ]; then
  echo "gen/ is out of date with proto/: run 'make gen' and commit the result" >&2
  git status --short -- gen >&2
  exit 1
fi

if [ "$(git rev-parse --is-shallow-repository)" = "true" ]; then
  git fetch --quiet --unshallow || true
fi
# Each commit's contracts are exported with git archive and compared as directories: buf's own git input clones
# with a limited depth and cannot resolve an older commit or a "~1" revision.
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
export_tree() { mkdir -p "$2" && git archive "$1" -- buf.yaml proto third_party | tar -x -C "$2"; }
n=0
for c in $(git log --format=%H -n 20 -- proto); do
  if git cat-file -e "$c~1:proto" 2>/dev/null; then
    p="$(git rev-parse "$c~1")"
    export_tree "$c" "$tmp/$c"
    export_tree "$p" "$tmp/$p.base"
    buf breaking "$tmp/$c" --against "$tmp/$p.base"
    n=$((n + 1))
  fi
done
echo "buf breaking: checked $n commit(s) that changed proto/ against their parents"
