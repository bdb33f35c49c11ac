// Package sim is the simulated model provider: deterministic, offline and scriptable, the agent service's
// default.
package sim

import (
	"context"
	"fmt"
	"iter"
	"math/rand/v2"
	"strings"
	"sync"
	"time"

	"github.com/loom-dev/loom/agent/model"
	agentv1 "github.com/loom-dev/loom/gen/loom/agent/v1"
)

// Provider returns the sim's registry entry: local (no key, no breaker), gen_ai.system "loom.sim", taking every
// attachment type the contract allows. Each run gets a sim of its own, following the agent's script and
// seeded by the run.
func Provider() model.Provider {
	return model.Provider{
		New:    func(o model.Options) model.Model { return New(o.Sim, o.Seed) },
		System: "loom.sim",
		Local:  true,
	}
}

// Model is the simulated model: deterministic, offline and scriptable. Make one per run: it remembers which
// scripted turns it has used. It is safe for concurrent use.
//
// Each call answers with the first scripted turn, in order, that has not been used yet and whose when_contains
// is found in the latest user or tool messages (those after the last assistant message); empty when_contains
// matches anything. A turn streams its reply as word deltas, then its tool calls. Without a matching turn the
// sim answers from the input: it echoes the latest user message, adding how many attachments came with it
// ("You said: hi (2 attachments)"), or summarises the latest tool result.
//
// Usage counts one token per 4 bytes (rounded up) of everything sent, attachments included, and generated. Latency delays the first
// chunk; failure_rate fails that fraction of calls with model.ErrUnavailable, drawn from an RNG seeded by New's
// seed.
type Model struct {
	script *agentv1.SimScript

	mu   sync.Mutex
	used []bool
	rng  *rand.Rand
}

// New returns a sim following script (nil answers from the input), with its failure RNG seeded by seed.
func New(script *agentv1.SimScript, seed uint64) *Model {
	return &Model{
		script: script,
		used:   make([]bool, len(script.GetTurns())),
		rng:    rand.New(rand.NewPCG(seed, 0x9e3779b97f4a7c15)),
	}
}

// Stream implements model.Model.
func (m *Model) Stream(ctx context.Context, req model.Request) iter.Seq2[model.Chunk, error] {
	return func(yield func(model.Chunk, error) bool) {
		if d := m.script.GetLatency().AsDuration(); d > 0 {
			t := time.NewTimer(d)
			select {
			case <-ctx.Done():
				t.Stop()
				yield(model.Chunk{}, context.Cause(ctx))
				return
			case <-t.C:
			}
		}
		if err := ctx.Err(); err != nil {
			yield(model.Chunk{}, context.Cause(ctx))
			return
		}
		reply, calls, fail := m.answer(req)
		if fail {
			yield(model.Chunk{}, fmt.Errorf("sim: injected failure: %w", model.ErrUnavailable))
			return
		}
		out := tokens(reply)
		for _, w := range words(reply) {
			if ctx.Err() != nil {
				yield(model.Chunk{}, context.Cause(ctx))
				return
			}
			if !yield(model.Chunk{Kind: model.ChunkText, Text: w}, nil) {
				return
			}
		}
		for i := range calls {
			out += tokens(calls[i].Name) + tokens(model.ArgsJSON(calls[i].Args))
			if !yield(model.Chunk{Kind: model.ChunkToolCall, ToolCall: &calls[i]}, nil) {
				return
			}
		}
		yield(model.Chunk{Kind: model.ChunkUsage, Usage: model.Usage{InputTokens: inputTokens(req), OutputTokens: out}}, nil)
	}
}

// answer picks the reply and tool calls for req, and whether the call fails.
func (m *Model) answer(req model.Request) (string, []model.ToolCall, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if rate := m.script.GetFailureRate(); rate > 0 && m.rng.Float64() < float64(rate) {
		return "", nil, true
	}
	latest, last := latestInput(req.Messages)
	for i, turn := range m.script.GetTurns() {
		if m.used[i] || !strings.Contains(latest, turn.GetWhenContains()) {
			continue
		}
		m.used[i] = true
		var calls []model.ToolCall
		for j, tc := range turn.GetToolCalls() {
			id := tc.GetId()
			if id == "" {
				id = fmt.Sprintf("call_%d_%d", i, j)
			}
			args := tc.GetArguments().AsMap()
			if args == nil {
				args = map[string]any{}
			}
			calls = append(calls, model.ToolCall{ID: id, Name: tc.GetName(), Args: args})
		}
		return turn.GetReply(), calls, false
	}
	switch {
	case last.Role == model.RoleTool:
		return fmt.Sprintf("The %s tool returned: %s", last.ToolName, model.Truncate(last.Text, 400)), nil, false
	case last.Role == model.RoleUser:
		return "You said: " + model.Truncate(last.Text, 400) + attachmentNote(len(last.Attachments)), nil, false
	default:
		return "Hello.", nil, false
	}
}

// attachmentNote tells how many attachments came with a message: "", " (1 attachment)", " (2 attachments)".
func attachmentNote(n int) string {
	switch n {
	case 0:
		return ""
	case 1:
		return " (1 attachment)"
	}
	return fmt.Sprintf(" (%d attachments)", n)
}

// latestInput joins the texts of the messages after the last assistant message, and returns the last message.
func latestInput(msgs []model.Message) (string, model.Message) {
	var parts []string
	var last model.Message
	for i := len(msgs) - 1; i >= 0 && msgs[i].Role != model.RoleAssistant; i-- {
		parts = append(parts, msgs[i].Text)
		if last.Role == 0 {
			last = msgs[i]
		}
	}
	return strings.Join(parts, "\n"), last
}

// words splits s into deltas that concatenate back to s: each word with its trailing space.
func words(s string) []string {
	if s == "" {
		return nil
	}
	return strings.SplitAfter(s, " ")
}

// tokens counts one token per 4 bytes, rounded up.
func tokens(s string) int64 { return int64(len(s)+3) / 4 }

func inputTokens(req model.Request) int64 {
	n := tokens(req.System)
	for _, m := range req.Messages {
		n += tokens(m.Text)
		for _, a := range m.Attachments {
			n += int64(len(a.Data)+3) / 4
		}
		for _, tc := range m.ToolCalls {
			n += tokens(tc.Name) + tokens(model.ArgsJSON(tc.Args))
		}
	}
	for _, t := range req.Tools {
		n += tokens(t.Name) + tokens(t.Description)
	}
	return n
}
