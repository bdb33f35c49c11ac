package agentrpc_test

import (
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/loom-dev/loom/agent/agentrpc"
	agentv1 "github.com/loom-dev/loom/gen/loom/agent/v1"
	"github.com/loom-dev/loom/internal/netguard/netguardtest"
)

func TestHTTPFetch(t *testing.T) {
	t.Parallel()
	target := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/page":
			w.Header().Set("Content-Type", "text/plain")
			w.Write([]byte("fetched page body"))
		case "/redirect-out":
			http.Redirect(w, r, "http://evil.example.org/", http.StatusFound)
		case "/redirect-in":
			http.Redirect(w, r, "/page", http.StatusFound)
		}
	}))
	t.Cleanup(target.Close)
	port := target.URL[strings.LastIndex(target.URL, ":"):]
	fetchTool := &agentv1.Tool{Kind: &agentv1.Tool_HttpFetch{HttpFetch: &agentv1.HttpFetchTool{AllowedHosts: []string{"127.0.0.1"}}}}
	fetch := func(url string) *agentv1.SimScript {
		return &agentv1.SimScript{Turns: []*agentv1.SimTurn{{WhenContains: "fetch", ToolCalls: []*agentv1.ToolCall{{Name: "http_fetch", Arguments: args(t, map[string]any{"url": url})}}}}}
	}
	for _, tc := range []struct {
		name   string
		url    string
		open   bool // allow loopback, as if the target were public
		result string
		err    string
	}{
		{name: "loopback refused", url: "http://127.0.0.1" + port + "/page", err: "address 127.0.0.1 is internal"},
		{name: "metadata refused", url: "http://169.254.169.254/latest/meta-data", err: "address 169.254.169.254 is internal"},
		{name: "decimal loopback refused before DNS", url: "http://2130706433" + port + "/page", err: "numeric address"},
		{name: "not allowed", url: "http://example.org/", err: "not in the allow-list"},
		{name: "scheme", url: "file:///etc/passwd", err: "absolute http or https URL"},
		{name: "allowed", url: "http://127.0.0.1" + port + "/page", open: true, result: "fetched page body"},
		{name: "redirect within allow-list", url: "http://127.0.0.1" + port + "/redirect-in", open: true, result: "fetched page body"},
		{name: "redirect out of allow-list", url: "http://127.0.0.1" + port + "/redirect-out", open: true, err: `redirect to host "evil.example.org" is not in the allow-list`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			h := newHarness(t, agentrpc.Config{})
			if tc.open {
				agentrpc.SetFetchPolicy(h.server, func(netip.Addr) error { return nil })
			}
			ctx := testCtx(t)
			c := h.clients["grpc"]
			create(t, ctx, c, simAgent("fetcher", fetch(tc.url), fetchTool))
			resp, err := c.Run(ctx, &agentv1.RunRequest{Agent: "fetcher", Input: "fetch it"})
			if err != nil {
				t.Fatal(err)
			}
			res := resp.GetRun().GetSteps()[0].GetToolResults()[0]
			if tc.err != "" && !strings.Contains(res.GetError(), tc.err) {
				t.Errorf("error = %q, want it to contain %q", res.GetError(), tc.err)
			}
			if tc.result != "" && res.GetResult().GetFields()["body"].GetStringValue() != tc.result {
				t.Errorf("result = %v, error %q; want body %q", res.GetResult(), res.GetError(), tc.result)
			}
		})
	}
}

// TestHTTPFetchEncodings runs http_fetch over the real transport, with both clients, against every encoding of
// netguardtest (the DNS names aside: only a resolver can refuse those, and netguard's own test covers them), each
// host on the tool's allow-list so that only the address policy stands in the way, and checks that every call is
// refused and that nothing connected to the listener on 127.0.0.1 (and ::1) their port points at.
func TestHTTPFetchEncodings(t *testing.T) {
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	var accepted atomic.Int64
	serve := func(l net.Listener) {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			c.Close()
		}
	}
	go serve(l)
	_, port, _ := net.SplitHostPort(l.Addr().String())
	if l6, err := net.Listen("tcp6", "[::1]:"+port); err == nil {
		t.Cleanup(func() { l6.Close() })
		go serve(l6)
	}
	var urls []string
	for _, e := range netguardtest.Encodings {
		u := strings.ReplaceAll(e, "{P}", port)
		if p, err := url.Parse(u); err == nil && !netguardtest.IsInsideName(p.Hostname()) {
			urls = append(urls, u)
		}
	}
	h := newHarness(t, agentrpc.Config{})
	var tried, refused atomic.Int64
	t.Cleanup(func() {
		t.Logf("http_fetch over RPC, both clients: %d URLs tried, %d refused, %d connections accepted", tried.Load(), refused.Load(), accepted.Load())
		if accepted.Load() != 0 {
			t.Errorf("%d connections reached the listener", accepted.Load())
		}
	})
	h.eachClient(t, func(t *testing.T, c agentv1.AgentServiceClient) {
		ctx := testCtx(t)
		for chunk := 0; chunk*16 < len(urls); chunk++ {
			part := urls[chunk*16 : min(len(urls), (chunk+1)*16)]
			var calls []*agentv1.ToolCall
			var hosts []string
			for _, u := range part {
				calls = append(calls, &agentv1.ToolCall{Name: "http_fetch", Arguments: args(t, map[string]any{"url": u})})
				p, _ := url.Parse(u)
				hosts = append(hosts, p.Hostname())
			}
			tool := &agentv1.Tool{Kind: &agentv1.Tool_HttpFetch{HttpFetch: &agentv1.HttpFetchTool{AllowedHosts: hosts}}}
			name := fmt.Sprintf("ssrf-%s-%d", strings.ToLower(t.Name()[strings.LastIndex(t.Name(), "/")+1:]), chunk)
			create(t, ctx, c, simAgent(name, &agentv1.SimScript{Turns: []*agentv1.SimTurn{{ToolCalls: calls}}}, tool))
			resp, err := c.Run(ctx, &agentv1.RunRequest{Agent: name, Input: "fetch them"})
			if err != nil {
				t.Fatal(err)
			}
			results := resp.GetRun().GetSteps()[0].GetToolResults()
			if len(results) != len(part) {
				t.Fatalf("%d tool results, want %d", len(results), len(part))
			}
			for i, r := range results {
				tried.Add(1)
				if r.GetResult() != nil || !strings.Contains(r.GetError(), "refused") {
					t.Errorf("%s: result %v, error %q; want refused", part[i], r.GetResult(), r.GetError())
					continue
				}
				refused.Add(1)
			}
		}
	})
}
