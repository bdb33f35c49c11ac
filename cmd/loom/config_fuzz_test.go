package main

import (
	"net/url"
	"os"
	"strings"
	"testing"
)

// FuzzParseServe feeds arbitrary flags and environment values to the configuration parser: it must return a
// config or an error, never panic, and never echo a secret in an error.
func FuzzParseServe(f *testing.F) {
	f.Add("--listen=:1", "LOOM_MAX_TIMEOUT", "1h", "postgres://u:p@h/db")
	f.Add("--services=memory,,agent", "LOOM_DEFAULT_TIMEOUT", "-5s", "postgres://h")
	f.Add("--max-message-bytes=0x10", "LOOM_REFLECTION", "maybe", "@://:")
	devnull, err := os.Open(os.DevNull)
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { devnull.Close() })
	f.Fuzz(func(t *testing.T, arg, envName, envValue, dbURL string) {
		env := map[string]string{envName: envValue, "LOOM_DATABASE_URL": dbURL, "LOOM_OPENAI_API_KEY": "canary-fuzz-secret"}
		_, err := parseServe(strings.Fields(arg), func(k string) string { return env[k] }, devnull)
		if err != nil && strings.Contains(err.Error(), "canary-fuzz-secret") {
			t.Errorf("secret in error: %v", err)
		}
		if u, err := url.Parse(dbURL); err == nil && u.User != nil {
			if pw, ok := u.User.Password(); ok && len(pw) > 3 && strings.Contains(maskURL(dbURL), pw) && pw != "xxxxx" {
				t.Errorf("maskURL(%q) leaks the password", dbURL)
			}
		}
	})
}
