package secret_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"testing"

	"github.com/loom-dev/loom/internal/secret"
)

const canary = "sk-canary-0123456789"

// holder is a configuration struct with a secret field, printed and logged whole.
type holder struct {
	Name   string
	APIKey secret.String
	Keys   map[string]secret.String
	Ptr    *secret.String
}

func TestStringMasks(t *testing.T) {
	t.Parallel()
	key := secret.String(canary)
	h := holder{Name: "gemini", APIKey: key, Keys: map[string]secret.String{"openai": key}, Ptr: &key}
	logged := func(newHandler func(*bytes.Buffer) slog.Handler, args ...any) string {
		var b bytes.Buffer
		slog.New(newHandler(&b)).Info("config", args...)
		return b.String()
	}
	text := func(b *bytes.Buffer) slog.Handler { return slog.NewTextHandler(b, nil) }
	jsonH := func(b *bytes.Buffer) slog.Handler { return slog.NewJSONHandler(b, nil) }
	marshal := func(v any) string {
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatalf("json.Marshal: %v", err)
		}
		return string(b)
	}
	for _, tc := range []struct {
		name, got, want string
	}{
		{name: "String", got: key.String(), want: "(set)"},
		{name: "%v", got: fmt.Sprintf("%v", key), want: "(set)"},
		{name: "%s", got: fmt.Sprintf("%s", key), want: "(set)"},
		{name: "%q", got: fmt.Sprintf("%q", key), want: `"(set)"`},
		{name: "%+v", got: fmt.Sprintf("%+v", key), want: "(set)"},
		{name: "%#v", got: fmt.Sprintf("%#v", key), want: `secret.String("(set)")`},
		{name: "%x", got: fmt.Sprintf("%x", key), want: "(set)"},
		{name: "%10s", got: fmt.Sprintf("%10s", key), want: "(set)"},
		{name: "Sprint", got: fmt.Sprint(key), want: "(set)"},
		{name: "Sprintln", got: fmt.Sprintln(key), want: "(set)\n"},
		{name: "unset %v", got: fmt.Sprintf("%v", secret.String("")), want: "(unset)"},
		{name: "unset %q", got: fmt.Sprintf("%q", secret.String("")), want: `"(unset)"`},
		{name: "struct %v", got: fmt.Sprintf("%v", h)},
		{name: "struct %+v", got: fmt.Sprintf("%+v", h)},
		{name: "struct %#v", got: fmt.Sprintf("%#v", h)},
		{name: "struct pointer %+v", got: fmt.Sprintf("%+v", &h)},
		{name: "pointer %v", got: fmt.Sprintf("%v", *h.Ptr), want: "(set)"},
		{name: "LogValue", got: key.LogValue().String(), want: "(set)"},
		{name: "slog text attr", got: logged(text, "key", key)},
		{name: "slog json attr", got: logged(jsonH, "key", key)},
		{name: "slog text struct", got: logged(text, "cfg", h)},
		{name: "slog json struct", got: logged(jsonH, "cfg", h)},
		{name: "slog json group", got: logged(jsonH, slog.Group("g", "key", key))},
		{name: "json", got: marshal(key), want: `"(set)"`},
		{name: "json struct", got: marshal(h), want: `{"Name":"gemini","APIKey":"(set)","Keys":{"openai":"(set)"},"Ptr":"(set)"}`},
		{name: "fmt map key", got: fmt.Sprint(map[secret.String]int{key: 1}), want: "map[(set):1]"},
	} {
		if strings.Contains(tc.got, canary) || strings.Contains(tc.got, fmt.Sprintf("%x", canary)) {
			t.Errorf("%s leaks the secret: %s", tc.name, tc.got)
		}
		if tc.want != "" && tc.got != tc.want {
			t.Errorf("%s = %q, want %q", tc.name, tc.got, tc.want)
		}
	}
	if key.Reveal() != canary || !key.IsSet() || secret.String("").IsSet() {
		t.Errorf("Reveal = %q, IsSet = %v", key.Reveal(), key.IsSet())
	}
}

func ExampleString() {
	key := secret.String("sk-live-123456")
	fmt.Println(key, fmt.Sprintf("%q", key), secret.String(""))
	b, _ := json.Marshal(struct{ APIKey secret.String }{key})
	fmt.Println(string(b))
	// Output:
	// (set) "(set)" (unset)
	// {"APIKey":"(set)"}
}
