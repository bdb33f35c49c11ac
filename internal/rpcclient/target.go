package rpcclient

import (
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
)

// Target is a parsed service target: one DNS name whose every address serves, or a static list of addresses.
// Both the service clients (Dial) and the gateway's balancer read targets through ParseTarget.
type Target struct {
	// Addrs is a static list of host:port, without duplicates; empty for a DNS target.
	Addrs []string
	// DNSHost and DNSPort are set for "dns:///host:port".
	DNSHost, DNSPort string
}

// ParseTarget parses "dns:///host:port" or "host1:port,host2:port" (one address or more). Any other scheme is
// an error.
func ParseTarget(s string) (Target, error) {
	s = strings.TrimSpace(s)
	if rest, ok := strings.CutPrefix(s, "dns:///"); ok {
		host, port, err := net.SplitHostPort(rest)
		if err != nil || host == "" || port == "" {
			return Target{}, fmt.Errorf("bad dns target %q: want dns:///host:port", s)
		}
		return Target{DNSHost: host, DNSPort: port}, nil
	}
	if strings.Contains(s, "://") {
		return Target{}, fmt.Errorf("bad target %q: only dns:/// or host:port lists", s)
	}
	var t Target
	for a := range strings.SplitSeq(s, ",") {
		a = strings.TrimSpace(a)
		if a == "" {
			continue
		}
		host, port, err := net.SplitHostPort(a)
		if err != nil || host == "" || port == "" {
			return Target{}, fmt.Errorf("bad address %q: want host:port", a)
		}
		if !slices.Contains(t.Addrs, a) {
			t.Addrs = append(t.Addrs, a)
		}
	}
	if len(t.Addrs) == 0 {
		return Target{}, errors.New("empty target")
	}
	return t, nil
}
