package agentrpc_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/loom-dev/loom/agent/agentrpc"
	"github.com/loom-dev/loom/agent/sqlstore"
	agentv1 "github.com/loom-dev/loom/gen/loom/agent/v1"
	"github.com/loom-dev/loom/internal/sqldb"
	"github.com/loom-dev/loom/internal/sqldb/sqldbtest"
)

// weatherTool is a client tool taking a required city.
func weatherTool(timeout time.Duration) *agentv1.ClientTool {
	c := &agentv1.ClientTool{Name: "get_weather", Description: "The weather in a city.",
		Parameters: mustStruct(map[string]any{"type": "object", "required": []any{"city"},
			"properties": map[string]any{"city": map[string]any{"type": "string"}}})}
	if timeout > 0 {
		c.Timeout = durationpb.New(timeout)
	}
	return c
}

// weatherScript calls get_weather for "weather" inputs, then answers from a "sunny" result.
func weatherScript(calls ...string) *agentv1.SimScript {
	if len(calls) == 0 {
		calls = []string{"Paris"}
	}
	var tc []*agentv1.ToolCall
	for i, city := range calls {
		tc = append(tc, &agentv1.ToolCall{Id: "call_" + string(rune('a'+i)), Name: "get_weather", Arguments: mustStruct(map[string]any{"city": city})})
	}
	return &agentv1.SimScript{Turns: []*agentv1.SimTurn{
		{WhenContains: "weather", ToolCalls: tc},
		{WhenContains: "sunny", Reply: "It is sunny."},
	}}
}

func sunny() *agentv1.ClientToolResult {
	return &agentv1.ClientToolResult{CallId: "call_a", Result: mustStruct(map[string]any{"forecast": "sunny"})}
}

