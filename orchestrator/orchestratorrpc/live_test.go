package orchestratorrpc_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"

	"connectrpc.com/connect"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	agentv1 "github.com/loom-dev/loom/gen/loom/agent/v1"
	orchestratorv1 "github.com/loom-dev/loom/gen/loom/orchestrator/v1"
	"github.com/loom-dev/loom/orchestrator/orchestratortest"
)

// watch is one WatchRun call, over either client: next returns the next event, or io.EOF when the stream ended.
type watch struct {
	next func() (*orchestratorv1.WatchRunResponse, error)
}

func openWatch(t *testing.T, c clients, client, tenant, id string, after int64) watch {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	req := &orchestratorv1.WatchRunRequest{Id: id, AfterSequence: after}
	if client == "connect" {
		s, err := c.connect.WatchRun(ctx, request(tenant, req))
		if err != nil {
			t.Fatal(err)
		}
		return watch{next: func() (*orchestratorv1.WatchRunResponse, error) {
			if s.Receive() {
				return s.Msg(), nil
			}
			if s.Err() != nil {
				return nil, s.Err()
			}
			return nil, io.EOF
		}}
	}
	s, err := c.grpc.WatchRun(grpcCtx(t, tenant), req)
	if err != nil {
		t.Fatal(err)
	}
	return watch{next: s.Recv}
}

// all reads the rest of the stream.
func (w watch) all(t *testing.T) []*orchestratorv1.WatchRunResponse {
	t.Helper()
	var out []*orchestratorv1.WatchRunResponse
	for {
		ev, err := w.next()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatalf("watch: %v", err)
		}
		out = append(out, ev)
	}
}

const words = 20

// TestWatchRunStreamsAgentTextDeltas: a watcher of a running agent step sees the agent's text as deltas, in
// order, between the step's StepStarted and its StepOutput (which stores the whole text), over Connect and
// grpc-go; a watch resumed after a sequence sees only the stored events after it, nothing twice; and the stored
// log holds the same four events however many deltas there were.
func TestWatchRunStreamsAgentTextDeltas(t *testing.T) {
	t.Parallel()
	var text []string
	for i := range words {
		text = append(text, fmt.Sprintf("w%d", i))
	}
	output := strings.Join(text, " ")
	for _, client := range []string{"connect", "grpc"} {
		t.Run(client, func(t *testing.T) {
			t.Parallel()
			release := make(chan struct{})
			agents := &orchestratortest.Agents{Respond: func(ctx context.Context, _ *agentv1.RunRequest) (string, error) {
				select {
				case <-release:
					return output, nil
				case <-ctx.Done():
					return "", ctx.Err()
				}
			}}
			c := startWith(t, agents)
			ctx := context.Background()
			if _, err := c.connect.CreateBlueprint(ctx, request("acme", &orchestratorv1.CreateBlueprintRequest{Source: yamlSource(
				"name: talk\nsteps:\n  - id: a\n    agent: {agent: x, input: \"'speak'\"}\n")})); err != nil {
				t.Fatal(err)
			}
			started, err := c.connect.StartRun(ctx, request("acme", &orchestratorv1.StartRunRequest{Blueprint: "talk"}))
			if err != nil {
				t.Fatal(err)
			}
			id := started.Msg.GetRun().GetId()
			w := openWatch(t, c, client, "acme", id, 0)
			var got []*orchestratorv1.WatchRunResponse
			for {
				ev, err := w.next()
				if err != nil {
					t.Fatalf("watch before the agent answered: %v", err)
				}
				got = append(got, ev)
				if ev.GetStepStarted() != nil {
					break // the watch is subscribed: the agent may answer
				}
			}
			close(release)
			got = append(got, w.all(t)...)

			var (
				stored []*orchestratorv1.WatchRunResponse
				deltas strings.Builder
				n      int
			)
			for _, ev := range got {
				if d := ev.GetAgentTextDelta(); d != nil {
					n++
					deltas.WriteString(d.GetText())
					// A delta follows the last stored event: here StepStarted, sequence 2.
					if ev.GetSequence() != 2 || ev.GetStepId() != "a" || d.GetAttempt() != 1 {
						t.Errorf("delta %q: sequence %d, step %q, attempt %d; want 2, a, 1", d.GetText(), ev.GetSequence(), ev.GetStepId(), d.GetAttempt())
					}
					if len(stored) != 2 {
						t.Errorf("delta %q after %d stored events, want after StepStarted (2)", d.GetText(), len(stored))
					}
					continue
				}
				stored = append(stored, ev)
			}
			if n != words || deltas.String() != output {
				t.Errorf("deltas = %d, text %q; want %d pieces making %q", n, deltas.String(), words, output)
			}
			kinds := eventKinds(stored)
			if want := "run_started step_started step_output run_completed"; kinds != want {
				t.Errorf("stored events = %s, want %s", kinds, want)
			}
			for i, ev := range stored {
				if ev.GetSequence() != int64(i+1) {
					t.Errorf("stored event %d has sequence %d: not gap-free", i, ev.GetSequence())
				}
			}
			if out := stored[2].GetStepOutput().GetOutput().GetStringValue(); out != output {
				t.Errorf("StepOutput = %q, want the whole text %q", out, output)
			}

			// The run has ended: a new watch replays the stored log only, which did not grow by a row per token.
			replay := openWatch(t, c, client, "acme", id, 0).all(t)
			if kinds := eventKinds(replay); kinds != "run_started step_started step_output run_completed" {
				t.Errorf("replayed log = %s, want the four stored events and no deltas", kinds)
			}
			// Resumed after the StepStarted the deltas followed: the rest, nothing seen before.
			resumed := openWatch(t, c, client, "acme", id, 2).all(t)
			if kinds := eventKinds(resumed); kinds != "step_output run_completed" {
				t.Errorf("resumed after 2 = %s, want step_output run_completed", kinds)
			}
		})
	}
}

