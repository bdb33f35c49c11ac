package agentrpc

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/loom-dev/loom/agent"
	agentv1 "github.com/loom-dev/loom/gen/loom/agent/v1"
)

// Webhook tools: the model calls the user's endpoint with a signed POST (see agentv1.WebhookTool).

const (
	defaultWebhookTimeout  = 10 * time.Second
	defaultWebhookMaxBytes = 64 << 10
)

// keepWebhookSecrets gives each webhook tool of next without a new secret the stored secret of prev's tool of
// the same name, so an update need not repeat secrets it never got to read.
func keepWebhookSecrets(prev, next *agentv1.Agent) {
	stored := map[string]string{}
	for _, t := range prev.GetTools() {
		if w := t.GetWebhook(); w != nil {
			stored[w.GetName()] = w.GetSigningSecret()
		}
	}
	for _, t := range next.GetTools() {
		if w := t.GetWebhook(); w != nil {
			w.SigningSecretSet = false // output only: never taken from a request
		}
		if w := t.GetWebhook(); w != nil && w.GetSigningSecret() == "" {
			if sec, ok := stored[w.GetName()]; ok && sec != "" {
				w.SigningSecret, w.SigningSecretSet = sec, true
			}
		}
	}
}

// redactAgent clears every webhook secret of a, which is returned to a caller, and marks it set.
func redactAgent(a *agentv1.Agent) *agentv1.Agent {
	for _, t := range a.GetTools() {
		if w := t.GetWebhook(); w != nil {
			w.SigningSecretSet = w.GetSigningSecret() != "" || w.GetSigningSecretSet()
			w.SigningSecret = ""
		}
	}
	return a
}

// webhookSchema is the JSON Schema of a webhook tool's arguments.
func webhookSchema(w *agentv1.WebhookTool) map[string]any {
	if w.GetParameters() == nil {
		return map[string]any{"type": "object"}
	}
	return w.GetParameters().AsMap()
}

// toolWebhook POSTs a call to w's endpoint and returns its JSON object answer.
func (s *Server) toolWebhook(ctx context.Context, env runEnv, w *agentv1.WebhookTool, callID string, args map[string]any) (map[string]any, error) {
	u, err := url.Parse(w.GetUrl())
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, errors.New("the webhook URL is not an absolute http or https URL")
	}
	if err := s.fetchGuard.CheckURL(u); err != nil {
		return nil, fmt.Errorf("webhook URL refused: %v", err)
	}
	if args == nil {
		args = map[string]any{}
	}
	body, err := json.Marshal(map[string]any{"tool": w.GetName(), "run_id": env.runID, "call_id": callID, "arguments": args})
	if err != nil {
		return nil, errors.New("arguments are not JSON")
	}
	timeout := w.GetTimeout().AsDuration()
	if timeout <= 0 {
		timeout = defaultWebhookTimeout
	}
	limit := int64(w.GetMaxResponseBytes())
	if limit <= 0 {
		limit = defaultWebhookMaxBytes
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u.String(), bytes.NewReader(body))
	if err != nil {
		return nil, errors.New("bad webhook URL")
	}
	s.scrub.Add(w.GetSigningSecret()) // an endpoint echoing it in an error reaches the model and the run scrubbed
	ts := time.Now().Unix()
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "loom-agent/1")
	req.Header.Set(agent.WebhookTimestampHeader, strconv.FormatInt(ts, 10))
	req.Header.Set(agent.WebhookSignatureHeader, agent.SignWebhook([]byte(w.GetSigningSecret()), ts, body))
	client := &http.Client{
		Transport:     s.fetchTransport(),
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	resp, err := client.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("webhook did not answer within %v", timeout)
		}
		return nil, fmt.Errorf("webhook call failed: %v", callError(err))
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, limit+1))
	if err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("webhook did not answer within %v", timeout)
		}
		return nil, fmt.Errorf("webhook answer could not be read: %v", err)
	}
	if int64(len(data)) > limit {
		return nil, fmt.Errorf("webhook answer larger than %d bytes", limit)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return nil, fmt.Errorf("webhook answered HTTP %d: %s", resp.StatusCode, agent.TruncatePath(strings.ToValidUTF8(string(data), "")))
	}
	var out map[string]any
	if err := json.Unmarshal(data, &out); err != nil || out == nil {
		return nil, errors.New("webhook answer is not a JSON object")
	}
	return out, nil
}
