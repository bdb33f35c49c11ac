// Package forecast estimates what a run will cost and how long it will take from the runs before it: empirical
// quantiles over a window of the most recent runs of the same version. That is all it is: no model of the input,
// no trend. With n runs in the window, the q-quantile by nearest rank (the ceil(q*n)-th smallest value) covers
// a new run from the same distribution with probability ceil(q*n)/(n+1).
package forecast

import (
	"math"
	"slices"
)

// Quantile returns the q-quantile (0 < q <= 1) of values by nearest rank: the ceil(q*n)-th smallest. values
// need not be sorted and are not changed. It returns 0 and false for no values.
func Quantile(values []int64, q float64) (int64, bool) {
	qs := Quantiles(values, q)
	if qs == nil {
		return 0, false
	}
	return qs[0], true
}

// Quantiles returns the quantiles qs of values, as Quantile does, sorting a copy once; nil for no values.
func Quantiles(values []int64, qs ...float64) []int64 {
	if len(values) == 0 {
		return nil
	}
	s := slices.Clone(values)
	slices.Sort(s)
	out := make([]int64, len(qs))
	for i, q := range qs {
		k := int(math.Ceil(q*float64(len(s)))) - 1
		out[i] = s[min(max(k, 0), len(s)-1)]
	}
	return out
}

// Summary is p50, p90 and p99 of a sample.
type Summary struct {
	N             int
	P50, P90, P99 int64
}

// Summarize returns the Summary of values; N is 0 for no values.
func Summarize(values []int64) Summary {
	q := Quantiles(values, 0.5, 0.9, 0.99)
	if q == nil {
		return Summary{}
	}
	return Summary{N: len(values), P50: q[0], P90: q[1], P99: q[2]}
}
