package main

import (
	"bytes"
	"strings"
	"testing"
)

// TestMCPStdioAllowFlag: --mcp-stdio-allow (or LOOM_MCP_STDIO_ALLOW) lists name=/path pairs; anything else is
// refused naming the flag, and the agent's config refuses a relative path.
func TestMCPStdioAllowFlag(t *testing.T) {
	t.Parallel()
	noEnv := func(string) string { return "" }
	cfg, err := parseServe([]string{"--mcp-stdio-allow", "files=/usr/bin/mcp-files, git=/usr/local/bin/mcp-git"}, noEnv, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.MCPStdioAllow) != 2 || cfg.MCPStdioAllow["files"] != "/usr/bin/mcp-files" || cfg.MCPStdioAllow["git"] != "/usr/local/bin/mcp-git" {
		t.Errorf("MCPStdioAllow = %v", cfg.MCPStdioAllow)
	}
	env := map[string]string{"LOOM_MCP_STDIO_ALLOW": "files=/opt/mcp"}
	if cfg, err := parseServe(nil, func(k string) string { return env[k] }, &bytes.Buffer{}); err != nil || cfg.MCPStdioAllow["files"] != "/opt/mcp" {
		t.Errorf("from env: %v, %v", cfg.MCPStdioAllow, err)
	}
	for _, bad := range []string{"files", "=/usr/bin/x", "files="} {
		if _, err := parseServe([]string{"--mcp-stdio-allow", bad}, noEnv, &bytes.Buffer{}); err == nil || !strings.Contains(err.Error(), "--mcp-stdio-allow") {
			t.Errorf("--mcp-stdio-allow %q: err = %v, want one naming the flag", bad, err)
		}
	}
}
