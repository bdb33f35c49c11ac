// Package modeltest has helpers for testing model providers: collecting a stream, building requests, and a
// local server speaking server-sent events.
package modeltest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/loom-dev/loom/agent/model"
)

// Result is a collected stream.
type Result struct {
	// Text is the text deltas joined.
	Text string
	// Calls are the tool calls, in order.
	Calls []model.ToolCall
	// Usage is the last usage chunk.
	Usage model.Usage
	// Err is the error that ended the stream, if any.
	Err error
}

// Collect runs one call of m and gathers its chunks.
func Collect(ctx context.Context, m model.Model, req model.Request) Result {
	var r Result
	for c, err := range m.Stream(ctx, req) {
		if err != nil {
			r.Err = err
			break
		}
		switch c.Kind {
		case model.ChunkText:
			r.Text += c.Text
		case model.ChunkToolCall:
			r.Calls = append(r.Calls, *c.ToolCall)
		case model.ChunkUsage:
			r.Usage = c.Usage
		}
	}
	return r
}

// Expect fails t unless r succeeded with text, calls and usage.
func (r Result) Expect(t *testing.T, text string, calls []model.ToolCall, usage model.Usage) {
	t.Helper()
	if r.Err != nil {
		t.Fatal(r.Err)
	}
	if r.Text != text {
		t.Errorf("text = %q, want %q", r.Text, text)
	}
	if diff := cmp.Diff(calls, r.Calls); diff != "" {
		t.Errorf("calls (-want +got):\n%s", diff)
	}
	if r.Usage != usage {
		t.Errorf("usage = %+v, want %+v", r.Usage, usage)
	}
}

// ExpectText fails t at once unless r succeeded with text; tool calls and usage are not checked.
func (r Result) ExpectText(t *testing.T, text string) {
	t.Helper()
	if r.Err != nil || r.Text != text {
		t.Fatalf("reply = %q, %v", r.Text, r.Err)
	}
}

// User is a request of one user message.
func User(text string) model.Request {
	return model.Request{Messages: []model.Message{{Role: model.RoleUser, Text: text}}}
}

// WithAttachments is a request of one user message carrying attachments, for model "m".
func WithAttachments(text string, atts ...model.Attachment) model.Request {
	return model.Request{Model: "m", Messages: []model.Message{{Role: model.RoleUser, Text: text, Attachments: atts}}}
}

// SSE writes events as server-sent events, flushing after each.
func SSE(w http.ResponseWriter, events ...string) {
	w.Header().Set("Content-Type", "text/event-stream")
	for _, e := range events {
		fmt.Fprintf(w, "data: %s\n\n", e)
		w.(http.Flusher).Flush()
	}
}

// CaptureBody returns a server answering every request with events, and the last request body (a string). The
// server is closed when the test ends.
func CaptureBody(t *testing.T, events ...string) (*httptest.Server, *atomic.Value) {
	t.Helper()
	var body atomic.Value
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		body.Store(string(b))
		SSE(w, events...)
	}))
	t.Cleanup(srv.Close)
	return srv, &body
}

// APIKey is the key tests give a provider, and that its errors and logs must never carry.
const APIKey = "sk-super-secret-key"

// Fixture bytes for attachment tests: a PNG image and a WAV sound, by their magic numbers only.
var (
	PNG = []byte("\x89PNG\r\n\x1a\nfake image")
	WAV = []byte("RIFF\x00\x00\x00\x00WAVEfake audio")
)

// ExpectBodyContains fails t unless body, marshalled back to JSON, contains every one of wants.
func ExpectBodyContains(t *testing.T, body map[string]any, wants ...string) {
	t.Helper()
	b, _ := json.Marshal(body)
	for _, want := range wants {
		if !strings.Contains(string(b), want) {
			t.Errorf("request body %s lacks %s", b, want)
		}
	}
}

// ExpectKeyErrors fails t unless req through bad (a provider given a wrong API key) fails with
// [model.ErrUnavailable] whose message does not carry secret, and req through unconfigured (a provider given no
// key) fails with [model.ErrNotConfigured].
func ExpectKeyErrors(t *testing.T, bad, unconfigured model.Model, req model.Request, secret string) {
	t.Helper()
	r := Collect(context.Background(), bad, req)
	if !errors.Is(r.Err, model.ErrUnavailable) || strings.Contains(r.Err.Error(), secret) {
		t.Errorf("bad key: err = %v, want ErrUnavailable without the key", r.Err)
	}
	if r := Collect(context.Background(), unconfigured, req); !errors.Is(r.Err, model.ErrNotConfigured) {
		t.Errorf("no key: err = %v, want ErrNotConfigured", r.Err)
	}
}

// DecodeBody decodes the body [CaptureBody] stored into v, failing t if it is not JSON.
func DecodeBody(t *testing.T, body *atomic.Value, v any) {
	t.Helper()
	if err := json.Unmarshal([]byte(body.Load().(string)), v); err != nil {
		t.Fatal(err)
	}
}
