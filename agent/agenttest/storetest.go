// Package agenttest holds test helpers for the agent service: the Store contract suite every backend runs, and a
// fake memory service client with controllable latency and failures.
package agenttest

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/loom-dev/loom/agent"
	agentv1 "github.com/loom-dev/loom/gen/loom/agent/v1"
)

// RunStoreTests runs the agent.Store contract against stores made by newStore, each fresh and empty.
func RunStoreTests(t *testing.T, newStore func(t *testing.T) agent.Store) {
	t.Helper()
	ctx := context.Background()
	runUsageTests(t, newStore)
	runWaitTests(t, newStore)
	runMCPServerTests(t, newStore)

	t.Run("AgentVersions", func(t *testing.T) {
		t.Parallel()
		s := newStore(t)
		in := &agentv1.Agent{Name: "helper", DisplayName: "Helper", Instructions: "be kind",
			Model: &agentv1.Model{Provider: agentv1.Provider_PROVIDER_SIM}}
		a1, err := s.CreateAgent(ctx, "t1", in)
		if err != nil {
			t.Fatalf("CreateAgent: %v", err)
		}
		if a1.GetVersion() != 1 || a1.GetEtag() == "" || a1.GetCreateTime() == nil {
			t.Fatalf("CreateAgent = %v, want version 1 with etag and times", a1)
		}
		if _, err := s.CreateAgent(ctx, "t1", in); !errors.Is(err, agent.ErrAlreadyExists) {
			t.Fatalf("CreateAgent again: err = %v, want ErrAlreadyExists", err)
		}
		// Another tenant may use the same name and does not see t1's agent.
		if _, err := s.GetAgent(ctx, "t2", "helper", 0); !errors.Is(err, agent.ErrNotFound) {
			t.Fatalf("GetAgent other tenant: err = %v, want ErrNotFound", err)
		}
		if _, err := s.CreateAgent(ctx, "t2", in); err != nil {
			t.Fatalf("CreateAgent other tenant: %v", err)
		}

		upd := &agentv1.Agent{Name: "helper", DisplayName: "Helper", Instructions: "be brief"}
		a2, err := s.UpdateAgent(ctx, "t1", upd, 1)
		if err != nil {
			t.Fatalf("UpdateAgent: %v", err)
		}
		if a2.GetVersion() != 2 || a2.GetEtag() == a1.GetEtag() {
			t.Fatalf("UpdateAgent = version %d etag %q, want version 2 and a new etag", a2.GetVersion(), a2.GetEtag())
		}
		if !a2.GetCreateTime().AsTime().Equal(a1.GetCreateTime().AsTime()) {
			t.Errorf("create_time changed on update: %v -> %v", a1.GetCreateTime(), a2.GetCreateTime())
		}
		if _, err := s.UpdateAgent(ctx, "t1", upd, 1); !errors.Is(err, agent.ErrConflict) {
			t.Fatalf("UpdateAgent stale version: err = %v, want ErrConflict", err)
		}
		if _, err := s.UpdateAgent(ctx, "t1", &agentv1.Agent{Name: "nobody"}, 1); !errors.Is(err, agent.ErrNotFound) {
			t.Fatalf("UpdateAgent missing: err = %v, want ErrNotFound", err)
		}
		latest, err := s.GetAgent(ctx, "t1", "helper", 0)
		if err != nil {
			t.Fatalf("GetAgent latest: %v", err)
		}
		if diff := cmp.Diff(a2, latest, protocmp.Transform()); diff != "" {
			t.Errorf("GetAgent latest (-want +got):\n%s", diff)
		}
		old, err := s.GetAgent(ctx, "t1", "helper", 1)
		if err != nil {
			t.Fatalf("GetAgent v1: %v", err)
		}
		if diff := cmp.Diff(a1, old, protocmp.Transform()); diff != "" {
			t.Errorf("GetAgent v1 (-want +got):\n%s", diff)
		}
		if _, err := s.GetAgent(ctx, "t1", "helper", 3); !errors.Is(err, agent.ErrNotFound) {
			t.Fatalf("GetAgent v3: err = %v, want ErrNotFound", err)
		}
		if err := s.DeleteAgent(ctx, "t1", "helper"); err != nil {
			t.Fatalf("DeleteAgent: %v", err)
		}
		if err := s.DeleteAgent(ctx, "t1", "helper"); !errors.Is(err, agent.ErrNotFound) {
			t.Fatalf("DeleteAgent again: err = %v, want ErrNotFound", err)
		}
		if _, err := s.GetAgent(ctx, "t2", "helper", 0); err != nil {
			t.Fatalf("other tenant's agent gone after delete: %v", err)
		}
	})

	t.Run("ListAgents", func(t *testing.T) {
		t.Parallel()
		s := newStore(t)
		names := []string{"delta", "alpha", "charlie", "bravo", "echo"}
		for _, n := range names {
			if _, err := s.CreateAgent(ctx, "t1", &agentv1.Agent{Name: n}); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := s.UpdateAgent(ctx, "t1", &agentv1.Agent{Name: "charlie", DisplayName: "C"}, 1); err != nil {
			t.Fatal(err)
		}
		if _, err := s.CreateAgent(ctx, "t2", &agentv1.Agent{Name: "zulu"}); err != nil {
			t.Fatal(err)
		}
		var got []string
		token := ""
		for pages := 0; ; pages++ {
			if pages > 5 {
				t.Fatal("pagination does not end")
			}
			page, next, err := s.ListAgents(ctx, "t1", 2, token)
			if err != nil {
				t.Fatalf("ListAgents: %v", err)
			}
			for _, a := range page {
				got = append(got, fmt.Sprintf("%s@%d", a.GetName(), a.GetVersion()))
			}
			if next == "" {
				break
			}
			token = next
		}
		want := []string{"alpha@1", "bravo@1", "charlie@2", "delta@1", "echo@1"}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("ListAgents (-want +got):\n%s", diff)
		}
		if _, _, err := s.ListAgents(ctx, "t1", 2, "!!not a token"); !errors.Is(err, agent.ErrInvalidArgument) {
			t.Errorf("ListAgents bad token: err = %v, want ErrInvalidArgument", err)
		}
	})

	t.Run("Runs", func(t *testing.T) {
		t.Parallel()
		s := newStore(t)
		base := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
		mk := func(id, ag string, minute int, key string) *agentv1.Run {
			return &agentv1.Run{Id: id, Agent: ag, AgentVersion: 1, State: agentv1.RunState_RUN_STATE_RUNNING,
				Input: "hi " + id, Provider: agentv1.Provider_PROVIDER_SIM, Model: "sim", IdempotencyKey: key,
				CreateTime: timestamppb.New(base.Add(time.Duration(minute) * time.Minute))}
		}
		for i, r := range []*agentv1.Run{mk("r1", "a", 1, "k1"), mk("r2", "b", 2, ""), mk("r3", "a", 3, ""),
			mk("r4", "a", 4, "k4"), mk("r5", "b", 5, "")} {
			if err := s.CreateRun(ctx, "t1", r, agent.Lease{}); err != nil {
				t.Fatalf("CreateRun %d: %v", i, err)
			}
		}
		if err := s.CreateRun(ctx, "t1", mk("r6", "a", 6, "k1"), agent.Lease{}); !errors.Is(err, agent.ErrAlreadyExists) {
			t.Fatalf("CreateRun duplicate key: err = %v, want ErrAlreadyExists", err)
		}
		if err := s.CreateRun(ctx, "t2", mk("r7", "a", 6, "k1"), agent.Lease{}); err != nil {
			t.Fatalf("CreateRun same key other tenant: %v", err)
		}
		byKey, err := s.GetRunByIdempotencyKey(ctx, "t1", "k1")
		if err != nil || byKey.GetId() != "r1" {
			t.Fatalf("GetRunByIdempotencyKey = %v, %v; want r1", byKey.GetId(), err)
		}
		if _, err := s.GetRunByIdempotencyKey(ctx, "t1", "nope"); !errors.Is(err, agent.ErrNotFound) {
			t.Fatalf("GetRunByIdempotencyKey missing: err = %v", err)
		}

		done := mk("r3", "a", 3, "")
		done.State = agentv1.RunState_RUN_STATE_SUCCEEDED
		done.Output = "bye"
		done.Usage = &agentv1.Usage{InputTokens: 10, OutputTokens: 3}
		done.Warnings = []string{"memory unavailable"}
		done.Steps = []*agentv1.Step{{Index: 0, Text: "bye", Usage: &agentv1.Usage{InputTokens: 10, OutputTokens: 3},
			ToolCalls: []*agentv1.ToolCall{{Id: "c1", Name: "memory_search"}}}}
		done.EndTime = timestamppb.New(base.Add(4 * time.Minute))
		if err := s.FinishRun(ctx, "t1", done); err != nil {
			t.Fatalf("FinishRun: %v", err)
		}
		if err := s.FinishRun(ctx, "t1", done); !errors.Is(err, agent.ErrConflict) {
			t.Fatalf("FinishRun twice: err = %v, want ErrConflict", err)
		}
		if err := s.FinishRun(ctx, "t2", done); !errors.Is(err, agent.ErrNotFound) {
			t.Fatalf("FinishRun other tenant: err = %v, want ErrNotFound", err)
		}
		got, err := s.GetRun(ctx, "t1", "r3")
		if err != nil {
			t.Fatalf("GetRun: %v", err)
		}
		if diff := cmp.Diff(done, got, protocmp.Transform()); diff != "" {
			t.Errorf("GetRun (-want +got):\n%s", diff)
		}
		if _, err := s.GetRun(ctx, "t2", "r3"); !errors.Is(err, agent.ErrNotFound) {
			t.Fatalf("GetRun other tenant: err = %v, want ErrNotFound", err)
		}
		// A run may be created already finished (the agent writes a short run once): it reads back whole and
		// cannot be finished again.
		whole := proto.CloneOf(done)
		whole.Id = "r9"
		if err := s.CreateRun(ctx, "t3", whole, agent.Lease{}); err != nil {
			t.Fatalf("CreateRun of a finished run: %v", err)
		}
		if got, err := s.GetRun(ctx, "t3", "r9"); err != nil {
			t.Fatalf("GetRun of a run created finished: %v", err)
		} else if diff := cmp.Diff(whole, got, protocmp.Transform()); diff != "" {
			t.Errorf("GetRun of a run created finished (-want +got):\n%s", diff)
		}
		if err := s.FinishRun(ctx, "t3", whole); !errors.Is(err, agent.ErrConflict) {
			t.Errorf("FinishRun of a run created finished: err = %v, want ErrConflict", err)
		}

		list := func(f agent.RunFilter, size int) []string {
			t.Helper()
			var ids []string
			token := ""
			for pages := 0; ; pages++ {
				if pages > 10 {
					t.Fatal("pagination does not end")
				}
				page, next, err := s.ListRuns(ctx, "t1", f, size, token)
				if err != nil {
					t.Fatalf("ListRuns: %v", err)
				}
				for _, r := range page {
					if len(r.GetSteps()) != 0 {
						t.Errorf("ListRuns returned steps for %s", r.GetId())
					}
					ids = append(ids, r.GetId())
				}
				if next == "" {
					return ids
				}
				token = next
			}
		}
		for _, tc := range []struct {
			name string
			f    agent.RunFilter
			want []string
		}{
			{name: "all", want: []string{"r5", "r4", "r3", "r2", "r1"}},
			{name: "agent", f: agent.RunFilter{Agent: "a"}, want: []string{"r4", "r3", "r1"}},
			{name: "range", f: agent.RunFilter{Start: base.Add(2 * time.Minute), End: base.Add(4 * time.Minute)},
				want: []string{"r3", "r2"}},
			{name: "agent and range", f: agent.RunFilter{Agent: "b", Start: base.Add(3 * time.Minute)},
				want: []string{"r5"}},
		} {
			if diff := cmp.Diff(tc.want, list(tc.f, 2)); diff != "" {
				t.Errorf("ListRuns %s (-want +got):\n%s", tc.name, diff)
			}
		}
		if _, _, err := s.ListRuns(ctx, "t1", agent.RunFilter{}, 2, "e30"); !errors.Is(err, agent.ErrInvalidArgument) {
			t.Errorf("ListRuns bad token: err = %v, want ErrInvalidArgument", err)
		}

		// DeleteRun removes a run (in any state) and frees its idempotency key; other tenants' runs stay.
		if err := s.DeleteRun(ctx, "t2", "r1"); !errors.Is(err, agent.ErrNotFound) {
			t.Errorf("DeleteRun other tenant: err = %v, want ErrNotFound", err)
		}
		if err := s.DeleteRun(ctx, "t1", "r1"); err != nil {
			t.Fatalf("DeleteRun: %v", err)
		}
		if _, err := s.GetRun(ctx, "t1", "r1"); !errors.Is(err, agent.ErrNotFound) {
			t.Errorf("GetRun deleted: err = %v, want ErrNotFound", err)
		}
		if err := s.DeleteRun(ctx, "t1", "r1"); !errors.Is(err, agent.ErrNotFound) {
			t.Errorf("DeleteRun twice: err = %v, want ErrNotFound", err)
		}
		if err := s.CreateRun(ctx, "t1", mk("r8", "a", 8, "k1"), agent.Lease{}); err != nil {
			t.Errorf("CreateRun with a deleted run's key: %v", err)
		}
	})

	t.Run("Leases", func(t *testing.T) {
		t.Parallel()
		s := newStore(t)
		now := time.Now()
		mk := func(id string) *agentv1.Run {
			return &agentv1.Run{Id: id, Agent: "a", AgentVersion: 1, State: agentv1.RunState_RUN_STATE_RUNNING,
				Input: "hi", CreateTime: timestamppb.New(now)}
		}
		// live: owned by p1, leased ahead; dead: owned by p0, lease ended; other: another tenant, owned by p1;
		// done: finished, lease ended long ago.
		for _, c := range []struct {
			tenant, id string
			lease      agent.Lease
		}{
			{"t1", "live", agent.Lease{Owner: "p1", Until: now.Add(time.Minute)}},
			{"t1", "dead", agent.Lease{Owner: "p0", Until: now.Add(-time.Second)}},
			{"t2", "other", agent.Lease{Owner: "p1", Until: now.Add(-time.Second)}},
			{"t1", "done", agent.Lease{Owner: "p0", Until: now.Add(-time.Hour)}},
		} {
			if err := s.CreateRun(ctx, c.tenant, mk(c.id), c.lease); err != nil {
				t.Fatalf("CreateRun %s: %v", c.id, err)
			}
		}
		done := mk("done")
		done.State, done.Output, done.EndTime = agentv1.RunState_RUN_STATE_SUCCEEDED, "ok", timestamppb.New(now)
		if err := s.FinishRun(ctx, "t1", done); err != nil {
			t.Fatal(err)
		}
		if n, err := s.RenewLeases(ctx, "p1", now.Add(time.Minute)); err != nil || n != 2 {
			t.Errorf("RenewLeases(p1) = %d, %v; want 2 (live, other)", n, err)
		}
		if n, err := s.FailExpiredRuns(ctx, now, "interrupted"); err != nil || n != 1 {
			t.Errorf("FailExpiredRuns = %d, %v; want 1 (dead)", n, err)
		}
		want := map[string]agentv1.RunState{"t1/live": agentv1.RunState_RUN_STATE_RUNNING,
			"t1/dead": agentv1.RunState_RUN_STATE_FAILED, "t2/other": agentv1.RunState_RUN_STATE_RUNNING,
			"t1/done": agentv1.RunState_RUN_STATE_SUCCEEDED}
		for k, state := range want {
			tenant, id, _ := strings.Cut(k, "/")
			r, err := s.GetRun(ctx, tenant, id)
			if err != nil || r.GetState() != state {
				t.Errorf("run %s = %v, %v; want %v", k, r.GetState(), err, state)
			}
			if id == "dead" && (r.GetError() != "interrupted" || r.GetEndTime() == nil) {
				t.Errorf("failed run = error %q end %v; want the reason and an end time", r.GetError(), r.GetEndTime())
			}
		}
		// A run failed this way can no longer be finished by a late owner.
		late := mk("dead")
		late.State = agentv1.RunState_RUN_STATE_SUCCEEDED
		if err := s.FinishRun(ctx, "t1", late); !errors.Is(err, agent.ErrConflict) {
			t.Errorf("FinishRun after the sweep: err = %v, want ErrConflict", err)
		}
		if n, err := s.FailExpiredRuns(ctx, now.Add(2*time.Minute), "interrupted"); err != nil || n != 2 {
			t.Errorf("FailExpiredRuns later = %d, %v; want 2", n, err)
		}
	})
}
