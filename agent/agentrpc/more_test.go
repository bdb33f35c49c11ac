package agentrpc_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/loom-dev/loom/agent/agentrpc"
	"github.com/loom-dev/loom/agent/model"
	agentv1 "github.com/loom-dev/loom/gen/loom/agent/v1"
	"github.com/loom-dev/loom/gen/loom/agent/v1/agentv1connect"
	"github.com/loom-dev/loom/internal/rpcserver"
	"github.com/loom-dev/loom/internal/rpcserver/rpcservertest"
	"github.com/loom-dev/loom/internal/sqldb"
)

// TestRunOnPostgres runs the main paths with the store on Postgres.
func TestRunOnPostgres(t *testing.T) {
	t.Parallel()
	h := newHarnessOn(t, sqldb.Postgres, agentrpc.Config{})
	h.eachNamedClient(t, "pg-", func(t *testing.T, ctx context.Context, c agentv1.AgentServiceClient, name string) {
		create(t, ctx, c, memoryAgent(t, h, name))
		key := "pgkey-" + name
		first, err := c.Run(ctx, &agentv1.RunRequest{Agent: name, Input: "favourite colour?", IdempotencyKey: key})
		if err != nil {
			t.Fatal(err)
		}
		if first.GetRun().GetOutput() != "Your favourite colour is blue." {
			t.Fatalf("run = %v", first.GetRun())
		}
		again, err := c.Run(ctx, &agentv1.RunRequest{Agent: name, Input: "favourite colour?", IdempotencyKey: key})
		if err != nil || again.GetRun().GetId() != first.GetRun().GetId() {
			t.Fatalf("second Run = %v, %v; want the first run", again.GetRun().GetId(), err)
		}
		got, err := c.GetRun(ctx, &agentv1.GetRunRequest{Id: first.GetRun().GetId()})
		if err != nil || len(got.GetRun().GetSteps()) != 2 {
			t.Fatalf("GetRun = %v, %v", got, err)
		}
	})
}

// TestIdempotencyConcurrent starts the same keyed run five times at once: one run executes, all get it.
func TestIdempotencyConcurrent(t *testing.T) {
	t.Parallel()
	_, ctx, c := grpcHarness(t, agentrpc.Config{})
	// The sim's latency keeps the first run in flight while the others arrive.
	create(t, ctx, c, simAgent("once", &agentv1.SimScript{Latency: durationpb.New(200 * time.Millisecond)}))
	var (
		wg  sync.WaitGroup
		mu  sync.Mutex
		ids = map[string]int{}
	)
	for range 5 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := c.Run(ctx, &agentv1.RunRequest{Agent: "once", Input: "hi", IdempotencyKey: "same"})
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				ids["error: "+err.Error()]++
				return
			}
			if resp.GetRun().GetState() != agentv1.RunState_RUN_STATE_SUCCEEDED {
				ids["state: "+resp.GetRun().GetState().String()]++
				return
			}
			ids[resp.GetRun().GetId()]++
		}()
	}
	wg.Wait()
	if len(ids) != 1 {
		t.Fatalf("outcomes = %v, want one run id five times", ids)
	}
	list, err := c.ListRuns(ctx, &agentv1.ListRunsRequest{Agent: "once"})
	if err != nil || len(list.GetRuns()) != 1 {
		t.Fatalf("ListRuns = %d runs, %v; want 1", len(list.GetRuns()), err)
	}
}

// TestRunGemini runs an agent on a Gemini endpoint speaking streamGenerateContent over SSE, with a function call.
func TestRunGemini(t *testing.T) {
	t.Parallel()
	var (
		mu    sync.Mutex
		calls int
	)
	llm := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v1beta/models/gemini-test:streamGenerateContent" || r.Header.Get("x-goog-api-key") != "g-key" {
			http.Error(w, "unexpected", http.StatusNotFound)
			return
		}
		mu.Lock()
		calls++
		n := calls
		mu.Unlock()
		w.Header().Set("Content-Type", "text/event-stream")
		if n == 1 {
			fmt.Fprint(w, `data: {"candidates":[{"content":{"role":"model","parts":[{"functionCall":{"name":"memory_search","args":{"query":"colour"}}}]}}],"usageMetadata":{"promptTokenCount":40,"candidatesTokenCount":4}}`+"\n\n")
			return
		}
		fmt.Fprint(w, `data: {"candidates":[{"content":{"role":"model","parts":[{"text":"It is "}]}}]}`+"\n\n")
		fmt.Fprint(w, `data: {"candidates":[{"content":{"role":"model","parts":[{"text":"blue."}]}}],"usageMetadata":{"promptTokenCount":60,"candidatesTokenCount":3}}`+"\n\n")
	}))
	defer llm.Close()
	h := newHarness(t, agentrpc.Config{Models: testModels(model.Endpoint{APIKey: "g-key", BaseURL: llm.URL}, model.Endpoint{})})
	ctx := testCtx(t)
	c := h.clients["connect"]
	run := askFavouriteColour(t, ctx, h, c, "gem", &agentv1.Model{Provider: agentv1.Provider_PROVIDER_GEMINI, Name: "gemini-test"})
	if run.GetOutput() != "It is blue." || run.GetUsage().GetInputTokens() != 100 || run.GetUsage().GetOutputTokens() != 7 ||
		len(run.GetSteps()) != 2 || run.GetSteps()[0].GetToolResults()[0].GetError() != "" {
		t.Errorf("run = %v", run)
	}
}

func TestMemorySaveAndUnauthenticated(t *testing.T) {
	t.Parallel()
	h, ctx, c := grpcHarness(t, agentrpc.Config{})
	save, err := structpb.NewStruct(map[string]any{"text": "the user likes green", "id": "pref-1"})
	if err != nil {
		t.Fatal(err)
	}
	a := simAgent("saver", &agentv1.SimScript{Turns: []*agentv1.SimTurn{{WhenContains: "remember", ToolCalls: []*agentv1.ToolCall{{Name: "memory_save", Arguments: save}}}}},
		&agentv1.Tool{Kind: &agentv1.Tool_MemorySave{MemorySave: &agentv1.MemorySaveTool{}}})
	a.Memory = &agentv1.MemoryConfig{Namespace: "prefs"}
	create(t, ctx, c, a)
	resp, err := c.Run(ctx, &agentv1.RunRequest{Agent: "saver", Input: "remember that I like green"})
	if err != nil {
		t.Fatal(err)
	}
	if res := resp.GetRun().GetSteps()[0].GetToolResults()[0]; res.GetError() != "" || res.GetResult().GetFields()["id"].GetStringValue() != "pref-1" {
		t.Errorf("memory_save result = %v", res)
	}
	if recs := h.memory.Records("prefs"); len(recs) != 1 || recs[0].GetText() != "the user likes green" {
		t.Errorf("memory records = %v", recs)
	}

	// Without a principal (the call carries no credentials) every call is refused before the handler runs.
	hs := rpcservertest.Start(t, rpcserver.Config{}, rpcservertest.TenantAuthenticator, h.server.Service())
	anon := agentv1connect.NewAgentServiceClient(rpcservertest.HTTPClient(), hs.URL)
	_, err = anon.GetAgent(context.Background(), connect.NewRequest(&agentv1.GetAgentRequest{Name: "saver"}))
	if connect.CodeOf(err) != connect.CodeUnauthenticated {
		t.Errorf("GetAgent without principal: err = %v, want Unauthenticated", err)
	}
}
