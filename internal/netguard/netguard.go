// Package netguard decides which network destinations code may reach when it fetches a URL that a tenant chose
// (the agent's http_fetch tool, and any future webhook or MCP tool). It has one address policy, CheckAddr, and one
// host-name check, CheckHost, and a Dialer that applies both to every connection: the host name before any DNS
// query, and every resolved address before it is dialled, again in the socket's Control hook, so redirects, DNS
// names that point inside and DNS rebinding are all covered. Transports built here never use a proxy.
//
// The policy refuses everything that is not global unicast: loopback, private and unique-local, link-local,
// unspecified, multicast, broadcast and reserved ranges, CGNAT, the IETF, benchmarking and documentation ranges,
// and cloud metadata addresses. IPv6 forms that embed an IPv4 address (IPv4-mapped, NAT64, 6to4, Teredo) are
// refused when the embedded address is; the deprecated IPv4-compatible (::/96) and SIIT (::ffff:0:0:0/96) ranges
// and local-use NAT64 (64:ff9b:1::/48) are refused whole.
package netguard

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"syscall"
	"time"
)

// ErrRefused is matched by every error CheckAddr, CheckHost and the Dialer return for a refused destination.
var ErrRefused = errors.New("destination refused")

// refused builds an error matching ErrRefused.
func refused(format string, args ...any) error {
	return fmt.Errorf("%s: %w", fmt.Sprintf(format, args...), ErrRefused)
}

// refusedPrefixes are refused besides what netip classifies as loopback, private, link-local, multicast or
// unspecified.
var refusedPrefixes = []netip.Prefix{
	netip.MustParsePrefix("0.0.0.0/8"),         // "this network" (Linux dials 0.0.0.0 as loopback)
	netip.MustParsePrefix("100.64.0.0/10"),     // CGNAT (also Alibaba Cloud's metadata 100.100.100.200)
	netip.MustParsePrefix("192.0.0.0/24"),      // IETF protocol assignments (Oracle Cloud metadata 192.0.0.192)
	netip.MustParsePrefix("192.0.2.0/24"),      // TEST-NET-1
	netip.MustParsePrefix("192.88.99.0/24"),    // 6to4 relay anycast (deprecated)
	netip.MustParsePrefix("198.18.0.0/15"),     // benchmarking
	netip.MustParsePrefix("198.51.100.0/24"),   // TEST-NET-2
	netip.MustParsePrefix("203.0.113.0/24"),    // TEST-NET-3
	netip.MustParsePrefix("240.0.0.0/4"),       // reserved, and 255.255.255.255 broadcast
	netip.MustParsePrefix("168.63.129.16/32"),  // Azure wire server and DNS (a public address inside Azure)
	netip.MustParsePrefix("::/96"),             // IPv4-compatible IPv6 (deprecated), with :: and ::1
	netip.MustParsePrefix("::ffff:0:0:0/96"),   // SIIT IPv4-translated
	netip.MustParsePrefix("64:ff9b:1::/48"),    // local-use NAT64
	netip.MustParsePrefix("100::/64"),          // discard-only
	netip.MustParsePrefix("2001:2::/48"),       // benchmarking
	netip.MustParsePrefix("2001:10::/28"),      // ORCHID
	netip.MustParsePrefix("2001:20::/28"),      // ORCHIDv2
	netip.MustParsePrefix("2001:db8::/32"),     // documentation
	netip.MustParsePrefix("3fff::/20"),         // documentation
	netip.MustParsePrefix("fec0::/10"),         // site-local (deprecated)
	netip.MustParsePrefix("fd00:ec2::254/128"), // AWS metadata over IPv6 (inside fc00::/7 too)
}

var (
	nat64   = netip.MustParsePrefix("64:ff9b::/96")
	sixTo4  = netip.MustParsePrefix("2002::/16")
	teredo  = netip.MustParsePrefix("2001::/32")
	global6 = netip.MustParsePrefix("2000::/3")
)

