package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	memoryv1 "github.com/loom-dev/loom/gen/loom/memory/v1"
	"github.com/loom-dev/loom/internal/authn"
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
	setServiceTokenKey(t)
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

// TestCredentialGuessingIsThrottled sends wrong API keys from one address: after the free failures they are
// refused with ResourceExhausted and a RetryInfo before any key is checked, while a valid key from another
// address is not slowed, and /metrics counts the refusals.
func TestCredentialGuessingIsThrottled(t *testing.T) {
	setServiceTokenKey(t)
	dataDir, keys := keyDir(t, "acme:reader")
	key := keys[0]
	p := startLoomIn(t, dataDir, "--auth", "required")
	_, port, _ := net.SplitHostPort(p.addr)
	dialFrom := func(local string) memoryv1.MemoryServiceClient {
		d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}}
		conn, err := grpc.NewClient("passthrough:///127.0.0.1:"+port,
			grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) { return d.DialContext(ctx, "tcp", addr) }))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		return memoryv1.NewMemoryServiceClient(conn)
	}
	attacker, owner := dialFrom("127.0.0.1"), dialFrom("127.0.0.2")
	call := func(c memoryv1.MemoryServiceClient, cred string) error {
		ctx := metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+cred)
		_, err := c.ListNamespaces(ctx, &memoryv1.ListNamespacesRequest{})
		return err
	}
	id := strings.Split(key, "_")[1]
	counts := map[codes.Code]int{}
	var retryInfo bool
	const tries = 200
	for i := range tries {
		err := call(attacker, fmt.Sprintf("loom_%s_wrongsecret%04d", id, i))
		st := status.Convert(err)
		counts[st.Code()]++
		for _, d := range st.Details() {
			if _, ok := d.(*errdetails.RetryInfo); ok {
				retryInfo = true
			}
		}
	}
	t.Logf("%d wrong keys from one address: %d Unauthenticated (checked), %d ResourceExhausted (refused unchecked)", tries, counts[codes.Unauthenticated], counts[codes.ResourceExhausted])
	if counts[codes.Unauthenticated] > authn.DefaultFreeFailures+1 || counts[codes.ResourceExhausted] < tries-authn.DefaultFreeFailures-1 || !retryInfo {
		t.Errorf("guessing not throttled: %v, retry info %v", counts, retryInfo)
	}
	start := time.Now()
	for range 20 {
		if err := call(owner, key); err != nil {
			t.Fatalf("the valid key from another address was refused: %v", err)
		}
	}
	t.Logf("valid key from another address: 20 calls in %v", time.Since(start))
	res, err := http.Get("http://" + p.addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if !strings.Contains(string(body), `loom_authn_throttled_total{by="address"}`) || !strings.Contains(string(body), "loom_authn_failures_total") {
		t.Errorf("/metrics lacks the throttle's counters")
	}
}
