// Package agentrpc implements loom.agent.v1.AgentService, the agent service's Connect handler over the domain
// (package agent): versioned agents, and runs of them. A run is a loop of memory retrieval, model calls (a
// deterministic simulator by default, or Gemini or any OpenAI-compatible endpoint) and tool calls, bounded by
// budgets, streamed as it happens, persisted with its steps and token usage. The service also synthesises speech
// (espeak-ng locally, or ElevenLabs) and creates avatar videos (Tavus).
//
// The [Server] reads the caller's tenant from the context (internal/principal), keeps agents and runs in an
// [agent.Store] (agent/sqlstore), talks to language models through the model subpackages, reaches the memory
// service only through its generated grpc-go client, and maps errors to connect codes in one place. Every call
// is scoped to the tenant of the principal in its context.
package agentrpc

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"sync"
	"time"

	"connectrpc.com/connect"
	"github.com/google/uuid"
	"github.com/sony/gobreaker/v2"
	"google.golang.org/protobuf/proto"

	"github.com/loom-dev/loom/agent"
	"github.com/loom-dev/loom/agent/model"
	"github.com/loom-dev/loom/agent/model/sim"
	agentv1 "github.com/loom-dev/loom/gen/loom/agent/v1"
	"github.com/loom-dev/loom/gen/loom/agent/v1/agentv1connect"
	memoryv1 "github.com/loom-dev/loom/gen/loom/memory/v1"
	"github.com/loom-dev/loom/internal/audit"
	"github.com/loom-dev/loom/internal/jsonschema"
	"github.com/loom-dev/loom/internal/netguard"
	"github.com/loom-dev/loom/internal/pricing"
	"github.com/loom-dev/loom/internal/principal"
	"github.com/loom-dev/loom/internal/rpcerr"
	"github.com/loom-dev/loom/internal/rpcserver"
	"github.com/loom-dev/loom/internal/scrub"
	"github.com/loom-dev/loom/internal/secret"
	"github.com/loom-dev/loom/internal/secrets"
	"github.com/loom-dev/loom/internal/telemetry"
)

// Config configures the agent service's providers. The zero value works offline: the sim model, espeak-ng from
// PATH, no other model provider, no ElevenLabs or Tavus. Keys are secret.String values, masked wherever they are
// printed or logged, so a Config can be printed whole.
type Config struct {
	// Models holds the model providers runs can use, by name, with the process's endpoint of each; it must hold
	// "sim", the provider of agents that name none. An agent whose provider is not registered fails its runs with
	// FailedPrecondition. nil means the sim only.
	Models *model.Registry
	// ElevenLabsAPIKey enables VOICE_PROVIDER_ELEVENLABS; empty makes it fail with FailedPrecondition.
	ElevenLabsAPIKey secret.String
	// ElevenLabsBaseURL overrides the ElevenLabs endpoint; empty means "https://api.elevenlabs.io".
	ElevenLabsBaseURL string
	// ElevenLabsModel is the model_id sent to ElevenLabs; empty means "eleven_multilingual_v2".
	ElevenLabsModel string
	// TavusAPIKey enables CreateVideo and GetVideo; empty makes them fail with FailedPrecondition.
	TavusAPIKey secret.String
	// TavusBaseURL overrides the Tavus endpoint; empty means "https://tavusapi.com".
	TavusBaseURL string
	// EspeakPath is the espeak-ng binary; empty means "espeak-ng" looked up in PATH.
	EspeakPath string
	// FFmpegPath is the ffmpeg binary that transcodes speech to a format its provider does not produce; empty
	// means "ffmpeg" looked up in PATH.
	FFmpegPath string
	// MemoryTimeout bounds the memory search before a run's first model call; 0 means 2 seconds.
	MemoryTimeout time.Duration
	// TenantKeys holds tenants' own provider keys, by provider name: a model provider's registered name,
	// "elevenlabs" or "tavus" (*secrets.ProviderKeys implements it). A run, speech or video call uses its tenant's
	// key when there is one, and the process key otherwise; Get answers an error matching secrets.ErrNotFound when
	// the tenant has none, and one matching secrets.ErrInvalidArgument for a provider it keeps no keys for (both
	// mean the process key). Base URLs stay the process's. nil means process keys only.
	TenantKeys interface {
		Get(ctx context.Context, tenant, provider string) (string, error)
	}
	// Metrics counts the tokens and cost of every model call (loom_model_tokens_total, loom_model_cost_total);
	// nil counts nothing.
	Metrics *telemetry.ModelMetrics
	// Prices is the price table model calls are charged at; nil means pricing.Default() (the sim at zero, every
	// other model's cost unknown).
	Prices *pricing.Table
	// BudgetRefresh is how long a tenant's budget and its day's and month's spend, read from the store, are used
	// before they are read again: spend on other replicas and budget changes made there count within it. Checks
	// in between are in memory. 0 means 30 seconds.
	BudgetRefresh time.Duration
	// RunLease is how long a run stays claimed by the process executing it without a renewal; a RUNNING run whose
	// claim ended was cut off by a crash and is marked FAILED by Maintain on any replica. 0 means 30 seconds.
	RunLease time.Duration
	// ProviderBreakerOpenFor is how long a tenant's breaker for one provider (Gemini, OpenAI, ElevenLabs, Tavus)
	// stays open after repeated failures, failing that tenant's calls to it at once; 0 means 30 seconds.
	ProviderBreakerOpenFor time.Duration
	// MCPStdio is the operator's allow-list of stdio MCP servers tenants may register (McpServer.stdio_command),
	// by name. No other command ever runs. nil allows none.
	MCPStdio map[string]MCPCommand
	// Audit receives one event per call of a webhook or MCP tool (see toolaudit.go); *auditsql.Store implements it.
	// nil records none.
	Audit audit.Appender
	// HTTPClient is used for model, speech and video providers (not for the http_fetch tool, which has its own
	// guarded client); nil uses a client without an overall timeout, every call being bounded by its context.
	HTTPClient *http.Client
}

