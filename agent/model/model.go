// Package model is the agent service's view of a language model: one streaming, tool-calling interface, and a
// Registry of providers by name. Each provider lives in a package of its own: the deterministic simulated model
// (agent/model/sim, the default, offline), Gemini (agent/model/gemini) and OpenAI-compatible endpoints
// (agent/model/openai).
package model

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"iter"
	"net/http"
	"slices"

	agentv1 "github.com/loom-dev/loom/gen/loom/agent/v1"
	"github.com/loom-dev/loom/internal/secret"
)

// ErrUnavailable is matched by errors of a provider that failed or could not be reached; the call may succeed
// if retried. Messages never contain API keys.
var ErrUnavailable = errors.New("model provider unavailable")

// ErrNotConfigured is matched by errors of a provider that has no API key configured.
var ErrNotConfigured = errors.New("model provider not configured")

// Role is the author of a Message.
type Role int

// Roles.
const (
	// RoleUser is the user's input (and any retrieved context given with it).
	RoleUser Role = iota + 1
	// RoleAssistant is the model's earlier output: text and tool calls.
	RoleAssistant
	// RoleTool is the result of one tool call; ToolCallID and ToolName say which.
	RoleTool
)

// Message is one turn of a conversation.
type Message struct {
	// Role is who wrote the message.
	Role Role
	// Text is the message's text; for RoleTool, the result as a JSON object.
	Text string
	// ToolCalls are the calls a RoleAssistant message asked for.
	ToolCalls []ToolCall
	// ToolCallID is the call a RoleTool message answers.
	ToolCallID string
	// ToolName is the tool a RoleTool message comes from.
	ToolName string
	// Attachments are images and audio sent inline with a RoleUser message, after its text.
	Attachments []Attachment
}

// Attachment is an image or audio clip sent inline to the model.
type Attachment struct {
	// MIMEType is the data's type, "image/..." or "audio/...". Which types a provider takes is its
	// Provider.CheckAttachment's answer.
	MIMEType string
	// Data is the raw bytes.
	Data []byte
}

// ToolCall is the model's request to call a tool.
type ToolCall struct {
	// ID identifies the call within the run; providers that do not assign ids get generated ones.
	ID string
	// Name is the tool's name.
	Name string
	// Args are the call's arguments, a JSON object.
	Args map[string]any
}

// Tool describes a tool the model may call.
type Tool struct {
	// Name is the tool's name.
	Name string
	// Description tells the model what the tool does.
	Description string
	// Parameters is the JSON Schema of the arguments object.
	Parameters map[string]any
}

// Request is one model call.
type Request struct {
	// Model is the provider's model name; empty uses the adapter's default.
	Model string
	// System holds the system instructions.
	System string
	// Messages is the conversation so far, oldest first.
	Messages []Message
	// Tools the model may call.
	Tools []Tool
	// Temperature, when non-nil, sets the sampling temperature.
	Temperature *float32
	// MaxOutputTokens caps output tokens; 0 uses the provider's default.
	MaxOutputTokens int32
}

// Usage counts the tokens of one model call.
type Usage struct {
	// InputTokens counts prompt tokens.
	InputTokens int64
	// OutputTokens counts generated tokens.
	OutputTokens int64
	// CachedInputTokens counts the input tokens the provider served from its cache (part of InputTokens).
	CachedInputTokens int64
}

// ChunkKind tells which field of a Chunk is set.
type ChunkKind int

// Chunk kinds.
const (
	// ChunkText carries a piece of generated text in Text.
	ChunkText ChunkKind = iota + 1
	// ChunkToolCall carries one complete tool call in ToolCall.
	ChunkToolCall
	// ChunkUsage carries the call's token usage in Usage; sent once, last.
	ChunkUsage
)

// Chunk is one streamed event of a model call.
type Chunk struct {
	// Kind says which of the other fields is set.
	Kind ChunkKind
	// Text is a text delta.
	Text string
	// ToolCall is a complete tool call.
	ToolCall *ToolCall
	// Usage is the call's token usage.
	Usage Usage
}

// Model is a language model. Stream yields the chunks of one call as they arrive; the sequence ends when the
// call is done, or after yielding a non-nil error (then the chunk is zero). Breaking out of the loop or
// cancelling ctx stops the call promptly. Implementations are safe for concurrent use unless documented.
type Model interface {
	Stream(ctx context.Context, req Request) iter.Seq2[Chunk, error]
}

