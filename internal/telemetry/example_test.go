package telemetry_test

import (
	"context"
	"fmt"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/loom-dev/loom/internal/telemetry"
)

// A model call inside a traced RPC: the span is a child of the RPC's and carries the GenAI attributes.
func ExampleStartModelCall() {
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	ctx, rpc := tp.Tracer("example").Start(context.Background(), "loom.agent.v1.AgentService/RunStream")

	ctx, call := telemetry.StartModelCall(ctx, "openai", "gpt-4o-mini")
	_ = ctx // pass ctx to the provider's client
	call.End(812, 64, nil)
	rpc.End()

	s := rec.Ended()[0]
	fmt.Println(s.Name())
	for _, kv := range s.Attributes() {
		fmt.Printf("%s=%s\n", kv.Key, kv.Value.String())
	}
	// Output:
	// chat gpt-4o-mini
	// gen_ai.operation.name=chat
	// gen_ai.system=openai
	// gen_ai.provider.name=openai
	// gen_ai.request.model=gpt-4o-mini
	// gen_ai.usage.input_tokens=812
	// gen_ai.usage.output_tokens=64
}

// A memory search inside a traced RPC.
func ExampleStartMemorySearch() {
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	ctx, rpc := tp.Tracer("example").Start(context.Background(), "loom.memory.v1.MemoryService/Search")

	_, search := telemetry.StartMemorySearch(ctx, "docs", "hnsw", 10)
	search.End(10, nil)
	rpc.End()

	s := rec.Ended()[0]
	fmt.Println(s.Name())
	for _, kv := range s.Attributes() {
		fmt.Printf("%s=%s\n", kv.Key, kv.Value.String())
	}
	// Output:
	// memory.search
	// loom.memory.namespace=docs
	// loom.memory.mode=hnsw
	// loom.memory.k=10
	// loom.memory.results=10
}
