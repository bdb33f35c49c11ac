// Package mcpserver serves Loom's own capabilities as Model Context Protocol tools over streamable HTTP, so MCP
// clients (assistants, IDEs, other agent frameworks) can use Loom directly: memory search and save, running an
// agent, and starting and reading a workflow run.
//
// Each tool call is one of Loom's RPCs, made with the caller's own credentials: the handler forwards the MCP
// request's Authorization header and dispatches the call, in process, through the server's authentication and
// every interceptor (roles, fairness, audit, validation). The MCP request itself passed load shedding and the
// rate limit on its way in, so a tool call is counted there once, not again for its RPC. So an MCP call can do
// exactly what the same key can do over Connect or gRPC, and nothing else. Tools the caller's roles
// do not allow are not listed.
//
// The transport is stateless (no Mcp-Session-Id): any replica can answer any request, as for the RPCs.
package mcpserver

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"

	"connectrpc.com/connect"
	"github.com/modelcontextprotocol/go-sdk/mcp"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	agentv1 "github.com/loom-dev/loom/gen/loom/agent/v1"
	"github.com/loom-dev/loom/gen/loom/agent/v1/agentv1connect"
	authv1 "github.com/loom-dev/loom/gen/loom/auth/v1"
	memoryv1 "github.com/loom-dev/loom/gen/loom/memory/v1"
	"github.com/loom-dev/loom/gen/loom/memory/v1/memoryv1connect"
	orchestratorv1 "github.com/loom-dev/loom/gen/loom/orchestrator/v1"
	"github.com/loom-dev/loom/gen/loom/orchestrator/v1/orchestratorv1connect"
	"github.com/loom-dev/loom/internal/principal"
	"github.com/loom-dev/loom/internal/rpcserver"
)

var errNoDispatch = errors.New("mcpserver: no dispatch handler")

// Path is where the endpoint is mounted.
const Path = "/mcp"

// Config configures the handler.
type Config struct {
	// Dispatch serves Loom's RPCs: the server's [rpcserver.Server.Dispatcher], so calls pass its authentication
	// and interceptors.
	// It is called in process; it may be set after New returns (see [Handler.SetDispatch]).
	Dispatch http.Handler
	// Version is reported to clients as the server's version.
	Version string
	// Logger receives the SDK's transport errors; nil logs nothing.
	Logger *slog.Logger
	// MaxBodyBytes bounds one MCP request body; default 4 MiB, the RPCs' own message limit.
	MaxBodyBytes int64
}

// Handler is the MCP endpoint. It must be mounted behind authentication, so that the request's context carries
// its principal.
type Handler struct {
	transport *inProcess
	rpc       clients
	maxBody   int64
	http      http.Handler
	servers   map[authv1.Role]*mcp.Server // one server per role rank: the tools that rank may call
}

// New returns the handler.
func New(cfg Config) *Handler {
	if cfg.MaxBodyBytes <= 0 {
		cfg.MaxBodyBytes = 4 << 20
	}
	t := &inProcess{}
	t.handler.Store(&dispatch{cfg.Dispatch})
	h := &Handler{transport: t, rpc: newClients(t), maxBody: cfg.MaxBodyBytes, servers: map[authv1.Role]*mcp.Server{}}
	for _, rank := range []authv1.Role{authv1.Role_ROLE_READER, authv1.Role_ROLE_WRITER, authv1.Role_ROLE_ADMIN} {
		h.servers[rank] = h.newServer(cfg.Version, principal.Principal{Roles: []string{roleName(rank)}})
	}
	h.http = mcp.NewStreamableHTTPHandler(func(r *http.Request) *mcp.Server {
		p, ok := principal.FromContext(r.Context())
		if !ok {
			return nil // the SDK answers 400; authentication in front refuses such calls first
		}
		return h.servers[rank(p)]
	}, &mcp.StreamableHTTPOptions{Stateless: true, JSONResponse: true, Logger: cfg.Logger})
	return h
}

// SetDispatch sets the handler RPCs are dispatched to, for a server whose root handler exists only after the
// MCP handler was given to it.
func (h *Handler) SetDispatch(d http.Handler) { h.transport.handler.Store(&dispatch{d}) }

// ServeHTTP implements http.Handler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, h.maxBody)
	h.http.ServeHTTP(w, r.WithContext(withPeer(r.Context(), r.RemoteAddr)))
}

