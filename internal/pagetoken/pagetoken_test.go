package pagetoken_test

import (
	"errors"
	"testing"

	"github.com/loom-dev/loom/internal/pagetoken"
)

type key struct {
	Time int64  `json:"t"`
	ID   string `json:"i"`
}

func TestRoundTripAndKinds(t *testing.T) {
	t.Parallel()
	tok := pagetoken.Encode("runs", key{Time: 7, ID: "r1"})
	var got key
	if err := pagetoken.Decode("runs", tok, &got); err != nil || got != (key{7, "r1"}) {
		t.Fatalf("Decode = %v, %v", got, err)
	}
	for _, bad := range []struct{ kind, tok string }{
		{"agents", tok}, // another listing's token
		{"runs", "!!"},  // not base64url
		{"runs", pagetoken.Encode("runs", map[string]any{"x": 1})}, // unknown field
		{"runs", pagetoken.Encode("runs", "a") + "AA"},             // trailing bytes
	} {
		if err := pagetoken.Decode(bad.kind, bad.tok, &got); !errors.Is(err, pagetoken.ErrInvalid) {
			t.Errorf("Decode(%q, %q) = %v, want ErrInvalid", bad.kind, bad.tok, err)
		}
	}
	var name string
	if err := pagetoken.Decode("ns", "", &name); err != nil || name != "" {
		t.Errorf("empty token: %q, %v", name, err)
	}
}

// FuzzDecode checks that no token makes Decode panic, and that what it accepts re-encodes to a token it accepts.
func FuzzDecode(f *testing.F) {
	f.Add(pagetoken.Encode("runs", key{Time: 1, ID: "r"}))
	f.Add("")
	f.Add("cnVuczp7fQ")
	f.Fuzz(func(t *testing.T, tok string) {
		var k key
		if err := pagetoken.Decode("runs", tok, &k); err != nil {
			return
		}
		var again key
		if err := pagetoken.Decode("runs", pagetoken.Encode("runs", k), &again); err != nil || again != k {
			t.Errorf("re-encoded %v: %v, %v", k, again, err)
		}
	})
}
