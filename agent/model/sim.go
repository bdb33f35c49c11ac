package model

import (
	"context"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"iter"
	"math/rand/v2"
	"strings"
	"sync"
	"time"

	agentv1 "github.com/loom-dev/loom/gen/loom/agent/v1"
)

// Sim is the simulated model: deterministic, offline and scriptable. Make one per run: it remembers which
// scripted turns it has used. It is safe for concurrent use.
//
// Each call answers with the first scripted turn, in order, that has not been used yet and whose when_contains
// is found in the latest user or tool messages (those after the last assistant message); empty when_contains
// matches anything. A turn streams its reply as word deltas, then its tool calls. Without a matching turn the
// sim answers from the input: it echoes the latest user message, adding how many attachments came with it
// ("You said: hi (2 attachments)"), or summarises the latest tool result.
//
// Usage counts one token per 4 bytes (rounded up) of everything sent, attachments included, and generated. Latency delays the first
// chunk; failure_rate fails that fraction of calls with ErrUnavailable, drawn from an RNG seeded by New's seed.
type Sim struct {
	script *agentv1.SimScript

	mu   sync.Mutex
	used []bool
	rng  *rand.Rand
}

// NewSim returns a sim following script (nil answers from the input), with its failure RNG seeded by seed.
func NewSim(script *agentv1.SimScript, seed uint64) *Sim {
	return &Sim{
		script: script,
		used:   make([]bool, len(script.GetTurns())),
		rng:    rand.New(rand.NewPCG(seed, 0x9e3779b97f4a7c15)),
	}
}

// SeedFrom hashes s into a sim seed, so a sim's behaviour follows from, for example, the run input.
func SeedFrom(s string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(s))
	return h.Sum64()
}

// Stream implements Model.
func (m *Sim) Stream(ctx context.Context, req Request) iter.Seq2[Chunk, error] {
	return func(yield func(Chunk, error) bool) {
		if d := m.script.GetLatency().AsDuration(); d > 0 {
			t := time.NewTimer(d)
			select {
			case <-ctx.Done():
				t.Stop()
				yield(Chunk{}, context.Cause(ctx))
				return
			case <-t.C:
			}
		}
		if err := ctx.Err(); err != nil {
			yield(Chunk{}, context.Cause(ctx))
			return
		}
		reply, calls, fail := m.answer(req)
		if fail {
			yield(Chunk{}, fmt.Errorf("sim: injected failure: %w", ErrUnavailable))
			return
		}
		out := tokens(reply)
		for _, w := range words(reply) {
			if ctx.Err() != nil {
				yield(Chunk{}, context.Cause(ctx))
				return
			}
			if !yield(Chunk{Kind: ChunkText, Text: w}, nil) {
				return
			}
		}
		for i := range calls {
			out += tokens(calls[i].Name) + tokens(argsJSON(calls[i].Args))
			if !yield(Chunk{Kind: ChunkToolCall, ToolCall: &calls[i]}, nil) {
				return
			}
		}
		yield(Chunk{Kind: ChunkUsage, Usage: Usage{InputTokens: inputTokens(req), OutputTokens: out}}, nil)
	}
}

// answer picks the reply and tool calls for req, and whether the call fails.
func (m *Sim) answer(req Request) (string, []ToolCall, bool) {
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
		var calls []ToolCall
		for j, tc := range turn.GetToolCalls() {
			id := tc.GetId()
			if id == "" {
				id = fmt.Sprintf("call_%d_%d", i, j)
			}
			args := tc.GetArguments().AsMap()
			if args == nil {
				args = map[string]any{}
			}
			calls = append(calls, ToolCall{ID: id, Name: tc.GetName(), Args: args})
		}
		return turn.GetReply(), calls, false
	}
	switch {
	case last.Role == RoleTool:
		return fmt.Sprintf("The %s tool returned: %s", last.ToolName, truncate(last.Text, 400)), nil, false
	case last.Role == RoleUser:
		return "You said: " + truncate(last.Text, 400) + attachmentNote(len(last.Attachments)), nil, false
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
func latestInput(msgs []Message) (string, Message) {
	var parts []string
	var last Message
	for i := len(msgs) - 1; i >= 0 && msgs[i].Role != RoleAssistant; i-- {
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

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	// Cut at a rune boundary.
	for n > 0 && (s[n]&0xC0) == 0x80 {
		n--
	}
	return s[:n] + "..."
}

// tokens counts one token per 4 bytes, rounded up.
func tokens(s string) int64 { return int64(len(s)+3) / 4 }

func inputTokens(req Request) int64 {
	n := tokens(req.System)
	for _, m := range req.Messages {
		n += tokens(m.Text)
		for _, a := range m.Attachments {
			n += int64(len(a.Data)+3) / 4
		}
		for _, tc := range m.ToolCalls {
			n += tokens(tc.Name) + tokens(argsJSON(tc.Args))
		}
	}
	for _, t := range req.Tools {
		n += tokens(t.Name) + tokens(t.Description)
	}
	return n
}

func argsJSON(args map[string]any) string {
	b, err := json.Marshal(args)
	if err != nil {
		return "{}"
	}
	return string(b)
}
