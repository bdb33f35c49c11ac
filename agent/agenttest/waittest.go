package agenttest

import (
	"context"
	"errors"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/loom-dev/loom/agent"
	agentv1 "github.com/loom-dev/loom/gen/loom/agent/v1"
)

// runWaitTests is the contract of the Store methods of runs waiting for client tool results.
func runWaitTests(t *testing.T, newStore func(t *testing.T) agent.Store) {
	ctx := context.Background()
	now := time.Now().UTC().Truncate(time.Millisecond)
	mk := func(s agent.Store, tenant, id string) *agentv1.Run {
		t.Helper()
		r := &agentv1.Run{Id: id, Agent: "a", AgentVersion: 1, State: agentv1.RunState_RUN_STATE_RUNNING,
			Input: "hi", CreateTime: timestamppb.New(now)}
		if err := s.CreateRun(ctx, tenant, r, agent.Lease{Owner: "p1", Until: now.Add(time.Minute)}); err != nil {
			t.Fatalf("CreateRun %s: %v", id, err)
		}
		return r
	}
	park := func(s agent.Store, tenant string, r *agentv1.Run, deadline time.Time) {
		t.Helper()
		r.State = agentv1.RunState_RUN_STATE_WAITING_FOR_TOOLS
		r.Steps = []*agentv1.Step{{Index: 0, ToolCalls: []*agentv1.ToolCall{{Id: "c1", Name: "tool"}}}}
		r.PendingToolCalls, r.WaitDeadline = r.Steps[0].ToolCalls, timestamppb.New(deadline)
		r.Usage = &agentv1.Usage{InputTokens: 3, OutputTokens: 4}
		if err := s.WaitRun(ctx, tenant, r, agent.Wait{Deadline: deadline, State: []byte(`{"v":1}`)}); err != nil {
			t.Fatalf("WaitRun %s: %v", r.GetId(), err)
		}
	}

	t.Run("WaitUpdateResume", func(t *testing.T) {
		t.Parallel()
		s := newStore(t)
		r := mk(s, "t1", "r1")
		park(s, "t1", r, now.Add(time.Hour))
		if err := s.WaitRun(ctx, "t1", r, agent.Wait{Deadline: now, State: []byte("x")}); !errors.Is(err, agent.ErrConflict) {
			t.Errorf("WaitRun of a waiting run: err = %v, want ErrConflict", err)
		}
		if err := s.WaitRun(ctx, "t1", &agentv1.Run{Id: "nope"}, agent.Wait{State: []byte("x")}); !errors.Is(err, agent.ErrNotFound) {
			t.Errorf("WaitRun of a missing run: err = %v, want ErrNotFound", err)
		}
		got, err := s.GetRun(ctx, "t1", "r1")
		if err != nil {
			t.Fatal(err)
		}
		if got.GetState() != agentv1.RunState_RUN_STATE_WAITING_FOR_TOOLS || len(got.GetPendingToolCalls()) != 1 ||
			!got.GetWaitDeadline().AsTime().Equal(now.Add(time.Hour)) || got.GetUsage().GetOutputTokens() != 4 {
			t.Fatalf("GetRun of a waiting run = %v", got)
		}
		// The waiting run holds no lease: neither renewed nor failed as cut off.
		if n, err := s.RenewLeases(ctx, "p1", now.Add(time.Hour)); err != nil || n != 0 {
			t.Errorf("RenewLeases = %d, %v; want 0", n, err)
		}
		if n, err := s.FailExpiredRuns(ctx, now.Add(2*time.Minute), "interrupted"); err != nil || n != 0 {
			t.Errorf("FailExpiredRuns = %d, %v; want 0", n, err)
		}
		if _, err := s.GetWait(ctx, "t2", "r1"); !errors.Is(err, agent.ErrNotFound) {
			t.Errorf("GetWait other tenant: err = %v, want ErrNotFound", err)
		}
		w, err := s.GetWait(ctx, "t1", "r1")
		if err != nil || w.Version != 1 || string(w.State) != `{"v":1}` || !w.Deadline.Equal(now.Add(time.Hour)) {
			t.Fatalf("GetWait = %+v, %v; want version 1 with the state and deadline", w, err)
		}
		r.PendingToolCalls = nil
		if err := s.UpdateWait(ctx, "t1", r, agent.Wait{Version: 1, State: []byte(`{"v":2}`)}); err != nil {
			t.Fatalf("UpdateWait: %v", err)
		}
		if err := s.UpdateWait(ctx, "t1", r, agent.Wait{Version: 1, State: []byte(`{"v":3}`)}); !errors.Is(err, agent.ErrConflict) {
			t.Errorf("UpdateWait stale: err = %v, want ErrConflict", err)
		}
		if got, _ := s.GetRun(ctx, "t1", "r1"); len(got.GetPendingToolCalls()) != 0 {
			t.Errorf("pending calls after UpdateWait = %v, want none", got.GetPendingToolCalls())
		}
		if w, err = s.GetWait(ctx, "t1", "r1"); err != nil || w.Version != 2 || string(w.State) != `{"v":2}` {
			t.Fatalf("GetWait after update = %+v, %v", w, err)
		}
		lease := agent.Lease{Owner: "p2", Until: now.Add(time.Minute)}
		if err := s.ResumeRun(ctx, "t1", "r1", 1, lease); !errors.Is(err, agent.ErrConflict) {
			t.Errorf("ResumeRun stale version: err = %v, want ErrConflict", err)
		}
		if err := s.ResumeRun(ctx, "t1", "r1", 2, lease); err != nil {
			t.Fatalf("ResumeRun: %v", err)
		}
		if err := s.ResumeRun(ctx, "t1", "r1", 2, lease); !errors.Is(err, agent.ErrConflict) {
			t.Errorf("ResumeRun twice: err = %v, want ErrConflict", err)
		}
		if _, err := s.GetWait(ctx, "t1", "r1"); !errors.Is(err, agent.ErrNotFound) {
			t.Errorf("GetWait after resume: err = %v, want ErrNotFound", err)
		}
		got, _ = s.GetRun(ctx, "t1", "r1")
		if got.GetState() != agentv1.RunState_RUN_STATE_RUNNING || len(got.GetPendingToolCalls()) != 0 || len(got.GetSteps()) != 1 {
			t.Fatalf("resumed run = %v, want RUNNING with its step and no pending calls", got)
		}
		if n, err := s.RenewLeases(ctx, "p2", now.Add(time.Hour)); err != nil || n != 1 {
			t.Errorf("RenewLeases(p2) = %d, %v; want the resumed run leased to p2", n, err)
		}
		r.State, r.Output, r.EndTime = agentv1.RunState_RUN_STATE_SUCCEEDED, "ok", timestamppb.New(now)
		if err := s.FinishRun(ctx, "t1", r); err != nil {
			t.Fatalf("FinishRun after resume: %v", err)
		}
	})

	t.Run("FinishAndExpire", func(t *testing.T) {
		t.Parallel()
		s := newStore(t)
		cancelled, expired, live := mk(s, "t1", "c"), mk(s, "t2", "e"), mk(s, "t1", "l")
		park(s, "t1", cancelled, now.Add(time.Hour))
		park(s, "t2", expired, now.Add(-time.Second))
		park(s, "t1", live, now.Add(time.Hour))
		cancelled.State, cancelled.Error, cancelled.EndTime = agentv1.RunState_RUN_STATE_CANCELLED, "cancelled", timestamppb.New(now)
		if err := s.FinishWait(ctx, "t1", cancelled); err != nil {
			t.Fatalf("FinishWait: %v", err)
		}
		if err := s.FinishWait(ctx, "t1", cancelled); !errors.Is(err, agent.ErrConflict) {
			t.Errorf("FinishWait twice: err = %v, want ErrConflict", err)
		}
		if err := s.FinishWait(ctx, "t1", &agentv1.Run{Id: "nope"}); !errors.Is(err, agent.ErrNotFound) {
			t.Errorf("FinishWait missing: err = %v, want ErrNotFound", err)
		}
		if err := s.ResumeRun(ctx, "t1", "c", 1, agent.Lease{Owner: "p"}); !errors.Is(err, agent.ErrConflict) {
			t.Errorf("ResumeRun of a cancelled run: err = %v, want ErrConflict", err)
		}
		if n, err := s.FailExpiredWaits(ctx, now, "late"); err != nil || n != 1 {
			t.Errorf("FailExpiredWaits = %d, %v; want 1", n, err)
		}
		for _, c := range []struct {
			tenant, id string
			state      agentv1.RunState
			err        string
		}{
			{"t1", "c", agentv1.RunState_RUN_STATE_CANCELLED, "cancelled"},
			{"t2", "e", agentv1.RunState_RUN_STATE_FAILED, "late"},
			{"t1", "l", agentv1.RunState_RUN_STATE_WAITING_FOR_TOOLS, ""},
		} {
			r, err := s.GetRun(ctx, c.tenant, c.id)
			if err != nil || r.GetState() != c.state || r.GetError() != c.err {
				t.Errorf("run %s = %v %q, %v; want %v %q", c.id, r.GetState(), r.GetError(), err, c.state, c.err)
			}
			if c.state != agentv1.RunState_RUN_STATE_WAITING_FOR_TOOLS && (len(r.GetPendingToolCalls()) != 0 || r.GetEndTime() == nil) {
				t.Errorf("ended run %s = %v, want an end time and no pending calls", c.id, r)
			}
		}
		// Deleting a waiting run drops its saved state.
		if err := s.DeleteRun(ctx, "t1", "l"); err != nil {
			t.Fatal(err)
		}
		if _, err := s.GetWait(ctx, "t1", "l"); !errors.Is(err, agent.ErrNotFound) {
			t.Errorf("GetWait after DeleteRun: err = %v, want ErrNotFound", err)
		}
	})
}
