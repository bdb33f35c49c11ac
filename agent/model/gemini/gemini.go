// Package gemini is the Google Gemini model provider, through google.golang.org/genai (streamGenerateContent
// with function calling), with an overridable base URL.
package gemini

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"iter"

	"google.golang.org/genai"

	"github.com/loom-dev/loom/agent/model"
)

// Provider returns Gemini's registry entry: gen_ai.system "gcp.gemini", taking every attachment type the
// contract allows.
func Provider() model.Provider {
	return model.Provider{
		New:    func(o model.Options) model.Model { return New(o) },
		System: "gcp.gemini",
	}
}

// Model calls Gemini. It is safe for concurrent use.
type Model struct {
	o model.Options
}

// New returns a Gemini model calling with o's key, base URL and HTTP client. An empty key makes every call fail
// with model.ErrNotConfigured.
func New(o model.Options) *Model { return &Model{o: o} }

// defaultGeminiModel is used when a request names no model.
const defaultGeminiModel = "gemini-2.5-flash"

// Stream implements model.Model.
func (g *Model) Stream(ctx context.Context, req model.Request) iter.Seq2[model.Chunk, error] {
	if !g.o.APIKey.IsSet() {
		return model.ErrorSeq(fmt.Errorf("gemini: no API key configured: %w", model.ErrNotConfigured))
	}
	return func(yield func(model.Chunk, error) bool) {
		client, err := genai.NewClient(ctx, &genai.ClientConfig{
			APIKey:      g.o.APIKey.Reveal(),
			Backend:     genai.BackendGeminiAPI,
			HTTPClient:  g.o.Client(),
			HTTPOptions: genai.HTTPOptions{BaseURL: g.o.BaseURL},
		})
		if err != nil {
			yield(model.Chunk{}, fmt.Errorf("gemini: create client: %w", model.ErrUnavailable))
			return
		}
		name := req.Model
		if name == "" {
			name = defaultGeminiModel
		}
		var usage model.Usage
		n := 0
		for resp, err := range client.Models.GenerateContentStream(ctx, name, geminiContents(req.Messages), geminiConfig(req)) {
			if err != nil {
				yield(model.Chunk{}, geminiError(ctx, err))
				return
			}
			if md := resp.UsageMetadata; md != nil {
				usage = model.Usage{InputTokens: int64(md.PromptTokenCount),
					OutputTokens:      int64(md.CandidatesTokenCount) + int64(md.ThoughtsTokenCount),
					CachedInputTokens: int64(md.CachedContentTokenCount)}
			}
			if len(resp.Candidates) == 0 || resp.Candidates[0].Content == nil {
				continue
			}
			for _, p := range resp.Candidates[0].Content.Parts {
				switch {
				case p.FunctionCall != nil:
					id := p.FunctionCall.ID
					if id == "" {
						id = fmt.Sprintf("gemini_%d", n)
					}
					n++
					args := p.FunctionCall.Args
					if args == nil {
						args = map[string]any{}
					}
					if !yield(model.Chunk{Kind: model.ChunkToolCall, ToolCall: &model.ToolCall{ID: id, Name: p.FunctionCall.Name, Args: args}}, nil) {
						return
					}
				case p.Text != "" && !p.Thought:
					if !yield(model.Chunk{Kind: model.ChunkText, Text: p.Text}, nil) {
						return
					}
				}
			}
		}
		yield(model.Chunk{Kind: model.ChunkUsage, Usage: usage}, nil)
	}
}

func geminiConfig(req model.Request) *genai.GenerateContentConfig {
	cfg := &genai.GenerateContentConfig{Temperature: req.Temperature, MaxOutputTokens: req.MaxOutputTokens}
	if req.System != "" {
		cfg.SystemInstruction = &genai.Content{Parts: []*genai.Part{{Text: req.System}}}
	}
	if len(req.Tools) > 0 {
		var decls []*genai.FunctionDeclaration
		for _, t := range req.Tools {
			decls = append(decls, &genai.FunctionDeclaration{Name: t.Name, Description: t.Description,
				ParametersJsonSchema: t.Parameters})
		}
		cfg.Tools = []*genai.Tool{{FunctionDeclarations: decls}}
	}
	return cfg
}

// geminiContents maps messages to contents; consecutive tool results become one user content.
func geminiContents(msgs []model.Message) []*genai.Content {
	var out []*genai.Content
	for i, m := range msgs {
		switch m.Role {
		case model.RoleUser:
			c := &genai.Content{Role: genai.RoleUser, Parts: []*genai.Part{{Text: m.Text}}}
			for _, a := range m.Attachments {
				c.Parts = append(c.Parts, &genai.Part{InlineData: &genai.Blob{MIMEType: a.MIMEType, Data: a.Data}})
			}
			out = append(out, c)
		case model.RoleAssistant:
			c := &genai.Content{Role: genai.RoleModel}
			if m.Text != "" {
				c.Parts = append(c.Parts, &genai.Part{Text: m.Text})
			}
			for _, tc := range m.ToolCalls {
				c.Parts = append(c.Parts, &genai.Part{FunctionCall: &genai.FunctionCall{Name: tc.Name, Args: tc.Args}})
			}
			out = append(out, c)
		case model.RoleTool:
			var resp map[string]any
			if err := json.Unmarshal([]byte(m.Text), &resp); err != nil {
				resp = map[string]any{"result": m.Text}
			}
			part := &genai.Part{FunctionResponse: &genai.FunctionResponse{Name: m.ToolName, Response: resp}}
			if i > 0 && msgs[i-1].Role == model.RoleTool {
				last := out[len(out)-1]
				last.Parts = append(last.Parts, part)
				continue
			}
			out = append(out, &genai.Content{Role: genai.RoleUser, Parts: []*genai.Part{part}})
		}
	}
	return out
}

func geminiError(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return context.Cause(ctx)
	}
	var apiErr genai.APIError
	if errors.As(err, &apiErr) {
		return fmt.Errorf("gemini: HTTP %d %s: %s: %w", apiErr.Code, apiErr.Status, model.Truncate(apiErr.Message, 300), model.ErrUnavailable)
	}
	var apiErrP *genai.APIError
	if errors.As(err, &apiErrP) {
		return fmt.Errorf("gemini: HTTP %d %s: %s: %w", apiErrP.Code, apiErrP.Status, model.Truncate(apiErrP.Message, 300), model.ErrUnavailable)
	}
	// Transport errors from net/http carry the URL but never the key: genai sends the key in a header.
	return fmt.Errorf("gemini: %v: %w", model.Truncate(err.Error(), 300), model.ErrUnavailable)
}
