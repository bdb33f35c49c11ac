// Package telemetry sets up Loom's OpenTelemetry tracing from the standard OTEL_* environment variables and
// holds the small helpers the services call to describe their own work in a trace: model calls (OpenTelemetry
// GenAI semantic conventions) and memory searches. It also provides the slog handler that puts trace and span
// ids on every log line of a traced call, the pprof debug handler and Prometheus collectors for pool statistics.
//
// Tracing is off unless configured: [Setup] then returns a [Tracing] whose TracerProvider is nil, and the
// server, clients and database add no instrumentation at all, so tracing off costs nothing.
//
// The helpers never need a tracer provider of their own: they start their span with the provider of the span
// already in the context (the RPC's server span), so they do nothing outside a traced call. No package state is
// kept; nothing here touches OpenTelemetry's global provider.
package telemetry

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
)

// Tracing is the process's tracing setup. The zero value is tracing off.
type Tracing struct {
	// TracerProvider is the provider every instrumented component uses; nil when tracing is off.
	TracerProvider trace.TracerProvider
	// Exporter names what spans go to ("otlp/grpc", "otlp/http/protobuf"), for the startup log line; empty when
	// off.
	Exporter string
	// Sampler describes the sampler, for the startup log line.
	Sampler string

	sdk *sdktrace.TracerProvider
}

// Enabled reports whether tracing is on.
func (t *Tracing) Enabled() bool { return t != nil && t.TracerProvider != nil }

// Shutdown flushes spans not yet exported and stops the exporter. It is a no-op when tracing is off.
func (t *Tracing) Shutdown(ctx context.Context) error {
	if t == nil || t.sdk == nil {
		return nil
	}
	return t.sdk.Shutdown(ctx)
}

// Propagator is the propagation format Loom reads and writes: W3C Trace Context and Baggage.
func Propagator() propagation.TextMapPropagator {
	return propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{})
}

// Setup configures tracing from the standard OpenTelemetry environment variables read through getenv:
//
//   - OTEL_SDK_DISABLED=true, or OTEL_TRACES_EXPORTER=none: off.
//   - OTEL_TRACES_EXPORTER=otlp, or OTEL_EXPORTER_OTLP_ENDPOINT / OTEL_EXPORTER_OTLP_TRACES_ENDPOINT set: on,
//     exporting over OTLP. Nothing set: off.
//   - OTEL_EXPORTER_OTLP_TRACES_PROTOCOL or OTEL_EXPORTER_OTLP_PROTOCOL: "grpc" or "http/protobuf" (the
//     default, as the specification says).
//   - OTEL_TRACES_SAMPLER and OTEL_TRACES_SAMPLER_ARG: always_on, always_off, traceidratio and their
//     parentbased_ forms; default parentbased_always_on.
//   - OTEL_SERVICE_NAME (default serviceName) and OTEL_RESOURCE_ATTRIBUTES name the process.
//
// The exporters read their other settings (OTEL_EXPORTER_OTLP_HEADERS, _TIMEOUT, _CERTIFICATE, _INSECURE,
// OTEL_BSP_*) from the process environment themselves. Spans are batched; call [Tracing.Shutdown] before exit.
func Setup(ctx context.Context, getenv func(string) string, serviceName, version string) (*Tracing, error) {
	if strings.EqualFold(getenv("OTEL_SDK_DISABLED"), "true") {
		return &Tracing{}, nil
	}
	endpoint := getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
	signalEndpoint := endpoint != ""
	if endpoint == "" {
		endpoint = getenv("OTEL_EXPORTER_OTLP_ENDPOINT")
	}
	switch exp := strings.TrimSpace(getenv("OTEL_TRACES_EXPORTER")); exp {
	case "none":
		return &Tracing{}, nil
	case "":
		if endpoint == "" {
			return &Tracing{}, nil
		}
	case "otlp":
	default:
		return nil, fmt.Errorf("OTEL_TRACES_EXPORTER: %q is not supported (want otlp or none)", exp)
	}
	sampler, desc, err := Sampler(getenv("OTEL_TRACES_SAMPLER"), getenv("OTEL_TRACES_SAMPLER_ARG"))
	if err != nil {
		return nil, err
	}
	protocol := getenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
	if protocol == "" {
		protocol = getenv("OTEL_EXPORTER_OTLP_PROTOCOL")
	}
	var exporter sdktrace.SpanExporter
	switch protocol {
	case "grpc":
		var opts []otlptracegrpc.Option
		if endpoint != "" {
			opts = append(opts, otlptracegrpc.WithEndpointURL(endpoint))
		}
		exporter, err = otlptracegrpc.New(ctx, opts...)
	case "", "http/protobuf":
		protocol = "http/protobuf"
		var opts []otlptracehttp.Option
		if endpoint != "" {
			if !signalEndpoint { // the base endpoint gets the signal's path, as the specification says
				endpoint = strings.TrimSuffix(endpoint, "/") + "/v1/traces"
			}
			opts = append(opts, otlptracehttp.WithEndpointURL(endpoint))
		}
		exporter, err = otlptracehttp.New(ctx, opts...)
	default:
		return nil, fmt.Errorf("OTEL_EXPORTER_OTLP_PROTOCOL: %q is not supported (want grpc or http/protobuf)", protocol)
	}
	if err != nil {
		return nil, fmt.Errorf("otlp trace exporter: %w", err)
	}
	res, err := Resource(ctx, getenv, serviceName, version)
	if err != nil {
		return nil, err
	}
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(exporter), sdktrace.WithSampler(sampler), sdktrace.WithResource(res))
	return &Tracing{TracerProvider: tp, Exporter: "otlp/" + protocol, Sampler: desc, sdk: tp}, nil
}

