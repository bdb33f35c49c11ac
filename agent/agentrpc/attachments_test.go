package agentrpc_test

import (
	"context"
	"encoding/base64"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"

	"google.golang.org/grpc/codes"

	"github.com/loom-dev/loom/agent/agentrpc"
	"github.com/loom-dev/loom/agent/model"
	"github.com/loom-dev/loom/agent/model/modeltest"
	agentv1 "github.com/loom-dev/loom/gen/loom/agent/v1"
)

// recorder is a model endpoint that answers every call with events and records the request bodies.
type recorder struct {
	mu     sync.Mutex
	bodies []string
}

func (rec *recorder) serve(t *testing.T, events ...string) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		rec.mu.Lock()
		rec.bodies = append(rec.bodies, string(b))
		rec.mu.Unlock()
		modeltest.SSE(w, events...)
	}))
	t.Cleanup(srv.Close)
	return srv
}

// ask creates agent name on model m, runs "what is this? <name>" with atts through c, fails t at once unless the
// reply is "A cat, meowing.", and returns the request body the model got for that run.
func (rec *recorder) ask(t *testing.T, ctx context.Context, c agentv1.AgentServiceClient, name string, m *agentv1.Model, atts ...*agentv1.Attachment) string {
	t.Helper()
	create(t, ctx, c, &agentv1.Agent{Name: name, Model: m})
	resp, err := c.Run(ctx, &agentv1.RunRequest{Agent: name, Input: "what is this? " + name, Attachments: atts})
	if err != nil || resp.GetRun().GetOutput() != "A cat, meowing." {
		t.Fatalf("Run = %v, %v", resp.GetRun(), err)
	}
	return findBody(t, rec.all(), name)
}

// all returns the bodies recorded so far.
func (rec *recorder) all() []string {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	return slices.Clone(rec.bodies)
}

// expectBodyContains fails t unless body contains every one of wants.
func expectBodyContains(t *testing.T, body string, wants ...string) {
	t.Helper()
	for _, want := range wants {
		if !strings.Contains(body, want) {
			t.Errorf("request body %s lacks %s", body, want)
		}
	}
}

func TestRunSimAttachments(t *testing.T) {
	t.Parallel()
	h := newHarness(t, agentrpc.Config{})
	h.eachNamedClient(t, "sim-att-", func(t *testing.T, ctx context.Context, c agentv1.AgentServiceClient, name string) {
		create(t, ctx, c, simAgent(name, nil))
		atts := []*agentv1.Attachment{{MimeType: "image/png", Data: modeltest.PNG}, {MimeType: "audio/ogg", Data: modeltest.WAV}}
		resp, err := c.Run(ctx, &agentv1.RunRequest{Agent: name, Input: "look", Attachments: atts})
		if err != nil {
			t.Fatal(err)
		}
		if run := resp.GetRun(); run.GetOutput() != "You said: look (2 attachments)" || run.GetInput() != "look" {
			t.Errorf("run = %v, want the sim to count 2 attachments and the input stored as sent", run)
		}
		events, err := recvAll(c.RunStream(ctx, &agentv1.RunStreamRequest{Agent: name, Input: "look", Attachments: atts[:1]}))
		if err != nil {
			t.Fatal(err)
		}
		if out := events[len(events)-1].GetCompleted().GetOutput(); out != "You said: look (1 attachment)" {
			t.Errorf("streamed output = %q, want the sim to count 1 attachment", out)
		}
	})
}

func TestRunGeminiAttachments(t *testing.T) {
	t.Parallel()
	var rec recorder
	llm := rec.serve(t, `{"candidates":[{"content":{"role":"model","parts":[{"text":"A cat, meowing."}]}}]}`)
	h := newHarness(t, agentrpc.Config{Models: testModels(model.Endpoint{APIKey: "g-key", BaseURL: llm.URL}, model.Endpoint{})})
	h.eachNamedClient(t, "gem-att-", func(t *testing.T, ctx context.Context, c agentv1.AgentServiceClient, name string) {
		body := rec.ask(t, ctx, c, name, &agentv1.Model{Provider: agentv1.Provider_PROVIDER_GEMINI, Name: "gemini-test"},
			&agentv1.Attachment{MimeType: "image/png", Data: modeltest.PNG},
			&agentv1.Attachment{MimeType: "audio/ogg", Data: modeltest.WAV})
		expectBodyContains(t, body,
			`{"inlineData":{"data":"`+base64.StdEncoding.EncodeToString(modeltest.PNG)+`","mimeType":"image/png"}}`,
			`{"inlineData":{"data":"`+base64.StdEncoding.EncodeToString(modeltest.WAV)+`","mimeType":"audio/ogg"}}`,
		)
	})
}

