package rpcclient

import "testing"

func TestRetryBudgetCapsRetries(t *testing.T) {
	t.Parallel()
	b := newRetryBudget(0.1, 10)
	retries := 0
	for range 1000 {
		b.deposit()
		for range 3 { // every call wants 3 retries
			if b.withdraw() {
				retries++
			}
		}
	}
	// The reserve of 10 plus 10% of 1000 calls.
	if retries > 110 || retries < 100 {
		t.Errorf("retries = %d, want about 110 (10%% of calls plus the reserve)", retries)
	}
}
