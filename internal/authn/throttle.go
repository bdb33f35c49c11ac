package authn

import (
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Defaults of [ThrottleConfig].
const (
	DefaultFreeFailures   = 5
	DefaultBaseDelay      = time.Second
	DefaultMaxDelay       = 5 * time.Minute
	DefaultThrottleWindow = 15 * time.Minute
	DefaultMaxTracked     = 100_000
)

// ThrottleConfig tunes [Throttle]. Zero values take the defaults.
type ThrottleConfig struct {
	// FreeFailures is how many failed authentications a source address (or a key id) may have within Window
	// before it is slowed. Default 5.
	FreeFailures int
	// BaseDelay is the first refusal period; each further failure doubles it, up to MaxDelay. Defaults 1 s, 5 min.
	BaseDelay, MaxDelay time.Duration
	// Window is how long a failure is remembered. Default 15 minutes.
	Window time.Duration
	// MaxTracked bounds the addresses and key ids remembered at once (memory stays bounded under a flood from
	// many addresses). When full, the entry closest to expiry is forgotten. Default 100,000.
	MaxTracked int
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Throttle slows credential guessing: once a source address has failed to authenticate FreeFailures times, its
// calls with credentials are refused for an exponentially growing period, before any credential is checked.
// Failures against one API key id are counted too, across addresses: once that key id is throttled, only
// addresses that have failed themselves are refused, so the key's owner calling from a clean address is not
// slowed while a distributed guesser is. Calls without credentials are never counted. It is safe for concurrent
// use.
type Throttle struct {
	cfg      ThrottleConfig
	mu       sync.Mutex
	entries  map[string]*throttleEntry // "ip:ADDR" or "key:ID"
	refused  *prometheus.CounterVec
	failures prometheus.Counter
}

type throttleEntry struct {
	failures int
	last     time.Time // of the latest failure
	until    time.Time // refused before this
}

// NewThrottle returns a Throttle.
func NewThrottle(cfg ThrottleConfig) *Throttle {
	if cfg.FreeFailures <= 0 {
		cfg.FreeFailures = DefaultFreeFailures
	}
	if cfg.BaseDelay <= 0 {
		cfg.BaseDelay = DefaultBaseDelay
	}
	if cfg.MaxDelay <= 0 {
		cfg.MaxDelay = DefaultMaxDelay
	}
	if cfg.Window <= 0 {
		cfg.Window = DefaultThrottleWindow
	}
	if cfg.MaxTracked <= 0 {
		cfg.MaxTracked = DefaultMaxTracked
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Throttle{
		cfg:     cfg,
		entries: map[string]*throttleEntry{},
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "loom_authn_throttled_total",
			Help: "Calls refused before their credentials were checked because their source address or API key id failed to authenticate too often.",
		}, []string{"by"}),
		failures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "loom_authn_failures_total",
			Help: "Failed authentications (credentials given and refused).",
		}),
	}
}

// Collectors returns the throttle's metrics, for registering with /metrics.
func (t *Throttle) Collectors() []prometheus.Collector {
	return []prometheus.Collector{t.refused, t.failures}
}

// ThrottledError refuses a call whose source is being slowed; RetryAfter says when to try again.
type ThrottledError struct {
	After time.Duration
}

func (e *ThrottledError) Error() string {
	return fmt.Sprintf("authn: too many failed authentications; retry in %s", e.After.Round(time.Second))
}

// RetryAfter is how long the caller should wait.
func (e *ThrottledError) RetryAfter() time.Duration { return e.After }

// sourceAddr is the address the request came from (the peer; forwarding headers are not trusted).
func sourceAddr(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// apiKeyID returns the key id of an API key credential in r ("loom_<id>_<secret>"), or "".
func apiKeyID(r *http.Request) string {
	cred := r.Header.Get("X-Api-Key")
	if cred == "" {
		v, ok := bearer(r.Header.Get("Authorization"))
		if !ok {
			return ""
		}
		cred = v
	}
	rest, ok := strings.CutPrefix(cred, APIKeyPrefix)
	if !ok {
		return ""
	}
	id, _, ok := strings.Cut(rest, "_")
	if !ok || len(id) > 64 {
		return ""
	}
	return id
}

// check returns a *ThrottledError if r's source is refused now.
func (t *Throttle) check(r *http.Request) error {
	now := t.cfg.Now()
	ip, key := "ip:"+sourceAddr(r), apiKeyID(r)
	t.mu.Lock()
	defer t.mu.Unlock()
	src := t.live(ip, now)
	if src != nil && now.Before(src.until) {
		t.refused.WithLabelValues("address").Inc()
		return &ThrottledError{After: src.until.Sub(now)}
	}
	if key == "" || src == nil {
		return nil // a clean address is never slowed on account of a key id
	}
	if k := t.live("key:"+key, now); k != nil && now.Before(k.until) {
		t.refused.WithLabelValues("key").Inc()
		return &ThrottledError{After: k.until.Sub(now)}
	}
	return nil
}

// fail records a failed authentication of r.
func (t *Throttle) fail(r *http.Request) {
	now := t.cfg.Now()
	t.failures.Inc()
	t.mu.Lock()
	defer t.mu.Unlock()
	t.record("ip:"+sourceAddr(r), now)
	if key := apiKeyID(r); key != "" {
		t.record("key:"+key, now)
	}
}

// live returns the entry for k unless it has expired (and then forgets it).
func (t *Throttle) live(k string, now time.Time) *throttleEntry {
	e := t.entries[k]
	if e != nil && now.Sub(e.last) > t.cfg.Window && !now.Before(e.until) {
		delete(t.entries, k)
		return nil
	}
	return e
}

func (t *Throttle) record(k string, now time.Time) {
	e := t.live(k, now)
	if e == nil {
		if len(t.entries) >= t.cfg.MaxTracked {
			t.evict(now)
		}
		e = &throttleEntry{}
		t.entries[k] = e
	}
	e.failures++
	e.last = now
	if over := e.failures - t.cfg.FreeFailures; over > 0 {
		d := t.cfg.BaseDelay << min(over-1, 30)
		if d <= 0 || d > t.cfg.MaxDelay {
			d = t.cfg.MaxDelay
		}
		e.until = now.Add(d)
	}
}

// evict makes room: it forgets expired entries and, if the map is still full, arbitrary ones (Go's map order)
// until an eighth of it is free, so the cost of a full sweep is shared by the next MaxTracked/8 inserts.
func (t *Throttle) evict(now time.Time) {
	target := t.cfg.MaxTracked - max(1, t.cfg.MaxTracked/8)
	for k, e := range t.entries {
		if now.Sub(e.last) > t.cfg.Window && !now.Before(e.until) {
			delete(t.entries, k)
		}
	}
	for k := range t.entries {
		if len(t.entries) <= target {
			break
		}
		delete(t.entries, k)
	}
}

// tracked is the number of entries held (tests).
func (t *Throttle) tracked() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.entries)
}
