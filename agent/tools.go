package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/loom-dev/loom/agent/model"
	agentv1 "github.com/loom-dev/loom/gen/loom/agent/v1"
	memoryv1 "github.com/loom-dev/loom/gen/loom/memory/v1"
)

// Tool names. A delegate tool is named delegatePrefix + the agent's name.
const (
	toolMemorySearch = "memory_search"
	toolMemorySave   = "memory_save"
	toolHTTPFetch    = "http_fetch"
	delegatePrefix   = "delegate_"
)

const (
	// maxDelegationDepth bounds nested delegations: a run may start runs 3 levels deep.
	maxDelegationDepth = 3
	// maxFetchBytes bounds the body http_fetch hands to the model.
	maxFetchBytes = 64 << 10
	// maxFetchRedirects bounds the redirects http_fetch follows; each target must be allowed too.
	maxFetchRedirects = 5
)

func toolName(t *agentv1.Tool) string {
	switch k := t.GetKind().(type) {
	case *agentv1.Tool_MemorySearch:
		return toolMemorySearch
	case *agentv1.Tool_MemorySave:
		return toolMemorySave
	case *agentv1.Tool_HttpFetch:
		return toolHTTPFetch
	case *agentv1.Tool_Delegate:
		return delegatePrefix + k.Delegate.GetAgent()
	}
	return ""
}

// toolSchema is the JSON Schema of a tool's arguments.
func toolSchema(t *agentv1.Tool) map[string]any {
	str := func(desc string, maxLen int) map[string]any {
		return map[string]any{"type": "string", "description": desc, "minLength": 1, "maxLength": maxLen}
	}
	obj := func(props map[string]any, required ...any) map[string]any {
		return map[string]any{"type": "object", "properties": props, "required": required, "additionalProperties": false}
	}
	switch t.GetKind().(type) {
	case *agentv1.Tool_MemorySearch:
		return obj(map[string]any{
			"query": str("What to look for.", 4096),
			"top_k": map[string]any{"type": "integer", "description": "How many memories, 1 to 50.", "minimum": 1, "maximum": 50},
		}, "query")
	case *agentv1.Tool_MemorySave:
		return obj(map[string]any{
			"text": str("The text to remember.", 65536),
			"id":   str("Optional id; saving with an existing id replaces that memory.", 128),
		}, "text")
	case *agentv1.Tool_HttpFetch:
		return obj(map[string]any{"url": str("An http or https URL on an allowed host.", 2048)}, "url")
	case *agentv1.Tool_Delegate:
		return obj(map[string]any{"input": str("The task for the other agent.", 262144)}, "input")
	}
	return map[string]any{"type": "object"}
}

func toolDescription(t *agentv1.Tool) string {
	switch k := t.GetKind().(type) {
	case *agentv1.Tool_MemorySearch:
		return "Search your long-term memory."
	case *agentv1.Tool_MemorySave:
		return "Save a text into your long-term memory."
	case *agentv1.Tool_HttpFetch:
		return "Fetch a web page. Allowed hosts: " + strings.Join(k.HttpFetch.GetAllowedHosts(), ", ")
	case *agentv1.Tool_Delegate:
		if d := k.Delegate.GetDescription(); d != "" {
			return d
		}
		return "Ask agent " + k.Delegate.GetAgent() + " to do a task."
	}
	return ""
}

func toolSpecs(a *agentv1.Agent) []model.Tool {
	var out []model.Tool
	for _, t := range a.GetTools() {
		out = append(out, model.Tool{Name: toolName(t), Description: toolDescription(t), Parameters: toolSchema(t)})
	}
	return out
}

// runEnv is what tools need to know about the run calling them.
type runEnv struct {
	tenant string
	agent  *agentv1.Agent
	runID  string
	chain  []string // agent names from the top-level run down to this one
	// attachments go with the input, the first message of every model call; delegated runs have none.
	attachments []model.Attachment
	// emit streams events to the caller of RunStream; nil for unary runs.
	emit emitFunc
}

