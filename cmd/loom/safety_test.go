package main

import (
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestLocalModeDefaults checks what --auth local (every caller is admin) does by default: loopback only, and
// no cross-origin browser calls once an address beyond loopback is given.
func TestLocalModeDefaults(t *testing.T) {
	t.Parallel()
	devnull, _ := os.Open(os.DevNull)
	defer devnull.Close()
	tests := []struct {
		name       string
		args       []string
		env        map[string]string
		wantListen string
		wantCORS   []string
	}{
		{name: "local, nothing set", wantListen: "127.0.0.1:8080", wantCORS: []string{"*"}},
		{name: "local, explicit wildcard address", args: []string{"--listen", ":9000"}, wantListen: ":9000"},
		{name: "local, address from env", env: map[string]string{"LOOM_LISTEN": "0.0.0.0:9000"}, wantListen: "0.0.0.0:9000"},
		{name: "local, address and origins given", args: []string{"--listen", ":9000", "--cors-origins", "https://app.example"}, wantListen: ":9000", wantCORS: []string{"https://app.example"}},
		{name: "local, explicit loopback", args: []string{"--listen", "127.0.0.1:9000"}, wantListen: "127.0.0.1:9000", wantCORS: []string{"*"}},
		{name: "required", args: []string{"--auth", "required"}, wantListen: ":8080", wantCORS: []string{"*"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			cfg, err := parseServe(tt.args, func(k string) string { return tt.env[k] }, devnull)
			if err != nil {
				t.Fatal(err)
			}
			if cfg.Listen != tt.wantListen || !slices.Equal(cfg.CORSOrigins, tt.wantCORS) {
				t.Errorf("listen %q, cors %q; want %q, %q", cfg.Listen, cfg.CORSOrigins, tt.wantListen, tt.wantCORS)
			}
		})
	}
}

// TestLocalGatewayRefusesRequiredBackends starts a backend with --auth required and a gateway with --auth local
// in front of it: the gateway must refuse to start, since anonymous callers would act as the development admin.
func TestLocalGatewayRefusesRequiredBackends(t *testing.T) {
	b := bins(t)
	dataDir := t.TempDir()
	t.Setenv("LOOM_SERVICE_TOKEN_KEY", newServiceTokenKey())
	backend := startLoomIn(t, dataDir, "--auth", "required")
	cmd := exec.Command(b["loom"], "serve", "--listen", "127.0.0.1:0", "--data-dir", t.TempDir(), "--auth", "local",
		"--services", "gateway", "--gateway-memory", backend.addr)
	done := make(chan struct{})
	var out []byte
	var err error
	go func() { out, err = cmd.CombinedOutput(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		_ = cmd.Process.Kill()
		<-done
		t.Fatalf("the gateway kept running:\n%s", out)
	}
	if err == nil || !strings.Contains(string(out), "must not front --auth required backends") {
		t.Errorf("gateway: err = %v, output:\n%s", err, out)
	}
}
