package memory_test

import (
	"os/exec"
	"strings"
	"testing"
)

// TestDomainImportsNoTransport keeps the domain package free of the transport: no connect, no RPC server, no
// generated code (the Connect handler and the conversions live in memory/memoryrpc).
func TestDomainImportsNoTransport(t *testing.T) {
	t.Parallel()
	out, err := exec.Command("go", "list", "-deps", ".").Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	for _, d := range strings.Fields(string(out)) {
		if strings.HasPrefix(d, "connectrpc.com/") || strings.HasPrefix(d, "github.com/loom-dev/loom/gen/") ||
			strings.HasPrefix(d, "github.com/loom-dev/loom/internal/") || strings.HasPrefix(d, "google.golang.org/") {
			t.Errorf("package memory depends on %s", d)
		}
	}
}