// Validate reports a malformed base URL.
func (c Config) Validate() error {
	urls := map[string]string{"ElevenLabsBaseURL": c.ElevenLabsBaseURL, "TavusBaseURL": c.TavusBaseURL}
	if c.Models != nil {
		for _, name := range c.Models.Names() {
			_, ep, _ := c.Models.Lookup(name)
			urls["Models["+name+"].BaseURL"] = ep.BaseURL
		}
		if _, _, ok := c.Models.Lookup(simProvider); !ok {
			return fmt.Errorf("agent config: Models has no %q provider", simProvider)
		}
	}
	for name, u := range urls {
		if u == "" {
			continue
		}
		p, err := url.Parse(u)
		if err != nil || (p.Scheme != "http" && p.Scheme != "https") || p.Host == "" {
			return fmt.Errorf("agent config: %s %q is not an http(s) URL", name, u)
		}
	}
	if c.RunLease < 0 {
		return fmt.Errorf("agent config: RunLease %v is negative", c.RunLease)
	}
	if c.BudgetRefresh < 0 {
		return fmt.Errorf("agent config: BudgetRefresh %v is negative", c.BudgetRefresh)
	}
	if err := validateStdio(c.MCPStdio); err != nil {
		return err
	}
	if c.MemoryTimeout < 0 {
		return fmt.Errorf("agent config: MemoryTimeout %v is negative", c.MemoryTimeout)
	}
	return nil
}

// Server implements agentv1connect.AgentServiceHandler. It is safe for concurrent use.
type Server struct {
	logger *slog.Logger // scrubs every record with scrub
	// scrub removes the process's and tenants' provider keys, and anything shaped like a credential, from
	// provider error text before it reaches a response, a log line, a stream event or a stored run.
	scrub  *scrub.Scrubber
	errors *rpcerr.Mapper
	store  agent.Store
	memory memoryv1.MemoryServiceClient
	cfg    Config // cfg.Models is never nil
	// prices charges model calls; budgets holds tenants' budgets and spend in memory.
	prices  *pricing.Table
	budgets *budgets

	// schemas holds the compiled JSON Schemas of tool arguments.
	schemas *jsonschema.Cache

	// fetchGuard decides http_fetch destinations; tests replace its Check to reach httptest servers.
	fetchGuard *netguard.Dialer
	fetchTr    *http.Transport // built on first use, guarded by mu

	// instance names this process as the owner of the runs it executes (see Maintain).
	instance string

	bmu      sync.Mutex
	breakers map[string]*gobreaker.TwoStepCircuitBreaker[struct{}] // by tenant + "/" + provider

	mu      sync.Mutex
	running map[string]*activeRun // by tenant + "/" + run id
}

var _ agentv1connect.AgentServiceHandler = (*Server)(nil)

// activeRun is a run executing in this process.
type activeRun struct {
	cancel context.CancelCauseFunc
	done   chan struct{} // closed once the run's final state is stored
	record *runRecord    // the run's record (see record.go)
}

