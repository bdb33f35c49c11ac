package logtest_test

import (
	"fmt"
	"log/slog"
	"slices"
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

func TestBufferLines(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, written string
		want          []string
	}{
		{name: "empty", written: "", want: nil},
		{name: "only space", written: " \n\n", want: nil},
		{name: "one line", written: "a=1\n", want: []string{"a=1"}},
		{name: "no final newline", written: "a=1\nb=2", want: []string{"a=1", "b=2"}},
		{name: "two lines", written: "a=1\nb=2\n", want: []string{"a=1", "b=2"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var buf logtest.Buffer
			fmt.Fprint(&buf, tc.written)
			if got := buf.Lines(); !slices.Equal(got, tc.want) {
				t.Errorf("Lines() = %q, want %q", got, tc.want)
			}
		})
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