func roleName(r authv1.Role) string {
	switch r {
	case authv1.Role_ROLE_ADMIN:
		return "admin"
	case authv1.Role_ROLE_WRITER:
		return "writer"
	}
	return "reader"
}

// rank is the highest role p holds (reader when it holds none that Loom knows: it is then listed the reader's
// tools, and their calls are refused by the RPCs themselves).
func rank(p principal.Principal) authv1.Role {
	best := authv1.Role_ROLE_READER
	for _, r := range []authv1.Role{authv1.Role_ROLE_WRITER, authv1.Role_ROLE_ADMIN} {
		if rpcserver.Allowed(p, r) {
			best = r
		}
	}
	return best
}

// clients are Loom's RPC clients, made once; each call carries its MCP caller's credentials in its context (see
// [withHeader]).
type clients struct {
	memory       memoryv1connect.MemoryServiceClient
	agent        agentv1connect.AgentServiceClient
	orchestrator orchestratorv1connect.OrchestratorServiceClient
}

// base is the URL the in-process clients address; only its path reaches the dispatch handler.
const base = "http://loom.mcp.internal"

func newClients(t *inProcess) clients {
	// The Connect protocol with the binary codec: no HTTP/2 needed in process.
	hc := &http.Client{Transport: t}
	return clients{
		memory:       memoryv1connect.NewMemoryServiceClient(hc, base),
		agent:        agentv1connect.NewAgentServiceClient(hc, base),
		orchestrator: orchestratorv1connect.NewOrchestratorServiceClient(hc, base),
	}
}

// forwarded is what a tool's RPC carries over from the MCP request: its credentials and its trace.
func forwarded(req *mcp.CallToolRequest) http.Header {
	out := http.Header{}
	if req == nil || req.Extra == nil || req.Extra.Header == nil {
		return out
	}
	for _, k := range []string{"Authorization", "Traceparent", "Tracestate", "X-Forwarded-For"} {
		if v := req.Extra.Header.Values(k); len(v) > 0 {
			out[k] = v
		}
	}
	return out
}

// tool describes one MCP tool and the RPC it makes.
type tool struct {
	procedure string
	add       func(s *mcp.Server)
}

func (h *Handler) newServer(version string, p principal.Principal) *mcp.Server {
	if version == "" {
		version = "dev"
	}
	s := mcp.NewServer(&mcp.Implementation{Name: "loom", Title: "Loom", Version: version}, &mcp.ServerOptions{
		Instructions: "Loom's memory (semantic search and save), agents and workflows. Every call runs with your API key's tenant and roles.",
		// The tool list depends on the caller's roles: no intermediary may serve one caller's list to another.
		SetCacheable: func(_ context.Context, _ mcp.Request, c *mcp.Cacheable) { c.CacheScope = "private" },
	})
	for _, t := range h.tools() {
		if rpcserver.Allowed(p, rpcserver.RequiredRole(t.procedure)) {
			t.add(s)
		}
	}
	return s
}

// errorResult is a tool result for a refused or failed RPC: the code and the RPC's own client-safe message, so
// the model can correct its arguments.
func errorResult(err error) *mcp.CallToolResult {
	msg := err.Error()
	var ce *connect.Error
	if errors.As(err, &ce) {
		msg = ce.Code().String() + ": " + ce.Message()
	}
	return &mcp.CallToolResult{IsError: true, Content: []mcp.Content{&mcp.TextContent{Text: msg}}}
}

// rpcResult is the tool result of an RPC: its response as JSON (see protoResult), or its refusal as a tool
// error.
func rpcResult[T any, PT interface {
	*T
	proto.Message
}](resp *connect.Response[T], err error) (*mcp.CallToolResult, any, error) {
	if err != nil {
		return errorResult(err), nil, nil
	}
	return protoResult(PT(resp.Msg))
}

// protoResult is a tool result holding m as JSON, both as text and as structured content.
func protoResult(m proto.Message) (*mcp.CallToolResult, any, error) {
	data, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(m)
	if err != nil {
		return nil, nil, err
	}
	var structured map[string]any
	if err := json.Unmarshal(data, &structured); err != nil {
		return nil, nil, err
	}
	return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: string(data)}}, StructuredContent: structured}, nil, nil
}

