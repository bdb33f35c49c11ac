package localstore

import (
	"context"
	"runtime"
	"testing"
)

// TestScanGateTakesTurns checks that a tenant flooding the gate is served in turn with another, not before it,
// that cancelled waiters leave nothing behind, and that heavy scans are not overtaken.
func TestScanGateTakesTurns(t *testing.T) {
	t.Parallel()
	g := newScanGate(2)
	ctx := context.Background()
	relA1, _ := g.acquire(ctx, "a", 1)
	relA2, _ := g.acquire(ctx, "a", 1)
	type result struct {
		tenant  string
		release func()
	}
	order := make(chan result, 10)
	wait := func(tenant string, weight int) {
		go func() {
			rel, err := g.acquire(ctx, tenant, weight)
			if err != nil {
				t.Errorf("acquire: %v", err)
				return
			}
			order <- result{tenant, rel}
		}()
	}
	// a floods: 5 more scans queue; then b queues one.
	for range 5 {
		wait("a", 1)
	}
	for g.queued("a") < 5 {
		waitForQueue()
	}
	wait("b", 1)
	for g.queued("b") < 1 {
		waitForQueue()
	}
	relA1()
	first := <-order // a was in line first
	relA2()
	second := <-order
	if first.tenant != "a" || second.tenant != "b" {
		t.Fatalf("served %s then %s, want a then b: b must not wait for a's whole flood", first.tenant, second.tenant)
	}
	first.release()
	second.release()
	for range 4 {
		r := <-order
		r.release()
	}
	if n := g.waiting(); n != 0 {
		t.Fatalf("tenants waiting = %d, want 0", n)
	}
	// A cancelled waiter leaves the queue, and a heavy scan (all slots) is served once slots free.
	rel, _ := g.acquire(ctx, "a", 2)
	cctx, cancel := context.WithCancel(ctx)
	done := make(chan error)
	go func() {
		_, err := g.acquire(cctx, "c", 1)
		done <- err
	}()
	for g.queued("c") < 1 {
		waitForQueue()
	}
	cancel()
	if err := <-done; err == nil {
		t.Fatal("cancelled acquire succeeded")
	}
	if n := g.waiting(); n != 0 {
		t.Fatalf("tenants waiting after cancel = %d, want 0", n)
	}
	rel()
	if g.free != 2 {
		t.Fatalf("free slots = %d, want 2", g.free)
	}
}

// waitForQueue yields while a goroutine reaches the gate.
func waitForQueue() { runtime.Gosched() }
