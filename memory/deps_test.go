package memory_test

import (
	"os/exec"
	"strings"
	"testing"
)

// maxLocalstoreDeps bounds the packages the embedded store pulls in (itself and the standard library included).
// It has 79 today; it had 556 when it used the generated code (and with it gRPC) and internal/telemetry (and
// with it OpenTelemetry and Prometheus).
const maxLocalstoreDeps = 150

// TestDependencies holds the memory packages' dependency graphs, as `go list -deps` gives them, to the shape the
// split into domain and transport made:
//   - the domain imports no transport: no connect, no RPC server, no generated code, nothing of internal/ but
//     internal/fault (the error kinds every service shares, which import nothing);
//   - the embedded store imports neither the generated code nor telemetry, and stays under maxLocalstoreDeps
//     packages;
//   - chromem-go, membench's reference, which only its tests run, is not compiled into loom.
func TestDependencies(t *testing.T) {
	t.Parallel()
	deps := func(t *testing.T, pkg string) []string {
		t.Helper()
		out, err := exec.Command("go", "list", "-deps", pkg).Output()
		if err != nil {
			t.Fatalf("go list -deps %s: %v", pkg, err)
		}
		return strings.Fields(string(out))
	}
	refuse := func(t *testing.T, pkg string, prefixes ...string) []string {
		t.Helper()
		ds := deps(t, pkg)
		for _, d := range ds {
			for _, p := range prefixes {
				if strings.HasPrefix(d, p) {
					t.Errorf("%s depends on %s", pkg, d)
				}
			}
		}
		return ds
	}
	const gen, internal = "github.com/loom-dev/loom/gen/", "github.com/loom-dev/loom/internal/"
	t.Run("domain", func(t *testing.T) {
		t.Parallel()
		for _, d := range refuse(t, ".", "connectrpc.com/", "google.golang.org/", gen) {
			// Of internal/, only the shared error kinds, which import nothing themselves.
			if strings.HasPrefix(d, internal) && d != internal+"fault" {
				t.Errorf("the domain depends on %s", d)
			}
		}
	})
	t.Run("localstore", func(t *testing.T) {
		t.Parallel()
		ds := refuse(t, "./localstore", "connectrpc.com/", "google.golang.org/grpc", "go.opentelemetry.io/", "github.com/prometheus/", gen)
		for _, d := range ds {
			if strings.HasPrefix(d, internal) && d != internal+"fault" {
				t.Errorf("localstore depends on %s", d)
			}
		}
		if len(ds) >= maxLocalstoreDeps {
			t.Errorf("localstore has %d dependencies, want fewer than %d", len(ds), maxLocalstoreDeps)
		}
	})
	t.Run("loom", func(t *testing.T) {
		t.Parallel()
		refuse(t, "../cmd/loom", "github.com/philippgille/chromem-go")
	})
}