func TestClientToolStreamWaitAndResume(t *testing.T) {
	t.Parallel()
	h := newHarness(t, agentrpc.Config{})
	h.eachNamedClient(t, "weather-", func(t *testing.T, ctx context.Context, c agentv1.AgentServiceClient, name string) {
		create(t, ctx, c, simAgent(name, weatherScript(), &agentv1.Tool{Kind: &agentv1.Tool_Client{Client: weatherTool(0)}}))

		events, err := recvAll(c.RunStream(ctx, &agentv1.RunStreamRequest{Agent: name, Input: "what is the weather in Paris?"}))
		if err != nil {
			t.Fatalf("RunStream: %v", err)
		}
		last := events[len(events)-1]
		waiting := last.GetWaiting()
		if waiting == nil {
			t.Fatalf("last event = %v, want waiting", last)
		}
		var sawCall bool
		for _, ev := range events {
			if ev.GetToolCall().GetName() == "get_weather" {
				sawCall = true
			}
			if ev.GetToolResult() != nil {
				t.Fatalf("a tool result was streamed before the caller answered: %v", ev)
			}
		}
		if !sawCall {
			t.Fatalf("no tool_call event for get_weather in %v", events)
		}
		if waiting.GetState() != agentv1.RunState_RUN_STATE_WAITING_FOR_TOOLS || len(waiting.GetPendingToolCalls()) != 1 ||
			waiting.GetPendingToolCalls()[0].GetId() != "call_a" || waiting.GetWaitDeadline() == nil {
			t.Fatalf("waiting run = %v, want WAITING_FOR_TOOLS with pending call_a and a deadline", waiting)
		}
		if d := time.Until(waiting.GetWaitDeadline().AsTime()); d < 9*time.Minute || d > agentrpc.DefaultClientToolTimeout {
			t.Errorf("wait deadline in %v, want about the default %v", d, agentrpc.DefaultClientToolTimeout)
		}
		got, err := c.GetRun(ctx, &agentv1.GetRunRequest{Id: waiting.GetId()})
		if err != nil || got.GetRun().GetState() != agentv1.RunState_RUN_STATE_WAITING_FOR_TOOLS || len(got.GetRun().GetPendingToolCalls()) != 1 {
			t.Fatalf("GetRun = %v, %v; want the waiting run with its pending call", got, err)
		}

		// Mistakes: an unknown run, an unknown call, a result and an error at once.
		_, err = c.SubmitToolResult(ctx, &agentv1.SubmitToolResultRequest{RunId: "nope", Results: []*agentv1.ClientToolResult{sunny()}})
		wantCode(t, err, codes.NotFound, "")
		_, err = c.SubmitToolResult(ctx, &agentv1.SubmitToolResultRequest{RunId: waiting.GetId(),
			Results: []*agentv1.ClientToolResult{{CallId: "call_z", Error: "x"}}})
		wantCode(t, err, codes.InvalidArgument, "results[0].call_id")
		both := sunny()
		both.Error = "broken"
		_, err = c.SubmitToolResult(ctx, &agentv1.SubmitToolResultRequest{RunId: waiting.GetId(), Results: []*agentv1.ClientToolResult{both}})
		wantCode(t, err, codes.InvalidArgument, "results[0]")
		_, err = c.SubmitToolResult(ctx, &agentv1.SubmitToolResultRequest{RunId: waiting.GetId(), Results: []*agentv1.ClientToolResult{sunny(), sunny()}})
		wantCode(t, err, codes.InvalidArgument, "results[1].call_id")

		resp, err := c.SubmitToolResult(ctx, &agentv1.SubmitToolResultRequest{RunId: waiting.GetId(), Results: []*agentv1.ClientToolResult{sunny()}})
		if err != nil {
			t.Fatalf("SubmitToolResult: %v", err)
		}
		run := resp.GetRun()
		if run.GetState() != agentv1.RunState_RUN_STATE_SUCCEEDED || run.GetOutput() != "It is sunny." || len(run.GetSteps()) != 2 {
			t.Fatalf("resumed run = %v, want SUCCEEDED with 2 steps and the sunny answer", run)
		}
		if res := run.GetSteps()[0].GetToolResults(); len(res) != 1 || res[0].GetResult().GetFields()["forecast"].GetStringValue() != "sunny" {
			t.Fatalf("step 0 tool results = %v, want the submitted result", res)
		}
		if len(run.GetPendingToolCalls()) != 0 || run.GetWaitDeadline() != nil {
			t.Errorf("finished run keeps pending calls or a deadline: %v", run)
		}

		// The same result again is a no-op: the model does not run again.
		again, err := c.SubmitToolResult(ctx, &agentv1.SubmitToolResultRequest{RunId: waiting.GetId(), Results: []*agentv1.ClientToolResult{sunny()}})
		if err != nil {
			t.Fatalf("SubmitToolResult again: %v", err)
		}
		if len(again.GetRun().GetSteps()) != 2 || again.GetRun().GetUsage().GetOutputTokens() != run.GetUsage().GetOutputTokens() {
			t.Fatalf("resubmission changed the run: %v, want %v", again.GetRun(), run)
		}
		// A different value for the answered call is refused.
		_, err = c.SubmitToolResult(ctx, &agentv1.SubmitToolResultRequest{RunId: waiting.GetId(),
			Results: []*agentv1.ClientToolResult{{CallId: "call_a", Error: "rain"}}})
		wantCode(t, err, codes.FailedPrecondition, "not waiting")
	})
}

