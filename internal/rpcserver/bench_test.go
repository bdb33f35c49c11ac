package rpcserver_test

import (
	"context"
	"net"
	"net/http"
	"testing"

	"connectrpc.com/connect"
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