// Endpoint is how this process reaches one provider. Its key masks itself when printed or logged, so an
// Endpoint (and a struct holding one) can be printed whole.
type Endpoint struct {
	// APIKey is the process's key for the provider; empty means none (a tenant's own key may still be used, and
	// some providers, such as local OpenAI-compatible servers, need none).
	APIKey secret.String
	// BaseURL overrides the provider's endpoint; empty uses the provider's own.
	BaseURL string
}

// Options are what one run's model is built from.
type Options struct {
	// Endpoint is the provider's endpoint, with the key the run calls with: its tenant's own key when the tenant
	// has one, else the process's.
	Endpoint
	// HTTPClient is used for provider calls; nil uses a client without an overall timeout (calls are bounded by
	// their context).
	HTTPClient *http.Client
	// Sim is the agent's sim script; only the sim reads it.
	Sim *agentv1.SimScript
	// Seed seeds the run's randomness (the sim's failure draws); it follows from the run's input and attempt.
	Seed uint64
}

// Client returns o.HTTPClient, or a client without an overall timeout when it is nil.
func (o Options) Client() *http.Client {
	if o.HTTPClient != nil {
		return o.HTTPClient
	}
	return &http.Client{}
}

// Provider describes a model provider: how to build the model of a run, and what the agent service needs to
// know about it. Each provider's package (agent/model/sim, agent/model/gemini, agent/model/openai) returns its
// Provider; the binary registers them by name in a Registry.
type Provider struct {
	// New returns the model of one run. It does not call the provider: a missing key or an unreachable endpoint
	// surfaces from Stream (ErrNotConfigured, ErrUnavailable). Required.
	New func(Options) Model
	// System is the provider's gen_ai.system value in traces (OpenTelemetry GenAI conventions); empty means the
	// name it is registered under.
	System string
	// Local marks a provider that runs in this process, such as the sim: no key is looked up, no circuit breaker
	// guards it, and its runs record the provider's name as their model.
	Local bool
	// CheckAttachment returns why an attachment of mimeType cannot be sent to the provider, or "" when it can;
	// nil accepts every type the contract allows.
	CheckAttachment func(mimeType string) string
}

// Registry maps provider names to providers and the process's endpoint of each. Provider names are those of the
// contract's Provider enum, lower case, without the prefix: PROVIDER_GEMINI is "gemini". Register every provider
// before the registry is used; after that it is read-only and safe for concurrent use.
type Registry struct {
	providers map[string]registered
}

type registered struct {
	p  Provider
	ep Endpoint
}

// NewRegistry returns an empty registry.
func NewRegistry() *Registry { return &Registry{providers: map[string]registered{}} }

// Register sets provider name to p, reached at ep. A later Register of the same name replaces it. It panics
// when p.New is nil (a programming error, found by any test that builds the registry).
func (r *Registry) Register(name string, p Provider, ep Endpoint) {
	if p.New == nil {
		panic(fmt.Sprintf("model: provider %q registered without New", name))
	}
	if p.System == "" {
		p.System = name
	}
	r.providers[name] = registered{p: p, ep: ep}
}

// Lookup returns the provider registered as name and its endpoint, and whether there is one.
func (r *Registry) Lookup(name string) (Provider, Endpoint, bool) {
	e, ok := r.providers[name]
	return e.p, e.ep, ok
}

// Names returns the registered names, sorted.
func (r *Registry) Names() []string {
	names := make([]string, 0, len(r.providers))
	for n := range r.providers {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

// Keys returns the process's API keys of every registered provider that has one, for a scrubber to remove from
// provider error text.
func (r *Registry) Keys() []secret.String {
	var keys []secret.String
	for _, n := range r.Names() {
		if k := r.providers[n].ep.APIKey; k.IsSet() {
			keys = append(keys, k)
		}
	}
	return keys
}

// SeedFrom hashes s into a seed, so a run's randomness follows from, for example, its input.
func SeedFrom(s string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(s))
	return h.Sum64()
}

// ErrorSeq returns a sequence yielding only err, for a Stream that fails before it starts.
func ErrorSeq(err error) iter.Seq2[Chunk, error] {
	return func(yield func(Chunk, error) bool) { yield(Chunk{}, err) }
}

// Truncate returns s cut to at most n bytes at a rune boundary, with "..." appended when it was cut. Providers
// use it to bound the error text they quote.
func Truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && (s[n]&0xC0) == 0x80 {
		n--
	}
	return s[:n] + "..."
}

// ArgsJSON returns tool call arguments as a JSON object, "{}" when they cannot be encoded.
func ArgsJSON(args map[string]any) string {
	b, err := json.Marshal(args)
	if err != nil {
		return "{}"
	}
	return string(b)
}