// SearchArgs are memory_search's arguments.
type SearchArgs struct {
	Namespace string         `json:"namespace" jsonschema:"the memory namespace to search"`
	Query     string         `json:"query" jsonschema:"what to look for, in words: the namespace's embedder turns it into a vector"`
	TopK      int32          `json:"top_k,omitempty" jsonschema:"how many records to return (default 10, at most 1000)"`
	Hybrid    bool           `json:"hybrid,omitempty" jsonschema:"fuse the vector ranking with a keyword ranking"`
	Filter    map[string]any `json:"filter,omitempty" jsonschema:"a metadata filter in Loom's Filter JSON form, for example {\"field\":{\"key\":\"lang\",\"eq\":{\"string_value\":\"en\"}}}"`
}

// SaveArgs are memory_save's arguments.
type SaveArgs struct {
	Namespace string         `json:"namespace" jsonschema:"the memory namespace to save into"`
	ID        string         `json:"id,omitempty" jsonschema:"the record id; a new one is made when empty, and an existing id is replaced"`
	Text      string         `json:"text" jsonschema:"the text to remember"`
	Metadata  map[string]any `json:"metadata,omitempty" jsonschema:"metadata: string, number or boolean values, or lists of them"`
}

// RunAgentArgs are run_agent's arguments.
type RunAgentArgs struct {
	Agent          string `json:"agent" jsonschema:"the agent's name"`
	Input          string `json:"input" jsonschema:"the user message for the agent"`
	IdempotencyKey string `json:"idempotency_key,omitempty" jsonschema:"makes a retried call return the first call's run instead of running again"`
}

// StartWorkflowArgs are start_workflow's arguments.
type StartWorkflowArgs struct {
	Blueprint      string         `json:"blueprint" jsonschema:"the blueprint's name"`
	Version        int64          `json:"version,omitempty" jsonschema:"the blueprint version; 0 runs the latest"`
	Input          map[string]any `json:"input,omitempty" jsonschema:"the run's input, checked against the blueprint's input schema"`
	IdempotencyKey string         `json:"idempotency_key,omitempty" jsonschema:"makes a retried call return the first call's run"`
}

// GetWorkflowRunArgs are get_workflow_run's arguments.
type GetWorkflowRunArgs struct {
	ID string `json:"id" jsonschema:"the workflow run's id, as start_workflow returned it"`
}

func (h *Handler) tools() []tool {
	return []tool{
		{memoryv1connect.MemoryServiceSearchProcedure, func(s *mcp.Server) {
			mcp.AddTool(s, &mcp.Tool{Name: "memory_search", Description: "Search a Loom memory namespace by meaning; returns the closest records with their scores.",
				Annotations: &mcp.ToolAnnotations{ReadOnlyHint: true}},
				func(ctx context.Context, req *mcp.CallToolRequest, in SearchArgs) (*mcp.CallToolResult, any, error) {
					msg := &memoryv1.SearchRequest{Namespace: in.Namespace, Query: &memoryv1.SearchRequest_Text{Text: in.Query}, TopK: in.TopK, Hybrid: in.Hybrid}
					if msg.TopK == 0 {
						msg.TopK = 10
					}
					if in.Filter != nil {
						f := &memoryv1.Filter{}
						if err := fromJSON(in.Filter, f); err != nil {
							return errorResult(fmt.Errorf("filter: %w", err)), nil, nil
						}
						msg.Filter = f
					}
					return rpcResult(h.rpc.memory.Search(withHeader(ctx, req), connect.NewRequest(msg)))
				})
		}},
		{memoryv1connect.MemoryServiceUpsertProcedure, func(s *mcp.Server) {
			mcp.AddTool(s, &mcp.Tool{Name: "memory_save", Description: "Save a text record into a Loom memory namespace (embedded by the namespace's embedder); returns the record's id.",
				Annotations: &mcp.ToolAnnotations{IdempotentHint: true}},
				func(ctx context.Context, req *mcp.CallToolRequest, in SaveArgs) (*mcp.CallToolResult, any, error) {
					md, err := metadata(in.Metadata)
					if err != nil {
						return errorResult(err), nil, nil
					}
					return rpcResult(h.rpc.memory.Upsert(withHeader(ctx, req), connect.NewRequest(&memoryv1.UpsertRequest{
						Namespace: in.Namespace, Records: []*memoryv1.Record{{Id: in.ID, Text: in.Text, Metadata: md}},
					})))
				})
		}},
		{agentv1connect.AgentServiceRunProcedure, func(s *mcp.Server) {
			mcp.AddTool(s, &mcp.Tool{Name: "run_agent", Description: "Run a Loom agent on an input and wait for it to finish; returns the run with its output, steps and token usage."},
				func(ctx context.Context, req *mcp.CallToolRequest, in RunAgentArgs) (*mcp.CallToolResult, any, error) {
					return rpcResult(h.rpc.agent.Run(withHeader(ctx, req), connect.NewRequest(&agentv1.RunRequest{Agent: in.Agent, Input: in.Input, IdempotencyKey: in.IdempotencyKey})))
				})
		}},
		{orchestratorv1connect.OrchestratorServiceStartRunProcedure, func(s *mcp.Server) {
			mcp.AddTool(s, &mcp.Tool{Name: "start_workflow", Description: "Start a durable Loom workflow run from a blueprint; returns the run (read its progress with get_workflow_run)."},
				func(ctx context.Context, req *mcp.CallToolRequest, in StartWorkflowArgs) (*mcp.CallToolResult, any, error) {
					msg := &orchestratorv1.StartRunRequest{Blueprint: in.Blueprint, Version: in.Version, IdempotencyKey: in.IdempotencyKey}
					if in.Input != nil {
						input, err := structpb.NewStruct(in.Input)
						if err != nil {
							return errorResult(fmt.Errorf("input: %w", err)), nil, nil
						}
						msg.Input = input
					}
					return rpcResult(h.rpc.orchestrator.StartRun(withHeader(ctx, req), connect.NewRequest(msg)))
				})
		}},
		{orchestratorv1connect.OrchestratorServiceGetRunProcedure, func(s *mcp.Server) {
			mcp.AddTool(s, &mcp.Tool{Name: "get_workflow_run", Description: "Read a Loom workflow run: its state, steps, outputs and any pending approval.",
				Annotations: &mcp.ToolAnnotations{ReadOnlyHint: true}},
				func(ctx context.Context, req *mcp.CallToolRequest, in GetWorkflowRunArgs) (*mcp.CallToolResult, any, error) {
					return rpcResult(h.rpc.orchestrator.GetRun(withHeader(ctx, req), connect.NewRequest(&orchestratorv1.GetRunRequest{Id: in.ID})))
				})
		}},
	}
}

