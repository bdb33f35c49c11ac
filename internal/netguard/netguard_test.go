package netguard_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/loom-dev/loom/internal/netguard"
	"github.com/loom-dev/loom/internal/netguard/netguardtest"
)

// fakeResolver answers from a map and records every name it was asked for.
type fakeResolver struct {
	mu    sync.Mutex
	names map[string][]netip.Addr
	asked []string
}

func (r *fakeResolver) LookupNetIP(_ context.Context, _, host string) ([]netip.Addr, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.asked = append(r.asked, host)
	if a, ok := r.names[host]; ok {
		return a, nil
	}
	return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
}

// countingListener accepts connections and counts them.
func countingListener(t *testing.T, network, addr string) (port string, accepted *atomic.Int64) {
	t.Helper()
	l, err := net.Listen(network, addr)
	if err != nil {
		t.Skipf("listen %s %s: %v", network, addr, err)
	}
	t.Cleanup(func() { l.Close() })
	accepted = new(atomic.Int64)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			c.Close()
		}
	}()
	_, port, _ = net.SplitHostPort(l.Addr().String())
	return port, accepted
}

// TestEncodingsRefusedBeforeConnecting sends every encoding through a client on a netguard transport and checks
// that each is refused, that no connection reached the listeners, that the policy passed no address to the
// socket, and that no numeric form reached DNS.
func TestEncodingsRefusedBeforeConnecting(t *testing.T) {
	port, accepted4 := countingListener(t, "tcp4", "127.0.0.1:0")
	var accepted6 *atomic.Int64
	if l, err := net.Listen("tcp6", "[::1]:"+port); err == nil {
		l.Close()
		_, accepted6 = countingListener(t, "tcp6", "[::1]:"+port)
	}
	res := &fakeResolver{names: netguardtest.InsideNames}
	var passed atomic.Int64
	d := &netguard.Dialer{Resolver: res}
	netguard.SetOnConnect(d, func(netip.AddrPort) { passed.Add(1) })
	client := &http.Client{
		Transport: netguard.NewTransport(d),
		Timeout:   5 * time.Second,
		CheckRedirect: func(req *http.Request, _ []*http.Request) error {
			return d.CheckURL(req.URL)
		},
	}
	refusedCount := 0
	for _, raw := range netguardtest.Encodings {
		raw = strings.ReplaceAll(raw, "{P}", port)
		u, err := url.Parse(raw)
		if err == nil {
			err = d.CheckURL(u)
		} else {
			u = &url.URL{}
		}
		if _, name := netguardtest.InsideNames[u.Hostname()]; err == nil && !name {
			t.Errorf("%s: CheckURL accepted it", raw) // only the DNS names need resolving to be refused
		}
		// Send it anyway: the transport must refuse it on its own.
		req, err := http.NewRequest(http.MethodGet, raw, nil)
		if err != nil {
			refusedCount++ // not even a URL
			continue
		}
		resp, err := client.Do(req)
		if err == nil {
			resp.Body.Close()
			t.Errorf("%s: fetched, status %d", raw, resp.StatusCode)
			continue
		}
		if !errors.Is(err, netguard.ErrRefused) {
			t.Errorf("%s: error %v, want it refused by the policy", raw, err)
			continue
		}
		refusedCount++
	}
	for _, name := range res.asked {
		if _, ok := netguardtest.InsideNames[name]; !ok {
			t.Errorf("DNS was asked for %q", name)
		}
	}
	var acc6 int64
	if accepted6 != nil {
		acc6 = accepted6.Load()
	}
	t.Logf("netguardtest.Encodings tried %d, refused %d, sockets let through by the policy %d, connections accepted %d (v4) %d (v6), DNS queries %d (all for fake names)",
		len(netguardtest.Encodings), refusedCount, passed.Load(), accepted4.Load(), acc6, len(res.asked))
	if len(netguardtest.Encodings) < 60 {
		t.Errorf("only %d netguardtest.Encodings", len(netguardtest.Encodings))
	}
	if refusedCount != len(netguardtest.Encodings) || passed.Load() != 0 || accepted4.Load() != 0 || acc6 != 0 {
		t.Errorf("refused %d of %d; policy passed %d; connections %d+%d; want all refused and 0", refusedCount, len(netguardtest.Encodings), passed.Load(), accepted4.Load(), acc6)
	}

	// The counters work: a policy that allows everything connects, and both counters see it.
	open := &netguard.Dialer{Check: func(netip.Addr) error { return nil }}
	netguard.SetOnConnect(open, func(netip.AddrPort) { passed.Add(1) })
	c, err := open.DialContext(context.Background(), "tcp", "127.0.0.1:"+port)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	deadline := time.Now().Add(2 * time.Second)
	for accepted4.Load() == 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if passed.Load() != 1 || accepted4.Load() != 1 {
		t.Errorf("control dial: policy passed %d, accepted %d; want 1 and 1", passed.Load(), accepted4.Load())
	}
}