// New returns a Server storing agents and runs in store and reaching memory through memory (nil disables memory:
// runs of agents with a namespace get a warning). It fails only when cfg does not validate.
func New(logger *slog.Logger, store agent.Store, memory memoryv1.MemoryServiceClient, cfg Config) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.MemoryTimeout == 0 {
		cfg.MemoryTimeout = 2 * time.Second
	}
	if cfg.RunLease == 0 {
		cfg.RunLease = defaultRunLease
	}
	if cfg.ProviderBreakerOpenFor <= 0 {
		cfg.ProviderBreakerOpenFor = defaultProviderBreakerOpenFor
	}
	instance, err := uuid.NewV7()
	if err != nil {
		return nil, fmt.Errorf("agent: instance id: %w", err)
	}
	if cfg.Models == nil {
		cfg.Models = model.NewRegistry()
		cfg.Models.Register(simProvider, sim.Provider(), model.Endpoint{})
	}
	var processKeys []string
	for _, k := range append(cfg.Models.Keys(), cfg.ElevenLabsAPIKey, cfg.TavusAPIKey) {
		processKeys = append(processKeys, k.Reveal())
	}
	sc := scrub.New(processKeys...)
	if cfg.Prices == nil {
		cfg.Prices = pricing.Default()
	}
	if cfg.BudgetRefresh == 0 {
		cfg.BudgetRefresh = defaultBudgetRefresh
	}
	scrubbed := slog.New(scrub.Handler(logger.Handler(), sc))
	return &Server{
		logger:     scrubbed,
		errors:     newErrors(scrubbed, sc),
		scrub:      sc,
		store:      store,
		memory:     memory,
		cfg:        cfg,
		schemas:    jsonschema.NewCache(jsonschema.Limits{}, 0),
		prices:     cfg.Prices,
		budgets:    newBudgets(store, cfg.BudgetRefresh, cfg.Prices.Currency()),
		fetchGuard: &netguard.Dialer{},
		instance:   instance.String(),
		breakers:   map[string]*gobreaker.TwoStepCircuitBreaker[struct{}]{},
		running:    map[string]*activeRun{},
	}, nil
}

// Service returns the service for rpcserver to mount.
func (s *Server) Service() rpcserver.Service {
	return rpcserver.Service{
		Name: agentv1connect.AgentServiceName,
		Handler: func(opts ...connect.HandlerOption) (string, http.Handler) {
			return agentv1connect.NewAgentServiceHandler(s, opts...)
		},
	}
}

// providerKey returns the key to call provider with for tenant: the tenant's own key when TenantKeys holds one,
// else fallback (the process key). A provider TenantKeys keeps no keys for (it answers ErrInvalidArgument, as
// secrets.ProviderKeys does for a model provider registered after it) uses fallback. Errors never contain a key.
func (s *Server) providerKey(ctx context.Context, tenant, provider string, fallback secret.String) (secret.String, error) {
	if s.cfg.TenantKeys == nil {
		return fallback, nil
	}
	key, err := s.cfg.TenantKeys.Get(ctx, tenant, provider)
	switch {
	case err == nil && key != "":
		s.scrub.Add(key) // from now on, never echoed back by a provider's error text
		return secret.String(key), nil
	case err == nil, errors.Is(err, secrets.ErrNotFound), errors.Is(err, secrets.ErrInvalidArgument):
		return fallback, nil
	}
	return "", fmt.Errorf("tenant key for %s: %w", provider, err)
}

// errUnavailable is wrapped by errors of a speech or video provider that failed or could not be reached. It
// reads "provider unavailable" and matches model.ErrUnavailable, the one sentinel of a provider fault: model,
// speech and video alike.
var errUnavailable error = unavailableError{}

type unavailableError struct{}

func (unavailableError) Error() string        { return "provider unavailable" }
func (unavailableError) Is(target error) bool { return target == model.ErrUnavailable }

// connectError maps a domain error to a Connect error. It is the only place that chooses codes. Server faults
// become Internal with a generic message; their detail is logged here. Every message is scrubbed of provider
// keys and credential-shaped text (provider error text ends up in some of them).
func (s *Server) connectError(ctx context.Context, err error) error {
	return s.errors.Error(ctx, "", err)
}

// newErrors is the agent's error mapping: the shared rules of internal/rpcerr, every client-facing message
// scrubbed, and the agent's own errors: provider faults (with their retry advice and detail), budgets
// (ResourceExhausted with a QuotaFailure), a provider that is not configured or cannot be reached, and server
// faults already logged where they happened.
func newErrors(logger *slog.Logger, sc *scrub.Scrubber) *rpcerr.Mapper {
	return &rpcerr.Mapper{Logger: logger, Service: "agent", Message: sc.String, Rules: []rpcerr.Rule{
		func(_ context.Context, err error) *connect.Error {
			var pf *providerFault
			if errors.As(err, &pf) {
				return providerConnectError(pf, sc.String(err.Error()))
			}
			return nil
		},
		exhaustedConnectError,
		rpcerr.Is(model.ErrNotConfigured, connect.CodeFailedPrecondition),
		rpcerr.Is(model.ErrUnavailable, connect.CodeUnavailable),
		func(_ context.Context, err error) *connect.Error {
			if errors.Is(err, errLoggedInternal) {
				return connect.NewError(connect.CodeInternal, errors.New("internal error"))
			}
			return nil
		},
	}}
}