func TestClientToolUnaryRunRequestTools(t *testing.T) {
	t.Parallel()
	h := newHarness(t, agentrpc.Config{})
	h.eachNamedClient(t, "req-", func(t *testing.T, ctx context.Context, c agentv1.AgentServiceClient, name string) {
		create(t, ctx, c, simAgent(name, weatherScript("Paris", "Rome")))

		// Two calls in one turn: answering one keeps the run waiting for the other.
		resp, err := c.Run(ctx, &agentv1.RunRequest{Agent: name, Input: "weather in Paris and Rome?",
			ClientTools: []*agentv1.ClientTool{weatherTool(time.Hour)}})
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
		run := resp.GetRun()
		if run.GetState() != agentv1.RunState_RUN_STATE_WAITING_FOR_TOOLS || len(run.GetPendingToolCalls()) != 2 {
			t.Fatalf("Run = %v, want WAITING_FOR_TOOLS with 2 pending calls", run)
		}
		if d := time.Until(run.GetWaitDeadline().AsTime()); d < 59*time.Minute || d > time.Hour {
			t.Errorf("wait deadline in %v, want the tool's 1h", d)
		}
		part, err := c.SubmitToolResult(ctx, &agentv1.SubmitToolResultRequest{RunId: run.GetId(), Results: []*agentv1.ClientToolResult{sunny()}})
		if err != nil {
			t.Fatalf("SubmitToolResult call_a: %v", err)
		}
		if p := part.GetRun().GetPendingToolCalls(); part.GetRun().GetState() != agentv1.RunState_RUN_STATE_WAITING_FOR_TOOLS || len(p) != 1 || p[0].GetId() != "call_b" {
			t.Fatalf("after one result: %v, want still waiting for call_b", part.GetRun())
		}
		done, err := c.SubmitToolResult(ctx, &agentv1.SubmitToolResultRequest{RunId: run.GetId(),
			Results: []*agentv1.ClientToolResult{sunny(), {CallId: "call_b", Result: mustStruct(map[string]any{"forecast": "sunny too"})}}})
		if err != nil {
			t.Fatalf("SubmitToolResult call_b: %v", err)
		}
		if done.GetRun().GetState() != agentv1.RunState_RUN_STATE_SUCCEEDED || len(done.GetRun().GetSteps()[0].GetToolResults()) != 2 {
			t.Fatalf("after both results: %v, want SUCCEEDED with both results", done.GetRun())
		}

		// Request tools must not clash with the agent's, and a workflow step cannot wait for a caller.
		_, err = c.Run(ctx, &agentv1.RunRequest{Agent: name, Input: "x", ClientTools: []*agentv1.ClientTool{weatherTool(0), weatherTool(0)}})
		wantCode(t, err, codes.InvalidArgument, "client_tools[1].name")
		_, err = c.Run(ctx, &agentv1.RunRequest{Agent: name, Input: "x", ClientTools: []*agentv1.ClientTool{{Name: "memory_search"}}})
		wantCode(t, err, codes.InvalidArgument, "client_tools[0].name")
		_, err = c.Run(ctx, &agentv1.RunRequest{Agent: name, Input: "x", Blueprint: "flow", ClientTools: []*agentv1.ClientTool{weatherTool(0)}})
		wantCode(t, err, codes.FailedPrecondition, "workflow step")
	})
}

func TestClientToolDeadlineAndCancel(t *testing.T) {
	t.Parallel()
	h := newHarness(t, agentrpc.Config{})
	h.eachNamedClient(t, "late-", func(t *testing.T, ctx context.Context, c agentv1.AgentServiceClient, name string) {
		create(t, ctx, c, simAgent(name, weatherScript(), &agentv1.Tool{Kind: &agentv1.Tool_Client{Client: weatherTool(300 * time.Millisecond)}}))
		start := func() *agentv1.Run {
			resp, err := c.Run(ctx, &agentv1.RunRequest{Agent: name, Input: "weather?"})
			if err != nil || resp.GetRun().GetState() != agentv1.RunState_RUN_STATE_WAITING_FOR_TOOLS {
				t.Fatalf("Run = %v, %v; want a waiting run", resp, err)
			}
			return resp.GetRun()
		}

		// Checked on read: nobody calls Maintain, GetRun finds it past its deadline.
		read := start()
		swept := start()
		time.Sleep(400 * time.Millisecond)
		got, err := c.GetRun(ctx, &agentv1.GetRunRequest{Id: read.GetId()})
		if err != nil {
			t.Fatalf("GetRun: %v", err)
		}
		if r := got.GetRun(); r.GetState() != agentv1.RunState_RUN_STATE_FAILED || !strings.Contains(r.GetError(), "wait_deadline") || len(r.GetPendingToolCalls()) != 0 {
			t.Fatalf("GetRun after the deadline = %v, want FAILED naming wait_deadline", r)
		}
		_, err = c.SubmitToolResult(ctx, &agentv1.SubmitToolResultRequest{RunId: read.GetId(), Results: []*agentv1.ClientToolResult{sunny()}})
		wantCode(t, err, codes.FailedPrecondition, "wait deadline")
		// Swept: the other run was failed by the same pass (or is failed now by a sweep).
		if _, err := h.server.ExpireWaits(ctx); err != nil {
			t.Fatalf("ExpireWaits: %v", err)
		}
		got, err = c.GetRun(ctx, &agentv1.GetRunRequest{Id: swept.GetId()})
		if err != nil || got.GetRun().GetState() != agentv1.RunState_RUN_STATE_FAILED {
			t.Fatalf("GetRun swept = %v, %v; want FAILED", got, err)
		}

		// CancelRun cancels a waiting run; its calls can no longer be answered.
		waiting := start()
		cr, err := c.CancelRun(ctx, &agentv1.CancelRunRequest{Id: waiting.GetId()})
		if err != nil || cr.GetRun().GetState() != agentv1.RunState_RUN_STATE_CANCELLED {
			t.Fatalf("CancelRun = %v, %v; want CANCELLED", cr, err)
		}
		_, err = c.SubmitToolResult(ctx, &agentv1.SubmitToolResultRequest{RunId: waiting.GetId(), Results: []*agentv1.ClientToolResult{sunny()}})
		wantCode(t, err, codes.FailedPrecondition, "CANCELLED")
	})
}

