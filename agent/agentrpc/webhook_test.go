package agentrpc_test

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	"github.com/loom-dev/loom/agent"
	"github.com/loom-dev/loom/agent/agentrpc"
	agentv1 "github.com/loom-dev/loom/gen/loom/agent/v1"
)

const hookSecret = "whsec-0123456789abcdef"

// receiver is a webhook endpoint that verifies every call's signature and timestamp.
type receiver struct {
	mu       sync.Mutex
	calls    int
	verified int
	bodies   []string
}

func (rc *receiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	rc.mu.Lock()
	rc.calls++
	err := agent.VerifyWebhook([]byte(hookSecret), r.Header.Get(agent.WebhookTimestampHeader), r.Header.Get(agent.WebhookSignatureHeader), body, time.Now(), 0)
	if err == nil {
		rc.verified++
	}
	rc.bodies = append(rc.bodies, string(body))
	rc.mu.Unlock()
	if err != nil {
		http.Error(w, err.Error(), http.StatusUnauthorized)
		return
	}
	switch r.URL.Path {
	case "/ok":
		io.WriteString(w, `{"temperature": 21}`)
	case "/slow":
		<-r.Context().Done()
	case "/big":
		io.WriteString(w, `{"x":"`+strings.Repeat("a", 2000)+`"}`)
	case "/fail":
		http.Error(w, "boom", http.StatusBadGateway)
	case "/redirect":
		http.Redirect(w, r, "/ok", http.StatusFound)
	case "/text":
		io.WriteString(w, "not json")
	}
}

func (rc *receiver) counts() (int, int) {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return rc.calls, rc.verified
}

func hookAgent(name, url string, args map[string]any) *agentv1.Agent {
	return &agentv1.Agent{Name: name, Instructions: "x",
		Tools: []*agentv1.Tool{{Kind: &agentv1.Tool_Webhook{Webhook: &agentv1.WebhookTool{
			Name: "weather", Description: "Weather for a city.", Url: url, SigningSecret: hookSecret,
			Timeout: durationpb.New(300 * time.Millisecond), MaxResponseBytes: 1024,
			Parameters: mustStruct(map[string]any{"type": "object", "required": []any{"city"}, "additionalProperties": false,
				"properties": map[string]any{"city": map[string]any{"type": "string", "maxLength": 100}}}),
		}}}},
		Model: &agentv1.Model{Sim: &agentv1.SimScript{Turns: []*agentv1.SimTurn{
			{ToolCalls: []*agentv1.ToolCall{{Id: "c1", Name: "weather", Arguments: mustStruct(args)}}},
		}}}}
}

