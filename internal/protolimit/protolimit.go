// Package protolimit bounds the nesting of google.protobuf.Struct, Value and ListValue data in messages accepted
// from clients, so that every stored record can be read back.
//
// JSON carried in a Struct costs two protobuf message levels per JSON level (Struct -> Value -> Struct ...), and
// protobuf's decoder stops at 10,000 levels: a run input nested about 4,000 deep used to be accepted, stored, and
// then failed every read of it, and every list that contained it. One limit, MaxDepth JSON levels, is enforced on
// every request before any handler runs, by the Interceptor that internal/rpcserver installs; Check does the same
// for data that arrives another way (tool-call arguments from a model).
package protolimit

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"maps"
	"slices"
	"strconv"
	"strings"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/structpb"
)

// MaxDepth is the deepest JSON nesting accepted: an object or array counts one level, so 64 nested objects pass
// and 65 do not.
const MaxDepth = 64

// ErrTooDeep is matched by the errors of Check and CheckStruct.
var ErrTooDeep = errors.New("nested too deeply")

var (
	structName = (&structpb.Struct{}).ProtoReflect().Descriptor().FullName()
	valueName  = (&structpb.Value{}).ProtoReflect().Descriptor().FullName()
	listName   = (&structpb.ListValue{}).ProtoReflect().Descriptor().FullName()
)

// Check returns an error matching ErrTooDeep, naming the field path (for example
// "agent.model.sim.turns[0].tool_calls[1].arguments"), when a Struct, Value or ListValue in m nests more than
// max JSON levels. It descends every message field, list and map, and stops descending a Struct at the limit, so
// its cost is bounded by the message's size whatever the depth.
func Check(m proto.Message, max int) error {
	if m == nil {
		return nil
	}
	return checkMessage(m.ProtoReflect(), "", max, 0)
}

// CheckStruct is Check for a Struct on its own; field names the Struct in the error.
func CheckStruct(s *structpb.Struct, field string, max int) error {
	if s == nil {
		return nil
	}
	if d := jsonDepth(s.ProtoReflect(), max+1); d > max {
		return tooDeep(field, max)
	}
	return nil
}

func tooDeep(path string, max int) error {
	return fmt.Errorf("%s: JSON nested deeper than %d levels: %w", path, max, ErrTooDeep)
}

// msgDepthLimit bounds the descent through ordinary messages, far above any contract's real nesting; protobuf's
// decoder has already bounded it for decoded requests.
const msgDepthLimit = 100

func checkMessage(m protoreflect.Message, path string, max, depth int) error {
	if !m.IsValid() {
		return nil
	}
	switch m.Descriptor().FullName() {
	case structName, valueName, listName:
		if jsonDepth(m, max+1) > max {
			return tooDeep(orRoot(path), max)
		}
		return nil
	}
	if depth > msgDepthLimit {
		return fmt.Errorf("%s: messages nested deeper than %d levels: %w", orRoot(path), msgDepthLimit, ErrTooDeep)
	}
	// Fields in declaration order and map entries by key, so the error reported (the first found) is always the
	// same one: Range's order is undefined.
	fields := m.Descriptor().Fields()
	for i := 0; i < fields.Len(); i++ {
		fd := fields.Get(i)
		if fd.Message() == nil || !m.Has(fd) {
			continue
		}
		v := m.Get(fd)
		p := join(path, string(fd.Name()))
		switch {
		case fd.IsList():
			l := v.List()
			for i := 0; i < l.Len(); i++ {
				if err := checkMessage(l.Get(i).Message(), p+"["+strconv.Itoa(i)+"]", max, depth+1); err != nil {
					return err
				}
			}
		case fd.IsMap():
			if fd.MapValue().Message() == nil {
				continue
			}
			var keys []protoreflect.MapKey
			v.Map().Range(func(k protoreflect.MapKey, _ protoreflect.Value) bool {
				keys = append(keys, k)
				return true
			})
			slices.SortFunc(keys, func(a, b protoreflect.MapKey) int { return strings.Compare(a.String(), b.String()) })
			for _, k := range keys {
				if err := checkMessage(v.Map().Get(k).Message(), p+"["+strconv.Quote(k.String())+"]", max, depth+1); err != nil {
					return err
				}
			}
		default:
			if err := checkMessage(v.Message(), p, max, depth+1); err != nil {
				return err
			}
		}
	}
	return nil
}

