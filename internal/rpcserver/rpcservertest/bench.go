package rpcservertest

import (
	"slices"
	"testing"
	"time"
)

// CompareP50 warms up by running each of calls warmup times, then alternates the two calls for the benchmark's
// iterations and reports each one's median latency as "p50-<name>-ns" and their ratio, the second over the
// first, as "x-<first name>". Interleaving the calls puts both under the same machine load.
func CompareP50(b *testing.B, warmup int, names [2]string, calls [2]func() error) {
	b.Helper()
	for range warmup {
		for _, c := range calls {
			if err := c(); err != nil {
				b.Fatal(err)
			}
		}
	}
	var lat [2][]time.Duration
	i := 0
	for b.Loop() {
		k := i % 2
		i++
		start := time.Now()
		if err := calls[k](); err != nil {
			b.Fatal(err)
		}
		lat[k] = append(lat[k], time.Since(start))
	}
	p50 := [2]float64{median(lat[0]), median(lat[1])}
	for k, name := range names {
		b.ReportMetric(p50[k], "p50-"+name+"-ns")
	}
	if p50[0] > 0 {
		b.ReportMetric(p50[1]/p50[0], "x-"+names[0])
	}
}

// median sorts d and returns its middle element in nanoseconds, or 0 when d is empty.
func median(d []time.Duration) float64 {
	if len(d) == 0 {
		return 0
	}
	slices.Sort(d)
	return float64(d[len(d)/2].Nanoseconds())
}
