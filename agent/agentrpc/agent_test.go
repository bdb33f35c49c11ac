package agentrpc_test

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/fieldmaskpb"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/loom-dev/loom/agent/agentrpc"
	agentv1 "github.com/loom-dev/loom/gen/loom/agent/v1"
	memoryv1 "github.com/loom-dev/loom/gen/loom/memory/v1"
)

func args(t *testing.T, m map[string]any) *structpb.Struct {
	t.Helper()
	s, err := structpb.NewStruct(m)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func simAgent(name string, script *agentv1.SimScript, tools ...*agentv1.Tool) *agentv1.Agent {
	return &agentv1.Agent{Name: name, Instructions: "You help.", Tools: tools,
		Model: &agentv1.Model{Provider: agentv1.Provider_PROVIDER_SIM, Sim: script}}
}

func create(t *testing.T, ctx context.Context, c agentv1.AgentServiceClient, a *agentv1.Agent) *agentv1.Agent {
	t.Helper()
	resp, err := c.CreateAgent(ctx, &agentv1.CreateAgentRequest{Agent: a})
	if err != nil {
		t.Fatalf("CreateAgent %s: %v", a.GetName(), err)
	}
	return resp.GetAgent()
}

var searchTool = &agentv1.Tool{Kind: &agentv1.Tool_MemorySearch{MemorySearch: &agentv1.MemorySearchTool{}}}

func TestAgentCRUD(t *testing.T) {
	t.Parallel()
	h := newHarness(t, agentrpc.Config{})
	h.eachNamedClient(t, "crud-", func(t *testing.T, ctx context.Context, c agentv1.AgentServiceClient, name string) {
		a1 := create(t, ctx, c, &agentv1.Agent{Name: name, DisplayName: "One", Instructions: "v1",
			Model: &agentv1.Model{Name: "m1"}, Version: 99, Etag: "ignored"})
		if a1.GetVersion() != 1 || a1.GetEtag() == "ignored" {
			t.Fatalf("created %v, want version 1 and a server etag", a1)
		}
		_, err := c.CreateAgent(ctx, &agentv1.CreateAgentRequest{Agent: &agentv1.Agent{Name: name}})
		wantCode(t, err, codes.AlreadyExists, name)
		_, err = c.CreateAgent(ctx, &agentv1.CreateAgentRequest{Agent: &agentv1.Agent{Name: "Bad Name"}})
		wantCode(t, err, codes.InvalidArgument, "name")

		upd, err := c.UpdateAgent(ctx, &agentv1.UpdateAgentRequest{
			Agent:      &agentv1.Agent{Name: name, Instructions: "v2", DisplayName: "not copied", Model: &agentv1.Model{Name: "m2", MaxOutputTokens: 7}},
			UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"instructions", "model.name"}},
			Etag:       a1.GetEtag(),
		})
		if err != nil {
			t.Fatalf("UpdateAgent: %v", err)
		}
		a2 := upd.GetAgent()
		if a2.GetVersion() != 2 || a2.GetInstructions() != "v2" || a2.GetDisplayName() != "One" ||
			a2.GetModel().GetName() != "m2" || a2.GetModel().GetMaxOutputTokens() != 0 {
			t.Errorf("updated = %v, want version 2 with only instructions and model.name changed", a2)
		}
		_, err = c.UpdateAgent(ctx, &agentv1.UpdateAgentRequest{Agent: &agentv1.Agent{Name: name},
			UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"instructions"}}, Etag: a1.GetEtag()})
		wantCode(t, err, codes.Aborted, "")
		for _, p := range []string{"model.nope", "version", "bogus", "tools.name", ""} {
			_, err = c.UpdateAgent(ctx, &agentv1.UpdateAgentRequest{Agent: &agentv1.Agent{Name: name},
				UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"instructions", p}}})
			wantCode(t, err, codes.InvalidArgument, "update_mask")
			if p != "" && !strings.Contains(err.Error(), p) {
				t.Errorf("error %v does not name path %q", err, p)
			}
		}
		got, err := c.GetAgent(ctx, &agentv1.GetAgentRequest{Name: name, Version: 1})
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(a1, got.GetAgent(), protocmp.Transform()); diff != "" {
			t.Errorf("GetAgent v1 (-want +got):\n%s", diff)
		}
		list, err := c.ListAgents(ctx, &agentv1.ListAgentsRequest{})
		if err != nil {
			t.Fatal(err)
		}
		found := false
		for _, a := range list.GetAgents() {
			if a.GetName() == name {
				found = a.GetVersion() == 2
			}
		}
		if !found {
			t.Errorf("ListAgents = %v, want %s at version 2", list.GetAgents(), name)
		}
		_, err = c.GetAgent(asTenant(ctx, "other"), &agentv1.GetAgentRequest{Name: name})
		wantCode(t, err, codes.NotFound, "")
		if _, err := c.DeleteAgent(ctx, &agentv1.DeleteAgentRequest{Name: name}); err != nil {
			t.Fatal(err)
		}
		_, err = c.GetAgent(ctx, &agentv1.GetAgentRequest{Name: name})
		wantCode(t, err, codes.NotFound, name)
		_, err = c.ListAgents(ctx, &agentv1.ListAgentsRequest{PageToken: "%%%"})
		wantCode(t, err, codes.InvalidArgument, "page_token")
	})
}

