// Package logtest provides a log sink for tests: a buffer that loggers, servers and child processes may write to
// from many goroutines while the test reads what was written.
package logtest

import (
	"bytes"
	"strings"
	"sync"
)

// Buffer is a bytes.Buffer safe for concurrent use. Its zero value is an empty buffer ready to use; use it by
// pointer (as the writer of a slog handler, or as a child process's Stdout and Stderr).
type Buffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

// Write appends p to the buffer. It never returns an error.
func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

// String returns everything written so far.
func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// Lines returns everything written so far as lines, without their line ends and without a trailing empty line;
// it returns nil when nothing but space was written.
func (b *Buffer) Lines() []string {
	s := strings.TrimSpace(b.String())
	if s == "" {
		return nil
	}
	return strings.Split(s, "\n")
}