// TestWebhookTool: a webhook tool's calls are POSTed signed (the receiver verifies the HMAC and the timestamp)
// with the model's arguments, checked against the tool's schema first; its JSON answer is the result; timeouts,
// oversized, failing, redirecting and non-JSON answers are tool errors; the address policy refuses an internal
// endpoint before any connection; the secret is never returned and survives an update that omits it; bad
// definitions are refused naming the field. Both clients.
func TestWebhookTool(t *testing.T) {
	t.Parallel()
	for _, client := range []string{"connect", "grpc"} {
		t.Run(client, func(t *testing.T) {
			t.Parallel()
			rc := &receiver{}
			hook := httptest.NewServer(rc)
			t.Cleanup(hook.Close)
			t.Cleanup(func() { // after the parallel subtests, before the endpoint closes
				calls, verified := rc.counts()
				t.Logf("webhook: %d calls received, %d verified (signature and timestamp), internal endpoint refused before connecting", calls, verified)
				if calls != verified {
					t.Errorf("%d of %d calls failed verification", calls-verified, calls)
				}
			})
			h := newHarness(t, agentrpc.Config{})
			c := h.clients[client]
			ctx := testCtx(t)
			run := func(a *agentv1.Agent) *agentv1.ToolResult {
				t.Helper()
				create(t, ctx, c, a)
				resp, err := c.Run(ctx, &agentv1.RunRequest{Agent: a.GetName(), Input: "weather?"})
				if err != nil {
					t.Fatalf("Run %s: %v", a.GetName(), err)
				}
				return resp.GetRun().GetSteps()[0].GetToolResults()[0]
			}
			// The default policy: the endpoint is on loopback, refused before any connection.
			before, _ := rc.counts()
			if res := run(hookAgent("internal", hook.URL+"/ok", map[string]any{"city": "Paris"})); !strings.Contains(res.GetError(), "refused") {
				t.Errorf("internal endpoint: %v, want refused", res)
			}
			if after, _ := rc.counts(); after != before {
				t.Errorf("the internal endpoint received %d calls", after-before)
			}
			agentrpc.SetFetchPolicy(h.server, func(netip.Addr) error { return nil }) // the test's endpoint is on loopback

			res := run(hookAgent("ok", hook.URL+"/ok", map[string]any{"city": "Paris"}))
			if res.GetError() != "" || res.GetResult().GetFields()["temperature"].GetNumberValue() != 21 {
				t.Errorf("ok: %v", res)
			}
			for name, want := range map[string]string{"slow": "did not answer within 300ms", "big": "larger than 1024 bytes",
				"fail": "HTTP 502", "redirect": "HTTP 302", "text": "not a JSON object"} {
				if res := run(hookAgent(name, hook.URL+"/"+name, map[string]any{"city": "Paris"})); !strings.Contains(res.GetError(), want) {
					t.Errorf("%s: %v, want an error containing %q", name, res, want)
				}
			}
			before, _ = rc.counts()
			if res := run(hookAgent("badargs", hook.URL+"/ok", map[string]any{"city": 3})); !strings.Contains(res.GetError(), "invalid arguments: arguments.city") {
				t.Errorf("bad arguments: %v", res)
			}
			if after, _ := rc.counts(); after != before {
				t.Errorf("arguments that fail the schema reached the endpoint")
			}

			// The secret is write-only and kept by an update that omits it.
			got, err := c.GetAgent(ctx, &agentv1.GetAgentRequest{Name: "ok"})
			w := got.GetAgent().GetTools()[0].GetWebhook()
			if err != nil || w.GetSigningSecret() != "" || !w.GetSigningSecretSet() {
				t.Fatalf("GetAgent webhook = %v, %v; want the secret hidden and marked set", w, err)
			}
			list, _ := c.ListAgents(ctx, &agentv1.ListAgentsRequest{})
			for _, a := range list.GetAgents() {
				if strings.Contains(fmt.Sprint(a), hookSecret) {
					t.Errorf("ListAgents returns the secret of %s", a.GetName())
				}
			}
			w.Description = "Weather, updated."
			upd, err := c.UpdateAgent(ctx, &agentv1.UpdateAgentRequest{Agent: got.GetAgent(), UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"tools"}}})
			if err != nil || strings.Contains(fmt.Sprint(upd), hookSecret) {
				t.Fatalf("UpdateAgent = %v, %v", upd, err)
			}
			resp, err := c.Run(ctx, &agentv1.RunRequest{Agent: "ok", Input: "again"})
			if err != nil || resp.GetRun().GetSteps()[0].GetToolResults()[0].GetError() != "" {
				t.Errorf("after an update without the secret: %v, %v; want a verified call", resp.GetRun(), err)
			}

			// Bad definitions.
			for field, edit := range map[string]func(*agentv1.WebhookTool){
				"agent.tools[0].webhook.signing_secret": func(w *agentv1.WebhookTool) { w.SigningSecret = "" },
				"agent.tools[0].webhook.name":           func(w *agentv1.WebhookTool) { w.Name = "http_fetch" },
				"agent.tools[0].webhook.url":            func(w *agentv1.WebhookTool) { w.Url = "file:///etc/passwd" },
				// Parameters that are not a valid JSON Schema, refused with the path to the bad keyword.
				"agent.tools[0].webhook.parameters.properties.city.type": func(w *agentv1.WebhookTool) {
					w.Parameters = mustStruct(map[string]any{"properties": map[string]any{"city": map[string]any{"type": "strin"}}})
				},
				"agent.tools[0].webhook.parameters.properties.city.minLength": func(w *agentv1.WebhookTool) {
					w.Parameters = mustStruct(map[string]any{"properties": map[string]any{"city": map[string]any{"minLength": -1}}})
				},
				"agent.tools[0].webhook.parameters.$ref": func(w *agentv1.WebhookTool) {
					w.Parameters = mustStruct(map[string]any{"$ref": "http://127.0.0.1:1/schema.json"})
				},
			} {
				a := hookAgent("bad", hook.URL, map[string]any{})
				edit(a.GetTools()[0].GetWebhook())
				a.GetTools()[0].GetWebhook().SigningSecretSet = true // output only: ignored
				_, err := c.CreateAgent(ctx, &agentv1.CreateAgentRequest{Agent: a})
				wantCode(t, err, codes.InvalidArgument, field)
			}
		})
	}
}