// fromJSON decodes v (decoded JSON) into m with protojson, which accepts both proto and JSON field names.
func fromJSON(v any, m proto.Message) error {
	data, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return protojson.Unmarshal(data, m)
}

// metadata converts plain JSON metadata to memory values: strings, finite numbers, booleans, and lists of them.
func metadata(in map[string]any) (map[string]*memoryv1.Value, error) {
	if len(in) == 0 {
		return nil, nil
	}
	out := make(map[string]*memoryv1.Value, len(in))
	for k, v := range in {
		if list, ok := v.([]any); ok {
			l := &memoryv1.ScalarList{}
			for i, e := range list {
				sc, err := scalar(e)
				if err != nil {
					return nil, fmt.Errorf("metadata.%s[%d]: %w", k, i, err)
				}
				l.Values = append(l.Values, sc)
			}
			out[k] = &memoryv1.Value{Kind: &memoryv1.Value_ListValue{ListValue: l}}
			continue
		}
		sc, err := scalar(v)
		if err != nil {
			return nil, fmt.Errorf("metadata.%s: %w", k, err)
		}
		switch kind := sc.GetKind().(type) {
		case *memoryv1.Scalar_StringValue:
			out[k] = &memoryv1.Value{Kind: &memoryv1.Value_StringValue{StringValue: kind.StringValue}}
		case *memoryv1.Scalar_NumberValue:
			out[k] = &memoryv1.Value{Kind: &memoryv1.Value_NumberValue{NumberValue: kind.NumberValue}}
		case *memoryv1.Scalar_BoolValue:
			out[k] = &memoryv1.Value{Kind: &memoryv1.Value_BoolValue{BoolValue: kind.BoolValue}}
		}
	}
	return out, nil
}

func scalar(v any) (*memoryv1.Scalar, error) {
	switch v := v.(type) {
	case string:
		return &memoryv1.Scalar{Kind: &memoryv1.Scalar_StringValue{StringValue: v}}, nil
	case float64:
		return &memoryv1.Scalar{Kind: &memoryv1.Scalar_NumberValue{NumberValue: v}}, nil
	case bool:
		return &memoryv1.Scalar{Kind: &memoryv1.Scalar_BoolValue{BoolValue: v}}, nil
	}
	return nil, errors.New("want a string, number or boolean")
}
