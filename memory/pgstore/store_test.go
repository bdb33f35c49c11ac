package pgstore

import (
	"context"
	"testing"

	"github.com/loom-dev/loom/internal/sqldb/sqldbtest"
	"github.com/loom-dev/loom/memory"
	"github.com/loom-dev/loom/memory/memorytest"
)

func open(t *testing.T) *Store {
	t.Helper()
	s, err := Open(context.Background(), sqldbtest.PostgresURL(t))
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestContract(t *testing.T) {
	memorytest.Run(t, func(t *testing.T) memory.Store { return open(t) })
}