// CheckAddr returns nil when ip is a global unicast address that a tenant-chosen URL may reach, and an error
// matching ErrRefused otherwise. It is the one address policy of the process.
func CheckAddr(ip netip.Addr) error {
	if !ip.IsValid() {
		return refused("invalid address")
	}
	if ip.Zone() != "" {
		return refused("address %s has a zone", ip)
	}
	if ip.Is4In6() {
		if err := CheckAddr(ip.Unmap()); err != nil {
			return refused("address %s maps %s, which is internal", ip, ip.Unmap())
		}
		return nil
	}
	if ip.Is6() {
		b := ip.As16()
		var embedded []netip.Addr
		switch {
		case nat64.Contains(ip):
			embedded = append(embedded, netip.AddrFrom4([4]byte{b[12], b[13], b[14], b[15]}))
		case sixTo4.Contains(ip):
			embedded = append(embedded, netip.AddrFrom4([4]byte{b[2], b[3], b[4], b[5]}))
		case teredo.Contains(ip):
			// The Teredo server in bits 32-63 and the client, obfuscated by inverting every bit, in bits 96-127.
			embedded = append(embedded, netip.AddrFrom4([4]byte{b[4], b[5], b[6], b[7]}),
				netip.AddrFrom4([4]byte{^b[12], ^b[13], ^b[14], ^b[15]}))
		}
		for _, e := range embedded {
			if err := CheckAddr(e); err != nil {
				return refused("address %s embeds %s, which is internal", ip, e)
			}
		}
	}
	if ip.IsLoopback() || ip.IsPrivate() || ip.IsLinkLocalUnicast() || ip.IsLinkLocalMulticast() ||
		ip.IsInterfaceLocalMulticast() || ip.IsMulticast() || ip.IsUnspecified() {
		return refused("address %s is internal", ip)
	}
	for _, p := range refusedPrefixes {
		if p.Contains(ip) {
			return refused("address %s is internal", ip)
		}
	}
	if ip.Is6() && !global6.Contains(ip) && !nat64.Contains(ip) {
		return refused("address %s is not global unicast", ip) // everything outside 2000::/3 is unassigned or special
	}
	return nil
}

// refusedNames are host names (and their subdomains) refused before any DNS query: they name this host or a
// private network by definition (RFC 6761, RFC 6762, RFC 8375, ICANN's .internal).
var refusedNames = []string{"localhost", "localdomain", "local", "internal", "home.arpa", "arpa", "onion", "invalid", "test"}

// maxHostLen is the longest DNS name.
const maxHostLen = 253

// CheckHost checks the host of a URL (brackets allowed, no port) before any DNS query. An IP literal that Go
// parses is checked with CheckAddr. Anything else must be an ASCII DNS name of letters, digits, hyphens and
// underscores (IDNs in their xn-- form) whose last label is not numeric: a host like 2130706433, 0177.0.0.1,
// 0x7f.1 or 127.1 is an IPv4 address to inet_aton, the WHATWG URL parser and many resolvers, and is refused
// outright, as are a zone (%), names of this host or a private network (localhost, *.internal, ...), and empty
// labels.
func CheckHost(host string) error { return (&Dialer{}).CheckHost(host) }

// CheckHost is the package's CheckHost with IP literals decided by d's Check.
func (d *Dialer) CheckHost(host string) error {
	if host == "" {
		return refused("empty host")
	}
	if len(host) > maxHostLen+2 {
		return refused("host name too long")
	}
	h := host
	if strings.HasPrefix(h, "[") {
		if !strings.HasSuffix(h, "]") {
			return refused("malformed host %q", host)
		}
		h = h[1 : len(h)-1]
		ip, err := netip.ParseAddr(h)
		if err != nil || !ip.Is6() {
			return refused("malformed IPv6 host %q", host)
		}
		return d.check(ip)
	}
	if strings.ContainsAny(h, "%:") {
		if ip, err := netip.ParseAddr(h); err == nil && ip.Zone() == "" {
			return d.check(ip)
		}
		return refused("malformed host %q", host)
	}
	h = strings.TrimSuffix(h, ".")
	if ip, err := netip.ParseAddr(h); err == nil {
		return d.check(ip)
	}
	if h == "" || len(h) > maxHostLen {
		return refused("malformed host %q", host)
	}
	for i := 0; i < len(h); i++ {
		c := h[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_' || c == '.') {
			return refused("host %q is not an ASCII DNS name", host)
		}
	}
	labels := strings.Split(strings.ToLower(h), ".")
	for _, l := range labels {
		if l == "" || len(l) > 63 {
			return refused("host %q has an empty or long label", host)
		}
	}
	if numericLabel(labels[len(labels)-1]) {
		return refused("host %q is a numeric address in a form that is not dotted-decimal", host)
	}
	name := strings.Join(labels, ".")
	for _, r := range refusedNames {
		if name == r || strings.HasSuffix(name, "."+r) {
			return refused("host %q names this host or a private network", host)
		}
	}
	return nil
}

// numericLabel reports whether l parses as a number the way inet_aton and the WHATWG URL parser read an IPv4
// part: decimal digits, or 0x/0X followed by hex digits (possibly none).
func numericLabel(l string) bool {
	if l == "" {
		return false
	}
	digits := l
	hex := false
	if len(l) >= 2 && l[0] == '0' && (l[1] == 'x' || l[1] == 'X') {
		digits, hex = l[2:], true
	}
	for i := 0; i < len(digits); i++ {
		c := digits[i]
		switch {
		case '0' <= c && c <= '9':
		case hex && ('a' <= c && c <= 'f' || 'A' <= c && c <= 'F'):
		default:
			return false
		}
	}
	return true
}