// TestRedirectsChecked lets the policy reach one test server on 127.0.0.2 and checks that its redirects to
// internal destinations are refused without a connection, whatever their encoding.
func TestRedirectsChecked(t *testing.T) {
	port, accepted := countingListener(t, "tcp4", "127.0.0.1:0")
	l, err := net.Listen("tcp4", "127.0.0.2:0")
	if err != nil {
		t.Skipf("no 127.0.0.2: %v", err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/ok" {
			w.Write([]byte("ok"))
			return
		}
		http.Redirect(w, r, r.URL.Query().Get("to"), http.StatusFound)
	})}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	public := netip.MustParseAddr("127.0.0.2") // stands for a public server
	d := &netguard.Dialer{Resolver: &fakeResolver{names: netguardtest.InsideNames}, Check: func(ip netip.Addr) error {
		if ip == public {
			return nil
		}
		return netguard.CheckAddr(ip)
	}}
	client := &http.Client{Transport: netguard.NewTransport(d), Timeout: 5 * time.Second,
		CheckRedirect: func(req *http.Request, _ []*http.Request) error { return d.CheckURL(req.URL) }}
	base := "http://" + l.Addr().String()
	resp, err := client.Get(base + "/ok")
	if err != nil {
		t.Fatalf("the allowed server: %v", err)
	}
	resp.Body.Close()
	targets := []string{"http://127.0.0.1:{P}/", "http://2130706433:{P}/", "http://[::ffff:127.0.0.1]:{P}/",
		"http://[::127.0.0.1]:{P}/", "http://rebind.example.com:{P}/", "http://localhost:{P}/", "http://0:{P}/",
		"http://127.1:{P}/"}
	for _, c := range []struct {
		name        string
		client      *http.Client
		wantRefused bool // the error is netguard.ErrRefused, not only some error
	}{
		{name: "the guarded client", client: client, wantRefused: true},
		// Without CheckRedirect the dialer still refuses every hop.
		{name: "the bare client", client: &http.Client{Transport: netguard.NewTransport(d), Timeout: 5 * time.Second}},
	} {
		for _, to := range targets {
			to = strings.ReplaceAll(to, "{P}", port)
			resp, err := c.client.Get(base + "/redirect?to=" + url.QueryEscape(to))
			if err == nil {
				resp.Body.Close()
				t.Errorf("redirect to %s followed by %s", to, c.name)
			} else if c.wantRefused && !errors.Is(err, netguard.ErrRefused) {
				t.Errorf("redirect to %s by %s: %v, want refused", to, c.name, err)
			}
		}
	}
	if n := accepted.Load(); n != 0 {
		t.Errorf("%d connections reached the internal listener", n)
	}
	t.Logf("redirect targets %d, refused %d twice (with and without CheckRedirect), connections 0", len(targets), len(targets))
}

// TestProxyIgnored sets HTTP_PROXY to a listener and checks that nothing reaches it.
func TestProxyIgnored(t *testing.T) {
	port, accepted := countingListener(t, "tcp4", "127.0.0.1:0")
	t.Setenv("HTTP_PROXY", "http://127.0.0.1:"+port)
	t.Setenv("HTTPS_PROXY", "http://127.0.0.1:"+port)
	tr := netguard.NewTransport(nil)
	if tr.Proxy != nil {
		t.Fatal("transport has a proxy function")
	}
	d := &netguard.Dialer{Resolver: &fakeResolver{names: map[string][]netip.Addr{}}}
	tr = netguard.NewTransport(d)
	resp, err := (&http.Client{Transport: tr, Timeout: 2 * time.Second}).Get("http://public.example.com/")
	if err == nil {
		resp.Body.Close()
	}
	if n := accepted.Load(); n != 0 {
		t.Errorf("%d connections reached the proxy", n)
	}
}

