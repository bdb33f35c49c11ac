// Package scrub removes secrets from text that came from outside the process, such as the error message of a
// model, speech or video provider, before that text reaches a response, a log, an event or a stored record.
//
// A Scrubber knows two kinds of secret:
//   - keys it was told about (Add): every occurrence of the whole key, and of any run of MinRun (8) consecutive
//     bytes of it, is replaced, so a provider quoting a prefix, a suffix or the middle of a key ("sk-proj-abc...wxyz")
//     leaks nothing. Only 64-bit keyed hashes of those runs are kept, never the key itself;
//   - anything shaped like a credential, whoever it belongs to: "Bearer <token>", "Basic <token>", key=value pairs
//     whose name says key, token, secret, password or authorization, OpenAI ("sk-..."), Google ("AIza..."),
//     Slack/GitHub-style prefixed tokens, JWTs, and long runs of mixed-case letters and digits or of hex.
//
// Replacements are the text Redacted. A Scrubber is safe for concurrent use.
package scrub

import (
	"errors"
	"hash/maphash"
	"regexp"
	"strings"
	"sync"
)

// MinRun is the length of the shortest run of a known key that is removed wherever it appears.
const MinRun = 8

// minKey is the shortest key Add accepts; shorter ones would redact ordinary words.
const minKey = 6

// maxKeys bounds the keys a Scrubber remembers; when full, the oldest tenant keys are forgotten first (pinned
// keys, the process's own, are never forgotten).
const maxKeys = 4096

// Redacted replaces every secret removed.
const Redacted = "[REDACTED]"

// Scrubber removes known keys and credential-shaped text. The zero value is not usable; call New.
type Scrubber struct {
	seed maphash.Seed

	mu     sync.RWMutex
	grams  map[uint64]int32 // hash of a MinRun-byte run -> how many remembered keys contain it
	short  map[string]bool  // keys of minKey..MinRun-1 bytes, matched whole
	keys   map[uint64][]uint64
	order  []uint64 // unpinned keys, oldest first
	pinned map[uint64]bool
}

// New returns a Scrubber that knows keys (the process's own; empty ones are ignored). They are never forgotten.
func New(keys ...string) *Scrubber {
	s := &Scrubber{seed: maphash.MakeSeed(), grams: map[uint64]int32{}, short: map[string]bool{},
		keys: map[uint64][]uint64{}, pinned: map[uint64]bool{}}
	for _, k := range keys {
		s.add(k, true)
	}
	return s
}

// Add makes s remove key (for example a tenant's provider key, just read) from now on. Keys shorter than 6 bytes
// are ignored: they cannot be told from ordinary text. Adding a key twice is cheap.
func (s *Scrubber) Add(key string) { s.add(key, false) }

func (s *Scrubber) add(key string, pin bool) {
	if len(key) < minKey {
		return
	}
	id := maphash.String(s.seed, key)
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.keys[id]; ok {
		if pin && !s.pinned[id] {
			s.pinned[id] = true
		}
		return
	}
	if len(key) < MinRun {
		s.short[key] = true // short keys are rare (and then usually test values); kept whole, and few
		s.keys[id] = nil
		s.pinned[id] = s.pinned[id] || pin
		return
	}
	grams := make([]uint64, 0, len(key)-MinRun+1)
	for i := 0; i+MinRun <= len(key); i++ {
		h := maphash.String(s.seed, key[i:i+MinRun])
		grams = append(grams, h)
		s.grams[h]++
	}
	s.keys[id] = grams
	if pin {
		s.pinned[id] = true
		return
	}
	s.order = append(s.order, id)
	for len(s.order) > maxKeys {
		old := s.order[0]
		s.order = s.order[1:]
		for _, h := range s.keys[old] {
			if s.grams[h]--; s.grams[h] <= 0 {
				delete(s.grams, h)
			}
		}
		delete(s.keys, old)
	}
}

