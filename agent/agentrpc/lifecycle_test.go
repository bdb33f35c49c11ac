package agentrpc_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/loom-dev/loom/agent"
	"github.com/loom-dev/loom/agent/agentrpc"
	"github.com/loom-dev/loom/agent/sqlstore"
	agentv1 "github.com/loom-dev/loom/gen/loom/agent/v1"
	"github.com/loom-dev/loom/internal/sqldb"
	"github.com/loom-dev/loom/internal/sqldb/sqldbtest"
)

// saverAgent saves one memory (a side effect) in its first model turn, then answers "saved".
func saverAgent(name string) *agentv1.Agent {
	return &agentv1.Agent{Name: name, Instructions: "x", Memory: &agentv1.MemoryConfig{Namespace: "notes"},
		Tools: []*agentv1.Tool{{Kind: &agentv1.Tool_MemorySave{MemorySave: &agentv1.MemorySaveTool{}}}},
		Model: &agentv1.Model{Sim: &agentv1.SimScript{Turns: []*agentv1.SimTurn{
			{ToolCalls: []*agentv1.ToolCall{{Name: "memory_save", Arguments: mustStruct(map[string]any{"text": "side effect"})}}},
			{Reply: "saved"},
		}}}}
}

// TestKeyedRunOutlivesDisconnect: a client (an orchestrator step) starts a run with an idempotency key and goes
// away mid-run (its stream is cancelled while the run is inside a memory call). The run is not CANCELLED: it
// finishes, and the retry with the same key gets its real result; the tool's side effect happened once.
func TestKeyedRunOutlivesDisconnect(t *testing.T) {
	t.Parallel()
	for _, client := range []string{"connect", "grpc"} {
		t.Run(client, func(t *testing.T) {
			t.Parallel()
			h := newHarness(t, agentrpc.Config{})
			c := h.clients[client]
			ctx := testCtx(t)
			create(t, ctx, c, saverAgent("saver"))
			entered, release := h.memory.Hold()
			defer release()
			sctx, cancel := context.WithCancel(ctx)
			stream, err := c.RunStream(sctx, &agentv1.RunStreamRequest{Agent: "saver", Input: "go", IdempotencyKey: "step-1"})
			if err != nil {
				t.Fatal(err)
			}
			first, err := stream.Recv()
			if err != nil || first.GetStarted() == nil {
				t.Fatalf("first event = %v, %v", first, err)
			}
			<-entered // the run is inside its memory search
			cancel()
			for err == nil {
				_, err = stream.Recv()
			}
			wantCode(t, err, codes.Canceled, "")
			release()
			resp, err := c.Run(ctx, &agentv1.RunRequest{Agent: "saver", Input: "go", IdempotencyKey: "step-1"})
			if err != nil {
				t.Fatalf("retry: %v", err)
			}
			run := resp.GetRun()
			if run.GetId() != first.GetRunId() || run.GetState() != agentv1.RunState_RUN_STATE_SUCCEEDED || run.GetOutput() != "saved" {
				t.Errorf("retry = %s %v %q, want run %s SUCCEEDED %q", run.GetId(), run.GetState(), run.GetOutput(), first.GetRunId(), "saved")
			}
			if n := len(h.memory.Records("notes")); n != 1 {
				t.Errorf("side effect happened %d times, want 1", n)
			}
		})
	}
}

