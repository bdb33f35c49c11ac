package main

import (
	"strings"
	"testing"

	agentv1 "github.com/loom-dev/loom/gen/loom/agent/v1"
)

// TestModelProvidersCoverTheContract reads the contract's Provider enum: every value but UNSPECIFIED is
// registered under its lower-case name, so a provider added to the contract cannot be forgotten here.
func TestModelProvidersCoverTheContract(t *testing.T) {
	t.Parallel()
	r := modelProviders(config{})
	values := agentv1.Provider(0).Descriptor().Values()
	for i := range values.Len() {
		v := agentv1.Provider(values.Get(i).Number())
		if v == agentv1.Provider_PROVIDER_UNSPECIFIED {
			continue
		}
		name := strings.ToLower(strings.TrimPrefix(v.String(), "PROVIDER_"))
		if _, _, ok := r.Lookup(name); !ok {
			t.Errorf("%s has no model provider registered as %q", v, name)
		}
	}
	if n, want := len(r.Names()), values.Len()-1; n != want {
		t.Errorf("%d providers registered (%v), want the contract's %d", n, r.Names(), want)
	}
}
