package localstore

import (
	"context"
	"runtime"
	"slices"
	"sync"
)

// scanGate shares the CPU among tenants' scans: it has one slot per core (GOMAXPROCS), a scan takes as many
// slots as goroutines it runs (one, or every core for a scan large enough to be split), and when scans wait,
// freed slots go to the waiting tenants in turn (round robin, first come first served within a tenant). So a
// tenant that floods searches queues behind itself: another tenant's search waits for at most about one scan
// per core, not for the flood. Waiting is bounded by the caller's context; only waiting calls are held, and a
// tenant's entry is dropped when its last waiter leaves. It is safe for concurrent use.
type scanGate struct {
	mu     sync.Mutex
	size   int
	free   int
	queues map[string][]*waiter
	ring   []string // tenants with waiters, in the order they are served
}

type waiter struct {
	weight  int
	ready   chan struct{}
	granted bool
}

func newScanGate(size int) *scanGate {
	size = max(size, 1)
	return &scanGate{size: size, free: size, queues: map[string][]*waiter{}}
}

// gateMinFloats is the scan size (rows x dimension) below which a search does not pass the gate: it costs
// about as much as the RPC that carries it.
const gateMinFloats = 1 << 14

// scanWeight is the number of slots a scan of n rows of dim takes: the goroutines scanChunks runs.
func scanWeight(n, dim int) int {
	if n*dim < parallelMinFloats {
		return 1
	}
	return max(1, runtime.GOMAXPROCS(0))
}

// acquire waits for weight slots for tenant (weight is capped at the gate's size) and returns the function
// that gives them back, or ctx's error if it ends first.
func (g *scanGate) acquire(ctx context.Context, tenant string, weight int) (release func(), err error) {
	weight = min(max(weight, 1), g.size)
	g.mu.Lock()
	if len(g.ring) == 0 && g.free >= weight {
		g.free -= weight
		g.mu.Unlock()
		return g.releaser(weight), nil
	}
	w := &waiter{weight: weight, ready: make(chan struct{})}
	if len(g.queues[tenant]) == 0 {
		g.ring = append(g.ring, tenant)
	}
	g.queues[tenant] = append(g.queues[tenant], w)
	g.mu.Unlock()
	select {
	case <-w.ready:
		return g.releaser(weight), nil
	case <-ctx.Done():
	}
	g.mu.Lock()
	if w.granted {
		g.mu.Unlock()
		g.release(weight) // granted as the context ended: pass the slots on
		return nil, ctx.Err()
	}
	q := g.queues[tenant]
	q = slices.DeleteFunc(q, func(x *waiter) bool { return x == w })
	if len(q) == 0 {
		delete(g.queues, tenant)
		g.ring = slices.DeleteFunc(g.ring, func(t string) bool { return t == tenant })
	} else {
		g.queues[tenant] = q
	}
	g.dispatch() // the head may have been waiting behind this waiter's weight
	g.mu.Unlock()
	return nil, ctx.Err()
}

func (g *scanGate) releaser(weight int) func() {
	var once sync.Once
	return func() { once.Do(func() { g.release(weight) }) }
}

func (g *scanGate) release(weight int) {
	g.mu.Lock()
	g.free += weight
	g.dispatch()
	g.mu.Unlock()
}

// dispatch grants free slots to waiters, one per tenant in turn. The caller holds mu.
func (g *scanGate) dispatch() {
	for len(g.ring) > 0 {
		t := g.ring[0]
		q := g.queues[t]
		w := q[0]
		if w.weight > g.free {
			return // the next in turn waits for enough slots; nobody overtakes it
		}
		g.free -= w.weight
		w.granted = true
		close(w.ready)
		g.ring = g.ring[1:]
		if len(q) == 1 {
			delete(g.queues, t)
		} else {
			g.queues[t] = q[1:]
			g.ring = append(g.ring, t)
		}
	}
}

// waiting returns how many tenants have waiters (tests).
func (g *scanGate) waiting() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.queues)
}

// queued returns how many of tenant's calls wait (tests).
func (g *scanGate) queued(tenant string) int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.queues[tenant])
}
