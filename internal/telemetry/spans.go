package telemetry

import (
	"context"
	"fmt"
	"reflect"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
)

// ScopeName is the instrumentation scope of the spans this package's helpers start.
const ScopeName = "github.com/loom-dev/loom/internal/telemetry"

// tracer returns a tracer of the provider behind the span in ctx: a no-op one outside a traced call.
func tracer(ctx context.Context) trace.Tracer {
	return trace.SpanFromContext(ctx).TracerProvider().Tracer(ScopeName)
}

// GenAI semantic-convention attribute keys (https://opentelemetry.io/docs/specs/semconv/gen-ai/).
const (
	AttrGenAIOperation    = attribute.Key("gen_ai.operation.name")
	AttrGenAISystem       = attribute.Key("gen_ai.system")
	AttrGenAIProvider     = attribute.Key("gen_ai.provider.name") // the newer name of gen_ai.system
	AttrGenAIRequestModel = attribute.Key("gen_ai.request.model")
	AttrGenAIResponseMod  = attribute.Key("gen_ai.response.model")
	AttrGenAIInputTokens  = attribute.Key("gen_ai.usage.input_tokens")
	AttrGenAIOutputTokens = attribute.Key("gen_ai.usage.output_tokens")
	AttrErrorType         = attribute.Key("error.type")
)

// Memory search attribute keys.
const (
	AttrMemoryNamespace = attribute.Key("loom.memory.namespace")
	AttrMemoryMode      = attribute.Key("loom.memory.mode")
	AttrMemoryK         = attribute.Key("loom.memory.k")
	AttrMemoryResults   = attribute.Key("loom.memory.results")
)

// ModelCall is the span of one call to a model provider. A nil *ModelCall is valid and does nothing.
type ModelCall struct{ span trace.Span }

// StartModelCall starts a client span for one model call, named "chat <model>" as the GenAI conventions say,
// with gen_ai.operation.name "chat", gen_ai.system and gen_ai.provider.name set to system ("openai",
// "gcp.gemini", "anthropic", or Loom's "loom.sim") and gen_ai.request.model to model. Call [ModelCall.End]
// when the call returns. Outside a traced call the span is a no-op. Prompts and completions are never recorded.
func StartModelCall(ctx context.Context, system, model string) (context.Context, *ModelCall) {
	ctx, span := tracer(ctx).Start(ctx, "chat "+model,
		trace.WithSpanKind(trace.SpanKindClient),
		trace.WithAttributes(
			AttrGenAIOperation.String("chat"),
			AttrGenAISystem.String(system),
			AttrGenAIProvider.String(system),
			AttrGenAIRequestModel.String(model),
		))
	return ctx, &ModelCall{span: span}
}

// End records the token usage (gen_ai.usage.input_tokens and output_tokens; negative means unknown and is
// left out) and the error, if any, then ends the span.
func (c *ModelCall) End(inputTokens, outputTokens int64, err error) {
	if c == nil {
		return
	}
	if inputTokens >= 0 {
		c.span.SetAttributes(AttrGenAIInputTokens.Int64(inputTokens))
	}
	if outputTokens >= 0 {
		c.span.SetAttributes(AttrGenAIOutputTokens.Int64(outputTokens))
	}
	endWithError(c.span, err)
}

// SetResponseModel records gen_ai.response.model when the provider answered with a model name of its own.
func (c *ModelCall) SetResponseModel(model string) {
	if c != nil && model != "" {
		c.span.SetAttributes(AttrGenAIResponseMod.String(model))
	}
}

// Search is the span of one memory search. A nil *Search is valid and does nothing.
type Search struct{ span trace.Span }

// StartMemorySearch starts an internal span "memory.search" with the namespace, the mode ("exact", "int8",
// "ivf", "hnsw", "hybrid") and k. Call [Search.End] when the search returns. Outside a traced call the span is
// a no-op. Query text and vectors are never recorded.
func StartMemorySearch(ctx context.Context, namespace, mode string, k int) (context.Context, *Search) {
	ctx, span := tracer(ctx).Start(ctx, "memory.search",
		trace.WithSpanKind(trace.SpanKindInternal),
		trace.WithAttributes(
			AttrMemoryNamespace.String(namespace),
			AttrMemoryMode.String(mode),
			AttrMemoryK.Int(k),
		))
	return ctx, &Search{span: span}
}

// End records how many results the search returned and the error, if any, then ends the span.
func (s *Search) End(results int, err error) {
	if s == nil {
		return
	}
	s.span.SetAttributes(AttrMemoryResults.Int(results))
	endWithError(s.span, err)
}

// StartSpan starts a span named name with tp, for work that runs outside an RPC (a workflow step run by a job
// worker, its context restored with [Extract]); nil tp means tracing is off and the span is a no-op. The
// caller ends the span.
func StartSpan(ctx context.Context, tp trace.TracerProvider, name string, attrs ...attribute.KeyValue) (context.Context, trace.Span) {
	if tp == nil {
		return ctx, trace.SpanFromContext(context.Background()) // a non-recording span
	}
	return tp.Tracer(ScopeName).Start(ctx, name, trace.WithAttributes(attrs...))
}

func endWithError(span trace.Span, err error) {
	if err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
		span.SetAttributes(AttrErrorType.String(errorType(err)))
	}
	span.End()
}

// errorType is error.type: the Connect code of the error when it has one (what connect.CodeOf gives), else
// "_OTHER" as the semantic conventions say.
func errorType(err error) string {
	if code, ok := connectCode(err); ok {
		return code
	}
	return "_OTHER"
}

// connectCode returns the code of the first *connect.Error in err's tree, walked as errors.As walks it. The
// type is recognised by its package path and name, and its Code method called through reflection, so that
// this package, and everything that records spans through it (the workflow engine among them), does not
// depend on connect.
func connectCode(err error) (string, bool) {
	if err == nil {
		return "", false
	}
	if t := reflect.TypeOf(err); t.Kind() == reflect.Pointer && t.Elem().PkgPath() == "connectrpc.com/connect" && t.Elem().Name() == "Error" {
		if m := reflect.ValueOf(err).MethodByName("Code"); m.IsValid() && m.Type().NumIn() == 0 && m.Type().NumOut() == 1 {
			if code, ok := m.Call(nil)[0].Interface().(fmt.Stringer); ok {
				return code.String(), true
			}
		}
	}
	switch u := err.(type) {
	case interface{ Unwrap() error }:
		return connectCode(u.Unwrap())
	case interface{ Unwrap() []error }:
		for _, e := range u.Unwrap() {
			if code, ok := connectCode(e); ok {
				return code, true
			}
		}
	}
	return "", false
}
