package engine

import (
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/structpb"

	orchestratorv1 "github.com/loom-dev/loom/gen/loom/orchestrator/v1"
	"github.com/loom-dev/loom/internal/sqldb"
)

// TestEveryStepKindIsExecuted checks that the engine executes every step kind of the contract (read from the
// descriptor of Step's oneof "kind"): dispatch has a case for it, and a kind it hands to a goroutine (an attempt
// to record) is one hasWork reports and prepare knows how to run.
func TestEveryStepKindIsExecuted(t *testing.T) {
	t.Parallel()
	fields := (&orchestratorv1.Step{}).ProtoReflect().Descriptor().Oneofs().ByName("kind").Fields()
	if fields.Len() < 8 {
		t.Fatalf("the oneof kind has %d fields", fields.Len())
	}
	e := newEngine(nil, &sqldb.DB{Dialect: sqldb.SQLite}, nil, nil, Config{})
	now := time.Now()
	for i := range fields.Len() {
		f := fields.Get(i)
		def := &orchestratorv1.Step{Id: "a"}
		m := def.ProtoReflect()
		m.Set(f, m.NewField(f))
		r := newRun("run_kinds", "t", &orchestratorv1.Blueprint{Name: "kinds", Steps: []*orchestratorv1.Step{def}}, &structpb.Struct{}, "", now)
		s := r.steps[0]
		e.dispatch(r, s, now)
		if strings.Contains(s.err, "is not executed") {
			t.Errorf("dispatch(%s): %s", f.Name(), s.err)
		}
		if s.needsAttempt != hasWork(def) {
			t.Errorf("%s: dispatch hands it to a goroutine = %v, hasWork = %v", f.Name(), s.needsAttempt, hasWork(def))
		}
		if !hasWork(def) {
			continue
		}
		if _, err := e.prepare(r, s, nil); err != nil && errors.Is(err, errPermanent) && strings.Contains(err.Error(), "has no work") {
			t.Errorf("prepare(%s): %v", f.Name(), err)
		}
	}
}

// TestWaitingStateLiteral: the literal the pending-approval queries and the partial index run_steps_waiting
// (migration 00007) use is STEP_STATE_WAITING.
func TestWaitingStateLiteral(t *testing.T) {
	if want := strconv.Itoa(int(orchestratorv1.StepState_STEP_STATE_WAITING)); waitingState != want {
		t.Errorf("waitingState = %s, want %s", waitingState, want)
	}
}
