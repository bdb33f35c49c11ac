// Package model is the agent service's view of a language model: one streaming, tool-calling interface, with
// a deterministic simulated model (the default, offline) and adapters for Gemini and OpenAI-compatible endpoints.
package model

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"net/http"
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
	// MIMEType is the data's type, "image/..." or "audio/...". Gemini takes any; OpenAI-compatible endpoints take
	// any image type but only the audio types OpenAIAudioFormat knows.
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

// Config configures the provider adapters. Zero values are documented per field.
type Config struct {
	// GeminiAPIKey is the Gemini API key; empty makes Gemini calls fail with ErrNotConfigured.
	GeminiAPIKey string
	// GeminiBaseURL overrides the Gemini endpoint; empty uses Google's.
	GeminiBaseURL string
	// OpenAIAPIKey is the key of the OpenAI-compatible endpoint. Empty is allowed only with OpenAIBaseURL set
	// (local servers such as Ollama need none); empty with no base URL fails with ErrNotConfigured.
	OpenAIAPIKey string
	// OpenAIBaseURL overrides the endpoint, for example "http://localhost:11434/v1"; empty uses OpenAI's.
	OpenAIBaseURL string
	// HTTPClient is used for provider calls; nil uses a client without an overall timeout (calls are bounded by
	// their context).
	HTTPClient *http.Client
}

// String masks the API keys.
func (c Config) String() string {
	return fmt.Sprintf("{GeminiAPIKey:%s GeminiBaseURL:%q OpenAIAPIKey:%s OpenAIBaseURL:%q}",
		Mask(c.GeminiAPIKey), c.GeminiBaseURL, Mask(c.OpenAIAPIKey), c.OpenAIBaseURL)
}

// Mask returns "" for an empty secret and "***" otherwise.
func Mask(secret string) string {
	if secret == "" {
		return `""`
	}
	return "***"
}

func (c Config) httpClient() *http.Client {
	if c.HTTPClient != nil {
		return c.HTTPClient
	}
	return &http.Client{}
}

// errorSeq returns a sequence yielding only err.
func errorSeq(err error) iter.Seq2[Chunk, error] {
	return func(yield func(Chunk, error) bool) { yield(Chunk{}, err) }
}
