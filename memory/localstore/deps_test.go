package localstore

import (
	"os/exec"
	"strings"
	"testing"
)

// maxDeps bounds the packages the embedded store pulls in (itself and the standard library included). It has
// 79 today; 556 when it used the generated code (and with it gRPC) and internal/telemetry (and with it
// OpenTelemetry and Prometheus).
const maxDeps = 150

// TestDependencies keeps the embedded store light: it imports neither the generated code nor telemetry, and its
// dependency graph stays under maxDeps packages.
func TestDependencies(t *testing.T) {
	t.Parallel()
	out, err := exec.Command("go", "list", "-deps", ".").Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	deps := strings.Fields(string(out))
	for _, d := range deps {
		if strings.HasPrefix(d, "github.com/loom-dev/loom/gen/") || strings.HasPrefix(d, "github.com/loom-dev/loom/internal/") ||
			strings.HasPrefix(d, "connectrpc.com/") || strings.HasPrefix(d, "go.opentelemetry.io/") || strings.HasPrefix(d, "google.golang.org/grpc") {
			t.Errorf("localstore depends on %s", d)
		}
	}
	if len(deps) >= maxDeps {
		t.Errorf("localstore has %d dependencies (go list -deps), want fewer than %d", len(deps), maxDeps)
	}
}
