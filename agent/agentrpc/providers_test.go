package agentrpc_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/loom-dev/loom/agent/agentrpc"
	"github.com/loom-dev/loom/agent/model"
	agentv1 "github.com/loom-dev/loom/gen/loom/agent/v1"
	"github.com/loom-dev/loom/internal/secrets"
)

// TestRunOpenAI runs an agent on an OpenAI-compatible endpoint that first asks for a tool, then answers from
// the tool's result.
func TestRunOpenAI(t *testing.T) {
	t.Parallel()
	var calls int
	llm := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		calls++
		w.Header().Set("Content-Type", "text/event-stream")
		send := func(s string) { fmt.Fprintf(w, "data: %s\n\n", s) }
		if !strings.Contains(string(body), `"role":"tool"`) {
			send(`{"id":"1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"memory_search","arguments":"{\"query\":\"colour\"}"}}]}}]}`)
			send(`{"id":"1","object":"chat.completion.chunk","created":1,"model":"m","choices":[],"usage":{"prompt_tokens":50,"completion_tokens":5,"total_tokens":55}}`)
		} else {
			if !strings.Contains(string(body), "favourite colour is blue") {
				t.Errorf("second request lacks the tool result: %s", body)
			}
			send(`{"id":"2","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"Blue."}}]}`)
			send(`{"id":"2","object":"chat.completion.chunk","created":1,"model":"m","choices":[],"usage":{"prompt_tokens":80,"completion_tokens":2,"total_tokens":82}}`)
		}
		send("[DONE]")
	}))
	defer llm.Close()
	h, ctx, c := grpcHarness(t, agentrpc.Config{Models: testModels(model.Endpoint{}, model.Endpoint{APIKey: "sk-test", BaseURL: llm.URL + "/v1"})})
	run := askFavouriteColour(t, ctx, h, c, "oai", &agentv1.Model{Provider: agentv1.Provider_PROVIDER_OPENAI, Name: "gpt-test"})
	if run.GetOutput() != "Blue." || run.GetModel() != "gpt-test" || run.GetProvider() != agentv1.Provider_PROVIDER_OPENAI ||
		run.GetUsage().GetInputTokens() != 130 || run.GetUsage().GetOutputTokens() != 7 || calls != 2 {
		t.Errorf("run = %v after %d model calls", run, calls)
	}
}

func TestConfigMasksKeys(t *testing.T) {
	t.Parallel()
	cfg := agentrpc.Config{Models: testModels(model.Endpoint{APIKey: "g-secret"}, model.Endpoint{APIKey: "o-secret"}), ElevenLabsAPIKey: "e-secret", TavusAPIKey: "t-secret"}
	var logged bytes.Buffer
	slog.New(slog.NewJSONHandler(&logged, nil)).Info("config", "cfg", cfg)
	for _, out := range []string{fmt.Sprint(cfg), fmt.Sprintf("%+v", cfg), logged.String()} {
		if strings.Contains(out, "secret") {
			t.Errorf("printed config leaks a key: %s", out)
		}
	}
	if !json.Valid(logged.Bytes()) {
		t.Errorf("log line is not JSON: %s", logged.String())
	}
	if err := (agentrpc.Config{TavusBaseURL: "ftp://x"}).Validate(); err == nil {
		t.Error("Validate accepted an ftp base URL")
	}
}

// fakeTenantKeys holds tenants' OpenAI keys for agent.Config.TenantKeys.
type fakeTenantKeys map[string]string

func (f fakeTenantKeys) Get(_ context.Context, tenant, provider string) (string, error) {
	if k, ok := f[tenant+"/"+provider]; ok {
		return k, nil
	}
	return "", fmt.Errorf("get provider key: %w", secrets.ErrNotFound)
}

// TestRunTenantKey shows a run using its tenant's own OpenAI key, and another tenant falling back to the
// process key.
func TestRunTenantKey(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	var auths []string
	llm := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		auths = append(auths, r.Header.Get("Authorization"))
		mu.Unlock()
		writeOpenAIOK(w)
	}))
	defer llm.Close()
	h := newHarness(t, agentrpc.Config{Models: testModels(model.Endpoint{}, model.Endpoint{APIKey: "sk-process", BaseURL: llm.URL + "/v1"}),
		TenantKeys: fakeTenantKeys{"acme/openai": "sk-acme-own"}})
	c := h.clients["grpc"]
	for _, tenant := range []string{"acme", "globex"} {
		ctx := asTenant(testCtx(t), tenant)
		create(t, ctx, c, &agentv1.Agent{Name: "oai", Model: &agentv1.Model{Provider: agentv1.Provider_PROVIDER_OPENAI, Name: "gpt-test"}})
		resp, err := c.Run(ctx, &agentv1.RunRequest{Agent: "oai", Input: "hi"})
		if err != nil || resp.GetRun().GetOutput() != "ok" {
			t.Fatalf("%s: Run = %v, %v", tenant, resp.GetRun(), err)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if want := []string{"Bearer sk-acme-own", "Bearer sk-process"}; !slices.Equal(auths, want) {
		t.Errorf("Authorization headers = %q, want %q", auths, want)
	}
}
