// Package openai is the OpenAI-compatible model provider: a chat completions endpoint (OpenAI, Ollama, vLLM,
// llama.cpp) called through github.com/openai/openai-go/v3, streaming with tool calls.
package openai

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"iter"
	"sort"
	"strings"

	openai "github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
	"github.com/openai/openai-go/v3/shared"

	"github.com/loom-dev/loom/agent/model"
)

// Provider returns the OpenAI-compatible registry entry: gen_ai.system "openai", taking images of any type and
// the audio types AudioFormat knows.
func Provider() model.Provider {
	return model.Provider{
		New:             func(o model.Options) model.Model { return New(o) },
		System:          "openai",
		CheckAttachment: checkAttachment,
	}
}

// checkAttachment is Provider's CheckAttachment.
func checkAttachment(mimeType string) string {
	if _, ok := AudioFormat(mimeType); ok || strings.HasPrefix(mimeType, "image/") {
		return ""
	}
	return fmt.Sprintf("%q is not supported by OpenAI-compatible models; send audio as audio/wav or audio/mpeg", mimeType)
}

// Model calls an OpenAI-compatible endpoint. It is safe for concurrent use.
type Model struct {
	o model.Options
}

// New returns a model calling with o's key, base URL and HTTP client. The key may be empty when the base URL
// points at a local server that needs none; both empty make every call fail with model.ErrNotConfigured.
func New(o model.Options) *Model { return &Model{o: o} }

// defaultOpenAIModel is used when a request names no model.
const defaultOpenAIModel = "gpt-4o-mini"

// Stream implements model.Model.
func (o *Model) Stream(ctx context.Context, req model.Request) iter.Seq2[model.Chunk, error] {
	if !o.o.APIKey.IsSet() && o.o.BaseURL == "" {
		return model.ErrorSeq(fmt.Errorf("openai: no API key or base URL configured: %w", model.ErrNotConfigured))
	}
	return func(yield func(model.Chunk, error) bool) {
		opts := []option.RequestOption{
			option.WithHTTPClient(o.o.Client()),
			option.WithMaxRetries(0), // the run loop and its callers decide about retries
			option.WithAPIKey(o.o.APIKey.Reveal()),
		}
		if o.o.BaseURL != "" {
			opts = append(opts, option.WithBaseURL(o.o.BaseURL))
		}
		params, err := openaiParams(req)
		if err != nil {
			yield(model.Chunk{}, err)
			return
		}
		client := openai.NewClient(opts...)
		stream := client.Chat.Completions.NewStreaming(ctx, params)
		defer stream.Close()

		type pending struct {
			id, name, args string
		}
		calls := map[int64]*pending{}
		var usage model.Usage
		for stream.Next() {
			chunk := stream.Current()
			if chunk.JSON.Usage.Valid() && (chunk.Usage.PromptTokens != 0 || chunk.Usage.CompletionTokens != 0) {
				usage = model.Usage{InputTokens: chunk.Usage.PromptTokens, OutputTokens: chunk.Usage.CompletionTokens,
					CachedInputTokens: chunk.Usage.PromptTokensDetails.CachedTokens}
			}
			for _, choice := range chunk.Choices {
				if choice.Delta.Content != "" {
					if !yield(model.Chunk{Kind: model.ChunkText, Text: choice.Delta.Content}, nil) {
						return
					}
				}
				for _, tc := range choice.Delta.ToolCalls {
					p := calls[tc.Index]
					if p == nil {
						p = &pending{}
						calls[tc.Index] = p
					}
					if tc.ID != "" {
						p.id = tc.ID
					}
					p.name += tc.Function.Name
					p.args += tc.Function.Arguments
				}
			}
		}
		if err := stream.Err(); err != nil {
			yield(model.Chunk{}, openaiError(ctx, err))
			return
		}
		idx := make([]int64, 0, len(calls))
		for i := range calls {
			idx = append(idx, i)
		}
		sort.Slice(idx, func(a, b int) bool { return idx[a] < idx[b] })
		for _, i := range idx {
			p := calls[i]
			args := map[string]any{}
			if p.args != "" {
				if err := json.Unmarshal([]byte(p.args), &args); err != nil {
					// Hand the tool layer something it rejects with a clear message instead of failing the run.
					args = map[string]any{"_malformed_arguments": model.Truncate(p.args, 200)}
				}
			}
			id := p.id
			if id == "" {
				id = fmt.Sprintf("openai_%d", i)
			}
			if !yield(model.Chunk{Kind: model.ChunkToolCall, ToolCall: &model.ToolCall{ID: id, Name: p.name, Args: args}}, nil) {
				return
			}
		}
		yield(model.Chunk{Kind: model.ChunkUsage, Usage: usage}, nil)
	}
}

