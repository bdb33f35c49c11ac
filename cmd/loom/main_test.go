package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	agentv1 "github.com/loom-dev/loom/gen/loom/agent/v1"
	"github.com/loom-dev/loom/internal/logtest"
)

// buildOnce builds the loom binary and the pinned tools (grpcurl, grpc-health-probe) once per test binary.
var buildOnce = sync.OnceValues(func() (map[string]string, error) {
	dir, err := os.MkdirTemp("", "loom-e2e-")
	if err != nil {
		return nil, err
	}
	root, err := filepath.Abs("../..")
	if err != nil {
		return nil, err
	}
	bins := map[string]string{}
	for name, args := range map[string][]string{
		"loom":              {"build", "-o", filepath.Join(dir, "loom"), "./cmd/loom"},
		"grpcurl":           {"build", "-modfile=tools/go.mod", "-o", filepath.Join(dir, "grpcurl"), "github.com/fullstorydev/grpcurl/cmd/grpcurl"},
		"grpc-health-probe": {"build", "-modfile=tools/go.mod", "-o", filepath.Join(dir, "grpc-health-probe"), "github.com/grpc-ecosystem/grpc-health-probe"},
	} {
		cmd := exec.Command("go", args...)
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			return nil, fmt.Errorf("go %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		bins[name] = filepath.Join(dir, name)
	}
	return bins, nil
})

func bins(t *testing.T) map[string]string {
	t.Helper()
	if testing.Short() {
		t.Skip("builds binaries; skipped with -short")
	}
	b, err := buildOnce()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// process is a running `loom serve`.
type process struct {
	cmd  *exec.Cmd
	addr string
	logs *logtest.Buffer
	done chan error
}

// startLoom runs `loom serve` on a free port with a fresh data dir and waits until /readyz answers.
func startLoom(t *testing.T, args ...string) *process {
	t.Helper()
	return startLoomWith(t, t.TempDir(), os.Environ(), args...)
}

// startLoomWith runs `loom serve` with dataDir and env and waits until /readyz answers.
func startLoomWith(t *testing.T, dataDir string, env []string, args ...string) *process {
	t.Helper()
	b := bins(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	cmd := exec.Command(b["loom"], append([]string{"serve", "--listen", addr, "--data-dir", dataDir}, args...)...)
	cmd.Env = append(env, "LOOM_LOG_LEVEL=debug")
	p := &process{cmd: cmd, addr: addr, logs: &logtest.Buffer{}, done: make(chan error, 1)}
	cmd.Stdout, cmd.Stderr = p.logs, p.logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.done <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-p.done
		if t.Failed() {
			t.Logf("loom logs:\n%s", p.logs.String())
		}
	})
	ready, client := "http://"+addr+"/readyz", http.DefaultClient
	if slices.Contains(args, "--tls-cert") {
		// Readiness only: the test's own clients check the certificate.
		ready = "https://" + addr + "/readyz"
		client = &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		res, err := client.Get(ready)
		if err == nil {
			res.Body.Close()
			if res.StatusCode == http.StatusOK {
				return p
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("loom did not become ready: %v", err)
		}
		select {
		case err := <-p.done:
			p.done <- err
			t.Fatalf("loom exited before it was ready: %v\n%s", err, p.logs.String())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func TestServeWithRealClients(t *testing.T) {
	b := bins(t)
	p := startLoom(t)

	run := func(name string, args ...string) string {
		t.Helper()
		out, err := exec.Command(b[name], args...).CombinedOutput()
		if err != nil {
			t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
		}
		return string(out)
	}

	list := run("grpcurl", "-plaintext", p.addr, "list")
	for _, svc := range []string{"loom.agent.v1.AgentService", "loom.memory.v1.MemoryService", "loom.orchestrator.v1.OrchestratorService"} {
		if !strings.Contains(list, svc) {
			t.Errorf("grpcurl list lacks %s:\n%s", svc, list)
		}
	}
	desc := run("grpcurl", "-plaintext", p.addr, "describe", "loom.memory.v1.MemoryService.Search")
	if !strings.Contains(desc, "rpc Search ( .loom.memory.v1.SearchRequest ) returns ( .loom.memory.v1.SearchResponse )") {
		t.Errorf("grpcurl describe:\n%s", desc)
	}
	for _, svc := range []string{"", "loom.memory.v1.MemoryService", "loom.agent.v1.AgentService"} {
		out := run("grpc-health-probe", "-addr", p.addr, "-service", svc)
		if !strings.Contains(out, "SERVING") {
			t.Errorf("grpc-health-probe %q: %s", svc, out)
		}
	}

	// A client's mistake is InvalidArgument naming the field, over gRPC.
	cmd := exec.Command(b["grpcurl"], "-plaintext", "-d", `{"name":"Not Valid"}`, p.addr, "loom.memory.v1.MemoryService/GetNamespace")
	out, _ := cmd.CombinedOutput()
	if !strings.Contains(string(out), "InvalidArgument") || !strings.Contains(string(out), "name") {
		t.Errorf("invalid request: %s", out)
	}
}

func TestServeSubsetOfServices(t *testing.T) {
	b := bins(t)
	p := startLoom(t, "--services", "memory")
	out, err := exec.Command(b["grpcurl"], "-plaintext", p.addr, "list").CombinedOutput()
	if err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if !strings.Contains(string(out), "loom.memory.v1.MemoryService") || strings.Contains(string(out), "AgentService") {
		t.Errorf("--services memory serves:\n%s", out)
	}
}

func TestSIGTERMLetsStreamsFinishAndExitsZero(t *testing.T) {
	p := startLoom(t, "--shutdown-grace", "10s")
	ctx := context.Background()
	conn := dialGRPC(t, p.addr)
	ag := agentv1.NewAgentServiceClient(conn)
	// A scripted sim model that waits 1.5 s before answering: the stream is in flight when SIGTERM arrives.
	slow := &agentv1.Agent{Name: "slow", Model: &agentv1.Model{Sim: &agentv1.SimScript{
		Latency: durationpb.New(1500 * time.Millisecond),
		Turns:   []*agentv1.SimTurn{{Reply: "finished despite the shutdown"}},
	}}}
	if _, err := ag.CreateAgent(ctx, &agentv1.CreateAgentRequest{Agent: slow}); err != nil {
		t.Fatal(err)
	}
	stream, err := ag.RunStream(ctx, &agentv1.RunStreamRequest{Agent: "slow", Input: "go"})
	if err != nil {
		t.Fatal(err)
	}
	if ev, err := stream.Recv(); err != nil || ev.GetStarted() == nil {
		t.Fatalf("first event: %v %v", ev, err)
	}
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	var text strings.Builder
	var completed bool
	for {
		ev, err := stream.Recv()
		if err != nil {
			break
		}
		text.WriteString(ev.GetTextDelta().GetText())
		completed = completed || ev.GetCompleted() != nil
	}
	if !completed || !strings.Contains(text.String(), "finished") {
		t.Errorf("stream cut by shutdown: completed=%v text=%q", completed, text.String())
	}
	// New calls are refused once shutdown began.
	if _, err := ag.ListAgents(ctx, &agentv1.ListAgentsRequest{}); err == nil {
		t.Errorf("a new call after SIGTERM succeeded")
	}
	select {
	case err := <-p.done:
		p.done <- err // for the cleanup
		if err != nil {
			t.Fatalf("exit after SIGTERM: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("loom did not exit after SIGTERM")
	}
	if !strings.Contains(p.logs.String(), "stopped") {
		t.Errorf("no graceful stop in logs:\n%s", p.logs.String())
	}
}

func TestConfigPrecedenceAndMasking(t *testing.T) {
	t.Parallel()
	env := map[string]string{
		"LOOM_LISTEN":         ":9999",
		"LOOM_DATA_DIR":       "/from/env",
		"LOOM_GEMINI_API_KEY": "canary-secret-gemini",
		"LOOM_DATABASE_URL":   "postgres://u:canary-secret-pw@db:5432/loom",
	}
	getenv := func(k string) string { return env[k] }
	devnull, _ := os.Open(os.DevNull)
	defer devnull.Close()
	cfg, err := parseServe([]string{"--listen", ":7777"}, getenv, devnull)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Listen != ":7777" || cfg.DataDir != "/from/env" || cfg.DefaultTimeout != 30*time.Second {
		t.Errorf("precedence: listen=%q data_dir=%q default_timeout=%v", cfg.Listen, cfg.DataDir, cfg.DefaultTimeout)
	}
	if cfg.Secrets.GeminiAPIKey != "canary-secret-gemini" {
		t.Errorf("secret not read from env")
	}
	var logged strings.Builder
	newLogger(cfg, &logged).Info("config", "config", cfg)
	if strings.Contains(logged.String(), "canary-secret") {
		t.Errorf("secret in log line: %s", logged.String())
	}

	if _, err := parseServe([]string{"--services", "memory,nope"}, getenv, devnull); err == nil || !strings.Contains(err.Error(), "nope") {
		t.Errorf("unknown service: err = %v", err)
	}
	if _, err := parseServe([]string{"--default-timeout", "soon"}, getenv, devnull); err == nil || !strings.Contains(err.Error(), "--default-timeout") {
		t.Errorf("bad duration: err = %v", err)
	}

	dir := t.TempDir()
	path := filepath.Join(dir, "key")
	if err := os.WriteFile(path, []byte("canary-from-file\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	fileEnv := func(k string) string {
		if k == "LOOM_TAVUS_API_KEY_FILE" {
			return path
		}
		return ""
	}
	cfg, err = parseServe(nil, fileEnv, devnull)
	if err != nil || cfg.Secrets.TavusAPIKey != "canary-from-file" {
		t.Errorf("secret from file: %q, %v", cfg.Secrets.TavusAPIKey, err)
	}
	missing := func(k string) string {
		if k == "LOOM_TAVUS_API_KEY_FILE" {
			return filepath.Join(dir, "absent")
		}
		return ""
	}
	if _, err := parseServe(nil, missing, devnull); err == nil || !strings.Contains(err.Error(), "LOOM_TAVUS_API_KEY_FILE") {
		t.Errorf("missing secret file: %v", err)
	}
}
