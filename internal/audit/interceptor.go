package audit

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/descriptorpb"

	"github.com/loom-dev/loom/internal/principal"
	"github.com/loom-dev/loom/internal/procedure"
)

// Event is one audited call.
type Event struct {
	// Seq orders events (increasing, not contiguous within a tenant); assigned by the store.
	Seq       int64
	Time      time.Time
	Tenant    string
	Subject   string
	Procedure string
	// Resource is the name or id the request named, or empty.
	Resource string
	// Result is "ok" or the connect code of the error, for example "permission_denied".
	Result string
}

// Appender is what the interceptor records into; *auditsql.Store implements it.
type Appender interface {
	Append(ctx context.Context, e Event) error
}

// Interceptor records every mutating RPC (one whose contract does not declare idempotency_level =
// NO_SIDE_EFFECTS), refused calls included, unary and streaming alike. A failure to record is logged, not
// returned: the call's own result stands.
func Interceptor(a Appender, logger *slog.Logger) connect.Interceptor {
	return &interceptor{a: a, logger: logger}
}

type interceptor struct {
	a      Appender
	logger *slog.Logger
}

func (i *interceptor) record(ctx context.Context, proc string, req any, err error) {
	p, _ := principal.FromContext(ctx)
	result := "ok"
	if err != nil {
		result = connect.CodeOf(err).String()
	}
	e := Event{Time: time.Now().UTC(), Tenant: p.Tenant, Subject: p.Subject, Procedure: proc, Resource: Resource(req), Result: result}
	if e.Tenant == "" {
		return // unauthenticated calls never reach the interceptor chain
	}
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if aerr := i.a.Append(rctx, e); aerr != nil {
		i.logger.ErrorContext(ctx, "audit event lost", "procedure", proc, "err", aerr)
	}
}

func (i *interceptor) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		if req.Spec().IsClient || !Mutating(req.Spec().Procedure) {
			return next(ctx, req)
		}
		res, err := next(ctx, req)
		i.record(ctx, req.Spec().Procedure, req.Any(), err)
		return res, err
	}
}

func (i *interceptor) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

func (i *interceptor) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return func(ctx context.Context, conn connect.StreamingHandlerConn) error {
		if !Mutating(conn.Spec().Procedure) {
			return next(ctx, conn)
		}
		rc := &recordingConn{StreamingHandlerConn: conn}
		err := next(ctx, rc)
		i.record(ctx, conn.Spec().Procedure, rc.first(), err)
		return err
	}
}

// recordingConn remembers the first request message of a stream, to name its resource.
type recordingConn struct {
	connect.StreamingHandlerConn
	mu  sync.Mutex
	msg any
}

func (c *recordingConn) Receive(m any) error {
	err := c.StreamingHandlerConn.Receive(m)
	c.mu.Lock()
	if err == nil && c.msg == nil {
		c.msg = m
	}
	c.mu.Unlock()
	return err
}

func (c *recordingConn) first() any {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.msg
}

// Mutating reports whether procedure may change state: any RPC not declared NO_SIDE_EFFECTS.
func Mutating(proc string) bool {
	return procedure.Idempotency(proc) != descriptorpb.MethodOptions_NO_SIDE_EFFECTS
}

// resourceFields are the request fields that name a resource, in order of preference. A message field is
// searched for its "name".
var resourceFields = []protoreflect.Name{"name", "namespace", "agent", "blueprint", "id", "run_id", "source"}

// Resource returns the resource a request names, or "".
func Resource(req any) string {
	m, ok := req.(proto.Message)
	if !ok || m == nil {
		return ""
	}
	return resourceOf(m.ProtoReflect(), 0)
}

func resourceOf(m protoreflect.Message, depth int) string {
	if depth > 2 || !m.IsValid() {
		return ""
	}
	fields := m.Descriptor().Fields()
	for _, name := range resourceFields {
		fd := fields.ByName(name)
		if fd == nil || fd.IsList() || fd.IsMap() || !m.Has(fd) {
			continue
		}
		switch fd.Kind() {
		case protoreflect.StringKind:
			return m.Get(fd).String()
		case protoreflect.MessageKind:
			if r := resourceOf(m.Get(fd).Message(), depth+1); r != "" {
				return r
			}
		}
	}
	return ""
}
