package gemini_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/loom-dev/loom/agent/model"
	"github.com/loom-dev/loom/agent/model/gemini"
	"github.com/loom-dev/loom/agent/model/modeltest"
)

func TestGemini(t *testing.T) {
	t.Parallel()
	var gotBody map[string]any
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || r.URL.Path != "/v1beta/models/gemini-test:streamGenerateContent" || r.URL.Query().Get("alt") != "sse" {
			http.Error(w, "unexpected "+r.Method+" "+r.URL.String(), http.StatusNotFound)
			return
		}
		if r.Header.Get("x-goog-api-key") != modeltest.APIKey {
			http.Error(w, `{"error":{"code":401,"message":"bad key","status":"UNAUTHENTICATED"}}`, http.StatusUnauthorized)
			return
		}
		b, _ := io.ReadAll(r.Body)
		_ = json.Unmarshal(b, &gotBody)
		modeltest.SSE(w,
			`{"candidates":[{"content":{"role":"model","parts":[{"text":"Hello "}]}}]}`,
			`{"candidates":[{"content":{"role":"model","parts":[{"text":"world"},{"functionCall":{"name":"memory_search","args":{"query":"cats"}}}]}}],"usageMetadata":{"promptTokenCount":12,"candidatesTokenCount":7,"totalTokenCount":19}}`,
		)
	}))
	defer srv.Close()
	temp := float32(0.5)
	g := gemini.New(model.Options{Endpoint: model.Endpoint{APIKey: modeltest.APIKey, BaseURL: srv.URL}})
	req := modeltest.User("hi")
	req.Model, req.System, req.Temperature = "gemini-test", "be nice", &temp
	req.Tools = []model.Tool{{Name: "memory_search", Description: "search", Parameters: map[string]any{"type": "object"}}}
	r := modeltest.Collect(context.Background(), g, req)
	r.Expect(t, "Hello world", []model.ToolCall{{ID: "gemini_0", Name: "memory_search", Args: map[string]any{"query": "cats"}}}, model.Usage{InputTokens: 12, OutputTokens: 7})
	modeltest.ExpectBodyContains(t, gotBody, `"systemInstruction"`, `"functionDeclarations"`, `"memory_search"`, `"temperature":0.5`)

	modeltest.ExpectKeyErrors(t, gemini.New(model.Options{Endpoint: model.Endpoint{APIKey: "wrong-" + modeltest.APIKey, BaseURL: srv.URL}}), gemini.New(model.Options{}), req, modeltest.APIKey)
}

func TestGeminiAttachments(t *testing.T) {
	t.Parallel()
	srv, body := modeltest.CaptureBody(t, `{"candidates":[{"content":{"role":"model","parts":[{"text":"A cat."}]}}]}`)
	g := gemini.New(model.Options{Endpoint: model.Endpoint{APIKey: modeltest.APIKey, BaseURL: srv.URL}})
	r := modeltest.Collect(context.Background(), g, modeltest.WithAttachments("what is this?",
		model.Attachment{MIMEType: "image/png", Data: modeltest.PNG}, model.Attachment{MIMEType: "audio/ogg", Data: modeltest.WAV}))
	r.ExpectText(t, "A cat.")
	var got struct {
		Contents []struct {
			Role  string           `json:"role"`
			Parts []map[string]any `json:"parts"`
		} `json:"contents"`
	}
	modeltest.DecodeBody(t, body, &got)
	want := []map[string]any{
		{"text": "what is this?"},
		{"inlineData": map[string]any{"mimeType": "image/png", "data": base64.StdEncoding.EncodeToString(modeltest.PNG)}},
		{"inlineData": map[string]any{"mimeType": "audio/ogg", "data": base64.StdEncoding.EncodeToString(modeltest.WAV)}},
	}
	if len(got.Contents) != 1 || got.Contents[0].Role != "user" {
		t.Fatalf("contents = %+v, want one user content", got.Contents)
	}
	if diff := cmp.Diff(want, got.Contents[0].Parts); diff != "" {
		t.Errorf("parts (-want +got):\n%s", diff)
	}
}
