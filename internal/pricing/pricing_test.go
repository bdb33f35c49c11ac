package pricing_test

import (
	"fmt"
	"math"
	"strings"
	"testing"

	"github.com/loom-dev/loom/internal/pricing"
)

func TestParseAndPrice(t *testing.T) {
	t.Parallel()
	tab, err := pricing.Parse([]byte(`
version: "2026-12"
currency: EUR
models:
  - provider: gemini
    model: gemini-2.5-flash
    input_per_million: "0.30"
    output_per_million: 2.50
    cached_input_per_million: "0.075"
  - provider: openai
    model: "*"
    input_per_million: "2"
    output_per_million: "8"
  - provider: elevenlabs
    model: "*"
    per_thousand_characters: "0.30"
`))
	if err != nil {
		t.Fatal(err)
	}
	if tab.Version() != "2026-12" || tab.Currency() != "EUR" {
		t.Fatalf("version %q currency %q", tab.Version(), tab.Currency())
	}
	tests := []struct {
		name            string
		provider, model string
		in, out, cached int64
		want            string
		wantKnown       bool
	}{
		{name: "gemini", provider: "gemini", model: "gemini-2.5-flash", in: 1000, out: 500, cached: 400, want: "0.00146", wantKnown: true},
		{name: "openai any model, no cache discount", provider: "openai", model: "gpt-x", in: 1_000_000, out: 1, cached: 10, want: "2.000008", wantKnown: true},
		{name: "sim is free by default", provider: "sim", model: "sim", in: 1 << 40, out: 1 << 40, want: "0", wantKnown: true},
		{name: "unknown model", provider: "gemini", model: "gemini-9", in: 10, want: "0", wantKnown: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			p, ok := tab.Lookup(tt.provider, tt.model)
			if ok != tt.wantKnown {
				t.Fatalf("known = %v, want %v", ok, tt.wantKnown)
			}
			if got := p.Tokens(tt.in, tt.out, tt.cached).String(); got != tt.want {
				t.Fatalf("cost = %s, want %s", got, tt.want)
			}
		})
	}
	p, _ := tab.Lookup("elevenlabs", "eleven_multilingual_v2")
	if got := p.Speech(2500, 0).String(); got != "0.75" {
		t.Fatalf("speech = %s, want 0.75", got)
	}
}

func TestParseRefuses(t *testing.T) {
	t.Parallel()
	for _, doc := range []string{
		"models: [{provider: nope, model: x}]",
		"models: [{provider: gemini, model: ''}]",
		"models: [{provider: gemini, model: a, input_per_million: '0.1234567891'}]",
		"models: [{provider: gemini, model: a, input_per_million: '-1'}]",
		"models: [{provider: gemini, model: a, input_per_million: '1e3'}]",
		"models: [{provider: gemini, model: a}, {provider: gemini, model: a}]",
		"currency: dollars",
		"extra: 1",
	} {
		if _, err := pricing.Parse([]byte(doc)); err == nil {
			t.Errorf("Parse(%q) = nil error", doc)
		}
	}
}

func TestVersionIsADigestOfThePrices(t *testing.T) {
	t.Parallel()
	a, _ := pricing.Parse([]byte(`models: [{provider: gemini, model: a, input_per_million: "1"}]`))
	b, _ := pricing.Parse([]byte(`{"models": [{"provider": "gemini", "model": "a", "input_per_million": 1}]}`))
	c, _ := pricing.Parse([]byte(`models: [{provider: gemini, model: a, input_per_million: "2"}]`))
	if a.Version() != b.Version() || a.Version() == c.Version() || !strings.HasPrefix(a.Version(), "sha256:") {
		t.Fatalf("versions %q %q %q", a.Version(), b.Version(), c.Version())
	}
	d, err := a.WithFlag("sim/*=1:2,openai/gpt-4o=2.5:10:1.25")
	if err != nil {
		t.Fatal(err)
	}
	if d.Version() == a.Version() {
		t.Fatal("flag overrides kept the version")
	}
	if p, _ := d.Lookup("sim", "sim"); p.Tokens(1_000_000, 1_000_000, 0).String() != "3" {
		t.Fatalf("sim override: %+v", p)
	}
	if _, err := a.WithFlag("openai=1:2"); err == nil {
		t.Fatal("malformed flag accepted")
	}
}

func TestMoneyRoundTrip(t *testing.T) {
	t.Parallel()
	for _, n := range []pricing.Nanos{0, 1, 999_999_999, 1_000_000_000, 123_456_789_012, -1_500_000_000, math.MaxInt64 / 2} {
		m := pricing.Money(n, "USD")
		got, err := pricing.FromMoney(m)
		if err != nil || got != n {
			t.Errorf("FromMoney(Money(%d)) = %d, %v", n, got, err)
		}
	}
	if pricing.Add(math.MaxInt64, 1) != math.MaxInt64 {
		t.Error("Add does not saturate")
	}
}

func ExampleParseDecimal() {
	n, _ := pricing.ParseDecimal("0.075")
	fmt.Println(int64(n), n)
	// Output: 75000000 0.075
}