func TestRunOpenAIAttachments(t *testing.T) {
	t.Parallel()
	var rec recorder
	llm := rec.serve(t,
		`{"id":"1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"A cat, meowing."}}]}`,
		`[DONE]`)
	h := newHarness(t, agentrpc.Config{Models: testModels(model.Endpoint{}, model.Endpoint{APIKey: "sk-test", BaseURL: llm.URL + "/v1"})})
	h.eachNamedClient(t, "oai-att-", func(t *testing.T, ctx context.Context, c agentv1.AgentServiceClient, name string) {
		body := rec.ask(t, ctx, c, name, &agentv1.Model{Provider: agentv1.Provider_PROVIDER_OPENAI, Name: "gpt-test"},
			&agentv1.Attachment{MimeType: "image/png", Data: modeltest.PNG},
			&agentv1.Attachment{MimeType: "audio/wav", Data: modeltest.WAV})
		expectBodyContains(t, body,
			`{"image_url":{"url":"data:image/png;base64,`+base64.StdEncoding.EncodeToString(modeltest.PNG)+`"},"type":"image_url"}`,
			`{"input_audio":{"data":"`+base64.StdEncoding.EncodeToString(modeltest.WAV)+`","format":"wav"},"type":"input_audio"}`,
		)

		// An audio type the API cannot take is refused before any model call, and no run is recorded.
		bad := []*agentv1.Attachment{{MimeType: "image/png", Data: modeltest.PNG}, {MimeType: "audio/ogg", Data: modeltest.WAV}}
		_, err := c.Run(ctx, &agentv1.RunRequest{Agent: name, Input: "listen " + name, Attachments: bad})
		wantCode(t, err, codes.InvalidArgument, "attachments[1].mime_type")
		_, err = recvAll(c.RunStream(ctx, &agentv1.RunStreamRequest{Agent: name, Input: "listen " + name, Attachments: bad}))
		wantCode(t, err, codes.InvalidArgument, "attachments[1].mime_type")
		for _, b := range rec.all() {
			if strings.Contains(b, "listen "+name) {
				t.Errorf("model called despite the unsupported attachment: %s", b)
			}
		}
		list, err := c.ListRuns(ctx, &agentv1.ListRunsRequest{Agent: name})
		if err != nil || len(list.GetRuns()) != 1 {
			t.Errorf("ListRuns = %d runs, %v; want only the first run", len(list.GetRuns()), err)
		}
	})
}

// TestAttachmentRules shows the contract's rules refusing malformed attachments on every provider.
func TestAttachmentRules(t *testing.T) {
	t.Parallel()
	h := newHarness(t, agentrpc.Config{})
	nine := make([]*agentv1.Attachment, 9)
	for i := range nine {
		nine[i] = &agentv1.Attachment{MimeType: "image/png", Data: modeltest.PNG}
	}
	tests := []struct {
		name  string
		atts  []*agentv1.Attachment
		field string
	}{
		{name: "text type", atts: []*agentv1.Attachment{{MimeType: "text/plain", Data: modeltest.PNG}}, field: "attachments[0].mime_type"},
		{name: "empty data", atts: []*agentv1.Attachment{{MimeType: "image/png"}}, field: "attachments[0].data"},
		{name: "too many", atts: nine, field: "attachments"},
	}
	h.eachNamedClient(t, "rules-", func(t *testing.T, ctx context.Context, c agentv1.AgentServiceClient, name string) {
		create(t, ctx, c, simAgent(name, nil))
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				_, err := c.Run(ctx, &agentv1.RunRequest{Agent: name, Input: "hi", Attachments: tc.atts})
				wantCode(t, err, codes.InvalidArgument, tc.field)
			})
		}
	})
}

// findBody returns the one recorded request body containing marker.
func findBody(t *testing.T, bodies []string, marker string) string {
	t.Helper()
	var found []string
	for _, b := range bodies {
		if strings.Contains(b, marker) {
			found = append(found, b)
		}
	}
	if len(found) != 1 {
		t.Fatalf("%d model requests mention %q, want 1", len(found), marker)
	}
	return found[0]
}
