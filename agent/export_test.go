package agent

import "net/netip"

// SetFetchPolicy replaces the http_fetch address policy, so tests can reach httptest servers on loopback.
func SetFetchPolicy(s *Server, policy func(netip.Addr) error) { s.fetchPolicy = policy }

// RefuseInternal exposes the default http_fetch address policy.
var RefuseInternal = refuseInternal
