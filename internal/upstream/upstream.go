// Package upstream marks the errors a service reports on behalf of an upstream provider (a model, speech or
// video API that failed, or a fault injected on purpose), so that they are never taken for faults of the service
// itself.
//
// The mark is a standard google.rpc.ErrorInfo error detail with domain "loom.dev", reason
// "UPSTREAM_PROVIDER_FAULT" and metadata "provider" (for example "openai", "gemini", "sim"). The status code stays
// what it was (usually UNAVAILABLE: retrying later may help), so clients that ignore details see no change.
// Service clients' circuit breakers (internal/rpcclient) do not count such errors: one tenant's failing provider
// must not make a shared service look down to every other tenant.
package upstream

import (
	"errors"

	"connectrpc.com/connect"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/status"
)

// The ErrorInfo that marks a provider fault.
const (
	Domain = "loom.dev"
	Reason = "UPSTREAM_PROVIDER_FAULT"
	// ProviderKey is the metadata key naming the provider.
	ProviderKey = "provider"
)

// Mark adds the provider-fault detail to err, naming provider, and returns err.
func Mark(err *connect.Error, provider string) *connect.Error {
	if d, derr := connect.NewErrorDetail(&errdetails.ErrorInfo{Domain: Domain, Reason: Reason,
		Metadata: map[string]string{ProviderKey: provider}}); derr == nil {
		err.AddDetail(d)
	}
	return err
}

// Provider returns the provider named by err's provider-fault detail, and whether err has one. err may be a
// grpc-go status error or a *connect.Error (wrapped or not).
func Provider(err error) (string, bool) {
	if err == nil {
		return "", false
	}
	var ce *connect.Error
	if errors.As(err, &ce) {
		for _, d := range ce.Details() {
			if info, ok := mustValue(d).(*errdetails.ErrorInfo); ok && info.GetDomain() == Domain && info.GetReason() == Reason {
				return info.GetMetadata()[ProviderKey], true
			}
		}
		return "", false
	}
	st, ok := status.FromError(err)
	if !ok {
		return "", false
	}
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok && info.GetDomain() == Domain && info.GetReason() == Reason {
			return info.GetMetadata()[ProviderKey], true
		}
	}
	return "", false
}

// Is reports whether err carries the provider-fault detail.
func Is(err error) bool {
	_, ok := Provider(err)
	return ok
}

func mustValue(d *connect.ErrorDetail) any {
	v, err := d.Value()
	if err != nil {
		return nil
	}
	return v
}