// TestInterruptedRunsFailed: runs left RUNNING by a process that died (its lease ended) are marked FAILED with
// InterruptedReason by the next process's recovery; a run leased by a live replica is left alone; a caller
// retrying with the key of an interrupted run waits and then gets the FAILED run, not RUNNING. SQLite and
// Postgres, both clients.
func TestInterruptedRunsFailed(t *testing.T) {
	t.Parallel()
	sqldbtest.EachDialect(t, func(t *testing.T, d sqldb.Dialect) {
		t.Parallel()
		ctx := testCtx(t)
		store, err := sqlstore.New(ctx, sqldbtest.Open(t, d))
		if err != nil {
			t.Fatal(err)
		}
		now := time.Now()
		dead := agent.Lease{Owner: "crashed-process", Until: now.Add(-time.Second)}
		live := agent.Lease{Owner: "live-replica", Until: now.Add(time.Hour)}
		mk := func(id, key string, lease agent.Lease) {
			t.Helper()
			r := &agentv1.Run{Id: id, Agent: "a", AgentVersion: 1, State: agentv1.RunState_RUN_STATE_RUNNING,
				Input: "go", IdempotencyKey: key, CreateTime: timestamppb.New(now)}
			if err := store.CreateRun(ctx, "t1", r, lease); err != nil {
				t.Fatal(err)
			}
		}
		mk("cut-1", "", dead)
		mk("cut-2", "orch-key", dead)
		mk("elsewhere", "", live)
		h := newHarnessWith(t, store, agentrpc.Config{})
		for _, c := range h.clients {
			got, err := c.GetRun(ctx, &agentv1.GetRunRequest{Id: "cut-1"})
			if err != nil || got.GetRun().GetState() != agentv1.RunState_RUN_STATE_RUNNING {
				t.Fatalf("before recovery: %v, %v", got.GetRun().GetState(), err)
			}
		}
		// A retry of the interrupted step arrives before recovery: it waits instead of reading RUNNING.
		type result struct {
			run *agentv1.Run
			err error
		}
		retries := map[string]chan result{}
		for name, c := range h.clients {
			ch := make(chan result, 1)
			retries[name] = ch
			go func() {
				resp, err := c.Run(ctx, &agentv1.RunRequest{Agent: "a", Input: "go", IdempotencyKey: "orch-key"})
				ch <- result{resp.GetRun(), err}
			}()
		}
		n, err := h.server.RecoverRuns(ctx)
		if err != nil || n != 2 {
			t.Fatalf("RecoverRuns = %d, %v; want 2", n, err)
		}
		for name, ch := range retries {
			r := <-ch
			if r.err != nil || r.run.GetId() != "cut-2" || r.run.GetState() != agentv1.RunState_RUN_STATE_FAILED ||
				r.run.GetError() != agentrpc.InterruptedReason {
				t.Errorf("%s: retry = %v, %v; want cut-2 FAILED %q", name, r.run, r.err, agentrpc.InterruptedReason)
			}
		}
		stranded := 0
		for name, c := range h.clients {
			for id, want := range map[string]agentv1.RunState{"cut-1": agentv1.RunState_RUN_STATE_FAILED,
				"cut-2": agentv1.RunState_RUN_STATE_FAILED, "elsewhere": agentv1.RunState_RUN_STATE_RUNNING} {
				got, err := c.GetRun(ctx, &agentv1.GetRunRequest{Id: id})
				if err != nil || got.GetRun().GetState() != want {
					t.Errorf("%s: run %s = %v, %v; want %v", name, id, got.GetRun().GetState(), err, want)
				}
				if want == agentv1.RunState_RUN_STATE_FAILED && (got.GetRun().GetState() == agentv1.RunState_RUN_STATE_RUNNING || got.GetRun().GetEndTime() == nil) {
					stranded++
				}
			}
		}
		if again, err := h.server.RecoverRuns(ctx); err != nil || again != 0 {
			t.Errorf("second RecoverRuns = %d, %v; want 0", again, err)
		}
		t.Logf("%s: interrupted runs 2, marked FAILED %d, live replica's run left RUNNING, stranded %d", d, n, stranded)
	})
}

// TestMaintainKeepsOwnRuns: a process running Maintain renews the lease of its own long run, so a recovery by
// another replica (sharing the database) never fails it; the run is then cancelled and ends CANCELLED.
func TestMaintainKeepsOwnRuns(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	db := sqldbtest.Open(t, sqldb.SQLite)
	store, err := sqlstore.New(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	h := newHarnessWith(t, store, agentrpc.Config{RunLease: time.Hour})
	other, err := agentrpc.New(slog.New(slog.NewTextHandler(io.Discard, nil)), store, nil, agentrpc.Config{})
	if err != nil {
		t.Fatal(err)
	}
	mctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- h.server.Maintain(mctx) }()
	c := h.clients["grpc"]
	create(t, ctx, c, saverAgent("saver"))
	first := startHeldRun(t, ctx, h, c)
	if n, err := other.RecoverRuns(ctx); err != nil || n != 0 {
		t.Errorf("another replica's RecoverRuns = %d, %v; want 0 while the owner lives", n, err)
	}
	if _, err := c.CancelRun(ctx, &agentv1.CancelRunRequest{Id: first.GetRunId()}); err != nil {
		t.Fatal(err)
	}
	got, err := c.GetRun(ctx, &agentv1.GetRunRequest{Id: first.GetRunId()})
	if err != nil || got.GetRun().GetState() != agentv1.RunState_RUN_STATE_CANCELLED {
		t.Errorf("run = %v, %v; want CANCELLED", got.GetRun().GetState(), err)
	}
	stop()
	if err := <-done; err != context.Canceled {
		t.Errorf("Maintain = %v, want context.Canceled", err)
	}
}

