package orchestrator_test

import (
	"os/exec"
	"strings"
	"testing"
)

// TestDependencies holds the orchestrator packages' dependency graphs, as `go list -deps` gives them, to the shape
// the split into domain and transport made. Before it, the Connect handler lived in this package and the domain
// pulled in 564 packages, the engine 586, both with connect and internal/rpcserver; after it, 320 and 556.
// The engine still reached connect through internal/telemetry, whose spans recorded a Connect error's code as
// error.type with connect.CodeOf; telemetry now recognises that error without importing connect, and the
// engine pulls in 554 packages.
//   - the domain (this package) imports no transport: no connect, no RPC server, no error mapper, not the
//     handler (orchestrator/orchestratorrpc); of internal/ only internal/fault (the error kinds every service
//     shares, which import nothing). The generated types are its model, so gen/ is allowed;
//   - the engine imports neither connect, the RPC server, the error mapper nor the handler, directly or
//     through any other package.
func TestDependencies(t *testing.T) {
	t.Parallel()
	const module = "github.com/loom-dev/loom/"
	const internal, connect = module + "internal/", "connectrpc.com/connect"
	// deps maps each package pkg depends on (itself included) to its imports.
	deps := func(t *testing.T, pkg string) map[string][]string {
		t.Helper()
		out, err := exec.Command("go", "list", "-deps", "-f", "{{.ImportPath}} {{join .Imports \" \"}}", pkg).Output()
		if err != nil {
			t.Fatalf("go list -deps %s: %v", pkg, err)
		}
		m := map[string][]string{}
		for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
			f := strings.Fields(line)
			m[f[0]] = f[1:]
		}
		return m
	}
	refuse := func(t *testing.T, pkg string, ds map[string][]string, refused ...string) {
		t.Helper()
		for d := range ds {
			for _, r := range refused {
				if d == r || strings.HasPrefix(d, r+"/") {
					t.Errorf("%s depends on %s", pkg, d)
				}
			}
		}
	}
	transport := []string{internal + "rpcserver", internal + "rpcerr", module + "orchestrator/orchestratorrpc"}
	t.Run("domain", func(t *testing.T) {
		t.Parallel()
		ds := deps(t, ".")
		refuse(t, "the domain", ds, append(transport, connect)...)
		for d := range ds {
			if strings.HasPrefix(d, internal) && d != internal+"fault" {
				t.Errorf("the domain depends on %s", d)
			}
		}
		t.Logf("orchestrator: %d packages", len(ds))
	})
	t.Run("engine", func(t *testing.T) {
		t.Parallel()
		ds := deps(t, "./engine")
		refuse(t, "the engine", ds, append(transport, connect)...)
		t.Logf("orchestrator/engine: %d packages", len(ds))
	})
}
