package observability

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/grafana/grafana-foundation-sdk/go/cog/plugins"
	"github.com/grafana/grafana-foundation-sdk/go/dashboard"
)

var update = flag.Bool("update", false, "rewrite dashboard.json from Dashboard()")

// TestDashboardIsUpToDate checks dashboard.json is what Dashboard builds (go test -update rewrites it) and that it
// decodes strictly as a Grafana dashboard with the SDK's types.
func TestDashboardIsUpToDate(t *testing.T) {
	want, err := Dashboard()
	if err != nil {
		t.Fatal(err)
	}
	if *update {
		if err := os.WriteFile("dashboard.json", want, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := os.ReadFile("dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("dashboard.json differs from Dashboard(): run go test ./deploy/observability -update")
	}
	plugins.RegisterDefaultPlugins()
	var d dashboard.Dashboard
	if err := json.Unmarshal(got, &d); err != nil {
		t.Fatalf("dashboard.json does not decode as a Grafana dashboard: %v", err)
	}
	if d.Uid == nil || *d.Uid != UID || len(d.Panels) < 20 {
		t.Errorf("dashboard uid %v with %d panels", d.Uid, len(d.Panels))
	}
}

// promtool returns the path of promtool; in CI its absence fails the test (.ci/packages.sh installs it).
func promtool(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("promtool")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("promtool not found: .ci/packages.sh installs Debian's prometheus package")
		}
		t.Skip("promtool not found (apt-get install prometheus)")
	}
	return p
}

// TestAlertRules runs promtool check rules and promtool test rules (one unit test or more per alert).
func TestAlertRules(t *testing.T) {
	bin := promtool(t)
	for _, args := range [][]string{{"check", "rules", "alerts.yml"}, {"test", "rules", "alerts_test.yml"}} {
		out, err := exec.Command(bin, args...).CombinedOutput()
		if err != nil {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
}

// TestEveryAlertHasARunbookAndATest checks each alert of alerts.yml names a section of runbook.md and is
// evaluated by alerts_test.yml.
func TestEveryAlertHasARunbookAndATest(t *testing.T) {
	rules, err := os.ReadFile("alerts.yml")
	if err != nil {
		t.Fatal(err)
	}
	runbook, err := os.ReadFile("runbook.md")
	if err != nil {
		t.Fatal(err)
	}
	tests, err := os.ReadFile("alerts_test.yml")
	if err != nil {
		t.Fatal(err)
	}
	var n int
	for line := range strings.Lines(string(rules)) {
		name, ok := strings.CutPrefix(strings.TrimSpace(line), "- alert: ")
		if !ok {
			continue
		}
		n++
		if !strings.Contains(string(tests), "alertname: "+name) {
			t.Errorf("alert %s has no unit test in alerts_test.yml", name)
		}
		if !strings.Contains(string(runbook), "name=\""+strings.ToLower(strings.TrimSuffix(strings.TrimSuffix(name, "Fast"), "Slow"))+"\"") {
			t.Errorf("alert %s has no section in runbook.md", name)
		}
	}
	if n < 6 {
		t.Errorf("%d alerts, want at least 6", n)
	}
}
