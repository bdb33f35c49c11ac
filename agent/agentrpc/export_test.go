package agentrpc

import (
	"net/netip"
)

// SetFetchPolicy replaces the http_fetch address policy, so tests can reach httptest servers on loopback. Host
// names are still checked by netguard (localhost is refused by name): tests use 127.0.0.1.
func SetFetchPolicy(s *Server, policy func(netip.Addr) error) { s.fetchGuard.Check = policy }

// FixWAVSizes exposes the WAV header fix for its unit test.
var FixWAVSizes = fixWAVSizes
