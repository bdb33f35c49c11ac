// Package sqldbtest gives tests a fresh, empty PostgreSQL database or SQLite file.
//
// Postgres tests reach the server through LOOM_TEST_DATABASE_URL (set by .ci/postgres.sh). Without it they skip,
// except under CI (CI=true), where a missing database fails the test: in CI the Postgres paths never skip.
package sqldbtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/loom-dev/loom/internal/sqldb"
)

// EnvURL names the environment variable holding the URL of a Postgres database whose user may create databases.
const EnvURL = "LOOM_TEST_DATABASE_URL"

// PostgresURL creates a new database with the vector extension and returns its URL. The database is dropped when
// the test ends.
func PostgresURL(t testing.TB) string {
	t.Helper()
	return create(t, baseURL(t), "")
}

// baseURL is LOOM_TEST_DATABASE_URL; without it the test skips, or fails in CI.
func baseURL(t testing.TB) string {
	t.Helper()
	base := os.Getenv(EnvURL)
	if base == "" {
		if os.Getenv("CI") != "" {
			t.Fatalf("%s is not set: Postgres tests must run in CI (see .ci/postgres.sh)", EnvURL)
		}
		t.Skipf("%s is not set; run .ci/postgres.sh to enable Postgres tests", EnvURL)
	}
	return base
}

// create makes a database for t with CREATE DATABASE and options (for example "TEMPLATE x"), makes sure it has
// the vector extension, drops it when the test ends, and returns its URL.
func create(t testing.TB, base, options string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	admin, err := pgx.Connect(ctx, base)
	if err != nil {
		t.Fatalf("connect %s: %v", EnvURL, err)
	}
	defer admin.Close(ctx)

	var b [6]byte
	_, _ = rand.Read(b[:])
	name := "loomtest_" + hex.EncodeToString(b[:])
	if _, err := admin.Exec(ctx, strings.TrimSpace("CREATE DATABASE "+name+" "+options)); err != nil {
		t.Fatalf("create database: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, base)
		if err != nil {
			t.Logf("drop database %s: %v", name, err)
			return
		}
		defer conn.Close(ctx)
		if _, err := conn.Exec(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)"); err != nil {
			t.Logf("drop database %s: %v", name, err)
		}
	})

	u, err := url.Parse(base)
	if err != nil {
		t.Fatalf("parse %s: %v", EnvURL, err)
	}
	u.Path = "/" + name
	dbURL := u.String()
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		t.Fatalf("connect new database: %v", err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "CREATE EXTENSION IF NOT EXISTS vector"); err != nil {
		t.Fatalf("create extension vector: %v", err)
	}
	return dbURL
}

// SQLitePath returns the path of a new SQLite file in a temporary directory removed when the test ends.
func SQLitePath(t testing.TB) string {
	t.Helper()
	return filepath.Join(t.TempDir(), "test.db")
}

// Open opens a fresh database of the given dialect for t and closes it when the test ends.
func Open(t testing.TB, dialect sqldb.Dialect) *sqldb.DB {
	t.Helper()
	url := "sqlite:" + SQLitePath(t)
	if dialect == sqldb.Postgres {
		url = PostgresURL(t)
	}
	db, err := sqldb.Open(context.Background(), url)
	if err != nil {
		t.Fatalf("open %s: %v", dialect, err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// templates are the migrated template databases this test binary made, by key.
var templates struct {
	mu    sync.Mutex
	names map[string]string
}

// PostgresTemplateURL is [PostgresURL] for a database that prepare has already migrated: the first call for key
// in a test binary makes a template database (a new database, the vector extension, then prepare, which
// typically opens the component's store and so applies its migrations), and every call clones it with CREATE
// DATABASE ... TEMPLATE, which copies files instead of replaying migrations. Templates are named for the test
// binary's process; the next binary drops those of processes that are gone. prepare must close what it opens.
func PostgresTemplateURL(t testing.TB, key string, prepare func(ctx context.Context, db *sqldb.DB) error) string {
	t.Helper()
	base := baseURL(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	tpl, err := template(ctx, base, key, prepare)
	if err != nil {
		t.Fatalf("template database %s: %v", key, err)
	}
	return create(t, base, "TEMPLATE "+tpl)
}

// template returns the name of the binary's template database for key, making it on first use.
func template(ctx context.Context, base, key string, prepare func(ctx context.Context, db *sqldb.DB) error) (string, error) {
	templates.mu.Lock()
	defer templates.mu.Unlock()
	if name, ok := templates.names[key]; ok {
		return name, nil
	}
	admin, err := pgx.Connect(ctx, base)
	if err != nil {
		return "", err
	}
	defer admin.Close(ctx)
	dropStaleTemplates(ctx, admin)
	name := fmt.Sprintf("loomtpl_%d_%s", os.Getpid(), strings.ToLower(key))
	if _, err := admin.Exec(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)"); err != nil {
		return "", err
	}
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		return "", err
	}
	u, err := url.Parse(base)
	if err != nil {
		return "", err
	}
	u.Path = "/" + name
	if err := func() error {
		conn, err := pgx.Connect(ctx, u.String())
		if err != nil {
			return err
		}
		defer conn.Close(ctx)
		_, err = conn.Exec(ctx, "CREATE EXTENSION IF NOT EXISTS vector")
		return err
	}(); err != nil {
		return "", err
	}
	db, err := sqldb.Open(ctx, u.String())
	if err != nil {
		return "", err
	}
	err = prepare(ctx, db)
	db.Close()
	if err != nil {
		return "", fmt.Errorf("prepare: %w", err)
	}
	if templates.names == nil {
		templates.names = map[string]string{}
	}
	templates.names[key] = name
	return name, nil
}

// dropStaleTemplates drops the template databases of test binaries that are no longer running.
func dropStaleTemplates(ctx context.Context, admin *pgx.Conn) {
	rows, err := admin.Query(ctx, "SELECT datname FROM pg_database WHERE datname LIKE 'loomtpl\\_%'")
	if err != nil {
		return
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return
	}
	for _, name := range names {
		pidText, _, _ := strings.Cut(strings.TrimPrefix(name, "loomtpl_"), "_")
		pid, err := strconv.Atoi(pidText)
		if err != nil || pid == os.Getpid() || syscall.Kill(pid, 0) == nil {
			continue // not ours to judge, ours, or its binary still runs
		}
		_, _ = admin.Exec(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)")
	}
}

// OpenMigrated opens a fresh database of the given dialect for t, already prepared: on Postgres a clone of the
// binary's template for key (see [PostgresTemplateURL]); on SQLite a new file that prepare is run on.
func OpenMigrated(t testing.TB, dialect sqldb.Dialect, key string, prepare func(ctx context.Context, db *sqldb.DB) error) *sqldb.DB {
	t.Helper()
	if dialect != sqldb.Postgres {
		db := Open(t, dialect)
		if err := prepare(context.Background(), db); err != nil {
			t.Fatalf("prepare %s: %v", key, err)
		}
		return db
	}
	db, err := sqldb.Open(context.Background(), PostgresTemplateURL(t, key, prepare))
	if err != nil {
		t.Fatalf("open %s: %v", dialect, err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}
