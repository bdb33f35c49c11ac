package rpcserver_test

import (
	"context"
	"net"
	"net/http"
	"testing"

	"connectrpc.com/connect"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	memoryv1 "github.com/loom-dev/loom/gen/loom/memory/v1"
	"github.com/loom-dev/loom/gen/loom/memory/v1/memoryv1connect"
	"github.com/loom-dev/loom/internal/rpcserver"
	"github.com/loom-dev/loom/internal/rpcserver/rpcservertest"
)

// BenchmarkUnary measures one unary RPC from a grpc-go client through the whole server (authentication, load
// shedding, the interceptor chain with validation) against the same connect-go handler served bare on the same
// transport, in the same run: the ratio is the platform's overhead per call.
func BenchmarkUnary(b *testing.B) {
	mem := &fakeMemory{id: "bench"}
	full := rpcservertest.Start(b, rpcserver.Config{}, nil, rpcserver.Service{Name: memoryv1connect.MemoryServiceName,
		Handler: func(o ...connect.HandlerOption) (string, http.Handler) {
			return memoryv1connect.NewMemoryServiceHandler(mem, o...)
		}})

	mux := http.NewServeMux()
	mux.Handle(memoryv1connect.NewMemoryServiceHandler(mem))
	bare := &http.Server{Handler: mux, Protocols: new(http.Protocols)}
	bare.Protocols.SetHTTP1(true)
	bare.Protocols.SetUnencryptedHTTP2(true)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	go bare.Serve(ln)
	b.Cleanup(func() { bare.Close() })

	call := func(b *testing.B, addr string) float64 {
		conn, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			b.Fatal(err)
		}
		defer conn.Close()
		c := memoryv1.NewMemoryServiceClient(conn)
		req := &memoryv1.GetNamespaceRequest{Name: "docs"}
		ctx := context.Background()
		for range 200 { // warm up the connection
			if _, err := c.GetNamespace(ctx, req); err != nil {
				b.Fatal(err)
			}
		}
		b.ResetTimer()
		for b.Loop() {
			if _, err := c.GetNamespace(ctx, req); err != nil {
				b.Fatal(err)
			}
		}
		return float64(b.Elapsed().Nanoseconds()) / float64(b.N)
	}
	var bareNs float64
	b.Run("bare-connect", func(b *testing.B) { bareNs = call(b, ln.Addr().String()) })
	b.Run("loom-server", func(b *testing.B) {
		ns := call(b, full.Addr)
		if bareNs > 0 {
			b.ReportMetric(ns/bareNs, "x-bare")
		}
	})
}

// BenchmarkTracing measures the p50 of one unary RPC (grpc-go client, whole server) with tracing off (no
// TracerProvider: no tracing interceptor at all) and on with full sampling (every call a recorded span, batched
// to an exporter that drops them), alternating the two call by call in the same run so that both see the same
// machine load. It reports both p50s and their ratio, x-off (target <= 1.05).
func BenchmarkTracing(b *testing.B) {
	mem := &fakeMemory{id: "bench"}
	svc := rpcserver.Service{Name: memoryv1connect.MemoryServiceName,
		Handler: func(o ...connect.HandlerOption) (string, http.Handler) {
			return memoryv1connect.NewMemoryServiceHandler(mem, o...)
		}}
	tp := sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.AlwaysSample()), sdktrace.WithBatcher(tracetest.NewNoopExporter()))
	b.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	off := rpcservertest.Start(b, rpcserver.Config{}, nil, svc)
	on := rpcservertest.Start(b, rpcserver.Config{TracerProvider: tp}, nil, svc)

	client := func(addr string) memoryv1.MemoryServiceClient {
		conn, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { conn.Close() })
		return memoryv1.NewMemoryServiceClient(conn)
	}
	clients := [2]memoryv1.MemoryServiceClient{client(off.Addr), client(on.Addr)}
	req := &memoryv1.GetNamespaceRequest{Name: "docs"}
	ctx := context.Background()
	call := func(c memoryv1.MemoryServiceClient) func() error {
		return func() error {
			_, err := c.GetNamespace(ctx, req)
			return err
		}
	}
	rpcservertest.CompareP50(b, 500, [2]string{"off", "on"}, [2]func() error{call(clients[0]), call(clients[1])})
}
