package memoryrpc

import (
	"context"
	"time"

	"github.com/loom-dev/loom/internal/telemetry"
	"github.com/loom-dev/loom/memory"
)

// SearchTelemetry returns the memory.SearchObserver that `loom serve` gives its store: each search gets a
// "memory.search" span (namespace, mode, k and the number of results), and each successful one's duration is
// recorded by mode in m (loom_memory_search_duration_seconds; a nil m records nothing). It lives here, not in
// the stores, so that an embedded store does not pull in OpenTelemetry and Prometheus.
func SearchTelemetry(m *telemetry.MemoryMetrics) memory.SearchObserver { return searchTelemetry{m} }

type searchTelemetry struct{ m *telemetry.MemoryMetrics }

func (o searchTelemetry) StartSearch(ctx context.Context, namespace, mode string, k int) (context.Context, func(int, error)) {
	ctx, span := telemetry.StartMemorySearch(ctx, namespace, mode, k)
	began := time.Now()
	return ctx, func(results int, err error) {
		span.End(results, err)
		if err == nil {
			o.m.ObserveSearch(mode, time.Since(began))
		}
	}
}