// askFavouriteColour creates memoryAgent name on the given model and returns the run of asking it the
// favourite colour through c.
func askFavouriteColour(t *testing.T, ctx context.Context, h *harness, c agentv1.AgentServiceClient, name string, m *agentv1.Model) *agentv1.Run {
	t.Helper()
	a := memoryAgent(t, h, name)
	a.Model = m
	create(t, ctx, c, a)
	resp, err := c.Run(ctx, &agentv1.RunRequest{Agent: name, Input: "favourite colour?"})
	if err != nil {
		t.Fatal(err)
	}
	return resp.GetRun()
}

// memoryAgent searches its memory once, then answers from what it found.
func memoryAgent(t *testing.T, h *harness, name string) *agentv1.Agent {
	t.Helper()
	_, err := h.memory.Upsert(context.Background(), &memoryv1.UpsertRequest{Namespace: "notes", Records: []*memoryv1.Record{
		{Id: "n1", Text: "the favourite colour is blue"}, {Id: "n2", Text: "the cat is called Tom"}}})
	if err != nil {
		t.Fatal(err)
	}
	a := simAgent(name, &agentv1.SimScript{Turns: []*agentv1.SimTurn{
		{WhenContains: "favourite", Reply: "Let me look.", ToolCalls: []*agentv1.ToolCall{{Id: "c1", Name: "memory_search", Arguments: args(t, map[string]any{"query": "colour"})}}},
		{WhenContains: "blue", Reply: "Your favourite colour is blue."},
	}}, searchTool)
	a.Memory = &agentv1.MemoryConfig{Namespace: "notes"}
	return a
}