// callTool executes one tool call. Failures become the result's error, told to the model; they never fail the run.
func (s *Server) callTool(ctx context.Context, env runEnv, call model.ToolCall) *agentv1.ToolResult {
	res := &agentv1.ToolResult{CallId: call.ID, Name: call.Name}
	idx := slices.IndexFunc(env.agent.GetTools(), func(t *agentv1.Tool) bool { return toolName(t) == call.Name })
	if idx < 0 {
		var names []string
		for _, t := range env.agent.GetTools() {
			names = append(names, toolName(t))
		}
		res.Error = fmt.Sprintf("unknown tool %q; available tools: [%s]", truncatePath(call.Name), strings.Join(names, ", "))
		return res
	}
	tool := env.agent.GetTools()[idx]
	if err := ValidateArgs(toolSchema(tool), map[string]any(call.Args)); err != nil {
		res.Error = "invalid arguments: " + err.Error()
		return res
	}
	var (
		out map[string]any
		err error
	)
	switch k := tool.GetKind().(type) {
	case *agentv1.Tool_MemorySearch:
		out, err = s.toolMemorySearch(ctx, env, call.Args)
	case *agentv1.Tool_MemorySave:
		out, err = s.toolMemorySave(ctx, env, call.Args)
	case *agentv1.Tool_HttpFetch:
		out, err = s.toolHTTPFetch(ctx, k.HttpFetch.GetAllowedHosts(), call.Args["url"].(string))
	case *agentv1.Tool_Delegate:
		out, err = s.toolDelegate(ctx, env, k.Delegate.GetAgent(), call.Args["input"].(string))
	}
	if err != nil {
		res.Error = err.Error()
		return res
	}
	if res.Result, err = structpb.NewStruct(out); err != nil {
		res.Error = "tool result is not JSON: " + err.Error()
	}
	return res
}

func memoryErr(op string, err error) error {
	if st, ok := status.FromError(err); ok {
		return fmt.Errorf("%s failed: %s: %s", op, st.Code(), truncatePath(st.Message()))
	}
	return fmt.Errorf("%s failed", op)
}

func (s *Server) toolMemorySearch(ctx context.Context, env runEnv, args map[string]any) (map[string]any, error) {
	ns := env.agent.GetMemory().GetNamespace()
	if ns == "" || s.memory == nil {
		return nil, errors.New("this agent has no memory")
	}
	topK := int32(5)
	if k, ok := args["top_k"].(float64); ok {
		topK = int32(k)
	}
	ctx, cancel := context.WithTimeout(ctx, s.cfg.MemoryTimeout)
	defer cancel()
	resp, err := s.memory.Search(ctx, &memoryv1.SearchRequest{Namespace: ns,
		Query: &memoryv1.SearchRequest_Text{Text: args["query"].(string)}, TopK: topK})
	if err != nil {
		return nil, memoryErr("memory search", err)
	}
	hits := []any{}
	for _, h := range resp.GetHits() {
		hits = append(hits, map[string]any{"id": h.GetRecord().GetId(), "text": h.GetRecord().GetText(), "score": float64(h.GetScore())})
	}
	return map[string]any{"hits": hits}, nil
}

func (s *Server) toolMemorySave(ctx context.Context, env runEnv, args map[string]any) (map[string]any, error) {
	ns := env.agent.GetMemory().GetNamespace()
	if ns == "" || s.memory == nil {
		return nil, errors.New("this agent has no memory")
	}
	id, _ := args["id"].(string)
	ctx, cancel := context.WithTimeout(ctx, s.cfg.MemoryTimeout)
	defer cancel()
	resp, err := s.memory.Upsert(ctx, &memoryv1.UpsertRequest{Namespace: ns,
		Records: []*memoryv1.Record{{Id: id, Text: args["text"].(string)}}})
	if err != nil {
		return nil, memoryErr("memory save", err)
	}
	if len(resp.GetIds()) > 0 {
		id = resp.GetIds()[0]
	}
	return map[string]any{"id": id}, nil
}

