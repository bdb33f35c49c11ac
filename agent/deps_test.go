package agent_test

import (
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// TestDependencies keeps the transport out of the agent's domain, its store and its test fakes. The split of
// the Connect handler into agent/agentrpc took `go list -deps ./agent | wc -l` from 600 packages (connect and
// internal/rpcserver among them) to 337; the handler itself has 601.
//
// None of agent, agent/sqlstore and agent/agenttest may reach connect, internal/rpcserver, internal/rpcerr or
// agent/agentrpc, directly or not. The domain may use three packages of internal/: fault (the error kinds
// every service shares), pricing (the money of usage sums and budgets) and jsonschema (tool parameters); the
// generated types are its model, so gen/ is allowed.
func TestDependencies(t *testing.T) {
	t.Parallel()
	const loom = "github.com/loom-dev/loom/"
	forbidden := []string{"connectrpc.com/connect", loom + "internal/rpcserver", loom + "internal/rpcerr", loom + "agent/agentrpc"}
	domainInternal := []string{loom + "internal/fault", loom + "internal/pricing", loom + "internal/jsonschema"}

	// One line a package: its import path, then every package it depends on (.Deps, itself left out).
	out, err := exec.Command("go", "list", "-f", `{{.ImportPath}} {{join .Deps " "}}`, ".", "./sqlstore", "./agenttest").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	for line := range strings.Lines(strings.TrimSpace(string(out))) {
		fields := strings.Fields(line)
		pkg, deps := fields[0], fields[1:]
		for _, d := range deps {
			if slices.ContainsFunc(forbidden, func(f string) bool { return d == f || strings.HasPrefix(d, f+"/") }) {
				t.Errorf("%s depends on %s", pkg, d)
			}
			if pkg == loom+"agent" && strings.HasPrefix(d, loom+"internal/") && !slices.Contains(domainInternal, d) {
				t.Errorf("the domain depends on %s", d)
			}
		}
		t.Logf("%s: %d packages", pkg, len(deps)+1)
	}
}