// AudioFormat returns the input_audio format of an audio MIME type, and whether OpenAI-compatible endpoints take
// it: "audio/wav" is "wav" and "audio/mpeg" is "mp3".
func AudioFormat(mimeType string) (string, bool) {
	switch mimeType {
	case "audio/wav":
		return "wav", true
	case "audio/mpeg":
		return "mp3", true
	}
	return "", false
}

// openaiParams maps req to a chat completions request. It fails on an attachment the API cannot take.
func openaiParams(req model.Request) (openai.ChatCompletionNewParams, error) {
	name := req.Model
	if name == "" {
		name = defaultOpenAIModel
	}
	p := openai.ChatCompletionNewParams{
		Model:         shared.ChatModel(name),
		StreamOptions: openai.ChatCompletionStreamOptionsParam{IncludeUsage: openai.Bool(true)},
	}
	if req.Temperature != nil {
		p.Temperature = openai.Float(float64(*req.Temperature))
	}
	if req.MaxOutputTokens > 0 {
		p.MaxCompletionTokens = openai.Int(int64(req.MaxOutputTokens))
	}
	if req.System != "" {
		p.Messages = append(p.Messages, openai.SystemMessage(req.System))
	}
	for _, m := range req.Messages {
		switch m.Role {
		case model.RoleUser:
			if len(m.Attachments) == 0 {
				p.Messages = append(p.Messages, openai.UserMessage(m.Text))
				continue
			}
			parts, err := openaiUserParts(m)
			if err != nil {
				return openai.ChatCompletionNewParams{}, err
			}
			p.Messages = append(p.Messages, openai.UserMessage(parts))
		case model.RoleTool:
			p.Messages = append(p.Messages, openai.ToolMessage(m.Text, m.ToolCallID))
		case model.RoleAssistant:
			a := openai.ChatCompletionAssistantMessageParam{}
			if m.Text != "" {
				a.Content.OfString = openai.String(m.Text)
			}
			for _, tc := range m.ToolCalls {
				a.ToolCalls = append(a.ToolCalls, openai.ChatCompletionMessageToolCallUnionParam{
					OfFunction: &openai.ChatCompletionMessageFunctionToolCallParam{
						ID:       tc.ID,
						Function: openai.ChatCompletionMessageFunctionToolCallFunctionParam{Name: tc.Name, Arguments: model.ArgsJSON(tc.Args)},
					},
				})
			}
			p.Messages = append(p.Messages, openai.ChatCompletionMessageParamUnion{OfAssistant: &a})
		}
	}
	for _, t := range req.Tools {
		p.Tools = append(p.Tools, openai.ChatCompletionFunctionTool(shared.FunctionDefinitionParam{
			Name:        t.Name,
			Description: openai.String(t.Description),
			Parameters:  shared.FunctionParameters(t.Parameters),
		}))
	}
	return p, nil
}

// openaiUserParts maps a user message with attachments to content parts: the text, then images as data URLs
// and audio as input_audio.
func openaiUserParts(m model.Message) ([]openai.ChatCompletionContentPartUnionParam, error) {
	parts := []openai.ChatCompletionContentPartUnionParam{openai.TextContentPart(m.Text)}
	for i, a := range m.Attachments {
		data := base64.StdEncoding.EncodeToString(a.Data)
		if strings.HasPrefix(a.MIMEType, "image/") {
			parts = append(parts, openai.ImageContentPart(openai.ChatCompletionContentPartImageImageURLParam{
				URL: "data:" + a.MIMEType + ";base64," + data}))
			continue
		}
		format, ok := AudioFormat(a.MIMEType)
		if !ok {
			return nil, fmt.Errorf("openai: attachment %d: unsupported type %q", i, a.MIMEType)
		}
		parts = append(parts, openai.InputAudioContentPart(openai.ChatCompletionContentPartInputAudioInputAudioParam{
			Data: data, Format: format}))
	}
	return parts, nil
}

func openaiError(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return context.Cause(ctx)
	}
	var apiErr *openai.Error
	if errors.As(err, &apiErr) {
		msg := apiErr.Message
		if msg == "" {
			msg = "request failed"
		}
		return fmt.Errorf("openai: HTTP %d: %s: %w", apiErr.StatusCode, model.Truncate(msg, 300), model.ErrUnavailable)
	}
	return fmt.Errorf("openai: %s: %w", model.Truncate(err.Error(), 300), model.ErrUnavailable)
}