func (s *Server) toolDelegate(ctx context.Context, env runEnv, name, input string) (map[string]any, error) {
	if slices.Contains(env.chain, name) {
		return nil, fmt.Errorf("delegation cycle: %s -> %s", strings.Join(env.chain, " -> "), name)
	}
	if len(env.chain) > maxDelegationDepth {
		return nil, fmt.Errorf("delegation depth limit (%d) reached", maxDelegationDepth)
	}
	child, err := s.store.GetAgent(ctx, env.tenant, name, 0)
	if err != nil {
		if errors.Is(err, ErrNotFound) {
			return nil, fmt.Errorf("agent %q does not exist", name)
		}
		return nil, errors.New("cannot load the agent")
	}
	run, err := s.execute(ctx, env.tenant, child, input, nil, "", append(slices.Clip(env.chain), name), delegatedEmit(env.emit))
	if err != nil && run == nil {
		return nil, fmt.Errorf("delegate run failed: %s", publicMessage(err))
	}
	if run.GetState() != agentv1.RunState_RUN_STATE_SUCCEEDED {
		return nil, fmt.Errorf("delegate run %s %s: %s", run.GetId(), strings.TrimPrefix(run.GetState().String(), "RUN_STATE_"), run.GetError())
	}
	return map[string]any{"run_id": run.GetId(), "output": run.GetOutput()}, nil
}

// delegatedEmit forwards a delegated run's events into the parent's stream, carrying the delegated run's id,
// except the ones that frame a run (started, completed, failed): the parent's own run frames the stream, and the
// delegated run's outcome comes back as the delegate tool's result.
func delegatedEmit(parent emitFunc) emitFunc {
	if parent == nil {
		return nil
	}
	return func(ev *agentv1.RunStreamResponse) error {
		switch ev.GetEvent().(type) {
		case *agentv1.RunStreamResponse_Started, *agentv1.RunStreamResponse_Completed, *agentv1.RunStreamResponse_Failed:
			return nil
		}
		return parent(ev)
	}
}

// toolHTTPFetch GETs rawURL if its host is allowed, through the guarded transport.
func (s *Server) toolHTTPFetch(ctx context.Context, allowed []string, rawURL string) (map[string]any, error) {
	u, err := url.Parse(rawURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, errors.New("url must be an absolute http or https URL")
	}
	if !hostAllowed(u.Hostname(), allowed) {
		return nil, fmt.Errorf("host %q is not in the allow-list", truncatePath(u.Hostname()))
	}
	client := &http.Client{
		Transport: s.fetchTransport(),
		Timeout:   20 * time.Second,
		CheckRedirect: func(req *http.Request, via []*http.Request) error {
			if len(via) >= maxFetchRedirects {
				return errors.New("too many redirects")
			}
			if !hostAllowed(req.URL.Hostname(), allowed) {
				return fmt.Errorf("redirect to host %q is not in the allow-list", truncatePath(req.URL.Hostname()))
			}
			return nil
		},
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, errors.New("bad url")
	}
	req.Header.Set("User-Agent", "loom-agent/1")
	resp, err := client.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return nil, context.Cause(ctx)
		}
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return nil, fmt.Errorf("fetch failed: %v", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxFetchBytes+1))
	if err != nil {
		return nil, fmt.Errorf("fetch failed while reading: %v", err)
	}
	truncated := len(body) > maxFetchBytes
	if truncated {
		body = body[:maxFetchBytes]
	}
	return map[string]any{
		"status":       float64(resp.StatusCode),
		"content_type": resp.Header.Get("Content-Type"),
		"body":         strings.ToValidUTF8(string(body), "\uFFFD"),
		"truncated":    truncated,
	}, nil
}

