package model_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/loom-dev/loom/agent/model"
	agentv1 "github.com/loom-dev/loom/gen/loom/agent/v1"
)

// result collects a stream.
type result struct {
	text  string
	calls []model.ToolCall
	usage model.Usage
	err   error
}

func collect(ctx context.Context, m model.Model, req model.Request) result {
	var r result
	for c, err := range m.Stream(ctx, req) {
		if err != nil {
			r.err = err
			break
		}
		switch c.Kind {
		case model.ChunkText:
			r.text += c.Text
		case model.ChunkToolCall:
			r.calls = append(r.calls, *c.ToolCall)
		case model.ChunkUsage:
			r.usage = c.Usage
		}
	}
	return r
}

func user(s string) model.Request {
	return model.Request{Messages: []model.Message{{Role: model.RoleUser, Text: s}}}
}

func TestSimScript(t *testing.T) {
	t.Parallel()
	args, _ := structpb.NewStruct(map[string]any{"query": "weather"})
	script := &agentv1.SimScript{Turns: []*agentv1.SimTurn{
		{WhenContains: "weather", Reply: "Let me check.", ToolCalls: []*agentv1.ToolCall{{Name: "memory_search", Arguments: args}}},
		{WhenContains: "sunny", Reply: "It is sunny today."},
		{Reply: "Anything else?"},
	}}
	sim := model.NewSim(script, 1)
	ctx := context.Background()

	r1 := collect(ctx, sim, user("what is the weather?"))
	if r1.err != nil || r1.text != "Let me check." {
		t.Fatalf("turn 1 = %q, %v", r1.text, r1.err)
	}
	want := []model.ToolCall{{ID: "call_0_0", Name: "memory_search", Args: map[string]any{"query": "weather"}}}
	if diff := cmp.Diff(want, r1.calls); diff != "" {
		t.Errorf("turn 1 tool calls (-want +got):\n%s", diff)
	}
	if r1.usage.InputTokens != 5 || r1.usage.OutputTokens == 0 { // 20 bytes -> 5 tokens
		t.Errorf("turn 1 usage = %+v, want 5 input tokens and some output", r1.usage)
	}
	req := user("what is the weather?")
	req.Messages = append(req.Messages,
		model.Message{Role: model.RoleAssistant, ToolCalls: r1.calls},
		model.Message{Role: model.RoleTool, ToolCallID: "call_0_0", ToolName: "memory_search", Text: `{"hits":["sunny"]}`})
	if r2 := collect(ctx, sim, req); r2.text != "It is sunny today." || len(r2.calls) != 0 {
		t.Errorf("turn 2 = %q %v, want the sunny reply", r2.text, r2.calls)
	}
	if r3 := collect(ctx, sim, user("thanks")); r3.text != "Anything else?" {
		t.Errorf("turn 3 = %q", r3.text)
	}
	// Every turn is used: the sim answers from the input.
	if r4 := collect(ctx, sim, user("bye now")); r4.text != "You said: bye now" {
		t.Errorf("turn 4 = %q", r4.text)
	}
}

func TestSimWordDeltasAndDefault(t *testing.T) {
	t.Parallel()
	var deltas []string
	for c, err := range model.NewSim(nil, 0).Stream(context.Background(), user("hello there world")) {
		if err != nil {
			t.Fatal(err)
		}
		if c.Kind == model.ChunkText {
			deltas = append(deltas, c.Text)
		}
	}
	if diff := cmp.Diff([]string{"You ", "said: ", "hello ", "there ", "world"}, deltas); diff != "" {
		t.Errorf("deltas (-want +got):\n%s", diff)
	}
}

