// Package procedure parses RPC procedure names ("/pkg.Service/Method", as Connect and gRPC put them in the
// request path) and looks up what the contracts declare about them. It is the one place that does either.
package procedure

import (
	"strings"

	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/descriptorpb"
)

// Split returns "pkg.Service" and "Method" from "/pkg.Service/Method", and whether the name had that form.
func Split(procedure string) (service, method string, ok bool) {
	rest, ok := strings.CutPrefix(procedure, "/")
	if !ok {
		return "", "", false
	}
	service, method, ok = strings.Cut(rest, "/")
	if !ok || service == "" || method == "" || strings.Contains(method, "/") {
		return "", "", false
	}
	return service, method, true
}

// Method returns the descriptor of procedure from the registered contracts (the generated packages the binary
// imports), and whether there is one.
func Method(procedure string) (protoreflect.MethodDescriptor, bool) {
	service, method, ok := Split(procedure)
	if !ok {
		return nil, false
	}
	d, err := protoregistry.GlobalFiles.FindDescriptorByName(protoreflect.FullName(service + "." + method))
	if err != nil {
		return nil, false
	}
	md, ok := d.(protoreflect.MethodDescriptor)
	return md, ok
}

// Idempotency returns the idempotency level the contract declares for procedure; unknown procedures are
// IDEMPOTENCY_UNKNOWN.
func Idempotency(procedure string) descriptorpb.MethodOptions_IdempotencyLevel {
	md, ok := Method(procedure)
	if !ok {
		return descriptorpb.MethodOptions_IDEMPOTENCY_UNKNOWN
	}
	opts, _ := md.Options().(*descriptorpb.MethodOptions)
	return opts.GetIdempotencyLevel()
}
