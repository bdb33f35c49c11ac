package agentrpc_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"

	"github.com/loom-dev/loom/agent/agentrpc"
	"github.com/loom-dev/loom/agent/agenttest"
	"github.com/loom-dev/loom/agent/model"
	"github.com/loom-dev/loom/agent/sqlstore"
	agentv1 "github.com/loom-dev/loom/gen/loom/agent/v1"
	"github.com/loom-dev/loom/internal/rpcserver"
	"github.com/loom-dev/loom/internal/rpcserver/rpcservertest"
	"github.com/loom-dev/loom/internal/sqldb"
	"github.com/loom-dev/loom/internal/sqldb/sqldbtest"
)

// BenchmarkTimeToFirstEvent measures, in one run, the time from a client's RunStream call (grpc-go, through the
// real server) to its first text delta, against the provider's own time to first token measured with the
// official SDK calling the same local OpenAI-compatible server (which waits 2 ms before its first chunk, like
// a model's first token). Reported: both, and the ratio.
func BenchmarkTimeToFirstEvent(b *testing.B) {
	const firstToken = 2 * time.Millisecond
	llm := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "text/event-stream")
		time.Sleep(firstToken)
		for i, tok := range []string{"Hello", " there", "."} {
			fmt.Fprintf(w, "data: {\"id\":\"1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":%q}}]}\n\n", tok)
			if i == 0 {
				w.(http.Flusher).Flush()
			}
		}
		fmt.Fprint(w, "data: {\"id\":\"1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":3,\"total_tokens\":8}}\n\ndata: [DONE]\n\n")
	}))
	defer llm.Close()

	ctx := context.Background()
	store, err := sqlstore.New(ctx, sqldbtest.Open(b, sqldb.SQLite))
	if err != nil {
		b.Fatal(err)
	}
	srv, err := agentrpc.New(slog.New(slog.NewTextHandler(io.Discard, nil)), store, agenttest.NewMemory(),
		agentrpc.Config{Models: testModels(model.Endpoint{}, model.Endpoint{APIKey: "sk-bench", BaseURL: llm.URL + "/v1"})})
	if err != nil {
		b.Fatal(err)
	}
	ts := rpcservertest.Start(b, rpcserver.Config{}, nil, srv.Service())
	client := agentv1.NewAgentServiceClient(ts.GRPCConn(b))
	if _, err := client.CreateAgent(ctx, &agentv1.CreateAgentRequest{Agent: &agentv1.Agent{Name: "oai",
		Model: &agentv1.Model{Provider: agentv1.Provider_PROVIDER_OPENAI, Name: "m"}}}); err != nil {
		b.Fatal(err)
	}
	sdk := openai.NewClient(option.WithAPIKey("sk-bench"), option.WithBaseURL(llm.URL+"/v1"))

	var providerTotal, loomTotal time.Duration
	for b.Loop() {
		start := time.Now()
		s := sdk.Chat.Completions.NewStreaming(ctx, openai.ChatCompletionNewParams{
			Model: "m", Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("hi")},
		})
		for s.Next() {
			if len(s.Current().Choices) > 0 && s.Current().Choices[0].Delta.Content != "" {
				providerTotal += time.Since(start)
				break
			}
		}
		for s.Next() {
		}
		if err := s.Err(); err != nil {
			b.Fatal(err)
		}
		s.Close()

		start = time.Now()
		rs, err := client.RunStream(ctx, &agentv1.RunStreamRequest{Agent: "oai", Input: "hi"})
		if err != nil {
			b.Fatal(err)
		}
		first := false
		for {
			ev, err := rs.Recv()
			if err != nil {
				break
			}
			if !first && ev.GetTextDelta() != nil {
				loomTotal += time.Since(start)
				first = true
			}
		}
		if !first {
			b.Fatal("no text delta")
		}
	}
	n := float64(b.N)
	b.ReportMetric(float64(providerTotal.Microseconds())/n, "provider-ttft-us")
	b.ReportMetric(float64(loomTotal.Microseconds())/n, "loom-ttfe-us")
	b.ReportMetric(float64(loomTotal)/float64(providerTotal), "x-provider")
}
