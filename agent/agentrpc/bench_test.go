package agentrpc_test

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/loom-dev/loom/agent/agentrpc"
	"github.com/loom-dev/loom/agent/agenttest"
	"github.com/loom-dev/loom/agent/model"
	"github.com/loom-dev/loom/agent/model/sim"
	"github.com/loom-dev/loom/agent/sqlstore"
	agentv1 "github.com/loom-dev/loom/gen/loom/agent/v1"
	"github.com/loom-dev/loom/internal/principal"
	"github.com/loom-dev/loom/internal/sqldb"
	"github.com/loom-dev/loom/internal/sqldb/sqldbtest"
)

// BenchmarkStepOverhead measures what the platform adds per agent step (one model call and one tool call) with
// the sim at zero latency, against a baseline measured in the same run: the raw sim model calls alone. A run has
// 8 steps: 7 memory_search tool calls against the in-process fake, then an answer; it is created and finished in
// SQLite (two durable commits). Reported: ns/step, baseline-ns/step and their ratio; and, measured in the same run
// on the same database, the floor of the run's two durable commits (one-row autocommit INSERTs, one after the
// other) spread over the 8 steps (commit-floor-ns/step), and what the platform adds beyond it
// (platform-ns/step = ns/step - commit-floor-ns/step).
func BenchmarkStepOverhead(b *testing.B) {
	const steps = 8
	ctx := principal.NewContext(context.Background(), principal.Principal{Tenant: "bench"})
	db := sqldbtest.Open(b, sqldb.SQLite)
	store, err := sqlstore.New(ctx, db)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := db.ExecContext(ctx, "CREATE TABLE floor (id INTEGER PRIMARY KEY, v TEXT NOT NULL)"); err != nil {
		b.Fatal(err)
	}
	srv, err := agentrpc.New(slog.New(slog.NewTextHandler(io.Discard, nil)), store, agenttest.NewMemory(), agentrpc.Config{})
	if err != nil {
		b.Fatal(err)
	}
	turns := searchTurns(b, steps)
	script := &agentv1.SimScript{Turns: turns}
	a := simAgent("bench", script, searchTool)
	a.Memory = &agentv1.MemoryConfig{Namespace: "notes"}
	if _, err := srv.CreateAgent(ctx, connect.NewRequest(&agentv1.CreateAgentRequest{Agent: a})); err != nil {
		b.Fatal(err)
	}

	// Baseline, timed by hand in the same run (testing.Benchmark cannot nest): the same 8 model calls on a fresh
	// sim, the conversation growing as in the run.
	baseStart := time.Now()
	for range b.N {
		m := sim.New(script, 1)
		req := model.Request{System: "You help.", Messages: []model.Message{{Role: model.RoleUser, Text: "question"}}}
		for range steps {
			var calls []model.ToolCall
			for c, err := range m.Stream(ctx, req) {
				if err != nil {
					b.Fatal(err)
				}
				if c.Kind == model.ChunkToolCall {
					calls = append(calls, *c.ToolCall)
				}
			}
			req.Messages = append(req.Messages, model.Message{Role: model.RoleAssistant, ToolCalls: calls},
				model.Message{Role: model.RoleTool, Text: `{"hits":[]}`})
		}
	}
	basePerStep := float64(time.Since(baseStart).Nanoseconds()) / float64(b.N) / steps
	// The commit floor: two durable one-row commits per run, as many as the runs below.
	floorStart := time.Now()
	for i := range 2 * b.N {
		if _, err := db.ExecContext(ctx, "INSERT INTO floor (id, v) VALUES (?, 'x')", i); err != nil {
			b.Fatal(err)
		}
	}
	floorPerStep := float64(time.Since(floorStart).Nanoseconds()) / float64(b.N) / steps

	req := connect.NewRequest(&agentv1.RunRequest{Agent: "bench", Input: "question"})
	b.ResetTimer()
	for range b.N {
		resp, err := srv.Run(ctx, req)
		if err != nil {
			b.Fatal(err)
		}
		if len(resp.Msg.GetRun().GetSteps()) != steps {
			b.Fatalf("run has %d steps", len(resp.Msg.GetRun().GetSteps()))
		}
	}
	perStep := float64(b.Elapsed().Nanoseconds()) / float64(b.N) / steps
	b.ReportMetric(perStep, "ns/step")
	b.ReportMetric(basePerStep, "baseline-ns/step")
	b.ReportMetric(perStep/basePerStep, "ratio")
	b.ReportMetric(floorPerStep, "commit-floor-ns/step")
	b.ReportMetric(perStep-floorPerStep, "platform-ns/step")
}

// searchTurns scripts a sim run of steps model calls: steps-1 that call memory_search, then a final answer.
func searchTurns(b *testing.B, steps int) []*agentv1.SimTurn {
	b.Helper()
	query, err := structpb.NewStruct(map[string]any{"query": "x"})
	if err != nil {
		b.Fatal(err)
	}
	var turns []*agentv1.SimTurn
	for range steps - 1 {
		turns = append(turns, &agentv1.SimTurn{Reply: "searching", ToolCalls: []*agentv1.ToolCall{{Name: "memory_search", Arguments: query}}})
	}
	return append(turns, &agentv1.SimTurn{Reply: "the answer is forty two"})
}
