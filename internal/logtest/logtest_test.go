package logtest_test

import (
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"

	"github.com/loom-dev/loom/internal/logtest"
)

func TestBufferConcurrentWrites(t *testing.T) {
	t.Parallel()
	var (
		buf logtest.Buffer
		wg  sync.WaitGroup
	)
	const writers, lines = 8, 100
	for w := range writers {
		wg.Go(func() {
			for i := range lines {
				fmt.Fprintf(&buf, "w%d-%d\n", w, i)
				_ = buf.String() // reads race with writes unless the buffer locks
			}
		})
	}
	wg.Wait()
	got := buf.String()
	if n := strings.Count(got, "\n"); n != writers*lines {
		t.Fatalf("got %d lines, want %d", n, writers*lines)
	}
	for w := range writers {
		if want := fmt.Sprintf("w%d-%d\n", w, lines-1); !strings.Contains(got, want) {
			t.Errorf("missing line %q", want)
		}
	}
}

func TestBufferZeroValue(t *testing.T) {
	t.Parallel()
	var buf logtest.Buffer
	if got := buf.String(); got != "" {
		t.Fatalf("zero Buffer holds %q, want empty", got)
	}
}

func ExampleBuffer() {
	logs := &logtest.Buffer{}
	logger := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{
		ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
			if a.Key == slog.TimeKey {
				return slog.Attr{} // drop the time so the output is stable
			}
			return a
		},
	}))
	logger.Info("stopped", "reason", "signal")
	fmt.Print(logs.String())
	// Output: level=INFO msg=stopped reason=signal
}