func TestSimFailureRateIsDeterministic(t *testing.T) {
	t.Parallel()
	run := func(seed uint64) []bool {
		sim := model.NewSim(&agentv1.SimScript{FailureRate: 0.5}, seed)
		var out []bool
		for range 40 {
			out = append(out, collect(context.Background(), sim, user("x")).err != nil)
		}
		return out
	}
	a, b := run(7), run(7)
	if diff := cmp.Diff(a, b); diff != "" {
		t.Fatalf("same seed, different failures (-a +b):\n%s", diff)
	}
	fails := 0
	for _, f := range a {
		if f {
			fails++
		}
	}
	if fails == 0 || fails == 40 {
		t.Errorf("failure_rate 0.5 failed %d of 40 calls", fails)
	}
	r := collect(context.Background(), model.NewSim(&agentv1.SimScript{FailureRate: 1}, 0), user("x"))
	if !errors.Is(r.err, model.ErrUnavailable) {
		t.Errorf("failure_rate 1: err = %v, want ErrUnavailable", r.err)
	}
}

func TestSimLatencyHonoursCancel(t *testing.T) {
	t.Parallel()
	sim := model.NewSim(&agentv1.SimScript{Latency: durationpb.New(10 * time.Second)}, 0)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	start := time.Now()
	r := collect(ctx, sim, user("x"))
	if !errors.Is(r.err, context.DeadlineExceeded) {
		t.Errorf("err = %v, want DeadlineExceeded", r.err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("cancel took %v", d)
	}
}

const secretKey = "sk-super-secret-key"

func sse(w http.ResponseWriter, events ...string) {
	w.Header().Set("Content-Type", "text/event-stream")
	for _, e := range events {
		fmt.Fprintf(w, "data: %s\n\n", e)
		w.(http.Flusher).Flush()
	}
}

func TestGemini(t *testing.T) {
	t.Parallel()
	var gotBody map[string]any
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || r.URL.Path != "/v1beta/models/gemini-test:streamGenerateContent" || r.URL.Query().Get("alt") != "sse" {
			http.Error(w, "unexpected "+r.Method+" "+r.URL.String(), http.StatusNotFound)
			return
		}
		if r.Header.Get("x-goog-api-key") != secretKey {
			http.Error(w, `{"error":{"code":401,"message":"bad key","status":"UNAUTHENTICATED"}}`, http.StatusUnauthorized)
			return
		}
		b, _ := io.ReadAll(r.Body)
		_ = json.Unmarshal(b, &gotBody)
		sse(w,
			`{"candidates":[{"content":{"role":"model","parts":[{"text":"Hello "}]}}]}`,
			`{"candidates":[{"content":{"role":"model","parts":[{"text":"world"},{"functionCall":{"name":"memory_search","args":{"query":"cats"}}}]}}],"usageMetadata":{"promptTokenCount":12,"candidatesTokenCount":7,"totalTokenCount":19}}`,
		)
	}))
	defer srv.Close()
	temp := float32(0.5)
	g := model.NewGemini(model.Config{GeminiAPIKey: secretKey, GeminiBaseURL: srv.URL})
	req := user("hi")
	req.Model, req.System, req.Temperature = "gemini-test", "be nice", &temp
	req.Tools = []model.Tool{{Name: "memory_search", Description: "search", Parameters: map[string]any{"type": "object"}}}
	r := collect(context.Background(), g, req)
	if r.err != nil {
		t.Fatal(r.err)
	}
	if r.text != "Hello world" {
		t.Errorf("text = %q", r.text)
	}
	if diff := cmp.Diff([]model.ToolCall{{ID: "gemini_0", Name: "memory_search", Args: map[string]any{"query": "cats"}}}, r.calls); diff != "" {
		t.Errorf("calls (-want +got):\n%s", diff)
	}
	if r.usage != (model.Usage{InputTokens: 12, OutputTokens: 7}) {
		t.Errorf("usage = %+v", r.usage)
	}
	body, _ := json.Marshal(gotBody)
	for _, want := range []string{`"systemInstruction"`, `"functionDeclarations"`, `"memory_search"`, `"temperature":0.5`} {
		if !strings.Contains(string(body), want) {
			t.Errorf("request body %s lacks %s", body, want)
		}
	}

	bad := model.NewGemini(model.Config{GeminiAPIKey: "wrong-" + secretKey, GeminiBaseURL: srv.URL})
	r = collect(context.Background(), bad, req)
	if !errors.Is(r.err, model.ErrUnavailable) || strings.Contains(r.err.Error(), secretKey) {
		t.Errorf("bad key: err = %v, want ErrUnavailable without the key", r.err)
	}
	if r := collect(context.Background(), model.NewGemini(model.Config{}), req); !errors.Is(r.err, model.ErrNotConfigured) {
		t.Errorf("no key: err = %v, want ErrNotConfigured", r.err)
	}
}

