package rpcclient_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/loom-dev/loom/internal/rpcclient"
)

// TestBreakerStateMetric dials a closed port: calls fail with Unavailable, the breaker opens, and
// loom_rpcclient_breaker_state turns from 0 (closed) to 2 (open) for that target.
func TestBreakerStateMetric(t *testing.T) {
	t.Parallel()
	m := rpcclient.NewMetrics()
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(m)
	const target = "127.0.0.1:1"
	conn, err := rpcclient.Dial(rpcclient.Config{Target: target, Service: "loom.memory.v1.MemoryService", Metrics: m, BreakerOpenFor: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	state := func() float64 {
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, mf := range mfs {
			if mf.GetName() == "loom_rpcclient_breaker_state" && strings.Contains(mf.GetHelp(), "open") {
				for _, s := range mf.GetMetric() {
					if s.GetLabel()[0].GetValue() == target {
						return s.GetGauge().GetValue()
					}
				}
			}
		}
		t.Fatal("no loom_rpcclient_breaker_state series with a help text for the target")
		return -1
	}
	if got := state(); got != 0 {
		t.Fatalf("state before any call: %v, want 0", got)
	}
	for range 6 {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_ = conn.Invoke(ctx, "/loom.memory.v1.MemoryService/Upsert", &emptypb.Empty{}, &emptypb.Empty{})
		cancel()
	}
	if got := state(); got != 2 {
		t.Fatalf("state after failing calls: %v, want 2 (open)", got)
	}
}
