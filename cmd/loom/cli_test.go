package main

import (
	"bytes"
	"os/exec"
	"strings"
	"testing"
)

// TestEveryCommandHelp runs --help for every command and subcommand: the usage goes to stdout, nothing to
// stderr, and the exit status is 0.
func TestEveryCommandHelp(t *testing.T) {
	b := bins(t)
	cases := [][]string{{"--help"}, {"help"}}
	for name, subs := range commands {
		cases = append(cases, []string{name, "--help"})
		for _, sub := range subs {
			cases = append(cases, []string{name, sub, "--help"})
		}
	}
	for _, args := range cases {
		var stdout, stderr bytes.Buffer
		cmd := exec.Command(b["loom"], args...)
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		if err := cmd.Run(); err != nil {
			t.Errorf("loom %s: %v\nstderr: %s", strings.Join(args, " "), err, stderr.String())
			continue
		}
		if stderr.Len() > 0 || !strings.Contains(stdout.String(), "Usage") {
			t.Errorf("loom %s: stdout %q, stderr %q; want the usage on stdout only", strings.Join(args, " "), stdout.String(), stderr.String())
		}
	}
}

func TestVersionAndCompletion(t *testing.T) {
	b := bins(t)
	for _, args := range [][]string{{"--version"}, {"version"}} {
		out, err := exec.Command(b["loom"], args...).Output()
		if err != nil || !strings.HasPrefix(string(out), "loom ") {
			t.Errorf("loom %s: %q, %v", args[0], out, err)
		}
	}
	out, err := exec.Command(b["loom"], "completion", "bash").Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"complete -F _loom loom", "--database-read-url", "--tenant", "--ef-search", "create list revoke reseal"} {
		if !bytes.Contains(out, []byte(want)) {
			t.Errorf("completion script lacks %q", want)
		}
	}
	if path, err := exec.LookPath("bash"); err == nil {
		// The script loads, and completes "loom serve --database-r".
		script := string(out) + `COMP_WORDS=(loom serve --database-r); COMP_CWORD=2; _loom; echo "${COMPREPLY[@]}"`
		got, err := exec.Command(path, "-c", script).CombinedOutput()
		if err != nil || strings.TrimSpace(string(got)) != "--database-read-url --database-read-max-lag" {
			t.Errorf("completing 'loom serve --database-r': %q, %v", got, err)
		}
	}
}

// TestServeFlagsAreTyped checks that a bool flag stands alone, that a bad number is refused naming the flag,
// and that the help shows each flag's type.
func TestServeFlagsAreTyped(t *testing.T) {
	cfg, err := parseServe([]string{"--reflection", "--listen", "127.0.0.1:0"}, func(string) string { return "" }, &bytes.Buffer{})
	if err != nil || !cfg.Reflection || cfg.Listen != "127.0.0.1:0" {
		t.Fatalf("--reflection --listen: %+v, %v", cfg.Listen, err)
	}
	if cfg, err := parseServe([]string{"--reflection=false"}, func(string) string { return "" }, &bytes.Buffer{}); err != nil || cfg.Reflection {
		t.Errorf("--reflection=false: %v, %v", cfg.Reflection, err)
	}
	var out bytes.Buffer
	if _, err := parseServe([]string{"--max-in-flight", "lots"}, func(string) string { return "" }, &out); err == nil || !strings.Contains(err.Error(), "max-in-flight") {
		t.Errorf("--max-in-flight lots: %v, want an error naming the flag", err)
	}
	var help bytes.Buffer
	printServeUsage(&help)
	for _, want := range []string{"--reflection[=bool]", "--max-in-flight int", "--default-timeout duration", "--rate-limit float", "--listen string"} {
		if !strings.Contains(help.String(), want) {
			t.Errorf("serve help lacks %q", want)
		}
	}
}

// TestBenchProgressOnlyOnATerminal runs a small memory benchmark with its output piped: the results hold no
// progress bar (no carriage returns), on stdout or stderr.
func TestBenchProgressOnlyOnATerminal(t *testing.T) {
	b := bins(t)
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(b["loom"], "bench", "memory", "--n", "500", "--dim", "16", "--clusters", "5", "--queries", "10", "--backends", "localstore")
	cmd.Env = append(cmd.Environ(), "LOOM_DATABASE_URL=")
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("loom bench memory: %v\n%s", err, stderr.String())
	}
	if bytes.ContainsRune(stdout.Bytes(), '\r') || bytes.ContainsRune(stderr.Bytes(), '\r') {
		t.Errorf("a progress bar was drawn into a pipe:\nstdout %q\nstderr %q", stdout.String(), stderr.String())
	}
	if !strings.Contains(stdout.String(), "localstore") {
		t.Errorf("no results on stdout: %q", stdout.String())
	}
}

// TestParseServeBooleans checks every boolean setting takes the same spellings and names itself when refused.
func TestParseServeBooleans(t *testing.T) {
	t.Parallel()
	for _, name := range []string{"reflection", "mcp", "metrics-tenant-labels"} {
		for _, tc := range []struct {
			value string
			want  bool
		}{{"true", true}, {"1", true}, {"yes", true}, {"false", false}, {"0", false}, {"no", false}} {
			cfg, err := parseServe([]string{"--" + name + "=" + tc.value}, func(string) string { return "" }, &bytes.Buffer{})
			if err != nil {
				t.Errorf("--%s=%s: %v", name, tc.value, err)
				continue
			}
			if got := map[string]bool{"reflection": cfg.Reflection, "mcp": cfg.MCP, "metrics-tenant-labels": cfg.MetricsTenantLabels}[name]; got != tc.want {
				t.Errorf("--%s=%s: got %v, want %v", name, tc.value, got, tc.want)
			}
		}
		// The flag parser refuses a bad value itself; one from the environment reaches the config's check.
		env := "LOOM_" + strings.ToUpper(strings.ReplaceAll(name, "-", "_"))
		_, err := parseServe(nil, func(k string) string {
			if k == env {
				return "maybe"
			}
			return ""
		}, &bytes.Buffer{})
		if want := "--" + name + `: want true or false, got "maybe"`; err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("--%s=maybe: %v, want an error containing %q", name, err, want)
		}
	}
}