// hostAllowed matches host against exact names and "*.example.com" patterns (subdomains only), ignoring case.
func hostAllowed(host string, allowed []string) bool {
	host = strings.ToLower(strings.TrimSuffix(host, "."))
	if host == "" {
		return false
	}
	for _, a := range allowed {
		a = strings.ToLower(strings.TrimSuffix(a, "."))
		if suffix, ok := strings.CutPrefix(a, "*."); ok {
			if strings.HasSuffix(host, "."+suffix) {
				return true
			}
		} else if host == a {
			return true
		}
	}
	return false
}

// fetchTransport dials only addresses fetchPolicy accepts. The check runs on the resolved address at dial time,
// so it also covers redirects, DNS names pointing inside, and DNS rebinding. No proxy is used.
func (s *Server) fetchTransport() *http.Transport {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fetchTr != nil {
		return s.fetchTr
	}
	policy := s.fetchPolicy
	dialer := &net.Dialer{
		Timeout: 10 * time.Second,
		Control: func(_, address string, _ syscall.RawConn) error {
			ap, err := netip.ParseAddrPort(address)
			if err != nil {
				return fmt.Errorf("refusing to dial %q", address)
			}
			return policy(ap.Addr())
		},
	}
	s.fetchTr = &http.Transport{
		Proxy:                  nil,
		DialContext:            dialer.DialContext,
		ForceAttemptHTTP2:      true,
		TLSHandshakeTimeout:    10 * time.Second,
		ResponseHeaderTimeout:  15 * time.Second,
		MaxResponseHeaderBytes: 64 << 10,
		MaxIdleConns:           16,
		IdleConnTimeout:        30 * time.Second,
	}
	return s.fetchTr
}

// blockedPrefixes are refused besides what netip classifies as loopback, private, link-local, multicast or
// unspecified.
var blockedPrefixes = []netip.Prefix{
	netip.MustParsePrefix("0.0.0.0/8"),         // "this network"
	netip.MustParsePrefix("100.64.0.0/10"),     // CGNAT (also Alibaba's metadata 100.100.100.200)
	netip.MustParsePrefix("192.0.0.0/24"),      // IETF protocol assignments
	netip.MustParsePrefix("198.18.0.0/15"),     // benchmarking
	netip.MustParsePrefix("240.0.0.0/4"),       // reserved, broadcast
	netip.MustParsePrefix("fd00:ec2::254/128"), // AWS IPv6 metadata (inside fc00::/7 too)
}

var (
	nat64Prefix = netip.MustParsePrefix("64:ff9b::/96")
	sixToFour   = netip.MustParsePrefix("2002::/16")
)

// refuseInternal refuses loopback, private, link-local (incl. cloud metadata 169.254.169.254), CGNAT, multicast
// and reserved addresses, also when embedded in IPv4-mapped, NAT64 or 6to4 IPv6 addresses.
func refuseInternal(ip netip.Addr) error {
	ip = ip.Unmap()
	if ip.Is6() {
		b := ip.As16()
		switch {
		case nat64Prefix.Contains(ip):
			if err := refuseInternal(netip.AddrFrom4([4]byte{b[12], b[13], b[14], b[15]})); err != nil {
				return err
			}
		case sixToFour.Contains(ip):
			if err := refuseInternal(netip.AddrFrom4([4]byte{b[2], b[3], b[4], b[5]})); err != nil {
				return err
			}
		}
	}
	if !ip.IsValid() || ip.IsLoopback() || ip.IsPrivate() || ip.IsLinkLocalUnicast() || ip.IsLinkLocalMulticast() ||
		ip.IsInterfaceLocalMulticast() || ip.IsMulticast() || ip.IsUnspecified() {
		return fmt.Errorf("address %s is internal and refused", ip)
	}
	for _, p := range blockedPrefixes {
		if p.Contains(ip) {
			return fmt.Errorf("address %s is internal and refused", ip)
		}
	}
	return nil
}
