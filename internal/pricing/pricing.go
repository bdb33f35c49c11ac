// Package pricing is Loom's price table: unit prices per provider and model (input, output and cached tokens;
// characters and audio seconds for speech; seconds for video), and exact money arithmetic over them.
//
// Money is integer nano-units (10^-9) of one currency, as google.type.Money splits it into units and nanos: sums
// are exact, and an int64 holds 9.2 billion units. A table has a version; every run stores the version and the
// unit prices it was charged at, so changing the table never changes a past run's cost. A model the table does
// not list has no price: its cost is unknown, never guessed.
package pricing

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/big"
	"os"
	"sort"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"

	costv1 "github.com/loom-dev/loom/gen/loom/cost/v1"
)

// Nanos is an amount of money in nano-units (10^-9) of a table's currency.
type Nanos int64

// NanosPerUnit is how many nano-units make one unit of currency.
const NanosPerUnit = 1_000_000_000

// Price is one model's unit prices. Token prices are per million tokens; Characters per thousand characters;
// AudioSeconds and VideoSeconds per second.
type Price struct {
	Input, Output, CachedInput Nanos
	Characters                 Nanos
	AudioSeconds               Nanos
	VideoSeconds               Nanos
}

// Table is a version of the price table. It is immutable and safe for concurrent use.
type Table struct {
	version  string
	currency string
	prices   map[key]Price
}

type key struct{ provider, model string }

// Any is the model name that prices every model of a provider not listed by name.
const Any = "*"

// Default returns the table used without configuration: the sim model (every name) at zero, in USD, version
// "default". Every other model's cost is unknown.
func Default() *Table {
	return &Table{version: "default", currency: "USD", prices: map[key]Price{{"sim", Any}: {}}}
}

// Version names this table; it is stored with every run priced by it.
func (t *Table) Version() string { return t.version }

// Currency is the ISO 4217 code of every amount in the table.
func (t *Table) Currency() string { return t.currency }

// Lookup returns the price of provider's model: the model's own entry, else the provider's "*" entry. ok is
// false when neither exists: the cost of that usage is unknown.
func (t *Table) Lookup(provider, model string) (p Price, ok bool) {
	if p, ok = t.prices[key{provider, model}]; ok {
		return p, true
	}
	p, ok = t.prices[key{provider, Any}]
	return p, ok
}

// Tokens is the cost of a model call's tokens at p, rounded half up to a nano-unit. Cached tokens are part of
// input and priced at CachedInput instead of Input.
func (p Price) Tokens(input, output, cached int64) Nanos {
	cached = min(max(cached, 0), max(input, 0))
	return perScale(input-cached, p.Input, 1_000_000) + perScale(cached, p.CachedInput, 1_000_000) +
		perScale(output, p.Output, 1_000_000)
}

// Speech is the cost of synthesising chars characters, or seconds of audio, at p.
func (p Price) Speech(chars int64, seconds float64) Nanos {
	return perScale(chars, p.Characters, 1000) + Nanos(math.Round(seconds*float64(p.AudioSeconds)))
}

// perScale is n * price / scale, exact, rounded half up, saturated at the int64 range.
func perScale(n int64, price Nanos, scale int64) Nanos {
	if n <= 0 || price == 0 {
		return 0
	}
	v := new(big.Int).Mul(big.NewInt(n), big.NewInt(int64(price)))
	v.Add(v, big.NewInt(scale/2))
	v.Quo(v, big.NewInt(scale))
	if !v.IsInt64() {
		return math.MaxInt64
	}
	return Nanos(v.Int64())
}

// Add returns a + b, saturated at the int64 range.
func Add(a, b Nanos) Nanos {
	s := a + b
	if (s > a) == (b > 0) {
		return s
	}
	if b > 0 {
		return math.MaxInt64
	}
	return math.MinInt64
}

// Money returns n as a google.type.Money-style message in currency; nil stays representable as zero.
func Money(n Nanos, currency string) *costv1.Money {
	return &costv1.Money{CurrencyCode: currency, Units: int64(n) / NanosPerUnit, Nanos: int32(int64(n) % NanosPerUnit)}
}

// SumMoney returns a + b (exactly, in nano-units) in the currency of the first that names one, or nil when
// neither does (nothing priced yet). An amount that does not decode counts as zero.
func SumMoney(a, b *costv1.Money) *costv1.Money {
	currency := a.GetCurrencyCode()
	if currency == "" {
		currency = b.GetCurrencyCode()
	}
	if currency == "" {
		return nil
	}
	x, _ := FromMoney(a)
	y, _ := FromMoney(b)
	return Money(Add(x, y), currency)
}

