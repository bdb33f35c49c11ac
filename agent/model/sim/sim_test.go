package sim_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/loom-dev/loom/agent/model"
	"github.com/loom-dev/loom/agent/model/modeltest"
	"github.com/loom-dev/loom/agent/model/sim"
	agentv1 "github.com/loom-dev/loom/gen/loom/agent/v1"
)

var (
	png = []byte("\x89PNG\r\n\x1a\nfake image")
	wav = []byte("RIFF\x00\x00\x00\x00WAVEfake audio")
)

func TestSimScript(t *testing.T) {
	t.Parallel()
	args, _ := structpb.NewStruct(map[string]any{"query": "weather"})
	script := &agentv1.SimScript{Turns: []*agentv1.SimTurn{
		{WhenContains: "weather", Reply: "Let me check.", ToolCalls: []*agentv1.ToolCall{{Name: "memory_search", Arguments: args}}},
		{WhenContains: "sunny", Reply: "It is sunny today."},
		{Reply: "Anything else?"},
	}}
	s := sim.New(script, 1)
	ctx := context.Background()

	r1 := modeltest.Collect(ctx, s, modeltest.User("what is the weather?"))
	if r1.Err != nil || r1.Text != "Let me check." {
		t.Fatalf("turn 1 = %q, %v", r1.Text, r1.Err)
	}
	want := []model.ToolCall{{ID: "call_0_0", Name: "memory_search", Args: map[string]any{"query": "weather"}}}
	if diff := cmp.Diff(want, r1.Calls); diff != "" {
		t.Errorf("turn 1 tool calls (-want +got):\n%s", diff)
	}
	if r1.Usage.InputTokens != 5 || r1.Usage.OutputTokens == 0 { // 20 bytes -> 5 tokens
		t.Errorf("turn 1 usage = %+v, want 5 input tokens and some output", r1.Usage)
	}
	req := modeltest.User("what is the weather?")
	req.Messages = append(req.Messages,
		model.Message{Role: model.RoleAssistant, ToolCalls: r1.Calls},
		model.Message{Role: model.RoleTool, ToolCallID: "call_0_0", ToolName: "memory_search", Text: `{"hits":["sunny"]}`})
	if r2 := modeltest.Collect(ctx, s, req); r2.Text != "It is sunny today." || len(r2.Calls) != 0 {
		t.Errorf("turn 2 = %q %v, want the sunny reply", r2.Text, r2.Calls)
	}
	if r3 := modeltest.Collect(ctx, s, modeltest.User("thanks")); r3.Text != "Anything else?" {
		t.Errorf("turn 3 = %q", r3.Text)
	}
	// Every turn is used: the sim answers from the input.
	if r4 := modeltest.Collect(ctx, s, modeltest.User("bye now")); r4.Text != "You said: bye now" {
		t.Errorf("turn 4 = %q", r4.Text)
	}
}

func TestSimWordDeltasAndDefault(t *testing.T) {
	t.Parallel()
	var deltas []string
	for c, err := range sim.New(nil, 0).Stream(context.Background(), modeltest.User("hello there world")) {
		if err != nil {
			t.Fatal(err)
		}
		if c.Kind == model.ChunkText {
			deltas = append(deltas, c.Text)
		}
	}
	if diff := cmp.Diff([]string{"You ", "said: ", "hello ", "there ", "world"}, deltas); diff != "" {
		t.Errorf("deltas (-want +got):\n%s", diff)
	}
}

func TestSimFailureRateIsDeterministic(t *testing.T) {
	t.Parallel()
	run := func(seed uint64) []bool {
		s := sim.New(&agentv1.SimScript{FailureRate: 0.5}, seed)
		var out []bool
		for range 40 {
			out = append(out, modeltest.Collect(context.Background(), s, modeltest.User("x")).Err != nil)
		}
		return out
	}
	a, b := run(7), run(7)
	if diff := cmp.Diff(a, b); diff != "" {
		t.Fatalf("same seed, different failures (-a +b):\n%s", diff)
	}
	fails := 0
	for _, f := range a {
		if f {
			fails++
		}
	}
	if fails == 0 || fails == 40 {
		t.Errorf("failure_rate 0.5 failed %d of 40 calls", fails)
	}
	r := modeltest.Collect(context.Background(), sim.New(&agentv1.SimScript{FailureRate: 1}, 0), modeltest.User("x"))
	if !errors.Is(r.Err, model.ErrUnavailable) {
		t.Errorf("failure_rate 1: err = %v, want ErrUnavailable", r.Err)
	}
}

func TestSimLatencyHonoursCancel(t *testing.T) {
	t.Parallel()
	s := sim.New(&agentv1.SimScript{Latency: durationpb.New(10 * time.Second)}, 0)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	start := time.Now()
	r := modeltest.Collect(ctx, s, modeltest.User("x"))
	if !errors.Is(r.Err, context.DeadlineExceeded) {
		t.Errorf("err = %v, want DeadlineExceeded", r.Err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("cancel took %v", d)
	}
}

func TestSimCountsAttachments(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		atts []model.Attachment
		want string
	}{
		{name: "none", want: "You said: look"},
		{name: "one", atts: []model.Attachment{{MIMEType: "image/png", Data: png}}, want: "You said: look (1 attachment)"},
		{name: "two", atts: []model.Attachment{{MIMEType: "image/png", Data: png}, {MIMEType: "audio/ogg", Data: wav}},
			want: "You said: look (2 attachments)"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			r := modeltest.Collect(context.Background(), sim.New(nil, 1), modeltest.WithAttachments("look", tc.atts...))
			if r.Err != nil || r.Text != tc.want {
				t.Errorf("reply = %q, %v; want %q", r.Text, r.Err, tc.want)
			}
		})
	}
}