// patterns match credential-shaped text. Each match is replaced whole, or from its "secret" group on when it
// has one (so "api_key=abc123..." keeps "api_key=").
var patterns = []*regexp.Regexp{
	// Authorization schemes, in headers and in prose.
	regexp.MustCompile(`(?i)\b(?:bearer|basic|token)\s+(?P<secret>[A-Za-z0-9._~+/=\-]{8,})`),
	// name=value and "name": "value" where the name says what the value is.
	regexp.MustCompile(`(?i)(?:[?&;]key|api[_-]?key|apikey|access[_-]?key|secret|token|password|passwd|authorization|x-api-key|xi-api-key|x-goog-api-key|auth)["']?\s*[:=]\s*["']?(?P<secret>[^\s"',;&}{]{6,})`),
	// Well-known key formats.
	regexp.MustCompile(`\bsk-[A-Za-z0-9_\-*.]{8,}`),                                    // OpenAI, Anthropic (sk-ant-), masked forms too
	regexp.MustCompile(`\bsk_[A-Za-z0-9]{16,}`),                                        // ElevenLabs, Stripe-style
	regexp.MustCompile(`\bAIza[0-9A-Za-z_\-]{16,}`),                                    // Google API keys
	regexp.MustCompile(`\b(?:xox[abprs]|gh[pousr]|glpat)[-_][A-Za-z0-9_\-]{8,}`),       // Slack, GitHub, GitLab
	regexp.MustCompile(`\beyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]*`), // JWTs
	// Long opaque tokens: 32+ hex digits, or 24+ letters and digits mixing upper case, lower case and digits.
	regexp.MustCompile(`\b[0-9a-fA-F]{32,}\b`),
	regexp.MustCompile(`[A-Za-z0-9_\-]{24,}`),
}

// mixed reports whether s has an upper-case letter, a lower-case letter and a digit: what random tokens have
// and words, identifiers and UUIDs mostly do not.
func mixed(s string) bool {
	var up, low, dig bool
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'A' && c <= 'Z':
			up = true
		case c >= 'a' && c <= 'z':
			low = true
		case c >= '0' && c <= '9':
			dig = true
		}
	}
	return up && low && dig
}

// String returns text with every known key, every run of MinRun bytes of one, and every credential-shaped token
// replaced by Redacted.
func (s *Scrubber) String(text string) string {
	if text == "" {
		return text
	}
	text = s.known(text)
	for i, re := range patterns {
		last := i == len(patterns)-1
		sec := re.SubexpIndex("secret")
		text = replaceAll(re, text, func(m []int) (int, int, bool) {
			if last && !mixed(text[m[0]:m[1]]) {
				return 0, 0, false
			}
			if sec > 0 && m[2*sec] >= 0 {
				if text[m[2*sec]:m[2*sec+1]] == Redacted {
					return 0, 0, false
				}
				return m[2*sec], m[2*sec+1], true
			}
			return m[0], m[1], true
		})
	}
	return text
}

// replaceAll replaces, for each match of re in text, the span pick chooses (or nothing when it says no).
func replaceAll(re *regexp.Regexp, text string, pick func(m []int) (int, int, bool)) string {
	ms := re.FindAllStringSubmatchIndex(text, -1)
	if ms == nil {
		return text
	}
	var b strings.Builder
	prev := 0
	for _, m := range ms {
		lo, hi, ok := pick(m)
		if !ok || lo < prev {
			continue
		}
		b.WriteString(text[prev:lo])
		b.WriteString(Redacted)
		prev = hi
	}
	b.WriteString(text[prev:])
	return b.String()
}

// known replaces the runs of text covered by a MinRun-byte run of a known key, and short keys whole.
func (s *Scrubber) known(text string) string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	for k := range s.short {
		text = strings.ReplaceAll(text, k, Redacted)
	}
	if len(s.grams) == 0 || len(text) < MinRun {
		return text
	}
	// cover[i] is true when byte i lies in a window that is a run of a known key.
	var cover []bool
	for i := 0; i+MinRun <= len(text); i++ {
		if s.grams[maphash.String(s.seed, text[i:i+MinRun])] == 0 {
			continue
		}
		if cover == nil {
			cover = make([]bool, len(text))
		}
		for j := i; j < i+MinRun; j++ {
			cover[j] = true
		}
	}
	if cover == nil {
		return text
	}
	var b strings.Builder
	for i := 0; i < len(text); {
		if !cover[i] {
			b.WriteByte(text[i])
			i++
			continue
		}
		for i < len(text) && cover[i] {
			i++
		}
		b.WriteString(Redacted)
	}
	return b.String()
}

// Error is an error whose text was scrubbed. errors.Is matches every sentinel the original matched; Unwrap and
// As are deliberately absent, so no caller can reach the original text through the chain.
type Error struct {
	msg  string
	orig error
}

// Err returns err with its text scrubbed by s, or nil for nil.
func (s *Scrubber) Err(err error) error {
	if err == nil {
		return nil
	}
	if e, ok := err.(*Error); ok {
		return &Error{msg: s.String(e.msg), orig: e.orig}
	}
	return &Error{msg: s.String(err.Error()), orig: err}
}

// Error implements error.
func (e *Error) Error() string { return e.msg }

// Is reports whether the original error matches target.
func (e *Error) Is(target error) bool { return errors.Is(e.orig, target) }
