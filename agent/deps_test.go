package agent_test

import (
	"os/exec"
	"strings"
	"testing"
)

// TestDependencies holds the agent packages' dependency graphs, as `go list -deps` gives them, to the shape the
// split into domain and transport made. Before it, the Connect handler lived in this package and the domain
// pulled in 600 packages, connect and internal/rpcserver among them; after it, 337 (the handler, agent/agentrpc,
// 601).
//   - the domain (this package) imports no transport: no connect, no RPC server, no error mapper, not the handler
//     (agent/agentrpc); of internal/ only internal/fault (the error kinds every service shares),
//     internal/pricing (the money of usage sums and budgets) and internal/jsonschema (the tool-parameter
//     schemas). The generated types are its model, so gen/ is allowed;
//   - the store (agent/sqlstore) and the test fakes (agent/agenttest) import no transport either.
func TestDependencies(t *testing.T) {
	t.Parallel()
	const module = "github.com/loom-dev/loom/"
	const internal, connect = module + "internal/", "connectrpc.com/connect"
	// deps lists the packages pkg depends on, itself included.
	deps := func(t *testing.T, pkg string) []string {
		t.Helper()
		out, err := exec.Command("go", "list", "-deps", pkg).Output()
		if err != nil {
			t.Fatalf("go list -deps %s: %v", pkg, err)
		}
		return strings.Fields(string(out))
	}
	transport := []string{connect, internal + "rpcserver", internal + "rpcerr", module + "agent/agentrpc"}
	refuse := func(t *testing.T, pkg string, ds []string) {
		t.Helper()
		for _, d := range ds {
			for _, r := range transport {
				if d == r || strings.HasPrefix(d, r+"/") {
					t.Errorf("%s depends on %s", pkg, d)
				}
			}
		}
	}
	t.Run("domain", func(t *testing.T) {
		t.Parallel()
		ds := deps(t, ".")
		refuse(t, "the domain", ds)
		allowed := map[string]bool{internal + "fault": true, internal + "pricing": true, internal + "jsonschema": true}
		for _, d := range ds {
			if strings.HasPrefix(d, internal) && !allowed[d] {
				t.Errorf("the domain depends on %s", d)
			}
		}
		t.Logf("agent: %d packages", len(ds))
	})
	for _, pkg := range []string{"sqlstore", "agenttest"} {
		t.Run(pkg, func(t *testing.T) {
			t.Parallel()
			ds := deps(t, "./"+pkg)
			refuse(t, "agent/"+pkg, ds)
			t.Logf("agent/%s: %d packages", pkg, len(ds))
		})
	}
}
