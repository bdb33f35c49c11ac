package orchestratortest

import (
	"context"
	"testing"
	"time"
)

// Engine is the part of a run engine (an *engine.Engine) that [StartEngine] uses.
type Engine interface {
	Start(ctx context.Context) error
	Stop(ctx context.Context) error
}

// StartEngine starts e, failing the test if it cannot, and stops it when the test ends, allowing 10 seconds.
func StartEngine(tb testing.TB, e Engine) {
	tb.Helper()
	if err := e.Start(context.Background()); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = e.Stop(ctx)
	})
}
