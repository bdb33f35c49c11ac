package authn

import (
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"
)

// throttleClock is a settable clock for throttle tests.
type throttleClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *throttleClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *throttleClock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

func TestThrottle(t *testing.T) {
	t.Parallel()
	clock := &throttleClock{now: time.Unix(1_800_000_000, 0)}
	th := NewThrottle(ThrottleConfig{FreeFailures: 3, BaseDelay: time.Second, MaxDelay: 8 * time.Second, Window: time.Minute, Now: clock.Now})
	req := func(addr, cred string) *http.Request {
		r := httptest.NewRequest(http.MethodPost, memoryGet, nil)
		r.RemoteAddr = addr + ":40000"
		if cred != "" {
			r.Header.Set("Authorization", "Bearer "+cred)
		}
		return r
	}
	attacker, owner := "203.0.113.7", "198.51.100.9"
	guess := req(attacker, "loom_victimkey_wrongsecret")

	for i := range 3 {
		if err := th.check(guess); err != nil {
			t.Fatalf("failure %d refused before the free failures ran out: %v", i, err)
		}
		th.fail(guess)
	}
	if err := th.check(guess); err != nil {
		t.Fatalf("3 failures (the free ones) refused the 4th try: %v", err)
	}
	th.fail(guess) // fourth failure: 1 s
	var te *ThrottledError
	if err := th.check(guess); !errors.As(err, &te) || te.RetryAfter() != time.Second {
		t.Fatalf("after 4 failures: %v, want a 1 s refusal", err)
	}
	// The key's owner, from a clean address, is not slowed, although the key id is under attack.
	if err := th.check(req(owner, "loom_victimkey_rightsecret")); err != nil {
		t.Errorf("owner slowed: %v", err)
	}
	// Backoff doubles per failure, up to the maximum.
	want := []time.Duration{2 * time.Second, 4 * time.Second, 8 * time.Second, 8 * time.Second}
	for i, w := range want {
		clock.Add(time.Hour / 100) // past the current refusal, within the window
		th.fail(guess)
		if err := th.check(guess); !errors.As(err, &te) || te.RetryAfter() != w {
			t.Fatalf("failure %d: %v, want %v", 5+i, err, w)
		}
	}
	// A distributed guesser: each new address gets its free failures against the key once, then the key id
	// refuses addresses that have failed.
	other := req("192.0.2.1", "loom_victimkey_guess")
	th.fail(other)
	if err := th.check(other); !errors.As(err, &te) {
		t.Errorf("a failed address guessing a throttled key id: %v, want refused", err)
	}
	// Forgotten after the window.
	clock.Add(2 * time.Minute)
	if err := th.check(guess); err != nil {
		t.Errorf("after the window: %v", err)
	}
}

func TestThrottleMemoryBounded(t *testing.T) {
	t.Parallel()
	th := NewThrottle(ThrottleConfig{MaxTracked: 1000})
	for i := range 20_000 {
		r := httptest.NewRequest(http.MethodPost, memoryGet, nil)
		r.RemoteAddr = fmt.Sprintf("10.%d.%d.%d:1", i>>16&255, i>>8&255, i&255)
		r.Header.Set("Authorization", fmt.Sprintf("Bearer loom_k%d_x", i))
		th.fail(r)
	}
	if n := th.tracked(); n > 1000 {
		t.Errorf("tracked %d entries, bound 1000", n)
	}
}