// Resource describes the process: service.name (OTEL_SERVICE_NAME, else serviceName), service.version and the
// attributes of OTEL_RESOURCE_ATTRIBUTES.
func Resource(ctx context.Context, getenv func(string) string, serviceName, version string) (*resource.Resource, error) {
	attrs := []attribute.KeyValue{attribute.String("service.name", serviceName), attribute.String("service.version", version)}
	for kv := range strings.SplitSeq(getenv("OTEL_RESOURCE_ATTRIBUTES"), ",") {
		k, v, ok := strings.Cut(kv, "=")
		if k = strings.TrimSpace(k); ok && k != "" {
			attrs = append(attrs, attribute.String(k, strings.TrimSpace(v)))
		}
	}
	if name := getenv("OTEL_SERVICE_NAME"); name != "" {
		attrs = append(attrs, attribute.String("service.name", name)) // later wins
	}
	res, err := resource.New(ctx, resource.WithAttributes(attrs...), resource.WithTelemetrySDK(), resource.WithHost())
	if err != nil && !errors.Is(err, resource.ErrPartialResource) {
		return nil, fmt.Errorf("trace resource: %w", err)
	}
	return res, nil
}

// Sampler parses OTEL_TRACES_SAMPLER and OTEL_TRACES_SAMPLER_ARG. An empty name is parentbased_always_on; a
// ratio sampler without an argument samples everything.
func Sampler(name, arg string) (sdktrace.Sampler, string, error) {
	ratio := 1.0
	if strings.HasSuffix(name, "traceidratio") && arg != "" {
		r, err := strconv.ParseFloat(arg, 64)
		if err != nil || r < 0 || r > 1 {
			return nil, "", fmt.Errorf("OTEL_TRACES_SAMPLER_ARG: %q is not a ratio in [0, 1]", arg)
		}
		ratio = r
	}
	switch name {
	case "", "parentbased_always_on":
		return sdktrace.ParentBased(sdktrace.AlwaysSample()), "parentbased_always_on", nil
	case "always_on":
		return sdktrace.AlwaysSample(), name, nil
	case "always_off":
		return sdktrace.NeverSample(), name, nil
	case "parentbased_always_off":
		return sdktrace.ParentBased(sdktrace.NeverSample()), name, nil
	case "traceidratio":
		return sdktrace.TraceIDRatioBased(ratio), fmt.Sprintf("%s(%g)", name, ratio), nil
	case "parentbased_traceidratio":
		return sdktrace.ParentBased(sdktrace.TraceIDRatioBased(ratio)), fmt.Sprintf("%s(%g)", name, ratio), nil
	}
	return nil, "", fmt.Errorf("OTEL_TRACES_SAMPLER: %q is not supported", name)
}

// Inject returns the trace context of ctx as W3C headers ("traceparent", "tracestate", "baggage"), to be stored
// with work that runs later, such as a workflow run and its steps; nil when ctx carries no span.
func Inject(ctx context.Context) map[string]string {
	if !trace.SpanContextFromContext(ctx).IsValid() {
		return nil
	}
	carrier := propagation.MapCarrier{}
	Propagator().Inject(ctx, carrier)
	return carrier
}

// Extract returns ctx carrying the remote span context stored by [Inject], so spans started from it are
// children of the span that was current then. A nil or empty carrier returns ctx unchanged.
func Extract(ctx context.Context, carrier map[string]string) context.Context {
	if len(carrier) == 0 {
		return ctx
	}
	return Propagator().Extract(ctx, propagation.MapCarrier(carrier))
}

// EnvKeys are the environment variables [Setup] reads through its getenv. The exporters' own settings (headers,
// which may hold credentials, timeouts, certificates) are not among them: the exporters read those from the
// process environment.
var EnvKeys = []string{
	"OTEL_SDK_DISABLED", "OTEL_TRACES_EXPORTER",
	"OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
	"OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
	"OTEL_TRACES_SAMPLER", "OTEL_TRACES_SAMPLER_ARG",
	"OTEL_SERVICE_NAME", "OTEL_RESOURCE_ATTRIBUTES",
}

// Env returns the values of [EnvKeys] read through getenv, for [Setup] to read later (with Env(...)'s Get).
func Env(getenv func(string) string) EnvValues {
	v := EnvValues{}
	for _, k := range EnvKeys {
		if s := getenv(k); s != "" {
			v[k] = s
		}
	}
	return v
}

// EnvValues holds environment variables read once; Get is a getenv over them.
type EnvValues map[string]string

// Get returns the value of key, or "".
func (v EnvValues) Get(key string) string { return v[key] }
