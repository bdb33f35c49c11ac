package agentrpc

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/loom-dev/loom/agent"
	"github.com/loom-dev/loom/agent/model"
	agentv1 "github.com/loom-dev/loom/gen/loom/agent/v1"
	memoryv1 "github.com/loom-dev/loom/gen/loom/memory/v1"
	"github.com/loom-dev/loom/internal/jsonschema"
	"github.com/loom-dev/loom/internal/netguard"
)

const (
	// maxDelegationDepth bounds nested delegations: a run may start runs 3 levels deep.
	maxDelegationDepth = 3
	// maxFetchBytes bounds the body http_fetch hands to the model.
	maxFetchBytes = 64 << 10
	// maxFetchRedirects bounds the redirects http_fetch follows; each target must be allowed too.
	maxFetchRedirects = 5
)

// toolSchemaIn is toolSchema, with MCP tools described by their server in env.
func toolSchemaIn(env runEnv, t *agentv1.Tool) map[string]any {
	if m := t.GetMcp(); m != nil {
		return mcpSchema(env.mcp.tool(agent.MCPName(m)))
	}
	return toolSchema(t)
}

// toolSchema is the JSON Schema of a tool's arguments.
func toolSchema(t *agentv1.Tool) map[string]any {
	str := func(desc string, maxLen int) map[string]any {
		return map[string]any{"type": "string", "description": desc, "minLength": 1, "maxLength": maxLen}
	}
	obj := func(props map[string]any, required ...any) map[string]any {
		return map[string]any{"type": "object", "properties": props, "required": required, "additionalProperties": false}
	}
	switch k := t.GetKind().(type) {
	case *agentv1.Tool_Webhook:
		return webhookSchema(k.Webhook)
	case *agentv1.Tool_Client:
		if k.Client.GetParameters() != nil {
			return k.Client.GetParameters().AsMap()
		}
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
	case *agentv1.Tool_Webhook:
		return k.Webhook.GetDescription()
	case *agentv1.Tool_Client:
		return k.Client.GetDescription()
	case *agentv1.Tool_Mcp:
		return "" // the server's description, see toolSpecs
	}
	return ""
}

// toolSpecs describes a's tools to the model; MCP tools the run's servers did not describe are left out.
func toolSpecs(env runEnv, a *agentv1.Agent) []model.Tool {
	var out []model.Tool
	for _, t := range a.GetTools() {
		desc := toolDescription(t)
		if m := t.GetMcp(); m != nil {
			tool := env.mcp.tool(agent.MCPName(m))
			if tool == nil {
				continue
			}
			desc = truncateBytes(tool.Description, 4096)
		}
		out = append(out, model.Tool{Name: agent.ToolName(t), Description: desc, Parameters: toolSchemaIn(env, t)})
	}
	return out
}

// runEnv is what tools need to know about the run calling them.
type runEnv struct {
	tenant string
	// schemas are the compiled argument schemas of the tools this run has called, by tool name: compiled (and
	// looked up in the server's cache, which keys by the schema's JSON) once per run, not once per call. Tool calls
	// of a run are sequential.
	schemas map[string]compiledSchema
	agent   *agentv1.Agent
	runID   string
	chain   []string // agent names from the top-level run down to this one
	// attachments go with the input, the first message of every model call; delegated runs have none.
	attachments []model.Attachment
	// emit streams events to the caller of RunStream; nil for unary runs.
	emit emitFunc
	// chaos, when set, wraps the run's model (see chaos.go).
	chaos *chaosModel
	// attempt is the run's attempt number (see runOpts); 0 when neither chaos nor a sim failure rate needed it.
	attempt int32
	// mcp holds the run's MCP sessions and tool descriptions; nil when the agent has no MCP tool.
	mcp *mcpRun
	// meter prices the run's model calls.
	meter meter
	// resume is the saved state of a run resumed after waiting for client tools; nil otherwise.
	resume *waitState
	// started is when this execution of the run began (for the time budget of a run that waits).
	started time.Time
	// record is the run's record, which tool calls wait for (see record.go).
	record *runRecord
}

// compiledSchema is a tool's compiled argument schema, or why it does not compile.
type compiledSchema struct {
	schema *jsonschema.Schema
	err    error
}