func TestCheckAddr(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		addr    string
		refused bool
	}{
		{"127.0.0.1", true}, {"::1", true}, {"10.1.2.3", true}, {"172.16.0.1", true}, {"192.168.1.1", true},
		{"169.254.169.254", true}, {"100.64.0.1", true}, {"100.100.100.200", true}, {"0.0.0.0", true},
		{"0.1.2.3", true}, {"::", true}, {"fe80::1", true}, {"fd00:ec2::254", true}, {"fc00::1", true},
		{"::ffff:127.0.0.1", true}, {"::ffff:169.254.169.254", true}, {"::127.0.0.1", true}, {"::8.8.8.8", true},
		{"::ffff:0:7f00:1", true}, {"64:ff9b::a9fe:a9fe", true}, {"64:ff9b:1::808:808", true},
		{"2002:7f00:1::", true}, {"2001:0:7f00:1::", true}, {"2001:0:4136:e378:8000:63bf:80ff:fffe", true},
		{"224.0.0.1", true}, {"255.255.255.255", true}, {"198.18.0.1", true}, {"192.0.0.192", true},
		{"168.63.129.16", true}, {"2001:db8::1", true}, {"ff02::1", true}, {"fec0::1", true}, {"100::1", true},
		// public
		{"8.8.8.8", false}, {"1.1.1.1", false}, {"93.184.215.14", false}, {"2606:4700:4700::1111", false},
		{"2a00:1450:4001:80b::200e", false}, {"::ffff:8.8.8.8", false}, {"64:ff9b::808:808", false},
		{"2002:808:808::1", false}, {"2001:0:4136:e378:8000:63bf:f7f7:f7f7", false}, {"100.128.0.1", false},
	} {
		err := netguard.CheckAddr(netip.MustParseAddr(tc.addr))
		if (err != nil) != tc.refused {
			t.Errorf("CheckAddr(%s) = %v, want refused=%v", tc.addr, err, tc.refused)
		}
		if err != nil && !errors.Is(err, netguard.ErrRefused) {
			t.Errorf("CheckAddr(%s) = %v, not ErrRefused", tc.addr, err)
		}
	}
}

func TestCheckHost(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		host    string
		refused bool
	}{
		{"example.com", false}, {"api.openai.com", false}, {"EXAMPLE.com.", false}, {"xn--bcher-kva.example", false},
		{"8.8.8.8", false}, {"[2606:4700:4700::1111]", false}, {"a1.b2", false}, {"123.example.com", false},
		{"0x.example.com", false}, {"_dmarc.example.com", false}, {"7f000001", false},
		{"2130706433", true}, {"0177.0.0.1", true}, {"0x7f.1", true}, {"127.1", true}, {"8.8.8.010", true},
		{"1.2.3.4.5", true}, {"example.123", true}, {"example.0x1f", true}, {"example.0x", true},
		{"localhost", true}, {"a.localhost.", true}, {"metadata.google.internal", true}, {"printer.local", true},
		{"", true}, {".", true}, {"a..b", true}, {"[::1]", true}, {"[127.0.0.1]", true}, {"::1", true},
		{"bücher.example", true}, {"a b", true}, {"[fe80::1%lo]", true}, {strings.Repeat("a", 64) + ".com", true},
	} {
		err := netguard.CheckHost(tc.host)
		if (err != nil) != tc.refused {
			t.Errorf("CheckHost(%q) = %v, want refused=%v", tc.host, err, tc.refused)
		}
	}
}