const (
	defaultPageSize = 50
	maxPageSize     = 1000
)

func pageSize(n int32) int {
	switch {
	case n <= 0:
		return defaultPageSize
	case n > maxPageSize:
		return maxPageSize
	default:
		return int(n)
	}
}

// CreateAgent implements agentv1connect.AgentServiceHandler.
func (s *Server) CreateAgent(ctx context.Context, req *connect.Request[agentv1.CreateAgentRequest]) (*connect.Response[agentv1.CreateAgentResponse], error) {
	tenant := principal.TenantOf(ctx)
	keepWebhookSecrets(nil, req.Msg.GetAgent()) // clears the output-only signing_secret_set
	if err := agent.CheckAgent(req.Msg.GetAgent(), "agent"); err != nil {
		return nil, s.connectError(ctx, err)
	}
	a, err := s.store.CreateAgent(ctx, tenant, req.Msg.GetAgent())
	if err != nil {
		return nil, s.connectError(ctx, err)
	}
	return connect.NewResponse(&agentv1.CreateAgentResponse{Agent: redactAgent(a)}), nil
}

// GetAgent implements agentv1connect.AgentServiceHandler.
func (s *Server) GetAgent(ctx context.Context, req *connect.Request[agentv1.GetAgentRequest]) (*connect.Response[agentv1.GetAgentResponse], error) {
	tenant := principal.TenantOf(ctx)
	a, err := s.store.GetAgent(ctx, tenant, req.Msg.GetName(), req.Msg.GetVersion())
	if err != nil {
		return nil, s.connectError(ctx, err)
	}
	return connect.NewResponse(&agentv1.GetAgentResponse{Agent: redactAgent(a)}), nil
}

// ListAgents implements agentv1connect.AgentServiceHandler.
func (s *Server) ListAgents(ctx context.Context, req *connect.Request[agentv1.ListAgentsRequest]) (*connect.Response[agentv1.ListAgentsResponse], error) {
	tenant := principal.TenantOf(ctx)
	agents, next, err := s.store.ListAgents(ctx, tenant, pageSize(req.Msg.GetPageSize()), req.Msg.GetPageToken())
	if err != nil {
		return nil, s.connectError(ctx, err)
	}
	for _, a := range agents {
		redactAgent(a)
	}
	return connect.NewResponse(&agentv1.ListAgentsResponse{Agents: agents, NextPageToken: next}), nil
}

// UpdateAgent implements agentv1connect.AgentServiceHandler.
func (s *Server) UpdateAgent(ctx context.Context, req *connect.Request[agentv1.UpdateAgentRequest]) (*connect.Response[agentv1.UpdateAgentResponse], error) {
	tenant := principal.TenantOf(ctx)
	in := req.Msg.GetAgent()
	cur, err := s.store.GetAgent(ctx, tenant, in.GetName(), 0)
	if err != nil {
		return nil, s.connectError(ctx, err)
	}
	if etag := req.Msg.GetEtag(); etag != "" && etag != cur.GetEtag() {
		return nil, s.connectError(ctx, fmt.Errorf("agent %q changed since etag %q: %w", in.GetName(), etag, agent.ErrConflict))
	}
	prev := proto.CloneOf(cur)
	if err := agent.ApplyMask(cur, in, req.Msg.GetUpdateMask().GetPaths()); err != nil {
		return nil, s.connectError(ctx, err)
	}
	keepWebhookSecrets(prev, cur)
	if err := agent.CheckAgent(cur, "agent"); err != nil {
		return nil, s.connectError(ctx, err)
	}
	a, err := s.store.UpdateAgent(ctx, tenant, cur, cur.GetVersion())
	if err != nil {
		return nil, s.connectError(ctx, err)
	}
	return connect.NewResponse(&agentv1.UpdateAgentResponse{Agent: redactAgent(a)}), nil
}

// DeleteAgent implements agentv1connect.AgentServiceHandler.
func (s *Server) DeleteAgent(ctx context.Context, req *connect.Request[agentv1.DeleteAgentRequest]) (*connect.Response[agentv1.DeleteAgentResponse], error) {
	tenant := principal.TenantOf(ctx)
	if err := s.store.DeleteAgent(ctx, tenant, req.Msg.GetName()); err != nil {
		return nil, s.connectError(ctx, err)
	}
	return connect.NewResponse(&agentv1.DeleteAgentResponse{}), nil
}
