// Package procstat reads a process's resource use from Linux's /proc, for tests and benchmarks that check a
// server stays within its memory budget.
package procstat

import (
	"fmt"
	"os"
	"strconv"
	"strings"
)

// RSSMiB returns the resident set size of process pid in MiB, read from /proc/<pid>/status (VmRSS). It returns
// 0 when that is unknown: no /proc (not Linux), no such process, or no VmRSS line (a kernel thread).
func RSSMiB(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.ParseFloat(f[1], 64)
			return kb / 1024
		}
	}
	return 0
}
