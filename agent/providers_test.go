package agent_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/loom-dev/loom/agent"
	agentv1 "github.com/loom-dev/loom/gen/loom/agent/v1"
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
	h := newHarness(t, agent.Config{OpenAIAPIKey: "sk-test", OpenAIBaseURL: llm.URL + "/v1"})
	ctx := testCtx(t)
	c := h.clients["grpc"]
	a := memoryAgent(t, h, "oai")
	a.Model = &agentv1.Model{Provider: agentv1.Provider_PROVIDER_OPENAI, Name: "gpt-test"}
	create(t, ctx, c, a)
	resp, err := c.Run(ctx, &agentv1.RunRequest{Agent: "oai", Input: "favourite colour?"})
	if err != nil {
		t.Fatal(err)
	}
	run := resp.GetRun()
	if run.GetOutput() != "Blue." || run.GetModel() != "gpt-test" || run.GetProvider() != agentv1.Provider_PROVIDER_OPENAI ||
		run.GetUsage().GetInputTokens() != 130 || run.GetUsage().GetOutputTokens() != 7 || calls != 2 {
		t.Errorf("run = %v after %d model calls", run, calls)
	}
}

func TestConfigMasksKeys(t *testing.T) {
	t.Parallel()
	cfg := agent.Config{GeminiAPIKey: "g-secret", OpenAIAPIKey: "o-secret", ElevenLabsAPIKey: "e-secret", TavusAPIKey: "t-secret"}
	var logged bytes.Buffer
	slog.New(slog.NewJSONHandler(&logged, nil)).Info("config", "cfg", cfg)
	for _, out := range []string{cfg.String(), fmt.Sprint(cfg), fmt.Sprintf("%+v", cfg), logged.String()} {
		if strings.Contains(out, "secret") {
			t.Errorf("printed config leaks a key: %s", out)
		}
	}
	if !json.Valid(logged.Bytes()) {
		t.Errorf("log line is not JSON: %s", logged.String())
	}
	if err := (agent.Config{TavusBaseURL: "ftp://x"}).Validate(); err == nil {
		t.Error("Validate accepted an ftp base URL")
	}
}
