package agent_test

import (
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"

	"github.com/loom-dev/loom/agent"
	agentv1 "github.com/loom-dev/loom/gen/loom/agent/v1"
)

func TestRefuseInternal(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		addr    string
		refused bool
	}{
		{"127.0.0.1", true}, {"::1", true}, {"10.1.2.3", true}, {"172.16.0.1", true}, {"192.168.1.1", true},
		{"169.254.169.254", true}, {"100.64.0.1", true}, {"100.100.100.200", true}, {"0.0.0.0", true},
		{"::", true}, {"fe80::1", true}, {"fd00:ec2::254", true}, {"fc00::1", true}, {"::ffff:127.0.0.1", true},
		{"::ffff:169.254.169.254", true}, {"64:ff9b::a9fe:a9fe", true}, {"2002:7f00:1::", true}, {"224.0.0.1", true},
		{"255.255.255.255", true}, {"198.18.0.1", true},
		{"8.8.8.8", false}, {"1.1.1.1", false}, {"2606:4700:4700::1111", false}, {"64:ff9b::808:808", false},
	} {
		err := agent.RefuseInternal(netip.MustParseAddr(tc.addr))
		if (err != nil) != tc.refused {
			t.Errorf("RefuseInternal(%s) = %v, want refused=%v", tc.addr, err, tc.refused)
		}
	}
}

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
	fetchTool := &agentv1.Tool{Kind: &agentv1.Tool_HttpFetch{HttpFetch: &agentv1.HttpFetchTool{AllowedHosts: []string{"localhost"}}}}
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
		{name: "loopback refused at dial", url: "http://localhost" + port + "/page", err: "address 127.0.0.1 is internal and refused"},
		{name: "metadata host not allowed", url: "http://169.254.169.254/latest/meta-data", err: "not in the allow-list"},
		{name: "scheme", url: "file:///etc/passwd", err: "absolute http or https URL"},
		{name: "allowed", url: "http://localhost" + port + "/page", open: true, result: "fetched page body"},
		{name: "redirect within allow-list", url: "http://localhost" + port + "/redirect-in", open: true, result: "fetched page body"},
		{name: "redirect out of allow-list", url: "http://localhost" + port + "/redirect-out", open: true, err: `redirect to host "evil.example.org" is not in the allow-list`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			h := newHarness(t, agent.Config{})
			if tc.open {
				agent.SetFetchPolicy(h.server, func(netip.Addr) error { return nil })
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
