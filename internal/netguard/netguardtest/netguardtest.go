// Package netguardtest holds the SSRF encodings every guarded fetcher is tested with.
package netguardtest

import "net/netip"

// Encodings are URLs of loopback, private, link-local, metadata and reserved destinations, in every form an
// attacker might try. {P} stands for the port of a listener on 127.0.0.1 (and ::1 when the host has IPv6).
var Encodings = []string{
	// loopback, IPv4 and the forms inet_aton and browsers accept
	"http://127.0.0.1:{P}/", "http://127.0.0.2:{P}/", "http://127.255.255.254:{P}/", "http://127.0.0.1.:{P}/",
	"http://2130706433:{P}/", "http://017700000001:{P}/", "http://0x7f000001:{P}/", "http://0X7F000001:{P}/",
	"http://0177.0.0.1:{P}/", "http://0177.0000.0000.0001:{P}/", "http://00000177.0.0.1:{P}/",
	"http://0x7f.0x0.0x0.0x1:{P}/", "http://0x7f.0.0.1:{P}/", "http://127.0x0.0.1:{P}/", "http://0x7f.1:{P}/",
	"http://127.1:{P}/", "http://127.0.1:{P}/", "http://127.000.000.001:{P}/", "http://127.0.0.01:{P}/",
	"http://0x7f.0x1:{P}/", "http://127.0.0.0x1:{P}/", "http://1.0x7f:{P}/",
	// loopback, IPv6 and IPv4-in-IPv6
	"http://[::1]:{P}/", "http://[0:0:0:0:0:0:0:1]:{P}/", "http://[0000::0001]:{P}/", "http://[::ffff:127.0.0.1]:{P}/",
	"http://[::ffff:7f00:1]:{P}/", "http://[::127.0.0.1]:{P}/", "http://[::7f00:1]:{P}/", "http://[::ffff:0:7f00:1]:{P}/",
	"http://[::ffff:0:127.0.0.1]:{P}/", "http://[64:ff9b::127.0.0.1]:{P}/", "http://[64:ff9b::7f00:1]:{P}/",
	"http://[64:ff9b:1::7f00:1]:{P}/", "http://[2002:7f00:1::]:{P}/", "http://[2001:0:7f00:1::]:{P}/",
	"http://[2001:0:4136:e378:8000:63bf:80ff:fffe]:{P}/", "http://[fe80::1%25lo]:{P}/",
	// unspecified and "this network" (Linux connects 0.0.0.0 to loopback)
	"http://0.0.0.0:{P}/", "http://0:{P}/", "http://0x0:{P}/", "http://00:{P}/", "http://0.0.0.1:{P}/", "http://[::]:{P}/",
	"http://[::ffff:0.0.0.0]:{P}/", "http://[::ffff:0:0]:{P}/",
	// names of this host
	"http://localhost:{P}/", "http://LOCALHOST:{P}/", "http://localhost.:{P}/", "http://foo.localhost:{P}/",
	"http://localhost.localdomain:{P}/", "http://evil.example.com@127.0.0.1:{P}/", "http://127.0.0.1:{P}#@evil.example.com/",
	// private and unique-local
	"http://10.0.0.1:{P}/", "http://012.0.0.1:{P}/", "http://167772161:{P}/", "http://172.16.0.1:{P}/",
	"http://192.168.0.1:{P}/", "http://0xc0a80001:{P}/", "http://[::ffff:192.168.0.1]:{P}/", "http://[::ffff:c0a8:1]:{P}/",
	"http://[fc00::1]:{P}/", "http://[fd12:3456::1]:{P}/", "http://[fec0::1]:{P}/",
	// cloud metadata
	"http://169.254.169.254:{P}/", "http://2852039166:{P}/", "http://0xa9fea9fe:{P}/", "http://0251.0376.0251.0376:{P}/",
	"http://169.254.43518:{P}/", "http://[::ffff:169.254.169.254]:{P}/", "http://[::ffff:a9fe:a9fe]:{P}/",
	"http://[::169.254.169.254]:{P}/", "http://[64:ff9b::a9fe:a9fe]:{P}/", "http://[2002:a9fe:a9fe::]:{P}/",
	"http://[fd00:ec2::254]:{P}/", "http://[fe80::a9fe:a9fe]:{P}/", "http://100.100.100.200:{P}/",
	"http://192.0.0.192:{P}/", "http://168.63.129.16:{P}/", "http://metadata.google.internal:{P}/",
	// CGNAT, benchmarking, documentation, multicast, broadcast, reserved
	"http://100.64.0.1:{P}/", "http://198.18.0.1:{P}/", "http://192.0.2.1:{P}/", "http://203.0.113.7:{P}/",
	"http://224.0.0.1:{P}/", "http://255.255.255.255:{P}/", "http://240.0.0.1:{P}/", "http://[ff02::1]:{P}/",
	"http://[2001:db8::1]:{P}/", "http://[100::1]:{P}/",
	// DNS names pointing inside (answered by the fake resolver)
	"http://rebind.example.com:{P}/", "http://mapped.example.com:{P}/", "http://mixed.example.com:{P}/",
	"http://v6.example.com:{P}/", "http://nat64.example.com:{P}/", "http://meta.example.com:{P}/",
	// not ASCII, malformed
	"http://１２７.０.０.１:{P}/", "http://127。0。0。1:{P}/", "http://127.0.0.1..:{P}/", "http://[127.0.0.1]:{P}/",
}

// InsideNames are the fake resolver's answers: each name resolves to at least one refused address.
var InsideNames = map[string][]netip.Addr{
	"rebind.example.com": {netip.MustParseAddr("127.0.0.1")},
	"mapped.example.com": {netip.MustParseAddr("::ffff:127.0.0.1")},
	"mixed.example.com":  {netip.MustParseAddr("93.184.215.14"), netip.MustParseAddr("127.0.0.1")},
	"v6.example.com":     {netip.MustParseAddr("::1")},
	"nat64.example.com":  {netip.MustParseAddr("64:ff9b::a9fe:a9fe")},
	"meta.example.com":   {netip.MustParseAddr("169.254.169.254")},
}

// IsInsideName reports whether host is one of the names in Encodings that only a resolver can refuse.
func IsInsideName(host string) bool { _, ok := InsideNames[host]; return ok }