// callTool executes one tool call. Failures become the result's error, told to the model; they never fail the run.
func (s *Server) callTool(ctx context.Context, env runEnv, call model.ToolCall) *agentv1.ToolResult {
	res := &agentv1.ToolResult{CallId: call.ID, Name: call.Name}
	idx := slices.IndexFunc(env.agent.GetTools(), func(t *agentv1.Tool) bool { return agent.ToolName(t) == call.Name })
	if idx < 0 {
		var names []string
		for _, t := range env.agent.GetTools() {
			names = append(names, agent.ToolName(t))
		}
		res.Error = fmt.Sprintf("unknown tool %q; available tools: [%s]", agent.TruncatePath(call.Name), strings.Join(names, ", "))
		return res
	}
	tool := env.agent.GetTools()[idx]
	if msg := env.chaos.toolFault(call.Name); msg != "" {
		res.Error = msg
		return res
	}
	cs, ok := env.schemas[call.Name]
	if !ok {
		cs.schema, cs.err = s.schemas.Compile(toolSchemaIn(env, tool))
		if env.schemas != nil {
			env.schemas[call.Name] = cs
		}
	}
	if err := agent.ValidateCompiled(cs.schema, cs.err, map[string]any(call.Args)); err != nil {
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
		out, res.Usage, err = s.toolDelegate(ctx, env, k.Delegate.GetAgent(), call.Args["input"].(string))
	case *agentv1.Tool_Webhook:
		start := time.Now()
		out, err = s.toolWebhook(ctx, env, k.Webhook, call.ID, call.Args)
		s.auditTool(ctx, env, auditWebhook, call.Name, urlTarget(k.Webhook.GetUrl()), start, out, err)
	case *agentv1.Tool_Mcp:
		start := time.Now()
		out, err = s.toolMCP(ctx, env, k.Mcp, call.Args)
		s.auditTool(ctx, env, auditMCP, call.Name, mcpTarget(k.Mcp), start, out, err)
	case *agentv1.Tool_Client:
		err = errors.New("a client tool can only be called by the run its caller started, not by a delegated run")
	}
	if err != nil {
		res.Error = s.scrub.String(err.Error())
		return res
	}
	if res.Result, err = structpb.NewStruct(out); err != nil {
		res.Error = "tool result is not JSON: " + err.Error()
	}
	return res
}

func memoryErr(op string, err error) error {
	if st, ok := status.FromError(err); ok {
		return fmt.Errorf("%s failed: %s: %s", op, st.Code(), agent.TruncatePath(st.Message()))
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

// toolDelegate runs agent name on input as a delegated run and returns its output, and its rolled-up usage (also
// when it failed; nil when it never started).
func (s *Server) toolDelegate(ctx context.Context, env runEnv, name, input string) (map[string]any, *agentv1.Usage, error) {
	if slices.Contains(env.chain, name) {
		return nil, nil, fmt.Errorf("delegation cycle: %s -> %s", strings.Join(env.chain, " -> "), name)
	}
	if len(env.chain) > maxDelegationDepth {
		return nil, nil, fmt.Errorf("delegation depth limit (%d) reached", maxDelegationDepth)
	}
	child, err := s.store.GetAgent(ctx, env.tenant, name, 0)
	if err != nil {
		if errors.Is(err, agent.ErrNotFound) {
			return nil, nil, fmt.Errorf("agent %q does not exist", name)
		}
		return nil, nil, errors.New("cannot load the agent")
	}
	run, err := s.execute(ctx, env.tenant, child, input, nil, "", append(slices.Clip(env.chain), name), runOpts{}, delegatedEmit(env.emit))
	if err != nil && run == nil {
		return nil, nil, fmt.Errorf("delegate run failed: %s", publicMessage(err))
	}
	if run.GetState() != agentv1.RunState_RUN_STATE_SUCCEEDED {
		return nil, run.GetUsage(), fmt.Errorf("delegate run %s %s: %s", run.GetId(), strings.TrimPrefix(run.GetState().String(), "RUN_STATE_"), run.GetError())
	}
	return map[string]any{"run_id": run.GetId(), "output": run.GetOutput()}, run.GetUsage(), nil
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

// toolHTTPFetch GETs rawURL if its host is allowed, through the guarded transport: netguard refuses numeric
// host forms before any DNS query and every internal address at dial time, on the first hop and on redirects.
func (s *Server) toolHTTPFetch(ctx context.Context, allowed []string, rawURL string) (map[string]any, error) {
	u, err := url.Parse(rawURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, errors.New("url must be an absolute http or https URL")
	}
	if err := s.fetchGuard.CheckURL(u); err != nil {
		return nil, fmt.Errorf("url refused: %v", err)
	}
	if !hostAllowed(u.Hostname(), allowed) {
		return nil, fmt.Errorf("host %q is not in the allow-list", agent.TruncatePath(u.Hostname()))
	}
	client := &http.Client{
		Transport: s.fetchTransport(),
		Timeout:   20 * time.Second,
		CheckRedirect: func(req *http.Request, via []*http.Request) error {
			if len(via) >= maxFetchRedirects {
				return errors.New("too many redirects")
			}
			if err := s.fetchGuard.CheckURL(req.URL); err != nil {
				return fmt.Errorf("redirect refused: %w", err)
			}
			if !hostAllowed(req.URL.Hostname(), allowed) {
				return fmt.Errorf("redirect to host %q is not in the allow-list", agent.TruncatePath(req.URL.Hostname()))
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
		return nil, fmt.Errorf("fetch failed: %v", callError(err))
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

// fetchTransport is the http_fetch transport: it dials only through s.fetchGuard and never through a proxy.
func (s *Server) fetchTransport() *http.Transport {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fetchTr == nil {
		s.fetchTr = netguard.NewTransport(s.fetchGuard)
	}
	return s.fetchTr
}

// callError is the error of a failed HTTP call as the fetch and webhook tools report it: without the *url.Error
// (method and URL) net/http wraps around it.
func callError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}