// jsonDepth returns the JSON nesting of a Struct, Value or ListValue, or stop once it reaches stop.
func jsonDepth(m protoreflect.Message, stop int) int {
	var walk func(v *structpb.Value, d int) int
	walk = func(v *structpb.Value, d int) int {
		if d >= stop {
			return d
		}
		var children iter.Seq[*structpb.Value]
		switch k := v.GetKind().(type) {
		case *structpb.Value_StructValue:
			children = maps.Values(k.StructValue.GetFields())
		case *structpb.Value_ListValue:
			children = slices.Values(k.ListValue.GetValues())
		default:
			return d
		}
		best := d + 1
		for c := range children {
			best = max(best, walk(c, d+1))
			if best >= stop {
				return best
			}
		}
		return best
	}
	switch x := m.Interface().(type) {
	case *structpb.Struct:
		return walk(structpb.NewStructValue(x), 0)
	case *structpb.ListValue:
		return walk(structpb.NewListValue(x), 0)
	case *structpb.Value:
		return walk(x, 0)
	}
	// A dynamic message of one of the three types (not the generated Go type): count through protoreflect.
	b, err := proto.Marshal(m.Interface())
	if err != nil {
		return stop
	}
	var v structpb.Value
	switch m.Descriptor().FullName() {
	case structName:
		var s structpb.Struct
		if proto.Unmarshal(b, &s) != nil {
			return stop
		}
		return walk(structpb.NewStructValue(&s), 0)
	case listName:
		var l structpb.ListValue
		if proto.Unmarshal(b, &l) != nil {
			return stop
		}
		return walk(structpb.NewListValue(&l), 0)
	}
	if proto.Unmarshal(b, &v) != nil {
		return stop
	}
	return walk(&v, 0)
}

func join(path, name string) string {
	if path == "" {
		return name
	}
	return path + "." + name
}

func orRoot(path string) string {
	if path == "" {
		return "(request)"
	}
	return path
}

// Interceptor refuses, with InvalidArgument naming the field, every request message (unary, and each message
// of a stream) whose Struct, Value or ListValue data nests deeper than its limit.
type Interceptor struct{ max int }

// NewInterceptor returns an Interceptor with limit max; max <= 0 means MaxDepth.
func NewInterceptor(max int) *Interceptor {
	if max <= 0 {
		max = MaxDepth
	}
	return &Interceptor{max: max}
}

var _ connect.Interceptor = (*Interceptor)(nil)

func (i *Interceptor) check(msg any) error {
	m, ok := msg.(proto.Message)
	if !ok {
		return nil
	}
	if err := Check(m, i.max); err != nil {
		return connect.NewError(connect.CodeInvalidArgument, errors.New(strings.TrimSuffix(err.Error(), ": "+ErrTooDeep.Error())))
	}
	return nil
}

// WrapUnary implements connect.Interceptor.
func (i *Interceptor) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		if !req.Spec().IsClient {
			if err := i.check(req.Any()); err != nil {
				return nil, err
			}
		}
		return next(ctx, req)
	}
}

// WrapStreamingClient implements connect.Interceptor; clients are not checked.
func (i *Interceptor) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

// WrapStreamingHandler implements connect.Interceptor: every received message is checked.
func (i *Interceptor) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return func(ctx context.Context, conn connect.StreamingHandlerConn) error {
		return next(ctx, &checkedConn{StreamingHandlerConn: conn, i: i})
	}
}

type checkedConn struct {
	connect.StreamingHandlerConn
	i *Interceptor
}

func (c *checkedConn) Receive(msg any) error {
	if err := c.StreamingHandlerConn.Receive(msg); err != nil {
		return err
	}
	return c.i.check(msg)
}
