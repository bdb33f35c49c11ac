// Package layout_test enforces the import rules of STYLE.md over the whole module: imports run one way,
// cmd -> services -> internal -> gen, and no service imports another's packages (they talk through generated
// clients). The rules are checked on `go list`'s view of the packages, tests included.
package layout_test

import (
	"encoding/json"
	"errors"
	"io"
	"os/exec"
	"strings"
	"testing"
)

const module = "github.com/loom-dev/loom/"

// services are the top-level directories that hold one service each (the gateway counts as one).
var services = map[string]bool{"agent": true, "orchestrator": true, "memory": true, "admin": true, "gateway": true}

type pkg struct {
	ImportPath   string
	Imports      []string
	TestImports  []string
	XTestImports []string
}

// top is the first path element of a package of the module ("" for other modules).
func top(path string) string {
	rest, ok := strings.CutPrefix(path, module)
	if !ok {
		return ""
	}
	first, _, _ := strings.Cut(rest, "/")
	return first
}

// violation says why from may not import to, or "".
func violation(from, to string) string {
	f, t := top(from), top(to)
	switch {
	case t == "":
		return ""
	case t == "cmd":
		return "nothing imports cmd"
	case f == "gen" && t != "gen":
		return "generated code imports only generated code"
	case f == "internal" && (services[t] || t == "web"):
		return "internal packages do not import services"
	case services[f] && services[t] && f != t:
		return "a service does not import another service's packages; it calls the generated client"
	}
	return ""
}

func TestImportRules(t *testing.T) {
	cmd := exec.Command("go", "list", "-json", "github.com/loom-dev/loom/...")
	cmd.Dir = "../.."
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	dec := json.NewDecoder(strings.NewReader(string(out)))
	n := 0
	for {
		var p pkg
		if err := dec.Decode(&p); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		n++
		for _, imports := range [][]string{p.Imports, p.TestImports, p.XTestImports} {
			for _, imp := range imports {
				if why := violation(p.ImportPath, imp); why != "" {
					t.Errorf("%s imports %s: %s", p.ImportPath, imp, why)
				}
			}
		}
	}
	if n < 20 {
		t.Fatalf("go list saw %d packages; the check is not looking at the module", n)
	}
}

// TestViolation checks the rules themselves, so a rule cannot silently stop biting.
func TestViolation(t *testing.T) {
	for _, tt := range []struct {
		from, to string
		bad      bool
	}{
		{from: module + "cmd/loom", to: module + "agent"},
		{from: module + "agent", to: module + "internal/sqldb"},
		{from: module + "agent/sqlstore", to: module + "agent"},
		{from: module + "internal/rpcserver", to: module + "gen/loom/agent/v1"},
		{from: module + "agent", to: module + "memory", bad: true},
		{from: module + "orchestrator/engine", to: module + "agent/sqlstore", bad: true},
		{from: module + "internal/sqldb", to: module + "memory/pgstore", bad: true},
		{from: module + "gen/loom/agent/v1", to: module + "internal/principal", bad: true},
		{from: module + "memory", to: module + "cmd/loom", bad: true},
	} {
		if got := violation(tt.from, tt.to) != ""; got != tt.bad {
			t.Errorf("violation(%s, %s) = %v, want %v", tt.from, tt.to, got, tt.bad)
		}
	}
}
