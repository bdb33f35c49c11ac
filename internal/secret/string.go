package secret

import (
	"fmt"
	"log/slog"
)

// String is a secret held in memory, such as a provider API key, that masks itself wherever it is printed:
// String, every fmt verb (%v %s %q %x %+v %#v ...), slog's LogValue, and JSON and text marshalling all show
// "(set)" or "(unset)", never the value. A struct holding String fields can therefore be printed or logged
// whole. Reveal returns the value, for the one place that sends it.
//
// It is a string type so that constants convert implicitly (Config{APIKey: "k"}); converting back with
// string(s) reveals it as Reveal does. Marshalling is one way: unmarshalling is deliberately not implemented. Do not
// key maps by a String: encoding/json writes string-kinded map keys as they are, without calling any method.
type String string

// Masks shown instead of a String.
const (
	maskSet   = "(set)"
	maskUnset = "(unset)"
)

// Reveal returns the secret itself. Call it only to hand the value to the API that needs it.
func (s String) Reveal() string { return string(s) }

// IsSet reports whether the secret is not empty.
func (s String) IsSet() bool { return s != "" }

// String implements fmt.Stringer with the mask.
func (s String) String() string {
	if s == "" {
		return maskUnset
	}
	return maskSet
}

// GoString implements fmt.GoStringer with the mask, for %#v.
func (s String) GoString() string { return fmt.Sprintf("secret.String(%q)", s.String()) }

// Format implements fmt.Formatter: every verb and flag formats the mask, as a string, so no verb can print the
// value (%x of a plain string would print it in hex).
func (s String) Format(f fmt.State, verb rune) {
	switch {
	case verb == 'v' && f.Flag('#'):
		_, _ = fmt.Fprint(f, s.GoString())
	case verb == 'q':
		_, _ = fmt.Fprintf(f, "%q", s.String())
	default:
		_, _ = fmt.Fprint(f, s.String())
	}
}

// LogValue implements slog.LogValuer with the mask.
func (s String) LogValue() slog.Value { return slog.StringValue(s.String()) }

// MarshalText implements encoding.TextMarshaler with the mask.
func (s String) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// MarshalJSON implements json.Marshaler with the mask, a JSON string.
func (s String) MarshalJSON() ([]byte, error) { return []byte(`"` + s.String() + `"`), nil }
