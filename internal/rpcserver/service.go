package rpcserver

import (
	"context"
	"net/http"

	"connectrpc.com/connect"
)

// Service is one Connect service to mount on the server.
type Service struct {
	// Name is the fully-qualified service name, for example memoryv1connect.MemoryServiceName. It names the
	// service in grpc.health.v1 and reflection.
	Name string
	// Handler builds the service's handler with the server's handler options (interceptors, limits, codecs);
	// it is a generated NewXxxServiceHandler bound to an implementation.
	Handler func(opts ...connect.HandlerOption) (string, http.Handler)
	// Ready reports whether the service's dependencies answer; nil means always ready. /readyz calls it.
	Ready func(ctx context.Context) error
}