// FromMoney returns m in nano-units; nil is zero. It fails when units and nanos disagree in sign, nanos is out
// of range, or the amount does not fit.
func FromMoney(m *costv1.Money) (Nanos, error) {
	if m == nil {
		return 0, nil
	}
	u, n := m.GetUnits(), int64(m.GetNanos())
	if n <= -NanosPerUnit || n >= NanosPerUnit || (u > 0 && n < 0) || (u < 0 && n > 0) {
		return 0, fmt.Errorf("money %d units %d nanos: units and nanos must agree in sign, nanos within ±999999999", u, n)
	}
	if u > math.MaxInt64/NanosPerUnit-1 || u < math.MinInt64/NanosPerUnit+1 {
		return 0, fmt.Errorf("money %d units: too large", u)
	}
	return Nanos(u*NanosPerUnit + n), nil
}

// String formats n as a decimal with up to 9 fractional digits, for example "0.000125".
func (n Nanos) String() string {
	neg := n < 0
	u := uint64(n)
	if neg {
		u = uint64(-n)
	}
	s := strconv.FormatUint(u/NanosPerUnit, 10)
	if f := u % NanosPerUnit; f != 0 {
		s += "." + strings.TrimRight(fmt.Sprintf("%09d", f), "0")
	}
	if neg {
		return "-" + s
	}
	return s
}

// ParseDecimal parses a non-negative decimal amount such as "2.50" or "0.000125" into nano-units; more than 9
// fractional digits, signs, exponents and anything else are refused: prices are never rounded silently.
func ParseDecimal(s string) (Nanos, error) {
	whole, frac, _ := strings.Cut(strings.TrimSpace(s), ".")
	if whole == "" || len(frac) > 9 || strings.Trim(whole, "0123456789") != "" || strings.Trim(frac, "0123456789") != "" {
		return 0, fmt.Errorf("amount %q: want a decimal number such as 2.50, at most 9 decimals", s)
	}
	u, err := strconv.ParseInt(whole, 10, 64)
	if err != nil || u > math.MaxInt64/NanosPerUnit-1 {
		return 0, fmt.Errorf("amount %q: too large", s)
	}
	f := int64(0)
	if frac != "" {
		f, _ = strconv.ParseInt(frac+strings.Repeat("0", 9-len(frac)), 10, 64)
	}
	return Nanos(u*NanosPerUnit + f), nil
}

// File is the price table's configuration file, in YAML or JSON. Amounts are decimal strings (or numbers, read
// as their decimal text) in currency.
//
//	version: "2026-12"           # optional; default: a hash of the contents
//	currency: USD                # optional; default USD
//	models:
//	  - provider: gemini         # sim, gemini, openai, elevenlabs, espeak, tavus
//	    model: gemini-2.5-flash  # or "*" for every model of the provider
//	    input_per_million: "0.30"
//	    output_per_million: "2.50"
//	    cached_input_per_million: "0.075"
//	  - provider: elevenlabs
//	    model: "*"
//	    per_thousand_characters: "0.30"
type File struct {
	Version  string      `json:"version" yaml:"version"`
	Currency string      `json:"currency" yaml:"currency"`
	Models   []FileEntry `json:"models" yaml:"models"`
}

// FileEntry is one model's prices in a File.
type FileEntry struct {
	Provider              string  `json:"provider" yaml:"provider"`
	Model                 string  `json:"model" yaml:"model"`
	InputPerMillion       decimal `json:"input_per_million" yaml:"input_per_million"`
	OutputPerMillion      decimal `json:"output_per_million" yaml:"output_per_million"`
	CachedInputPerMillion decimal `json:"cached_input_per_million" yaml:"cached_input_per_million"`
	PerThousandCharacters decimal `json:"per_thousand_characters" yaml:"per_thousand_characters"`
	PerAudioSecond        decimal `json:"per_audio_second" yaml:"per_audio_second"`
	PerVideoSecond        decimal `json:"per_video_second" yaml:"per_video_second"`
}

// decimal is an amount written as a string or a bare number in the file; its text is kept exactly.
type decimal string

func (d *decimal) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		var n json.Number
		if err := json.Unmarshal(b, &n); err != nil {
			return errors.New("want a decimal string or number")
		}
		s = n.String()
	}
	*d = decimal(s)
	return nil
}

func (d *decimal) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return errors.New("want a decimal string or number")
	}
	*d = decimal(n.Value)
	return nil
}

// Providers are the provider names a table may price.
var Providers = []string{"sim", "gemini", "openai", "elevenlabs", "espeak", "tavus"}

