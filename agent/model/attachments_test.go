package model_test

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
)

var (
	png = []byte("\x89PNG\r\n\x1a\nfake image")
	wav = []byte("RIFF\x00\x00\x00\x00WAVEfake audio")
)

// withAttachments is a one-message request carrying attachments.
func withAttachments(text string, atts ...model.Attachment) model.Request {
	return model.Request{Model: "m", Messages: []model.Message{{Role: model.RoleUser, Text: text, Attachments: atts}}}
}

func TestSimCountsAttachments(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		atts []model.Attachment
		want string
	}{
		{name: "none", want: "You said: look"},
		{name: "one", atts: []model.Attachment{{MIMEType: "image/png", Data: png}}, want: "You said: look (1 attachment)"},
		{name: "two", atts: []model.Attachment{{MIMEType: "image/png", Data: png}, {MIMEType: "audio/ogg", Data: wav}},
			want: "You said: look (2 attachments)"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			r := collect(context.Background(), model.NewSim(nil, 1), withAttachments("look", tc.atts...))
			if r.err != nil || r.text != tc.want {
				t.Errorf("reply = %q, %v; want %q", r.text, r.err, tc.want)
			}
		})
	}
}

// captureBody returns a server answering every request with events and the last request body.
func captureBody(t *testing.T, events ...string) (*httptest.Server, *atomic.Value) {
	t.Helper()
	var body atomic.Value
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		body.Store(string(b))
		sse(w, events...)
	}))
	t.Cleanup(srv.Close)
	return srv, &body
}

func TestGeminiAttachments(t *testing.T) {
	t.Parallel()
	srv, body := captureBody(t, `{"candidates":[{"content":{"role":"model","parts":[{"text":"A cat."}]}}]}`)
	g := model.NewGemini(model.Config{GeminiAPIKey: secretKey, GeminiBaseURL: srv.URL})
	r := collect(context.Background(), g, withAttachments("what is this?",
		model.Attachment{MIMEType: "image/png", Data: png}, model.Attachment{MIMEType: "audio/ogg", Data: wav}))
	if r.err != nil || r.text != "A cat." {
		t.Fatalf("reply = %q, %v", r.text, r.err)
	}
	var got struct {
		Contents []struct {
			Role  string           `json:"role"`
			Parts []map[string]any `json:"parts"`
		} `json:"contents"`
	}
	if err := json.Unmarshal([]byte(body.Load().(string)), &got); err != nil {
		t.Fatal(err)
	}
	want := []map[string]any{
		{"text": "what is this?"},
		{"inlineData": map[string]any{"mimeType": "image/png", "data": base64.StdEncoding.EncodeToString(png)}},
		{"inlineData": map[string]any{"mimeType": "audio/ogg", "data": base64.StdEncoding.EncodeToString(wav)}},
	}
	if len(got.Contents) != 1 || got.Contents[0].Role != "user" {
		t.Fatalf("contents = %+v, want one user content", got.Contents)
	}
	if diff := cmp.Diff(want, got.Contents[0].Parts); diff != "" {
		t.Errorf("parts (-want +got):\n%s", diff)
	}
}

func TestOpenAIAttachments(t *testing.T) {
	t.Parallel()
	srv, body := captureBody(t,
		`{"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"A cat."}}]}`,
		`[DONE]`)
	o := model.NewOpenAI(model.Config{OpenAIAPIKey: secretKey, OpenAIBaseURL: srv.URL + "/v1"})
	r := collect(context.Background(), o, withAttachments("what is this?",
		model.Attachment{MIMEType: "image/png", Data: png},
		model.Attachment{MIMEType: "audio/wav", Data: wav},
		model.Attachment{MIMEType: "audio/mpeg", Data: []byte("ID3")}))
	if r.err != nil || r.text != "A cat." {
		t.Fatalf("reply = %q, %v", r.text, r.err)
	}
	var got struct {
		Messages []struct {
			Role    string           `json:"role"`
			Content []map[string]any `json:"content"`
		} `json:"messages"`
	}
	if err := json.Unmarshal([]byte(body.Load().(string)), &got); err != nil {
		t.Fatal(err)
	}
	want := []map[string]any{
		{"type": "text", "text": "what is this?"},
		{"type": "image_url", "image_url": map[string]any{"url": "data:image/png;base64," + base64.StdEncoding.EncodeToString(png)}},
		{"type": "input_audio", "input_audio": map[string]any{"data": base64.StdEncoding.EncodeToString(wav), "format": "wav"}},
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
	o := model.NewOpenAI(model.Config{OpenAIAPIKey: secretKey, OpenAIBaseURL: srv.URL + "/v1"})
	r := collect(context.Background(), o, withAttachments("listen", model.Attachment{MIMEType: "audio/ogg", Data: wav}))
	if r.err == nil || !strings.Contains(r.err.Error(), `"audio/ogg"`) || calls.Load() != 0 {
		t.Errorf("err = %v after %d calls; want an error naming audio/ogg and no call", r.err, calls.Load())
	}
}

func TestOpenAIAudioFormat(t *testing.T) {
	t.Parallel()
	for mime, want := range map[string]string{"audio/wav": "wav", "audio/mpeg": "mp3", "audio/ogg": "", "image/png": ""} {
		if got, ok := model.OpenAIAudioFormat(mime); got != want || ok != (want != "") {
			t.Errorf("OpenAIAudioFormat(%q) = %q, %v; want %q", mime, got, ok, want)
		}
	}
}
