package agentrpc_test

import (
	"fmt"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/loom-dev/loom/agent/agentrpc"
	agentv1 "github.com/loom-dev/loom/gen/loom/agent/v1"
	"github.com/loom-dev/loom/internal/upstream"
)

// TestChaos: injected faults through the real transport, both clients. A transient fault fails attempts 1 and 2
// and recovers at 3, whether the caller numbers its attempts or leaves the service to count them; the chosen code
// comes back, marked as the provider "chaos"; draws are replayable by seed and attempt and differ across
// attempts; a truncated stream fails after its first chunk; a run request's chaos replaces the agent's, and no
// chaos is injected unless asked for.
func TestChaos(t *testing.T) {
	t.Parallel()
	h := newHarness(t, agentrpc.Config{})
	h.eachClient(t, func(t *testing.T, c agentv1.AgentServiceClient) {
		client := t.Name()[strings.LastIndex(t.Name(), "/")+1:]
		ctx := asTenant(testCtx(t), "chaos-"+client)
		// The harness's Connect adapter keeps codes and messages but not details (TestProviderFaultDetail reads
		// them with a plain Connect client): the provider mark is checked on the grpc-go client.
		marked := func(err error, provider string) bool {
			p, ok := upstream.Provider(err)
			return client != "grpc" || (ok && p == provider)
		}
		reply := &agentv1.SimScript{Turns: []*agentv1.SimTurn{{Reply: "one two three"}, {Reply: "one two three"},
			{Reply: "one two three"}, {Reply: "one two three"}}}
		transient := simAgent("transient", reply)
		transient.Chaos = &agentv1.Chaos{Seed: 7, FailAttempts: 2}
		create(t, ctx, c, transient)
		create(t, ctx, c, simAgent("calm", reply))

		// A retry policy of up to 5 attempts rides the transient fault out, numbering its attempts...
		var outcomes []string
		for attempt := int32(1); attempt <= 5; attempt++ {
			resp, err := c.Run(ctx, &agentv1.RunRequest{Agent: "transient", Input: "numbered", Attempt: attempt})
			if err != nil {
				outcomes = append(outcomes, fmt.Sprintf("%s/%v", status.Code(err), marked(err, "chaos")))
				continue
			}
			outcomes = append(outcomes, resp.GetRun().GetState().String())
			break
		}
		if got := strings.Join(outcomes, ","); got != "Unavailable/true,Unavailable/true,RUN_STATE_SUCCEEDED" {
			t.Errorf("numbered attempts = %s, want two chaos failures then success", got)
		}
		// ...or not: the service counts earlier runs of the agent with the same input.
		outcomes = nil
		for range 5 {
			resp, err := c.Run(ctx, &agentv1.RunRequest{Agent: "transient", Input: "counted"})
			if err != nil {
				outcomes = append(outcomes, status.Code(err).String())
				continue
			}
			outcomes = append(outcomes, resp.GetRun().GetState().String())
			if w := resp.GetRun().GetWarnings(); len(w) == 0 || w[0] != "chaos: injecting faults (seed 7, attempt 3)" {
				t.Errorf("warnings = %q, want the seed and attempt", w)
			}
			break
		}
		if got := strings.Join(outcomes, ","); got != "Unavailable,Unavailable,RUN_STATE_SUCCEEDED" {
			t.Errorf("counted attempts = %s, want two failures then success", got)
		}

		// The chosen code, on a run request's chaos replacing the agent's (none).
		for code, want := range map[agentv1.ChaosCode]codes.Code{
			agentv1.ChaosCode_CHAOS_CODE_RESOURCE_EXHAUSTED: codes.ResourceExhausted,
			agentv1.ChaosCode_CHAOS_CODE_DEADLINE_EXCEEDED:  codes.DeadlineExceeded,
			agentv1.ChaosCode_CHAOS_CODE_INTERNAL:           codes.Internal,
			agentv1.ChaosCode_CHAOS_CODE_UNSPECIFIED:        codes.Unavailable,
		} {
			_, err := c.Run(ctx, &agentv1.RunRequest{Agent: "calm", Input: "code " + code.String(),
				Chaos: &agentv1.Chaos{FailAttempts: 1, Code: code}, Attempt: 1})
			if status.Code(err) != want || !marked(err, "chaos") || !strings.Contains(status.Convert(err).Message(), "chaos: injected") {
				t.Errorf("code %v: %v, want %v marked as chaos", code, err, want)
			}
		}
		if resp, err := c.Run(ctx, &agentv1.RunRequest{Agent: "calm", Input: "no chaos"}); err != nil || len(resp.GetRun().GetWarnings()) != 0 {
			t.Errorf("calm run = %v, %v; want no chaos", resp.GetRun(), err)
		}

		// Replayable by seed and attempt; different across attempts.
		draw := func() string {
			var b strings.Builder
			for attempt := int32(1); attempt <= 24; attempt++ {
				_, err := c.Run(ctx, &agentv1.RunRequest{Agent: "calm", Input: "dice", Attempt: attempt,
					Chaos: &agentv1.Chaos{Seed: 42, FailureRate: 0.5}})
				if err != nil {
					b.WriteByte('x')
				} else {
					b.WriteByte('.')
				}
			}
			return b.String()
		}
		first, second := draw(), draw()
		if first != second || !strings.Contains(first, "x") || !strings.Contains(first, ".") {
			t.Errorf("draws %q then %q: want the same, mixing failures and successes", first, second)
		}

		// A truncated stream: the first text chunk arrives, then the run fails.
		evs, err := recvAll(c.RunStream(ctx, &agentv1.RunStreamRequest{Agent: "calm", Input: "cut",
			Chaos: &agentv1.Chaos{TruncateRate: 1}}))
		var texts []string
		var failed *agentv1.Run
		for _, ev := range evs {
			if d := ev.GetTextDelta(); d != nil {
				texts = append(texts, d.GetText())
			}
			if f := ev.GetFailed(); f != nil {
				failed = f
			}
		}
		if status.Code(err) != codes.Unavailable || len(texts) != 1 || failed == nil || !strings.Contains(failed.GetError(), "truncated") {
			t.Errorf("truncated stream: texts %q, failed %v, err %v", texts, failed, err)
		}
		// Tool and memory faults: the tool does not run and the model is told; retrieval fails with a warning.
		toolish := simAgent("toolish", &agentv1.SimScript{Turns: []*agentv1.SimTurn{{ToolCalls: []*agentv1.ToolCall{
			{Id: "t1", Name: "memory_search", Arguments: mustStruct(map[string]any{"query": "x"})}}}}}, searchTool)
		toolish.Memory = &agentv1.MemoryConfig{Namespace: "notes"}
		create(t, ctx, c, toolish)
		resp, err := c.Run(ctx, &agentv1.RunRequest{Agent: "toolish", Input: "look", Attempt: 1,
			Chaos: &agentv1.Chaos{Seed: 1, ToolFailureRate: 1, MemoryFailureRate: 1}})
		if err != nil {
			t.Fatal(err)
		}
		tr := resp.GetRun().GetSteps()[0].GetToolResults()[0]
		if !strings.HasPrefix(tr.GetError(), "chaos: injected failure of tool memory_search") ||
			!strings.Contains(strings.Join(resp.GetRun().GetWarnings(), "\n"), "memory search failed (chaos: injected)") {
			t.Errorf("tool and memory chaos: result %v, warnings %q", tr, resp.GetRun().GetWarnings())
		}
		t.Logf("chaos: transient fault of 2 attempts ridden out at attempt 3 (numbered and counted); 4 codes; seed 42 draws %s (replayed identically)", first)
	})
}

