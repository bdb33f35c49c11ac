package membench

import (
	"os/exec"
	"strings"
	"testing"
)

// TestChromemNotInTheBinary checks that chromem-go, the reference the tests run, is not compiled into loom,
// which runs this package as `loom bench memory`.
func TestChromemNotInTheBinary(t *testing.T) {
	t.Parallel()
	out, err := exec.Command("go", "list", "-deps", "../../cmd/loom").Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	for _, d := range strings.Fields(string(out)) {
		if strings.HasPrefix(d, "github.com/philippgille/chromem-go") {
			t.Errorf("loom depends on %s", d)
		}
	}
}