func eventKinds(evs []*orchestratorv1.WatchRunResponse) string {
	var kinds []string
	for _, ev := range evs {
		kinds = append(kinds, string(ev.ProtoReflect().WhichOneof(ev.ProtoReflect().Descriptor().Oneofs().ByName("event")).Name()))
	}
	return strings.Join(kinds, " ")
}

const pinnedYAML = `name: pinned
steps:
  - id: a
    agent: {agent: x, input: "'first'"}
  - id: b
    depends_on: [a]
    agent: {agent: x, input: "'second'"}
  - id: c
    agent: {agent: x, agent_version: 1, input: "'old'"}
  - id: m
    depends_on: [a]
    map: {items: "[1, 2]", agent: y, input: "string(item)"}
`

// TestRunsPinAgentVersions: a run records the agent versions it uses when it starts (GetRun shows them per
// step) and runs them to its end although newer versions are made meanwhile; a step may name its version; a
// version or agent that does not exist fails StartRun with FailedPrecondition naming the step, and a negative
// version is InvalidArgument naming the field. Over Connect and grpc-go.
func TestRunsPinAgentVersions(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	agents := &orchestratortest.Agents{Versions: map[string][]int64{"x": {1, 2}, "y": {4}}}
	agents.Respond = func(ctx context.Context, req *agentv1.RunRequest) (string, error) {
		if req.GetInput() == "first" {
			select {
			case <-release:
			case <-ctx.Done():
				return "", ctx.Err()
			}
		}
		return "ok", nil
	}
	c := startWith(t, agents)
	ctx := context.Background()
	if _, err := c.connect.CreateBlueprint(ctx, request("acme", &orchestratorv1.CreateBlueprintRequest{Source: yamlSource(pinnedYAML)})); err != nil {
		t.Fatal(err)
	}
	started, err := c.grpc.StartRun(grpcCtx(t, "acme"), &orchestratorv1.StartRunRequest{Blueprint: "pinned"})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]int64{"a": 2, "b": 2, "c": 1, "m": 4}
	check := func(r *orchestratorv1.WorkflowRun) {
		t.Helper()
		for _, s := range r.GetSteps() {
			if s.GetAgentVersion() != want[s.GetStepId()] {
				t.Errorf("step %s agent_version = %d, want %d", s.GetStepId(), s.GetAgentVersion(), want[s.GetStepId()])
			}
		}
	}
	check(started.GetRun())
	// Newer versions while the run is under way: it keeps the ones it started with.
	agents.SetVersions(map[string][]int64{"x": {1, 2, 3}, "y": {4, 5}})
	close(release)
	id := started.GetRun().GetId()
	done := waitRun(t, c, "acme", id, orchestratorv1.RunState_RUN_STATE_SUCCEEDED, orchestratorv1.RunState_RUN_STATE_FAILED)
	if done.GetState() != orchestratorv1.RunState_RUN_STATE_SUCCEEDED {
		t.Fatalf("run = %s (%s), want SUCCEEDED", done.GetState(), done.GetError())
	}
	check(done)
	wantCalls := map[string]int64{"first": 2, "second": 2, "old": 1, "1": 4, "2": 4}
	for _, call := range agents.Calls() {
		if v, ok := wantCalls[call.GetInput()]; !ok || call.GetAgentVersion() != v {
			t.Errorf("call %q ran agent version %d, want %d", call.GetInput(), call.GetAgentVersion(), v)
		}
		if call.GetBlueprint() != "pinned" {
			t.Errorf("call %q blueprint = %q, want pinned", call.GetInput(), call.GetBlueprint())
		}
	}
	// A later run pins the newer versions.
	later, err := c.connect.StartRun(ctx, request("acme", &orchestratorv1.StartRunRequest{Blueprint: "pinned"}))
	if err != nil {
		t.Fatal(err)
	}
	want = map[string]int64{"a": 3, "b": 3, "c": 1, "m": 5}
	check(later.Msg.GetRun())

	for _, tc := range []struct {
		name, yaml, step string
	}{
		{"missing version", "name: gone\nsteps:\n  - id: s\n    agent: {agent: x, agent_version: 9, input: \"'x'\"}\n", `step "s": agent "x" version 9`},
		{"missing agent", "name: ghost\nsteps:\n  - id: s\n    agent: {agent: nobody, input: \"'x'\"}\n", `step "s": agent "nobody"`},
	} {
		name := strings.TrimPrefix(strings.SplitN(tc.yaml, "\n", 2)[0], "name: ")
		if _, err := c.connect.CreateBlueprint(ctx, request("acme", &orchestratorv1.CreateBlueprintRequest{Source: yamlSource(tc.yaml)})); err != nil {
			t.Fatal(err)
		}
		_, err := c.connect.StartRun(ctx, request("acme", &orchestratorv1.StartRunRequest{Blueprint: name}))
		if ce := wantCode(t, err, connect.CodeFailedPrecondition); ce != nil && !strings.Contains(ce.Message(), tc.step) {
			t.Errorf("%s: connect message %q does not name %s", tc.name, ce.Message(), tc.step)
		}
		_, err = c.grpc.StartRun(grpcCtx(t, "acme"), &orchestratorv1.StartRunRequest{Blueprint: name})
		if status.Code(err) != codes.FailedPrecondition || !strings.Contains(status.Convert(err).Message(), tc.step) {
			t.Errorf("%s: grpc StartRun = %v, want FailedPrecondition naming %s", tc.name, err, tc.step)
		}
	}
	_, err = c.connect.CreateBlueprint(ctx, request("acme", &orchestratorv1.CreateBlueprintRequest{Source: yamlSource(
		"name: neg\nsteps:\n  - id: s\n    agent: {agent: x, agent_version: -1, input: \"'x'\"}\n")}))
	if ce := wantCode(t, err, connect.CodeInvalidArgument); ce != nil && !strings.Contains(ce.Message(), "steps[0].agent.agent_version") {
		t.Errorf("message %q does not name the field", ce.Message())
	}
	_, err = c.grpc.CreateBlueprint(grpcCtx(t, "acme"), &orchestratorv1.CreateBlueprintRequest{Source: yamlSource(
		"name: neg\nsteps:\n  - id: s\n    agent: {agent: x, agent_version: two, input: \"'x'\"}\n")})
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(status.Convert(err).Message(), "steps[0].agent.agent_version") {
		t.Errorf("grpc CreateBlueprint(agent_version: two) = %v, want InvalidArgument naming the field", err)
	}
}