// TestClientToolSurvivesRestart closes the store and the server between the call and the answer: the run
// resumes on a new server over the same database, on SQLite and Postgres.
func TestClientToolSurvivesRestart(t *testing.T) {
	t.Parallel()
	sqldbtest.EachDialect(t, func(t *testing.T, d sqldb.Dialect) {
		t.Parallel()
		url := "sqlite:" + sqldbtest.SQLitePath(t)
		if d == sqldb.Postgres {
			url = sqldbtest.PostgresURL(t)
		}
		ctx := testCtx(t)
		open := func() (*harness, *sqldb.DB) {
			db, err := sqldb.Open(ctx, url)
			if err != nil {
				t.Fatal(err)
			}
			store, err := sqlstore.New(ctx, db)
			if err != nil {
				t.Fatal(err)
			}
			return newHarnessWith(t, store, agentrpc.Config{}), db
		}
		h1, db1 := open()
		c1 := h1.clients["grpc"]
		create(t, ctx, c1, simAgent("weather", weatherScript(), &agentv1.Tool{Kind: &agentv1.Tool_Client{Client: weatherTool(0)}}))
		resp, err := c1.Run(ctx, &agentv1.RunRequest{Agent: "weather", Input: "weather?", IdempotencyKey: "k1"})
		if err != nil || resp.GetRun().GetState() != agentv1.RunState_RUN_STATE_WAITING_FOR_TOOLS {
			t.Fatalf("Run = %v, %v; want a waiting run", resp, err)
		}
		// The waiting run holds no lease: recovery of crashed runs leaves it alone.
		if n, err := h1.server.RecoverRuns(ctx); err != nil || n != 0 {
			t.Fatalf("RecoverRuns = %d, %v; want 0", n, err)
		}
		if err := db1.Close(); err != nil {
			t.Fatal(err)
		}

		h2, db2 := open()
		defer db2.Close()
		c2 := h2.clients["connect"]
		// Idempotent Run with the same key returns the waiting run, not a new one.
		again, err := c2.Run(ctx, &agentv1.RunRequest{Agent: "weather", Input: "weather?", IdempotencyKey: "k1"})
		if err != nil || again.GetRun().GetId() != resp.GetRun().GetId() {
			t.Fatalf("Run with the same key = %v, %v; want run %s", again, err, resp.GetRun().GetId())
		}
		done, err := c2.SubmitToolResult(ctx, &agentv1.SubmitToolResultRequest{RunId: resp.GetRun().GetId(), Results: []*agentv1.ClientToolResult{sunny()}})
		if err != nil {
			t.Fatalf("SubmitToolResult after restart: %v", err)
		}
		if done.GetRun().GetState() != agentv1.RunState_RUN_STATE_SUCCEEDED || done.GetRun().GetOutput() != "It is sunny." {
			t.Fatalf("resumed run = %v, want SUCCEEDED", done.GetRun())
		}
	})
}

