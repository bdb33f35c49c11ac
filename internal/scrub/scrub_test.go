package scrub_test

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"

	"github.com/loom-dev/loom/internal/scrub"
)

// leaks reports the first MinRun-byte run of key found in text.
func leaks(text, key string) (string, bool) {
	for i := 0; i+scrub.MinRun <= len(key); i++ {
		if strings.Contains(text, key[i:i+scrub.MinRun]) {
			return key[i : i+scrub.MinRun], true
		}
	}
	return "", false
}

func TestKnownKeys(t *testing.T) {
	t.Parallel()
	proc := "sk-proc-7fQ2mZ9xLp4Rt8Vb3Nc6"
	tenant := "tenantkey-0123456789abcdefghij"
	s := scrub.New(proc, "")
	s.Add(tenant)
	texts := []string{
		"Incorrect API key provided: " + proc + ".",
		"Incorrect API key provided: " + proc[:12] + "*****" + proc[len(proc)-4:],
		"key " + proc[5:13] + " is revoked",
		"quota for " + tenant + " exceeded",
		"partial " + tenant[3:14] + " and " + tenant[len(tenant)-9:],
		proc + tenant,
		"a" + proc + "b",
	}
	for _, text := range texts {
		got := s.String(text)
		for _, k := range []string{proc, tenant} {
			if run, ok := leaks(got, k); ok {
				t.Errorf("String(%q) = %q: leaks %q", text, got, run)
			}
		}
		if !strings.Contains(got, scrub.Redacted) {
			t.Errorf("String(%q) = %q: nothing redacted", text, got)
		}
	}
	if got := s.String("model gpt-4o not found (HTTP 404)"); got != "model gpt-4o not found (HTTP 404)" {
		t.Errorf("ordinary text changed: %q", got)
	}
}

func TestPatterns(t *testing.T) {
	t.Parallel()
	s := scrub.New()
	for _, tc := range []struct{ in, keep string }{
		{"Authorization: Bearer abcdefgh12345678", "Authorization: "},
		{"bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig", ""},
		{`{"api_key": "zzzzzzzzzz"}`, `{"api_key": "`},
		{"https://x/v1?key=Q1w2E3r4T5y6&alt=sse", "https://x/v1?key="},
		{"x-goog-api-key=abcdef123", "x-goog-api-key="},
		{"token=s3cr3tvalue", "token="},
		{"password: hunter2hunter2", "password: "},
		{"use sk-ant-api03-AAAAAAAAAAAAAAAA", "use "},
		{"AIzaSyA1234567890abcdefghijklmnop", ""},
		{"ghp_abcdefghijklmnopqrstuvwxyz0123", ""},
		{"xoxb-1234567890-abcdefghij", ""},
		{"id 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08", "id "},
		{"opaque Zx81Qp0WmN7vB3cR5tY9uI2oKaLs", "opaque "},
	} {
		got := s.String(tc.in)
		if !strings.Contains(got, scrub.Redacted) || !strings.HasPrefix(got, tc.keep) {
			t.Errorf("String(%q) = %q, want a redaction after %q", tc.in, got, tc.keep)
		}
	}
	for _, in := range []string{
		"run 0193b2c4-5d6e-7f80-9a1b-2c3d4e5f6a7b failed",
		"openai: HTTP 429: Rate limit reached for gpt-4o-mini in organization",
		"gemini: HTTP 400 INVALID_ARGUMENT: Request contains an invalid argument.",
		"voice.voice_id: ElevenLabs refused the request (HTTP 422)",
		"the_quick_brown_fox_jumps_over_the_lazy_dog",
	} {
		if got := s.String(in); got != in {
			t.Errorf("String(%q) = %q, want it unchanged", in, got)
		}
	}
}

func TestErrorKeepsSentinels(t *testing.T) {
	t.Parallel()
	sentinel := errors.New("provider unavailable")
	s := scrub.New("secret-key-12345678")
	err := s.Err(fmt.Errorf("HTTP 500: bad key secret-key-12345678: %w", sentinel))
	if !errors.Is(err, sentinel) || strings.Contains(err.Error(), "secret-key") || errors.Unwrap(err) != nil {
		t.Errorf("Err = %q (Is %v, Unwrap %v)", err, errors.Is(err, sentinel), errors.Unwrap(err))
	}
	if s.Err(nil) != nil {
		t.Error("Err(nil) != nil")
	}
}

func TestHandler(t *testing.T) {
	t.Parallel()
	key := "k3y-0987654321-zyxw"
	var buf bytes.Buffer
	log := slog.New(scrub.Handler(slog.NewJSONHandler(&buf, nil), scrub.New(key)))
	log.With("pre", "with "+key).WithGroup("g").Error("failed with "+key, "err", errors.New("x "+key),
		"s", key, "any", struct{ K string }{key}, "bytes", []byte(key), slog.Group("inner", "v", key), "n", 3)
	if strings.Contains(buf.String(), key[:8]) || strings.Count(buf.String(), scrub.Redacted) < 7 {
		t.Errorf("log = %s", buf.String())
	}
}

func TestForget(t *testing.T) {
	t.Parallel()
	s := scrub.New("pinned-process-key")
	for i := range 5000 {
		s.Add(fmt.Sprintf("tenant-key-%06d-abcdef", i))
	}
	if got := s.String("pinned-process-key"); strings.Contains(got, "pinned-p") {
		t.Errorf("pinned key forgotten: %q", got)
	}
	if got := s.String("tenant-key-004999-abcdef"); strings.Contains(got, "004999") {
		t.Errorf("newest tenant key not scrubbed: %q", got)
	}
}

// FuzzString: no run of a known key survives, whatever surrounds it.
func FuzzString(f *testing.F) {
	f.Add("prefix", "sk-test-0123456789", "suffix", 0, 10)
	f.Add("", "abcdefghijkl", "Bearer ", 2, 8)
	f.Fuzz(func(t *testing.T, pre, key, post string, lo, n int) {
		if len(key) < scrub.MinRun || len(key) > 200 {
			return
		}
		lo = ((lo % len(key)) + len(key)) % len(key)
		hi := min(len(key), lo+scrub.MinRun+((n%64)+64)%64)
		got := scrub.New(key).String(pre + key[lo:hi] + post)
		if hi-lo >= scrub.MinRun {
			if run, ok := leaks(got, key); ok && !strings.Contains(pre+post, run) {
				t.Fatalf("leaks %q in %q", run, got)
			}
		}
	})
}