// TestDeleteRun: DeleteRun removes a finished run, answers NotFound after, refuses a run executing here with
// FailedPrecondition, frees the idempotency key, and removes a run whose stored row cannot be decoded (which
// ListRuns skips). Both clients.
func TestDeleteRun(t *testing.T) {
	t.Parallel()
	for _, client := range []string{"connect", "grpc"} {
		t.Run(client, func(t *testing.T) {
			t.Parallel()
			ctx := testCtx(t)
			db := sqldbtest.Open(t, sqldb.SQLite)
			store, err := sqlstore.New(ctx, db, sqlstore.WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil))))
			if err != nil {
				t.Fatal(err)
			}
			h := newHarnessWith(t, store, agentrpc.Config{})
			c := h.clients[client]
			create(t, ctx, c, simAgent("echo", nil))
			var ids []string
			for i := range 4 {
				resp, err := c.Run(ctx, &agentv1.RunRequest{Agent: "echo", Input: fmt.Sprint("hi ", i), IdempotencyKey: fmt.Sprint("k", i)})
				if err != nil {
					t.Fatal(err)
				}
				ids = append(ids, resp.GetRun().GetId())
			}
			if _, err := c.DeleteRun(ctx, &agentv1.DeleteRunRequest{Id: ids[0]}); err != nil {
				t.Fatalf("DeleteRun: %v", err)
			}
			_, err = c.GetRun(ctx, &agentv1.GetRunRequest{Id: ids[0]})
			wantCode(t, err, codes.NotFound, "")
			_, err = c.DeleteRun(ctx, &agentv1.DeleteRunRequest{Id: ids[0]})
			wantCode(t, err, codes.NotFound, "")
			_, err = c.DeleteRun(ctx, &agentv1.DeleteRunRequest{})
			wantCode(t, err, codes.InvalidArgument, "id")
			_, err = c.DeleteRun(asTenant(ctx, "other"), &agentv1.DeleteRunRequest{Id: ids[1]})
			wantCode(t, err, codes.NotFound, "")
			again, err := c.Run(ctx, &agentv1.RunRequest{Agent: "echo", Input: "hi 0", IdempotencyKey: "k0"})
			if err != nil || again.GetRun().GetId() == ids[0] {
				t.Errorf("Run with a deleted run's key = %v, %v; want a new run", again.GetRun().GetId(), err)
			}

			// A row that can never be sent (text that is not UTF-8, a number that is not one) is skipped by
			// ListRuns and still deleted by DeleteRun.
			cdb := db.Component(sqldb.AgentComponent)
			if _, err := cdb.ExecContext(ctx, cdb.Rebind(`UPDATE loom.runs SET input = CAST(X'C328FF' AS TEXT) WHERE id = ?`), ids[1]); err != nil {
				t.Fatal(err)
			}
			if _, err := cdb.ExecContext(ctx, cdb.Rebind(`UPDATE loom.runs SET input_tokens = 'many' WHERE id = ?`), ids[2]); err != nil {
				t.Fatal(err)
			}
			var listed []string
			token := ""
			for range 10 {
				page, err := c.ListRuns(ctx, &agentv1.ListRunsRequest{PageSize: 1, PageToken: token})
				if err != nil {
					t.Fatalf("ListRuns with corrupt rows: %v", err)
				}
				for _, r := range page.GetRuns() {
					listed = append(listed, r.GetId())
				}
				if token = page.GetNextPageToken(); token == "" {
					break
				}
			}
			if want := []string{again.GetRun().GetId(), ids[3]}; strings.Join(listed, ",") != strings.Join(want, ",") {
				t.Errorf("ListRuns = %v, want %v (the corrupt rows skipped)", listed, want)
			}
			for _, id := range ids[1:3] {
				if _, err := c.DeleteRun(ctx, &agentv1.DeleteRunRequest{Id: id}); err != nil {
					t.Errorf("DeleteRun(corrupt %s): %v", id, err)
				}
			}

			// A run executing here must be cancelled first.
			create(t, ctx, c, saverAgent("saver"))
			first := startHeldRun(t, ctx, h, c)
			_, err = c.DeleteRun(ctx, &agentv1.DeleteRunRequest{Id: first.GetRunId()})
			wantCode(t, err, codes.FailedPrecondition, "cancel it first")
		})
	}
}

// startHeldRun starts a RunStream of the saver agent (created already) and returns its first event once the run
// is inside its memory search, which the fake memory holds until the test ends.
func startHeldRun(t *testing.T, ctx context.Context, h *harness, c agentv1.AgentServiceClient) *agentv1.RunStreamResponse {
	t.Helper()
	entered, release := h.memory.Hold()
	t.Cleanup(release)
	sctx, cancel := context.WithCancel(ctx)
	t.Cleanup(cancel)
	stream, err := c.RunStream(sctx, &agentv1.RunStreamRequest{Agent: "saver", Input: "go"})
	if err != nil {
		t.Fatal(err)
	}
	first, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	<-entered
	return first
}

func mustStruct(m map[string]any) *structpb.Struct {
	s, err := structpb.NewStruct(m)
	if err != nil {
		panic(err)
	}
	return s
}