func TestRunWithToolCall(t *testing.T) {
	t.Parallel()
	h := newHarness(t, agentrpc.Config{})
	h.eachNamedClient(t, "mem-", func(t *testing.T, ctx context.Context, c agentv1.AgentServiceClient, name string) {
		create(t, ctx, c, memoryAgent(t, h, name))
		resp, err := c.Run(ctx, &agentv1.RunRequest{Agent: name, Input: "what is my favourite colour?"})
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
		run := resp.GetRun()
		if run.GetState() != agentv1.RunState_RUN_STATE_SUCCEEDED || run.GetOutput() != "Your favourite colour is blue." {
			t.Fatalf("run = %v, want SUCCEEDED with the scripted answer", run)
		}
		if len(run.GetSteps()) != 2 || run.GetAgentVersion() != 1 || run.GetProvider() != agentv1.Provider_PROVIDER_SIM {
			t.Fatalf("run = %v, want 2 steps of version 1 on sim", run)
		}
		res := run.GetSteps()[0].GetToolResults()
		if len(res) != 1 || res[0].GetError() != "" || !strings.Contains(res[0].GetResult().String(), "blue") {
			t.Errorf("tool results = %v, want the blue memory", res)
		}
		u := run.GetUsage()
		if u.GetInputTokens() == 0 || u.GetOutputTokens() == 0 ||
			u.GetInputTokens() != run.GetSteps()[0].GetUsage().GetInputTokens()+run.GetSteps()[1].GetUsage().GetInputTokens() {
			t.Errorf("usage = %v, want the sum of the steps", u)
		}
		if run.GetSteps()[0].GetLatency() == nil || run.GetEndTime() == nil {
			t.Errorf("run lacks latency or end time: %v", run)
		}
		got, err := c.GetRun(ctx, &agentv1.GetRunRequest{Id: run.GetId()})
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(run, got.GetRun(), protocmp.Transform()); diff != "" {
			t.Errorf("GetRun (-want +got):\n%s", diff)
		}
		list, err := c.ListRuns(ctx, &agentv1.ListRunsRequest{Agent: name})
		if err != nil {
			t.Fatal(err)
		}
		if len(list.GetRuns()) != 1 || list.GetRuns()[0].GetId() != run.GetId() {
			t.Errorf("ListRuns = %v, want the run", list.GetRuns())
		}
		_, err = c.GetRun(asTenant(ctx, "other"), &agentv1.GetRunRequest{Id: run.GetId()})
		wantCode(t, err, codes.NotFound, "")
		_, err = c.Run(ctx, &agentv1.RunRequest{Agent: "nobody", Input: "x"})
		wantCode(t, err, codes.NotFound, "nobody")
	})
}

// kinds names the events of a stream, collapsing repeats ("text_delta" x5 -> one).
func kinds(events []*agentv1.RunStreamResponse) []string {
	var out []string
	for _, e := range events {
		k := string(e.ProtoReflect().WhichOneof(e.ProtoReflect().Descriptor().Oneofs().ByName("event")).Name())
		if len(out) == 0 || out[len(out)-1] != k {
			out = append(out, k)
		}
	}
	return out
}

func TestRunStreamEvents(t *testing.T) {
	t.Parallel()
	h := newHarness(t, agentrpc.Config{})
	h.eachNamedClient(t, "stream-", func(t *testing.T, ctx context.Context, c agentv1.AgentServiceClient, name string) {
		create(t, ctx, c, memoryAgent(t, h, name))
		events, err := recvAll(c.RunStream(ctx, &agentv1.RunStreamRequest{Agent: name, Input: "my favourite colour?"}))
		if err != nil {
			t.Fatalf("RunStream: %v", err)
		}
		want := []string{"started", "memory_hits", "text_delta", "usage", "tool_call", "tool_result", "text_delta", "usage", "completed"}
		if diff := cmp.Diff(want, kinds(events)); diff != "" {
			t.Fatalf("events (-want +got):\n%s", diff)
		}
		id := events[0].GetRunId()
		var text string
		for _, e := range events {
			if e.GetRunId() != id {
				t.Errorf("event %v has run id %q, want %q", e, e.GetRunId(), id)
			}
			text += e.GetTextDelta().GetText()
		}
		if text != "Let me look.Your favourite colour is blue." {
			t.Errorf("streamed text = %q", text)
		}
		if done := events[len(events)-1].GetCompleted(); done.GetOutput() != "Your favourite colour is blue." {
			t.Errorf("completed = %v", done)
		}
	})
}

