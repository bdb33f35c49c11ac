package model

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"iter"

	"google.golang.org/genai"
)

// Gemini calls Google Gemini through google.golang.org/genai (streamGenerateContent with function calling).
// It is safe for concurrent use.
type Gemini struct {
	cfg Config
}

// NewGemini returns a Gemini adapter using cfg's Gemini key, base URL and HTTP client.
func NewGemini(cfg Config) *Gemini { return &Gemini{cfg: cfg} }

// defaultGeminiModel is used when a request names no model.
const defaultGeminiModel = "gemini-2.5-flash"

// Stream implements Model.
func (g *Gemini) Stream(ctx context.Context, req Request) iter.Seq2[Chunk, error] {
	if g.cfg.GeminiAPIKey == "" {
		return errorSeq(fmt.Errorf("gemini: no API key configured: %w", ErrNotConfigured))
	}
	return func(yield func(Chunk, error) bool) {
		client, err := genai.NewClient(ctx, &genai.ClientConfig{
			APIKey:      g.cfg.GeminiAPIKey,
			Backend:     genai.BackendGeminiAPI,
			HTTPClient:  g.cfg.httpClient(),
			HTTPOptions: genai.HTTPOptions{BaseURL: g.cfg.GeminiBaseURL},
		})
		if err != nil {
			yield(Chunk{}, fmt.Errorf("gemini: create client: %w", ErrUnavailable))
			return
		}
		name := req.Model
		if name == "" {
			name = defaultGeminiModel
		}
		var usage Usage
		n := 0
		for resp, err := range client.Models.GenerateContentStream(ctx, name, geminiContents(req.Messages), geminiConfig(req)) {
			if err != nil {
				yield(Chunk{}, geminiError(ctx, err))
				return
			}
			if md := resp.UsageMetadata; md != nil {
				usage = Usage{InputTokens: int64(md.PromptTokenCount),
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
					if !yield(Chunk{Kind: ChunkToolCall, ToolCall: &ToolCall{ID: id, Name: p.FunctionCall.Name, Args: args}}, nil) {
						return
					}
				case p.Text != "" && !p.Thought:
					if !yield(Chunk{Kind: ChunkText, Text: p.Text}, nil) {
						return
					}
				}
			}
		}
		yield(Chunk{Kind: ChunkUsage, Usage: usage}, nil)
	}
}

func geminiConfig(req Request) *genai.GenerateContentConfig {
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
func geminiContents(msgs []Message) []*genai.Content {
	var out []*genai.Content
	for i, m := range msgs {
		switch m.Role {
		case RoleUser:
			c := &genai.Content{Role: genai.RoleUser, Parts: []*genai.Part{{Text: m.Text}}}
			for _, a := range m.Attachments {
				c.Parts = append(c.Parts, &genai.Part{InlineData: &genai.Blob{MIMEType: a.MIMEType, Data: a.Data}})
			}
			out = append(out, c)
		case RoleAssistant:
			c := &genai.Content{Role: genai.RoleModel}
			if m.Text != "" {
				c.Parts = append(c.Parts, &genai.Part{Text: m.Text})
			}
			for _, tc := range m.ToolCalls {
				c.Parts = append(c.Parts, &genai.Part{FunctionCall: &genai.FunctionCall{Name: tc.Name, Args: tc.Args}})
			}
			out = append(out, c)
		case RoleTool:
			var resp map[string]any
			if err := json.Unmarshal([]byte(m.Text), &resp); err != nil {
				resp = map[string]any{"result": m.Text}
			}
			part := &genai.Part{FunctionResponse: &genai.FunctionResponse{Name: m.ToolName, Response: resp}}
			if i > 0 && msgs[i-1].Role == RoleTool {
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
		return fmt.Errorf("gemini: HTTP %d %s: %s: %w", apiErr.Code, apiErr.Status, truncate(apiErr.Message, 300), ErrUnavailable)
	}
	var apiErrP *genai.APIError
	if errors.As(err, &apiErrP) {
		return fmt.Errorf("gemini: HTTP %d %s: %s: %w", apiErrP.Code, apiErrP.Status, truncate(apiErrP.Message, 300), ErrUnavailable)
	}
	// Transport errors from net/http carry the URL but never the key: genai sends the key in a header.
	return fmt.Errorf("gemini: %v: %w", truncate(err.Error(), 300), ErrUnavailable)
}
