package orchestratortest

// Sequences returns the run event sequence numbers from through to, both included, in order: what a run's
// events read back from from carry when none is missing. It is empty when to < from.
func Sequences(from, to int64) []int64 {
	var out []int64
	for i := from; i <= to; i++ {
		out = append(out, i)
	}
	return out
}
