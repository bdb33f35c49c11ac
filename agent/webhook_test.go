package agent_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/loom-dev/loom/agent"
)

func TestVerifyWebhook(t *testing.T) {
	t.Parallel()
	secret, body, now := []byte("whsec-0123456789abcdef"), []byte(`{"a":1}`), time.Unix(1_800_000_000, 0)
	sig := agent.SignWebhook(secret, now.Unix(), body)
	ts := fmt.Sprint(now.Unix())
	if err := agent.VerifyWebhook(secret, ts, sig, body, now.Add(time.Minute), 0); err != nil {
		t.Errorf("valid: %v", err)
	}
	for name, err := range map[string]error{
		"old":       agent.VerifyWebhook(secret, ts, sig, body, now.Add(6*time.Minute), 0),
		"future":    agent.VerifyWebhook(secret, ts, sig, body, now.Add(-6*time.Minute), 0),
		"body":      agent.VerifyWebhook(secret, ts, sig, []byte(`{"a":2}`), now, 0),
		"secret":    agent.VerifyWebhook([]byte("other-secret-0123"), ts, sig, body, now, 0),
		"timestamp": agent.VerifyWebhook(secret, fmt.Sprint(now.Unix()+1), sig, body, now, 0),
		"malformed": agent.VerifyWebhook(secret, "soon", sig, body, now, 0),
	} {
		if err == nil {
			t.Errorf("%s: verified", name)
		}
	}
}