// inetAton parses s as C's inet_aton does (1 to 4 parts, each decimal, 0-prefixed octal or 0x-prefixed hex),
// the reference the fuzz target holds CheckHost to.
func inetAton(s string) (netip.Addr, bool) {
	parts := strings.Split(s, ".")
	if len(parts) > 4 {
		return netip.Addr{}, false
	}
	vals := make([]uint64, len(parts))
	for i, p := range parts {
		base, digits := 10, p
		switch {
		case len(p) >= 2 && (p[:2] == "0x" || p[:2] == "0X"):
			base, digits = 16, p[2:]
			if digits == "" {
				digits = "0"
			}
		case len(p) > 1 && p[0] == '0':
			base, digits = 8, p[1:]
		}
		if digits == "" || strings.ContainsAny(digits, "+-_") {
			return netip.Addr{}, false
		}
		v, err := strconv.ParseUint(digits, base, 32)
		if err != nil {
			return netip.Addr{}, false
		}
		vals[i] = v
	}
	var n uint64
	last := vals[len(vals)-1]
	for i, v := range vals[:len(vals)-1] {
		if v > 255 {
			return netip.Addr{}, false
		}
		n |= v << (24 - 8*i)
	}
	if last >= 1<<(8*(5-len(vals))) {
		return netip.Addr{}, false
	}
	n |= last
	return netip.AddrFrom4([4]byte{byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)}), true
}

func TestInetAton(t *testing.T) {
	for in, want := range map[string]string{"2130706433": "127.0.0.1", "0177.0.0.1": "127.0.0.1", "0x7f.1": "127.0.0.1",
		"127.1": "127.0.0.1", "169.254.43518": "169.254.169.254", "0x7f.0x0.0x0.0x1": "127.0.0.1", "0": "0.0.0.0"} {
		got, ok := inetAton(in)
		if !ok || got.String() != want {
			t.Errorf("inetAton(%q) = %v %v, want %s", in, got, ok, want)
		}
	}
}

// FuzzCheckHost checks that CheckHost never panics, refuses every numeric form inet_aton reads as an address
// unless it is the canonical dotted quad of a public address, and accepts only ASCII names or public literals.
func FuzzCheckHost(f *testing.F) {
	for _, s := range []string{"example.com", "2130706433", "0177.0.0.1", "0x7f.1", "127.1", "[::1]", "[::ffff:0:7f00:1]",
		"8.8.8.8", "localhost", "a.b.c.0x", "１２７.０.０.１", "[fe80::1%eth0]", "1.2.3.4.", "xn--x.example"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, host string) {
		err := netguard.CheckHost(host)
		if ip, ok := inetAton(strings.TrimSuffix(host, ".")); ok {
			canonical := ip.String() == strings.TrimSuffix(host, ".")
			if err == nil && (!canonical || netguard.CheckAddr(ip) != nil) {
				t.Fatalf("CheckHost(%q) accepted what inet_aton reads as %s", host, ip)
			}
		}
		if err != nil {
			if !errors.Is(err, netguard.ErrRefused) {
				t.Fatalf("CheckHost(%q) = %v, not ErrRefused", host, err)
			}
			return
		}
		h := strings.TrimSuffix(strings.TrimSuffix(strings.TrimPrefix(host, "["), "]"), ".")
		if ip, perr := netip.ParseAddr(h); perr == nil {
			if netguard.CheckAddr(ip) != nil {
				t.Fatalf("CheckHost(%q) accepted internal %s", host, ip)
			}
			return
		}
		for _, r := range h {
			if r > 0x7f || r == '%' || r == ':' || r == '/' || r == '@' || r == ' ' {
				t.Fatalf("CheckHost(%q) accepted %q", host, r)
			}
		}
		if strings.EqualFold(h, "localhost") || strings.HasSuffix(strings.ToLower(h), ".localhost") {
			t.Fatalf("CheckHost(%q) accepted localhost", host)
		}
	})
}

func ExampleCheckHost() {
	for _, h := range []string{"example.com", "2130706433", "[::ffff:0:7f00:1]", "8.8.8.8"} {
		fmt.Println(h, netguard.CheckHost(h) == nil)
	}
	// Output:
	// example.com true
	// 2130706433 false
	// [::ffff:0:7f00:1] false
	// 8.8.8.8 true
}
