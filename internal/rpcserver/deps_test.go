package rpcserver_test

import (
	"os/exec"
	"strings"
	"testing"
)

// TestDependencies holds the RPC server free of the SQL layer: it installs the audit interceptor, which records
// into an audit.Appender, while the database trail (internal/audit/auditsql, with sqldb, SQLite and goose) is
// wired in by cmd. pgx stays reachable through internal/telemetry, whose pool metrics read pgxpool's statistics.
// Before the audit store moved out of internal/audit, the server pulled in 549 packages; after it, 513.
func TestDependencies(t *testing.T) {
	t.Parallel()
	out, err := exec.Command("go", "list", "-deps", ".").Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	deps := strings.Fields(string(out))
	for _, d := range deps {
		for _, refused := range []string{"github.com/loom-dev/loom/internal/sqldb", "github.com/loom-dev/loom/internal/audit/auditsql", "modernc.org/sqlite", "github.com/pressly/goose/v3"} {
			if d == refused || strings.HasPrefix(d, refused+"/") {
				t.Errorf("internal/rpcserver depends on %s", d)
			}
		}
	}
	t.Logf("internal/rpcserver: %d packages", len(deps))
}
