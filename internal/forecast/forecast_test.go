package forecast_test

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/loom-dev/loom/internal/forecast"
)

func TestQuantileNearestRank(t *testing.T) {
	t.Parallel()
	v := []int64{5, 1, 4, 2, 3, 6, 7, 8, 9, 10}
	for _, tt := range []struct {
		q    float64
		want int64
	}{{0.5, 5}, {0.9, 9}, {0.99, 10}, {0.01, 1}, {1, 10}} {
		if got, _ := forecast.Quantile(v, tt.q); got != tt.want {
			t.Errorf("Quantile(%v) = %d, want %d", tt.q, got, tt.want)
		}
	}
	if _, ok := forecast.Quantile(nil, 0.5); ok {
		t.Error("Quantile of nothing is ok")
	}
}

// TestP90Coverage draws histories from a known log-normal distribution (the shape of model latency and cost),
// estimates the p90 from a window of 200 and checks how many held-out runs it covers: 90% ± 5%.
func TestP90Coverage(t *testing.T) {
	t.Parallel()
	rng := rand.New(rand.NewPCG(1, 2))
	draw := func() int64 { return int64(math.Exp(rng.NormFloat64()*0.6+10) * 1000) }
	var covered, total int
	for trial := 0; trial < 200; trial++ {
		hist := make([]int64, 200)
		for i := range hist {
			hist[i] = draw()
		}
		p90 := forecast.Summarize(hist).P90
		for range 100 {
			if draw() <= p90 {
				covered++
			}
			total++
		}
	}
	got := float64(covered) / float64(total)
	t.Logf("p90 from 200 runs covers %.4f of %d held-out runs", got, total)
	if math.Abs(got-0.9) > 0.05 {
		t.Fatalf("coverage %.4f, want 0.90 ± 0.05", got)
	}
}