// TestSimFailureRateRecovers: the sim's failure_rate is no longer decided by the input alone: retries of one
// input (new idempotency keys, attempts counted by the service) draw anew, so a failing input recovers, and the
// same attempt replays the same outcome.
func TestSimFailureRateRecovers(t *testing.T) {
	t.Parallel()
	_, ctx, c := grpcHarness(t, agentrpc.Config{})
	create(t, ctx, c, simAgent("coin", &agentv1.SimScript{FailureRate: 0.5}))
	outcome := func(input string, attempt int32) string {
		_, err := c.Run(ctx, &agentv1.RunRequest{Agent: "coin", Input: input, Attempt: attempt})
		if err != nil {
			return "x"
		}
		return "."
	}
	recovered, inputs := 0, 0
	for i := range 8 {
		input := fmt.Sprint("input ", i)
		if outcome(input, 1) == "." {
			continue
		}
		inputs++
		for attempt := int32(2); attempt <= 12; attempt++ {
			if outcome(input, attempt) == "." {
				recovered++
				break
			}
		}
	}
	if inputs == 0 || recovered != inputs {
		t.Errorf("%d of %d failing inputs recovered within 12 attempts", recovered, inputs)
	}
	var first, again strings.Builder
	for attempt := int32(1); attempt <= 10; attempt++ {
		first.WriteString(outcome("replay", attempt))
	}
	for attempt := int32(1); attempt <= 10; attempt++ {
		again.WriteString(outcome("replay", attempt))
	}
	if first.String() != again.String() {
		t.Errorf("attempts replayed %s then %s", first.String(), again.String())
	}
	t.Logf("sim failure_rate 0.5: %d of 8 inputs failed their first attempt, %d recovered on a retry; attempts 1-10 replay as %s", inputs, recovered, first.String())
}
