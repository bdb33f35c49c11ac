package agent

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"time"

	agentv1 "github.com/loom-dev/loom/gen/loom/agent/v1"
)

// Webhook tools: the model calls the user's endpoint with a signed POST (see agentv1.WebhookTool). The handler
// (agent/agentrpc) makes the calls; the rules of a webhook tool and of its signature are here.

const (
	// minWebhookSecret is the fewest bytes a webhook tool's signing secret may have.
	minWebhookSecret = 16
	// WebhookReplayWindow is how old a Loom-Timestamp a receiver should accept (VerifyWebhook's default).
	WebhookReplayWindow = 5 * time.Minute
)

// Webhook request headers.
const (
	WebhookTimestampHeader = "Loom-Timestamp"
	WebhookSignatureHeader = "Loom-Signature"
)

// SignWebhook returns the Loom-Signature value of body sent at timestamp (unix seconds) with secret:
// "v1=" + hex(HMAC-SHA256(secret, timestamp + "." + body)).
func SignWebhook(secret []byte, timestamp int64, body []byte) string {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(strconv.FormatInt(timestamp, 10)))
	m.Write([]byte{'.'})
	m.Write(body)
	return "v1=" + hex.EncodeToString(m.Sum(nil))
}

// VerifyWebhook checks, for a receiver of webhook calls, the timestamp and signature headers of a request with
// body against secret: the signature must match (compared in constant time) and the timestamp must be within
// window of now (window 0 means WebhookReplayWindow).
func VerifyWebhook(secret []byte, timestampHeader, signatureHeader string, body []byte, now time.Time, window time.Duration) error {
	if window <= 0 {
		window = WebhookReplayWindow
	}
	ts, err := strconv.ParseInt(timestampHeader, 10, 64)
	if err != nil {
		return errors.New("webhook: malformed timestamp")
	}
	if d := now.Sub(time.Unix(ts, 0)); d > window || d < -window {
		return errors.New("webhook: timestamp outside the replay window")
	}
	if !hmac.Equal([]byte(SignWebhook(secret, ts, body)), []byte(signatureHeader)) {
		return errors.New("webhook: bad signature")
	}
	return nil
}

// CheckWebhook checks a webhook tool at save time: a name that is not a built-in's, an absolute http(s) URL
// without user info, a secret of at least 16 bytes (or one stored already), parameters that are a valid JSON
// Schema (CheckParameters). The address policy is applied at call time, on the resolved address. path is the
// tool's path in the request; the error is a *FieldError.
func CheckWebhook(w *agentv1.WebhookTool, path string) error {
	if builtinTool(w.GetName()) {
		return &FieldError{Field: path + ".name", Reason: fmt.Sprintf("%q is a built-in tool's name", w.GetName())}
	}
	u, err := url.Parse(w.GetUrl())
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil {
		return &FieldError{Field: path + ".url", Reason: "must be an absolute http or https URL without user info"}
	}
	if n := len(w.GetSigningSecret()); (n > 0 || !w.GetSigningSecretSet()) && n < minWebhookSecret {
		return &FieldError{Field: path + ".signing_secret", Reason: fmt.Sprintf("at least %d bytes are required", minWebhookSecret)}
	}
	return CheckParameters(w.GetParameters(), path+".parameters")
}
