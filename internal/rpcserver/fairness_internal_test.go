package rpcserver

import (
	"fmt"
	"testing"

	"connectrpc.com/connect"

	"github.com/loom-dev/loom/internal/principal"
)

// TestFairnessMemoryIsBounded checks that entries exist only while a caller has something in progress: 10,000
// principals come and go and nothing is left behind.
func TestFairnessMemoryIsBounded(t *testing.T) {
	t.Parallel()
	f := newFairness(FairnessLimits{TenantMaxInFlight: 2, PrincipalMaxInFlight: 1, TenantMaxStreams: 1, PrincipalMaxStreams: 1})
	var releases []func()
	for i := range 10000 {
		p := principal.Principal{Tenant: fmt.Sprintf("t%d", i%100), Subject: fmt.Sprintf("s%d", i)}
		rel, err := f.acquire(p, i%2 == 0)
		if err != nil {
			continue // the tenant is at a limit
		}
		releases = append(releases, rel)
		if len(releases) > 50 {
			releases[0]()
			releases[0]() // a second release is a no-op
			releases = releases[1:]
		}
	}
	if tn, pn := f.entries(); tn == 0 || pn == 0 {
		t.Fatalf("entries while calls are in progress: %d tenants, %d principals", tn, pn)
	}
	for _, rel := range releases {
		rel()
	}
	if tn, pn := f.entries(); tn != 0 || pn != 0 {
		t.Fatalf("entries after every call ended: %d tenants, %d principals, want 0", tn, pn)
	}
	// Refused calls leave nothing either.
	p := principal.Principal{Tenant: "x", Subject: "y"}
	rel, _ := f.acquire(p, false)
	if _, err := f.acquire(p, false); connect.CodeOf(err) != connect.CodeResourceExhausted {
		t.Fatalf("second call: %v, want ResourceExhausted", err)
	}
	rel()
	if tn, pn := f.entries(); tn != 0 || pn != 0 {
		t.Fatalf("entries after a refusal: %d tenants, %d principals, want 0", tn, pn)
	}
}