func TestOpenAI(t *testing.T) {
	t.Parallel()
	var gotBody map[string]any
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || r.URL.Path != "/v1/chat/completions" {
			http.Error(w, "unexpected", http.StatusNotFound)
			return
		}
		if r.Header.Get("Authorization") != "Bearer "+secretKey {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusUnauthorized)
			io.WriteString(w, `{"error":{"message":"Incorrect API key provided","type":"invalid_request_error","code":"invalid_api_key"}}`)
			return
		}
		b, _ := io.ReadAll(r.Body)
		_ = json.Unmarshal(b, &gotBody)
		sse(w,
			`{"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":"Hi "}}]}`,
			`{"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"there"}}]}`,
			`{"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_a","type":"function","function":{"name":"memory_save","arguments":"{\"te"}}]}}]}`,
			`{"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"xt\":\"note\"}"}}]}}]}`,
			`{"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}`,
			`{"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":[],"usage":{"prompt_tokens":20,"completion_tokens":9,"total_tokens":29}}`,
			`[DONE]`,
		)
	}))
	defer srv.Close()
	o := model.NewOpenAI(model.Config{OpenAIAPIKey: secretKey, OpenAIBaseURL: srv.URL + "/v1"})
	req := user("hi")
	req.Model, req.System = "m", "sys"
	req.Tools = []model.Tool{{Name: "memory_save", Description: "save", Parameters: map[string]any{"type": "object"}}}
	req.Messages = append(req.Messages,
		model.Message{Role: model.RoleAssistant, ToolCalls: []model.ToolCall{{ID: "x1", Name: "memory_save", Args: map[string]any{}}}},
		model.Message{Role: model.RoleTool, ToolCallID: "x1", ToolName: "memory_save", Text: `{"ok":true}`})
	r := collect(context.Background(), o, req)
	if r.err != nil {
		t.Fatal(r.err)
	}
	if r.text != "Hi there" {
		t.Errorf("text = %q", r.text)
	}
	if diff := cmp.Diff([]model.ToolCall{{ID: "call_a", Name: "memory_save", Args: map[string]any{"text": "note"}}}, r.calls); diff != "" {
		t.Errorf("calls (-want +got):\n%s", diff)
	}
	if r.usage != (model.Usage{InputTokens: 20, OutputTokens: 9}) {
		t.Errorf("usage = %+v", r.usage)
	}
	body, _ := json.Marshal(gotBody)
	for _, want := range []string{`"stream":true`, `"include_usage":true`, `"tool_call_id":"x1"`, `"role":"system"`, `"name":"memory_save"`} {
		if !strings.Contains(string(body), want) {
			t.Errorf("request body %s lacks %s", body, want)
		}
	}
	bad := model.NewOpenAI(model.Config{OpenAIAPIKey: "wrong-" + secretKey, OpenAIBaseURL: srv.URL + "/v1"})
	r = collect(context.Background(), bad, req)
	if !errors.Is(r.err, model.ErrUnavailable) || strings.Contains(r.err.Error(), secretKey) {
		t.Errorf("bad key: err = %v, want ErrUnavailable without the key", r.err)
	}
	if r := collect(context.Background(), model.NewOpenAI(model.Config{}), req); !errors.Is(r.err, model.ErrNotConfigured) {
		t.Errorf("no key: err = %v, want ErrNotConfigured", r.err)
	}
}

func TestConfigStringMasksKeys(t *testing.T) {
	t.Parallel()
	s := fmt.Sprint(model.Config{GeminiAPIKey: secretKey, OpenAIAPIKey: secretKey + "2"})
	if strings.Contains(s, secretKey) {
		t.Errorf("Config.String() = %s leaks a key", s)
	}
}