// TestClientToolDelegated: a delegated run cannot wait; the model is told instead.
func TestClientToolDelegated(t *testing.T) {
	t.Parallel()
	_, ctx, c := grpcHarness(t, agentrpc.Config{})
	create(t, ctx, c, simAgent("helper", weatherScript(), &agentv1.Tool{Kind: &agentv1.Tool_Client{Client: weatherTool(0)}}))
	create(t, ctx, c, simAgent("boss", &agentv1.SimScript{Turns: []*agentv1.SimTurn{
		{WhenContains: "go", ToolCalls: []*agentv1.ToolCall{{Id: "d1", Name: "delegate_helper", Arguments: mustStruct(map[string]any{"input": "weather?"})}}},
		{Reply: "done"},
	}}, &agentv1.Tool{Kind: &agentv1.Tool_Delegate{Delegate: &agentv1.DelegateTool{Agent: "helper"}}}))
	resp, err := c.Run(ctx, &agentv1.RunRequest{Agent: "boss", Input: "go"})
	if err != nil || resp.GetRun().GetState() != agentv1.RunState_RUN_STATE_SUCCEEDED {
		t.Fatalf("Run = %v, %v; want SUCCEEDED", resp, err)
	}
	runs, err := c.ListRuns(ctx, &agentv1.ListRunsRequest{Agent: "helper"})
	if err != nil || len(runs.GetRuns()) != 1 {
		t.Fatalf("ListRuns helper = %v, %v; want one delegated run", runs, err)
	}
	child, err := c.GetRun(ctx, &agentv1.GetRunRequest{Id: runs.GetRuns()[0].GetId()})
	if err != nil {
		t.Fatal(err)
	}
	if res := child.GetRun().GetSteps()[0].GetToolResults(); len(res) != 1 || !strings.Contains(res[0].GetError(), "delegated run") {
		t.Fatalf("delegated run's tool results = %v, want the client tool refused", res)
	}
}

// TestClientToolConcurrentSubmit: concurrent submissions of the same result resume the run once; every caller
// gets the finished run and the model ran once for the result.
func TestClientToolConcurrentSubmit(t *testing.T) {
	t.Parallel()
	h, ctx, c := grpcHarness(t, agentrpc.Config{})
	create(t, ctx, c, simAgent("racy", weatherScript(), &agentv1.Tool{Kind: &agentv1.Tool_Client{Client: weatherTool(0)}}))
	resp, err := c.Run(ctx, &agentv1.RunRequest{Agent: "racy", Input: "weather?"})
	if err != nil || resp.GetRun().GetState() != agentv1.RunState_RUN_STATE_WAITING_FOR_TOOLS {
		t.Fatalf("Run = %v, %v; want a waiting run", resp, err)
	}
	const n = 6
	runs := make(chan *agentv1.Run, n)
	errs := make(chan error, n)
	for i := range n {
		go func() {
			cl := h.clients[[]string{"grpc", "connect"}[i%2]]
			r, err := cl.SubmitToolResult(ctx, &agentv1.SubmitToolResultRequest{RunId: resp.GetRun().GetId(), Results: []*agentv1.ClientToolResult{sunny()}})
			errs <- err
			runs <- r.GetRun()
		}()
	}
	for range n {
		if err := <-errs; err != nil {
			t.Errorf("SubmitToolResult: %v", err)
		}
		if r := <-runs; r.GetState() != agentv1.RunState_RUN_STATE_SUCCEEDED || len(r.GetSteps()) != 2 || len(r.GetSteps()[0].GetToolResults()) != 1 {
			t.Errorf("run = %v, want SUCCEEDED with 2 steps and one result", r)
		}
	}
}
