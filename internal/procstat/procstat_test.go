package procstat_test

import (
	"os"
	"runtime"
	"testing"

	"github.com/loom-dev/loom/internal/procstat"
)

func TestRSSMiB(t *testing.T) {
	t.Parallel()
	if runtime.GOOS != "linux" {
		t.Skip("/proc/<pid>/status is Linux's")
	}
	// A Go test binary is resident in at least a few MiB and, on these machines, well under 10 GiB.
	if got := procstat.RSSMiB(os.Getpid()); got < 1 || got > 10<<10 {
		t.Errorf("RSSMiB(self) = %v MiB, want between 1 and 10240", got)
	}
}

func TestRSSMiBUnknown(t *testing.T) {
	t.Parallel()
	// Pid -1 never names a process.
	if got := procstat.RSSMiB(-1); got != 0 {
		t.Errorf("RSSMiB(-1) = %v, want 0", got)
	}
}