// Resolver looks up the addresses of a host name; *net.Resolver implements it.
type Resolver interface {
	LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error)
}

// Dialer dials TCP connections to destinations the policy allows. The zero value uses CheckAddr,
// net.DefaultResolver and a 10 s connect timeout. It is safe for concurrent use once in use.
type Dialer struct {
	// Check decides on every resolved address; nil means CheckAddr. Tests replace it to reach httptest servers.
	Check func(netip.Addr) error
	// Resolver resolves host names; nil means net.DefaultResolver.
	Resolver Resolver
	// Timeout bounds each connect; 0 means 10 seconds.
	Timeout time.Duration

	onConnect func(netip.AddrPort) // tests count connection attempts the policy let through
}

func (d *Dialer) check(ip netip.Addr) error {
	if d.Check != nil {
		return d.Check(ip)
	}
	return CheckAddr(ip)
}

// control runs on the socket of every connection attempt, with the address actually being connected to.
func (d *Dialer) control(_, address string, _ syscall.RawConn) error {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return refused("cannot check address %q", address)
	}
	if err := d.check(ap.Addr()); err != nil {
		return err
	}
	if d.onConnect != nil {
		d.onConnect(ap)
	}
	return nil
}

// DialContext dials address ("host:port") over a TCP network. The host name is checked with CheckHost before any
// DNS query; every resolved address must pass the policy, or none is dialled; the addresses are then dialled in
// order, and the socket's Control hook checks the connected address once more.
func (d *Dialer) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	ipNet := map[string]string{"tcp": "ip", "tcp4": "ip4", "tcp6": "ip6"}[network]
	if ipNet == "" {
		return nil, refused("network %q", network)
	}
	host, port, err := net.SplitHostPort(address)
	if err != nil {
		return nil, refused("malformed address %q", address)
	}
	var ips []netip.Addr
	literal := false
	if ip, err := netip.ParseAddr(host); err == nil {
		ips, literal = []netip.Addr{ip}, true
	} else {
		if err := d.CheckHost(host); err != nil {
			return nil, err
		}
		r := d.Resolver
		if r == nil {
			r = net.DefaultResolver
		}
		if ips, err = r.LookupNetIP(ctx, ipNet, host); err != nil {
			return nil, err
		}
		if len(ips) == 0 {
			return nil, fmt.Errorf("no address for %s", host)
		}
	}
	for _, ip := range ips {
		if err := d.check(ip); err != nil {
			if literal {
				return nil, err
			}
			return nil, fmt.Errorf("%s resolves to a refused address: %w", host, err)
		}
	}
	timeout := d.Timeout
	if timeout == 0 {
		timeout = 10 * time.Second
	}
	nd := &net.Dialer{Timeout: timeout, Control: d.control}
	var firstErr error
	for _, ip := range ips {
		c, err := nd.DialContext(ctx, network, net.JoinHostPort(ip.Unmap().String(), port))
		if err == nil {
			return c, nil
		}
		if firstErr == nil {
			firstErr = err
		}
		if ctx.Err() != nil {
			break
		}
	}
	return nil, firstErr
}

// NewTransport returns an HTTP transport that dials only through d and never through a proxy (HTTP_PROXY and
// friends are ignored). A nil d is the zero Dialer.
func NewTransport(d *Dialer) *http.Transport {
	if d == nil {
		d = &Dialer{}
	}
	return &http.Transport{
		Proxy:                  nil,
		DialContext:            d.DialContext,
		ForceAttemptHTTP2:      true,
		TLSHandshakeTimeout:    10 * time.Second,
		ResponseHeaderTimeout:  15 * time.Second,
		MaxResponseHeaderBytes: 64 << 10,
		MaxIdleConns:           16,
		IdleConnTimeout:        30 * time.Second,
	}
}

// CheckURL refuses a URL that is not absolute http(s) or whose host fails d.CheckHost. Call it on the first URL
// and in http.Client's CheckRedirect, so a refused target fails before its connection is even attempted.
func (d *Dialer) CheckURL(u *url.URL) error {
	if u == nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return refused("only absolute http and https URLs")
	}
	return d.CheckHost(bracketed(u.Hostname()))
}

// bracketed puts an IPv6 literal back into brackets, as url.URL.Hostname removes them.
func bracketed(h string) string {
	if strings.Contains(h, ":") {
		return "[" + h + "]"
	}
	return h
}
