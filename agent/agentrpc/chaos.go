package agentrpc

import (
	"context"
	"fmt"
	"iter"
	"math/rand/v2"
	"strings"
	"sync"
	"time"

	"connectrpc.com/connect"

	"github.com/loom-dev/loom/agent/model"
	agentv1 "github.com/loom-dev/loom/gen/loom/agent/v1"
)

// The chaos engine: faults injected into a run's model calls on request (agentv1.Chaos, on the agent or the run
// request), whatever the provider. Every draw comes from a PCG seeded by the chaos seed and by the attempt and
// the model call's index in the run, in a fixed order (latency, failure, truncation), so a run replays exactly
// with the same seed and attempt and a new attempt draws anew. Injected failures are provider faults of
// provider "chaos": they carry the upstream provider-fault detail with the chosen code, and they wrap the chaos
// model around the tenant's provider breaker, so they never trip a breaker.

// chaosModel injects c's faults into m's calls. Made per run; safe for concurrent use.
type chaosModel struct {
	m       model.Model
	c       *agentv1.Chaos
	seed    uint64
	attempt int32

	mu    sync.Mutex
	calls uint64
	tools uint64 // tool calls drawn for so far
}

// Streams of draws: model calls use the attempt and the call index; tool calls and memory use their own
// streams, so adding a tool failure rate does not change which model calls fail.
const (
	chaosToolStream   = 1 << 62
	chaosMemoryStream = 1 << 61
)

// toolFault draws for the run's next tool call and returns the error to tell the model, or "".
func (cm *chaosModel) toolFault(name string) string {
	if cm == nil || cm.c.GetToolFailureRate() <= 0 {
		return ""
	}
	cm.mu.Lock()
	n := cm.tools
	cm.tools++
	cm.mu.Unlock()
	rng := rand.New(rand.NewPCG(cm.seed, chaosToolStream|uint64(cm.attempt)<<32|n))
	if rng.Float64() >= float64(cm.c.GetToolFailureRate()) {
		return ""
	}
	return fmt.Sprintf("chaos: injected failure of tool %s (seed %d, attempt %d, tool call %d)", name, cm.seed, cm.attempt, n)
}

// memoryFault draws for the run's memory retrieval and reports whether it fails.
func (cm *chaosModel) memoryFault() bool {
	if cm == nil || cm.c.GetMemoryFailureRate() <= 0 {
		return false
	}
	rng := rand.New(rand.NewPCG(cm.seed, chaosMemoryStream|uint64(cm.attempt)<<32))
	return rng.Float64() < float64(cm.c.GetMemoryFailureRate())
}

// chaosCode maps a ChaosCode to the Connect code of the injected failure.
func chaosCode(c agentv1.ChaosCode) connect.Code {
	switch c {
	case agentv1.ChaosCode_CHAOS_CODE_RESOURCE_EXHAUSTED:
		return connect.CodeResourceExhausted
	case agentv1.ChaosCode_CHAOS_CODE_DEADLINE_EXCEEDED:
		return connect.CodeDeadlineExceeded
	case agentv1.ChaosCode_CHAOS_CODE_INTERNAL:
		return connect.CodeInternal
	}
	return connect.CodeUnavailable
}

func (cm *chaosModel) fault(call uint64, what string) error {
	code := chaosCode(cm.c.GetCode())
	return &providerFault{provider: "chaos", code: code, err: fmt.Errorf("chaos: injected %s (%s; seed %d, attempt %d, model call %d): %w",
		strings.ToUpper(code.String()), what, cm.seed, cm.attempt, call, model.ErrUnavailable)}
}

// Stream implements model.Model.
func (cm *chaosModel) Stream(ctx context.Context, req model.Request) iter.Seq2[model.Chunk, error] {
	return func(yield func(model.Chunk, error) bool) {
		cm.mu.Lock()
		call := cm.calls
		cm.calls++
		cm.mu.Unlock()
		rng := rand.New(rand.NewPCG(cm.seed, uint64(cm.attempt)<<32|call))
		lo, hi := cm.c.GetLatencyMin().AsDuration(), cm.c.GetLatencyMax().AsDuration()
		d := lo
		if hi > lo {
			d += time.Duration(rng.Int64N(int64(hi-lo) + 1))
		} else {
			_ = rng.Uint64() // one draw, as Int64N above makes: the draw order stays fixed
		}
		fail := rng.Float64() < float64(cm.c.GetFailureRate())
		truncate := rng.Float64() < float64(cm.c.GetTruncateRate())
		if d > 0 {
			t := time.NewTimer(d)
			select {
			case <-ctx.Done():
				t.Stop()
				yield(model.Chunk{}, context.Cause(ctx))
				return
			case <-t.C:
			}
		}
		switch {
		case call == 0 && cm.attempt <= cm.c.GetFailAttempts():
			yield(model.Chunk{}, cm.fault(call, fmt.Sprintf("transient fault of attempts 1 to %d", cm.c.GetFailAttempts())))
			return
		case fail:
			yield(model.Chunk{}, cm.fault(call, fmt.Sprintf("failure_rate %g", cm.c.GetFailureRate())))
			return
		}
		for c, err := range cm.m.Stream(ctx, req) {
			if !yield(c, err) || err != nil {
				return
			}
			if truncate {
				yield(model.Chunk{}, cm.fault(call, "stream truncated after its first chunk"))
				return
			}
		}
	}
}

// chaosFor returns the chaos of a run: the request's, else the agent's, else nil.
func chaosFor(a *agentv1.Agent, req *agentv1.Chaos) *agentv1.Chaos {
	if req != nil {
		return req
	}
	return a.GetChaos()
}
