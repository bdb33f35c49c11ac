package openai_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/loom-dev/loom/agent/model"
	"github.com/loom-dev/loom/agent/model/modeltest"
	"github.com/loom-dev/loom/agent/model/openai"
)

func TestOpenAI(t *testing.T) {
	t.Parallel()
	var gotBody map[string]any
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || r.URL.Path != "/v1/chat/completions" {
			http.Error(w, "unexpected", http.StatusNotFound)
			return
		}
		if r.Header.Get("Authorization") != "Bearer "+modeltest.APIKey {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusUnauthorized)
			io.WriteString(w, `{"error":{"message":"Incorrect API key provided","type":"invalid_request_error","code":"invalid_api_key"}}`)
			return
		}
		b, _ := io.ReadAll(r.Body)
		_ = json.Unmarshal(b, &gotBody)
		modeltest.SSE(w,
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
	o := openai.New(model.Options{Endpoint: model.Endpoint{APIKey: modeltest.APIKey, BaseURL: srv.URL + "/v1"}})
	req := modeltest.User("hi")
	req.Model, req.System = "m", "sys"
	req.Tools = []model.Tool{{Name: "memory_save", Description: "save", Parameters: map[string]any{"type": "object"}}}
	req.Messages = append(req.Messages,
		model.Message{Role: model.RoleAssistant, ToolCalls: []model.ToolCall{{ID: "x1", Name: "memory_save", Args: map[string]any{}}}},
		model.Message{Role: model.RoleTool, ToolCallID: "x1", ToolName: "memory_save", Text: `{"ok":true}`})
	r := modeltest.Collect(context.Background(), o, req)
	r.Expect(t, "Hi there", []model.ToolCall{{ID: "call_a", Name: "memory_save", Args: map[string]any{"text": "note"}}}, model.Usage{InputTokens: 20, OutputTokens: 9})
	modeltest.ExpectBodyContains(t, gotBody, `"stream":true`, `"include_usage":true`, `"tool_call_id":"x1"`, `"role":"system"`, `"name":"memory_save"`)
	modeltest.ExpectKeyErrors(t, openai.New(model.Options{Endpoint: model.Endpoint{APIKey: "wrong-" + modeltest.APIKey, BaseURL: srv.URL + "/v1"}}), openai.New(model.Options{}), req, modeltest.APIKey)
}

func TestOpenAIAttachments(t *testing.T) {
	t.Parallel()
	srv, body := modeltest.CaptureBody(t,
		`{"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"A cat."}}]}`,
		`[DONE]`)
	o := openai.New(model.Options{Endpoint: model.Endpoint{APIKey: modeltest.APIKey, BaseURL: srv.URL + "/v1"}})
	r := modeltest.Collect(context.Background(), o, modeltest.WithAttachments("what is this?",
		model.Attachment{MIMEType: "image/png", Data: modeltest.PNG},
		model.Attachment{MIMEType: "audio/wav", Data: modeltest.WAV},
		model.Attachment{MIMEType: "audio/mpeg", Data: []byte("ID3")}))
	r.ExpectText(t, "A cat.")
	var got struct {
		Messages []struct {
			Role    string           `json:"role"`
			Content []map[string]any `json:"content"`
		} `json:"messages"`
	}
	modeltest.DecodeBody(t, body, &got)
	want := []map[string]any{
		{"type": "text", "text": "what is this?"},
		{"type": "image_url", "image_url": map[string]any{"url": "data:image/png;base64," + base64.StdEncoding.EncodeToString(modeltest.PNG)}},
		{"type": "input_audio", "input_audio": map[string]any{"data": base64.StdEncoding.EncodeToString(modeltest.WAV), "format": "wav"}},
		{"type": "input_audio", "input_audio": map[string]any{"data": base64.StdEncoding.EncodeToString([]byte("ID3")), "format": "mp3"}},
	}
	if len(got.Messages) != 1 || got.Messages[0].Role != "user" {
		t.Fatalf("messages = %+v, want one user message", got.Messages)
	}
	if diff := cmp.Diff(want, got.Messages[0].Content); diff != "" {
		t.Errorf("content (-want +got):\n%s", diff)
	}
}

// TestOpenAIUnsupportedAudio shows the adapter refusing an audio type the API cannot take without calling it.
func TestOpenAIUnsupportedAudio(t *testing.T) {
	t.Parallel()
	var calls atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { calls.Add(1) }))
	defer srv.Close()
	o := openai.New(model.Options{Endpoint: model.Endpoint{APIKey: modeltest.APIKey, BaseURL: srv.URL + "/v1"}})
	r := modeltest.Collect(context.Background(), o, modeltest.WithAttachments("listen", model.Attachment{MIMEType: "audio/ogg", Data: modeltest.WAV}))
	if r.Err == nil || !strings.Contains(r.Err.Error(), `"audio/ogg"`) || calls.Load() != 0 {
		t.Errorf("err = %v after %d calls; want an error naming audio/ogg and no call", r.Err, calls.Load())
	}
}

func TestAudioFormat(t *testing.T) {
	t.Parallel()
	for mime, want := range map[string]string{"audio/wav": "wav", "audio/mpeg": "mp3", "audio/ogg": "", "image/png": ""} {
		if got, ok := openai.AudioFormat(mime); got != want || ok != (want != "") {
			t.Errorf("AudioFormat(%q) = %q, %v; want %q", mime, got, ok, want)
		}
	}
}