func TestIdempotency(t *testing.T) {
	t.Parallel()
	h := newHarness(t, agentrpc.Config{})
	h.eachNamedClient(t, "idem-", func(t *testing.T, ctx context.Context, c agentv1.AgentServiceClient, name string) {
		create(t, ctx, c, simAgent(name, nil))
		key := "key-" + name
		first, err := c.Run(ctx, &agentv1.RunRequest{Agent: name, Input: "hello", IdempotencyKey: key})
		if err != nil {
			t.Fatal(err)
		}
		second, err := c.Run(ctx, &agentv1.RunRequest{Agent: name, Input: "hello", IdempotencyKey: key})
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(first.GetRun(), second.GetRun(), protocmp.Transform()); diff != "" {
			t.Errorf("second Run with the key (-first +second):\n%s", diff)
		}
		events, err := recvAll(c.RunStream(ctx, &agentv1.RunStreamRequest{Agent: name, Input: "hello", IdempotencyKey: key}))
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff([]string{"started", "completed"}, kinds(events)); diff != "" || events[1].GetCompleted().GetId() != first.GetRun().GetId() {
			t.Errorf("RunStream with the key: events %v, want the stored run", kinds(events))
		}
		list, err := c.ListRuns(ctx, &agentv1.ListRunsRequest{Agent: name})
		if err != nil || len(list.GetRuns()) != 1 {
			t.Fatalf("ListRuns = %v, %v; want one run", list.GetRuns(), err)
		}
		_, err = c.Run(ctx, &agentv1.RunRequest{Agent: name, Input: "other input", IdempotencyKey: key})
		wantCode(t, err, codes.InvalidArgument, "idempotency_key")
	})
}

func TestMemoryDegradation(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		setup func(h *harness)
		code  string
	}{
		{name: "down", setup: func(h *harness) { h.memory.SetDown(true) }, code: "Unavailable"},
		{name: "slow", setup: func(h *harness) { h.memory.SetLatency(10 * time.Second) }, code: "DeadlineExceeded"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			h, ctx, c := grpcHarness(t, agentrpc.Config{MemoryTimeout: 100 * time.Millisecond})
			a := simAgent("forgetful", nil)
			a.Memory = &agentv1.MemoryConfig{Namespace: "notes"}
			create(t, ctx, c, a)
			tc.setup(h)
			start := time.Now()
			events, err := recvAll(c.RunStream(ctx, &agentv1.RunStreamRequest{Agent: "forgetful", Input: "hi"}))
			if err != nil {
				t.Fatalf("RunStream: %v", err)
			}
			if d := time.Since(start); d > 3*time.Second {
				t.Errorf("run took %v despite a 100ms memory timeout", d)
			}
			if diff := cmp.Diff([]string{"started", "warning", "text_delta", "usage", "completed"}, kinds(events)); diff != "" {
				t.Fatalf("events (-want +got):\n%s", diff)
			}
			if w := events[1].GetWarning().GetMessage(); !strings.Contains(w, tc.code) {
				t.Errorf("warning = %q, want it to name %s", w, tc.code)
			}
			run := events[len(events)-1].GetCompleted()
			if run.GetState() != agentv1.RunState_RUN_STATE_SUCCEEDED || len(run.GetWarnings()) != 1 {
				t.Errorf("run = %v, want SUCCEEDED with one warning", run)
			}
		})
	}
}

func TestProviderFailure(t *testing.T) {
	t.Parallel()
	h := newHarness(t, agentrpc.Config{})
	h.eachNamedClient(t, "flaky-", func(t *testing.T, ctx context.Context, c agentv1.AgentServiceClient, name string) {
		create(t, ctx, c, simAgent(name, &agentv1.SimScript{FailureRate: 1}))
		_, err := c.Run(ctx, &agentv1.RunRequest{Agent: name, Input: "hi"})
		wantCode(t, err, codes.Unavailable, "model provider unavailable")
		list, err := c.ListRuns(ctx, &agentv1.ListRunsRequest{Agent: name})
		if err != nil || len(list.GetRuns()) != 1 {
			t.Fatalf("ListRuns = %v, %v", list, err)
		}
		if r := list.GetRuns()[0]; r.GetState() != agentv1.RunState_RUN_STATE_FAILED || !strings.Contains(r.GetError(), "injected failure") {
			t.Errorf("run = %v, want FAILED with the provider error", r)
		}
		events, err := recvAll(c.RunStream(ctx, &agentv1.RunStreamRequest{Agent: name, Input: "hi"}))
		wantCode(t, err, codes.Unavailable, "")
		if diff := cmp.Diff([]string{"started", "failed"}, kinds(events)); diff != "" {
			t.Errorf("events (-want +got):\n%s", diff)
		}
		// Gemini without a key: the provider is not configured.
		gname := "gem-" + clientSuffix(t)
		create(t, ctx, c, &agentv1.Agent{Name: gname, Model: &agentv1.Model{Provider: agentv1.Provider_PROVIDER_GEMINI}})
		_, err = c.Run(ctx, &agentv1.RunRequest{Agent: gname, Input: "hi"})
		wantCode(t, err, codes.FailedPrecondition, "no API key")
	})
}

