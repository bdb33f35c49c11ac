package blueprint

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"cel.dev/cel-go/cel"
	"cel.dev/cel-go/checker"
	celref "cel.dev/cel-go/common/types/ref"
)

// Defaults of Limits.
const (
	// DefaultCostLimit is the default Limits.Cost. Measured here, 1,000,000 units of a comprehension over
	// literals take 130-330 ms with cost tracking on.
	DefaultCostLimit = 1_000_000
	// DefaultInterruptCheckEvery is the default Limits.InterruptCheckEvery.
	DefaultInterruptCheckEvery = 100
	// DefaultAssumedSize is the default Limits.AssumedSize.
	DefaultAssumedSize = 100
	// DefaultEvalTimeout is the default Limits.Timeout. Cost units are not all equal in time: with cost tracking,
	// cel-go's comprehensions over lists from the data get slower as they go (1,000,000 units of a 5000x5000
	// comprehension take about 3 s here), so wall time is bounded too.
	DefaultEvalTimeout = 250 * time.Millisecond
)

// Limits bounds what one blueprint expression may cost. The zero value takes every default. A Limits is a value:
// safe to share.
//
// An expression is checked twice: when a blueprint is saved or validated, CEL's static estimate of its worst case
// must not exceed Cost (sizes of lists, maps and strings read from input and steps are assumed to be at most
// AssumedSize, since their real size is known only at run time; literals have their real size); and each
// evaluation stops with ErrCostLimit once it has used Cost units, or with ErrEvalTimeout after Timeout, checked
// every InterruptCheckEvery comprehension iterations.
type Limits struct {
	// Cost is the most CEL cost units one evaluation may use and one expression's estimate may reach; 0 means
	// DefaultCostLimit.
	Cost uint64
	// InterruptCheckEvery is how many comprehension iterations run between checks for cancellation; 0 means
	// DefaultInterruptCheckEvery.
	InterruptCheckEvery uint
	// AssumedSize is the size the static estimate assumes for lists, maps and strings whose size only the data
	// decides; 0 means DefaultAssumedSize.
	AssumedSize uint64
	// Timeout bounds one evaluation in wall time, whatever its cost; 0 means DefaultEvalTimeout.
	Timeout time.Duration
}

// DefaultLimits returns the default limits.
func DefaultLimits() Limits { return Limits{}.WithDefaults() }

// WithDefaults returns l with every zero field set to its default.
func (l Limits) WithDefaults() Limits {
	if l.Cost == 0 {
		l.Cost = DefaultCostLimit
	}
	if l.InterruptCheckEvery == 0 {
		l.InterruptCheckEvery = DefaultInterruptCheckEvery
	}
	if l.AssumedSize == 0 {
		l.AssumedSize = DefaultAssumedSize
	}
	if l.Timeout <= 0 {
		l.Timeout = DefaultEvalTimeout
	}
	return l
}

// ErrCostLimit is matched by the error of an evaluation stopped at Limits.Cost.
var ErrCostLimit = errors.New("expression cost limit exceeded")

// ErrEvalTimeout is matched by the error of an evaluation stopped at Limits.Timeout.
var ErrEvalTimeout = errors.New("expression evaluation timed out")

// sizeEstimator tells CEL's static estimate the assumed size of data whose size is unknown.
type sizeEstimator struct{ size uint64 }

func (s sizeEstimator) EstimateSize(checker.AstNode) *checker.SizeEstimate {
	return &checker.SizeEstimate{Min: 0, Max: s.size}
}

func (sizeEstimator) EstimateCallCost(string, string, *checker.AstNode, []checker.AstNode) *checker.CallEstimate {
	return nil
}

// EstimateCost returns CEL's estimate of the worst-case cost of a checked expression under l.
func (l Limits) EstimateCost(env *cel.Env, ast *cel.Ast) (uint64, error) {
	l = l.WithDefaults()
	est, err := env.EstimateCost(ast, sizeEstimator{size: l.AssumedSize})
	if err != nil {
		return 0, err
	}
	return est.Max, nil
}

// Program returns the program of a checked expression, bounded by l.
func (l Limits) Program(env *cel.Env, ast *cel.Ast) (cel.Program, error) {
	l = l.WithDefaults()
	return env.Program(ast, cel.CostLimit(l.Cost), cel.InterruptCheckFrequency(l.InterruptCheckEvery))
}

// Eval evaluates prg over vars within l's timeout (and ctx), turning a stop at a limit into ErrCostLimit or
// ErrEvalTimeout with a message that names the limit.
func (l Limits) Eval(ctx context.Context, prg cel.Program, vars map[string]any) (celref.Val, error) {
	l = l.WithDefaults()
	ctx, cancel := context.WithTimeout(ctx, l.Timeout)
	defer cancel()
	val, _, err := prg.ContextEval(ctx, vars)
	if err != nil {
		msg := err.Error()
		switch {
		case strings.Contains(msg, "cost limit exceeded"):
			return nil, fmt.Errorf("stopped after %d cost units: %w", l.Cost, ErrCostLimit)
		case strings.Contains(msg, "operation interrupted") || strings.Contains(msg, "operation cancelled"):
			if ctx.Err() != nil && context.Cause(ctx) == context.DeadlineExceeded {
				return nil, fmt.Errorf("stopped after %v: %w", l.Timeout, ErrEvalTimeout)
			}
		}
		return nil, err
	}
	return val, nil
}