// Parse reads a price table file (YAML, of which JSON is a subset). The sim model is priced at zero unless the
// file prices it. Unknown fields, unknown providers, duplicate entries and malformed amounts are errors.
func Parse(data []byte) (*Table, error) {
	var f File
	dec := yaml.NewDecoder(strings.NewReader(string(data)))
	dec.KnownFields(true)
	if err := dec.Decode(&f); err != nil {
		return nil, fmt.Errorf("price table: %w", err)
	}
	t := &Table{version: f.Version, currency: f.Currency, prices: map[key]Price{}}
	if t.currency == "" {
		t.currency = "USD"
	}
	if len(t.currency) != 3 || strings.ToUpper(t.currency) != t.currency {
		return nil, fmt.Errorf("price table: currency %q: want an ISO 4217 code such as USD", t.currency)
	}
	for i, e := range f.Models {
		where := fmt.Sprintf("price table: models[%d]", i)
		if !contains(Providers, e.Provider) {
			return nil, fmt.Errorf("%s: provider %q: want one of %s", where, e.Provider, strings.Join(Providers, ", "))
		}
		if e.Model == "" {
			return nil, fmt.Errorf("%s: model is empty (use \"*\" for every model of %s)", where, e.Provider)
		}
		k := key{e.Provider, e.Model}
		if _, dup := t.prices[k]; dup {
			return nil, fmt.Errorf("%s: %s/%s is priced twice", where, e.Provider, e.Model)
		}
		var p Price
		for _, a := range []struct {
			dst  *Nanos
			text decimal
			name string
		}{{&p.Input, e.InputPerMillion, "input_per_million"}, {&p.Output, e.OutputPerMillion, "output_per_million"},
			{&p.CachedInput, e.CachedInputPerMillion, "cached_input_per_million"},
			{&p.Characters, e.PerThousandCharacters, "per_thousand_characters"},
			{&p.AudioSeconds, e.PerAudioSecond, "per_audio_second"}, {&p.VideoSeconds, e.PerVideoSecond, "per_video_second"}} {
			if a.text == "" {
				continue
			}
			v, err := ParseDecimal(string(a.text))
			if err != nil {
				return nil, fmt.Errorf("%s: %s: %w", where, a.name, err)
			}
			*a.dst = v
		}
		if e.CachedInputPerMillion == "" {
			p.CachedInput = p.Input // no cache discount unless the file says so
		}
		t.prices[k] = p
	}
	if _, ok := t.Lookup("sim", "sim"); !ok {
		t.prices[key{"sim", Any}] = Price{}
	}
	if t.version == "" {
		t.version = t.digest()
	}
	return t, nil
}

// Load reads a price table file from path.
func Load(path string) (*Table, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("price table: %w", err)
	}
	return Parse(b)
}

// digest is a version derived from the table's contents: the same prices always get the same version.
func (t *Table) digest() string {
	keys := make([]key, 0, len(t.prices))
	for k := range t.prices {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		return keys[i].provider+"\x00"+keys[i].model < keys[j].provider+"\x00"+keys[j].model
	})
	h := sha256.New()
	fmt.Fprintf(h, "%s\n", t.currency)
	for _, k := range keys {
		fmt.Fprintf(h, "%s/%s=%+v\n", k.provider, k.model, t.prices[k])
	}
	return "sha256:" + hex.EncodeToString(h.Sum(nil)[:6])
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// WithFlag returns t with the prices of a --prices flag added or replaced: entries separated by ",", each
// "provider/model=input:output[:cached]" per million tokens, for example
// "gemini/gemini-2.5-flash=0.30:2.50:0.075,openai/*=2:8". The result's version is t's with a digest of the
// overrides appended, so runs priced by it are told apart. An empty spec returns t.
func (t *Table) WithFlag(spec string) (*Table, error) {
	if strings.TrimSpace(spec) == "" {
		return t, nil
	}
	out := &Table{version: t.version, currency: t.currency, prices: make(map[key]Price, len(t.prices))}
	for k, p := range t.prices {
		out.prices[k] = p
	}
	for _, entry := range strings.Split(spec, ",") {
		name, amounts, ok := strings.Cut(strings.TrimSpace(entry), "=")
		provider, model, ok2 := strings.Cut(name, "/")
		parts := strings.Split(amounts, ":")
		if !ok || !ok2 || model == "" || len(parts) < 2 || len(parts) > 3 {
			return nil, fmt.Errorf("--prices %q: want provider/model=input:output[:cached] per million tokens", entry)
		}
		if !contains(Providers, provider) {
			return nil, fmt.Errorf("--prices %q: provider %q: want one of %s", entry, provider, strings.Join(Providers, ", "))
		}
		var vals [3]Nanos
		for i, a := range parts {
			v, err := ParseDecimal(a)
			if err != nil {
				return nil, fmt.Errorf("--prices %q: %w", entry, err)
			}
			vals[i] = v
		}
		if len(parts) == 2 {
			vals[2] = vals[0]
		}
		out.prices[key{provider, model}] = Price{Input: vals[0], Output: vals[1], CachedInput: vals[2]}
	}
	sum := sha256.Sum256([]byte(spec))
	out.version = t.version + "+flags:" + hex.EncodeToString(sum[:4])
	return out, nil
}