// waitRunning returns the id of agent's run once it is RUNNING.
func waitRunning(t *testing.T, ctx context.Context, c agentv1.AgentServiceClient, agentName string) string {
	t.Helper()
	for ctx.Err() == nil {
		list, err := c.ListRuns(ctx, &agentv1.ListRunsRequest{Agent: agentName})
		if err != nil {
			t.Fatal(err)
		}
		if len(list.GetRuns()) > 0 && list.GetRuns()[0].GetState() == agentv1.RunState_RUN_STATE_RUNNING {
			return list.GetRuns()[0].GetId()
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatal("run never started")
	return ""
}

func TestCancelRun(t *testing.T) {
	t.Parallel()
	h := newHarness(t, agentrpc.Config{})
	h.eachNamedClient(t, "slow-", func(t *testing.T, ctx context.Context, c agentv1.AgentServiceClient, name string) {
		create(t, ctx, c, simAgent(name, &agentv1.SimScript{Latency: durationpb.New(30 * time.Second)}))
		var (
			wg     sync.WaitGroup
			runErr error
		)
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, runErr = c.Run(ctx, &agentv1.RunRequest{Agent: name, Input: "take your time"})
		}()
		id := waitRunning(t, ctx, c, name)
		start := time.Now()
		resp, err := c.CancelRun(ctx, &agentv1.CancelRunRequest{Id: id})
		if err != nil {
			t.Fatalf("CancelRun: %v", err)
		}
		if resp.GetRun().GetState() != agentv1.RunState_RUN_STATE_CANCELLED {
			t.Errorf("cancelled run = %v", resp.GetRun())
		}
		wg.Wait()
		if d := time.Since(start); d > 3*time.Second {
			t.Errorf("cancellation took %v", d)
		}
		wantCode(t, runErr, codes.Canceled, "")
		_, err = c.CancelRun(ctx, &agentv1.CancelRunRequest{Id: id})
		wantCode(t, err, codes.FailedPrecondition, "already finished")
		_, err = c.CancelRun(ctx, &agentv1.CancelRunRequest{Id: "nope"})
		wantCode(t, err, codes.NotFound, "")
	})
}

func TestRunStreamClientCancel(t *testing.T) {
	t.Parallel()
	h := newHarness(t, agentrpc.Config{})
	h.eachNamedClient(t, "gone-", func(t *testing.T, ctx context.Context, c agentv1.AgentServiceClient, name string) {
		create(t, ctx, c, simAgent(name, &agentv1.SimScript{Latency: durationpb.New(30 * time.Second)}))
		sctx, cancel := context.WithCancel(ctx)
		stream, err := c.RunStream(sctx, &agentv1.RunStreamRequest{Agent: name, Input: "hi"})
		if err != nil {
			t.Fatal(err)
		}
		first, err := stream.Recv()
		if err != nil || first.GetStarted() == nil {
			t.Fatalf("first event = %v, %v; want started", first, err)
		}
		cancel()
		deadline := time.Now().Add(3 * time.Second)
		for {
			got, err := c.GetRun(ctx, &agentv1.GetRunRequest{Id: first.GetRunId()})
			if err != nil {
				t.Fatal(err)
			}
			if got.GetRun().GetState() == agentv1.RunState_RUN_STATE_CANCELLED {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("run still %v 3s after the client went away", got.GetRun().GetState())
			}
			time.Sleep(10 * time.Millisecond)
		}
	})
}

func TestBudgets(t *testing.T) {
	t.Parallel()
	h := newHarness(t, agentrpc.Config{})
	c := h.clients["connect"]
	ctx := testCtx(t)
	loop := func() *agentv1.SimScript {
		var turns []*agentv1.SimTurn
		for range 5 {
			turns = append(turns, &agentv1.SimTurn{Reply: "again", ToolCalls: []*agentv1.ToolCall{{Name: "memory_search", Arguments: args(t, map[string]any{"query": "x"})}}})
		}
		return &agentv1.SimScript{Turns: turns}
	}
	steps := simAgent("steps", loop(), searchTool)
	steps.Budgets = &agentv1.Budgets{MaxSteps: 2}
	steps.Memory = &agentv1.MemoryConfig{Namespace: "empty"} // memory tools need a namespace
	tokens := simAgent("tokens", loop(), searchTool)
	tokens.Budgets = &agentv1.Budgets{MaxTokens: 30}
	tokens.Memory = &agentv1.MemoryConfig{Namespace: "empty"}
	slow := simAgent("slow", &agentv1.SimScript{Latency: durationpb.New(time.Minute)})
	slow.Budgets = &agentv1.Budgets{MaxDuration: durationpb.New(200 * time.Millisecond)}
	for _, tc := range []struct {
		agent *agentv1.Agent
		steps int
		err   string
	}{
		{agent: steps, steps: 2, err: "step budget exhausted"},
		{agent: tokens, steps: 2, err: "token budget exhausted: 65 tokens used, budget 30"},
		{agent: slow, steps: 1, err: "time budget of 200ms exhausted"},
	} {
		create(t, ctx, c, tc.agent)
		start := time.Now()
		resp, err := c.Run(ctx, &agentv1.RunRequest{Agent: tc.agent.GetName(), Input: "go"})
		if err != nil {
			t.Fatalf("%s: Run: %v", tc.agent.GetName(), err)
		}
		run := resp.GetRun()
		if run.GetState() != agentv1.RunState_RUN_STATE_FAILED || !strings.Contains(run.GetError(), tc.err) || len(run.GetSteps()) != tc.steps {
			t.Errorf("%s: run = state %v error %q steps %d; want FAILED, %q, %d steps", tc.agent.GetName(),
				run.GetState(), run.GetError(), len(run.GetSteps()), tc.err, tc.steps)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("%s: took %v", tc.agent.GetName(), d)
		}
	}
}

func TestToolErrorsGoToTheModel(t *testing.T) {
	t.Parallel()
	_, ctx, c := grpcHarness(t, agentrpc.Config{})
	a := simAgent("tooly", &agentv1.SimScript{Turns: []*agentv1.SimTurn{
		{WhenContains: "go", ToolCalls: []*agentv1.ToolCall{
			{Id: "a", Name: "launch_rockets", Arguments: args(t, map[string]any{})},
			{Id: "b", Name: "memory_search", Arguments: args(t, map[string]any{"query": "x", "top_k": "many"})},
			{Id: "c", Name: "memory_search", Arguments: args(t, map[string]any{"query": "x", "extra": true})},
		}},
		{WhenContains: "error", Reply: "Sorry, my tools failed."},
	}}, searchTool)
	a.Memory = &agentv1.MemoryConfig{Namespace: "empty"} // memory tools need a namespace
	create(t, ctx, c, a)
	resp, err := c.Run(ctx, &agentv1.RunRequest{Agent: "tooly", Input: "go"})
	if err != nil {
		t.Fatal(err)
	}
	run := resp.GetRun()
	if run.GetState() != agentv1.RunState_RUN_STATE_SUCCEEDED || run.GetOutput() != "Sorry, my tools failed." {
		t.Fatalf("run = %v", run)
	}
	var errs []string
	for _, r := range run.GetSteps()[0].GetToolResults() {
		errs = append(errs, r.GetError())
	}
	want := []string{
		`unknown tool "launch_rockets"; available tools: [memory_search]`,
		"invalid arguments: arguments.top_k: want integer, got string",
		`invalid arguments: arguments: unknown argument "extra"`,
	}
	if diff := cmp.Diff(want, errs); diff != "" {
		t.Errorf("tool errors (-want +got):\n%s", diff)
	}
}

func TestDelegate(t *testing.T) {
	t.Parallel()
	_, ctx, c := grpcHarness(t, agentrpc.Config{})
	delegate := func(to string) *agentv1.Tool {
		return &agentv1.Tool{Kind: &agentv1.Tool_Delegate{Delegate: &agentv1.DelegateTool{Agent: to}}}
	}
	call := func(to string) *agentv1.SimScript {
		return &agentv1.SimScript{Turns: []*agentv1.SimTurn{
			{WhenContains: "task", ToolCalls: []*agentv1.ToolCall{{Name: "delegate_" + to, Arguments: args(t, map[string]any{"input": "task from above"})}}},
		}}
	}
	create(t, ctx, c, simAgent("boss", call("worker"), delegate("worker")))
	create(t, ctx, c, simAgent("worker", &agentv1.SimScript{Turns: []*agentv1.SimTurn{{Reply: "done by worker"}}}))
	resp, err := c.Run(ctx, &agentv1.RunRequest{Agent: "boss", Input: "a task"})
	if err != nil {
		t.Fatal(err)
	}
	res := resp.GetRun().GetSteps()[0].GetToolResults()[0]
	if res.GetError() != "" || res.GetResult().GetFields()["output"].GetStringValue() != "done by worker" {
		t.Fatalf("delegate result = %v", res)
	}
	if !strings.Contains(resp.GetRun().GetOutput(), "done by worker") {
		t.Errorf("output = %q, want the worker's answer summarised", resp.GetRun().GetOutput())
	}
	child := res.GetResult().GetFields()["run_id"].GetStringValue()
	if got, err := c.GetRun(ctx, &agentv1.GetRunRequest{Id: child}); err != nil || got.GetRun().GetAgent() != "worker" {
		t.Errorf("child run = %v, %v", got, err)
	}

	// Streamed, the delegated run's events arrive in the parent's stream under the delegated run's id, framed by
	// the parent's own started and completed events.
	stream, err := c.RunStream(ctx, &agentv1.RunStreamRequest{Agent: "boss", Input: "a task"})
	if err != nil {
		t.Fatal(err)
	}
	var parentID string
	var childText strings.Builder
	var frames []string
	for {
		ev, err := stream.Recv()
		if err != nil {
			break
		}
		switch {
		case ev.GetStarted() != nil:
			frames = append(frames, "started")
			parentID = ev.GetRunId()
		case ev.GetCompleted() != nil, ev.GetFailed() != nil:
			frames = append(frames, "end")
			if ev.GetRunId() != parentID {
				t.Errorf("end event of run %s in the parent's stream", ev.GetRunId())
			}
		case ev.GetTextDelta() != nil && ev.GetRunId() != parentID:
			childText.WriteString(ev.GetTextDelta().GetText())
		}
	}
	if strings.Join(frames, ",") != "started,end" {
		t.Errorf("frames = %v, want only the parent's started and end", frames)
	}
	if !strings.Contains(childText.String(), "done by worker") {
		t.Errorf("delegated text in the parent's stream = %q", childText.String())
	}

	// ping -> pong -> ping is a cycle: pong's delegation fails, and pong reports it.
	create(t, ctx, c, simAgent("ping", call("pong"), delegate("pong")))
	create(t, ctx, c, simAgent("pong", call("ping"), delegate("ping")))
	resp, err = c.Run(ctx, &agentv1.RunRequest{Agent: "ping", Input: "a task"})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(resp.GetRun().GetOutput(), "delegation cycle: ping -> pong -> ping") {
		t.Errorf("output = %q, want the cycle reported", resp.GetRun().GetOutput())
	}

	// d1 -> d2 -> d3 -> d4 -> d5: the fourth level of delegation is refused.
	for i := 1; i <= 5; i++ {
		next := "d" + string(rune('0'+i+1))
		create(t, ctx, c, simAgent("d"+string(rune('0'+i)), call(next), delegate(next)))
	}
	resp, err = c.Run(ctx, &agentv1.RunRequest{Agent: "d1", Input: "a task"})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(resp.GetRun().GetOutput(), "depth limit (3)") {
		t.Errorf("output = %q, want the depth limit reported", resp.GetRun().GetOutput())
	}
}
