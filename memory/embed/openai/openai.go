// Package openai is the OpenAI-compatible embedder for the memory service (POST {base}/embeddings): OpenAI,
// Ollama, vLLM, llama.cpp and others, with an overridable base URL.
package openai

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"

	oai "github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"

	"github.com/loom-dev/loom/memory/embed"
)

// Config configures the OpenAI-compatible embedder (OpenAI, Ollama, vLLM, llama.cpp...). The API key is sent
// only in the Authorization header and never appears in logs or errors.
type Config struct {
	// APIKey may be empty for local servers that need none.
	APIKey string
	// BaseURL overrides https://api.openai.com/v1/ (for example http://localhost:11434/v1/ for Ollama).
	BaseURL string
	// HTTPClient overrides the default client.
	HTTPClient *http.Client
	// SendDimensions asks the server for dim-element vectors (text-embedding-3 models); leave false for servers
	// that reject the parameter.
	SendDimensions bool
}

// Embedder embeds with POST {base}/embeddings.
type Embedder struct {
	client oai.Client
	cfg    Config
	model  string
	dim    int
}

const openAIBatch = 256

// New returns an OpenAI-compatible embedder for model producing dim-element vectors.
func New(cfg Config, model string, dim int) (*Embedder, error) {
	if model == "" {
		return nil, errors.New("openai: a model is required")
	}
	opts := []option.RequestOption{option.WithAPIKey(cfg.APIKey), option.WithMaxRetries(2)}
	if cfg.BaseURL != "" {
		opts = append(opts, option.WithBaseURL(cfg.BaseURL))
	}
	if cfg.HTTPClient != nil {
		opts = append(opts, option.WithHTTPClient(cfg.HTTPClient))
	}
	return &Embedder{client: oai.NewClient(opts...), cfg: cfg, model: model, dim: dim}, nil
}

// Factory returns an embed.Factory building OpenAI-compatible embedders from cfg.
func Factory(cfg Config) embed.Factory {
	return func(model string, dim int) (embed.Embedder, error) { return New(cfg, model, dim) }
}

// Dimension implements embed.Embedder.
func (o *Embedder) Dimension() int { return o.dim }

// Embed implements embed.Embedder.
func (o *Embedder) Embed(ctx context.Context, texts []string) ([][]float32, error) {
	out := make([][]float32, 0, len(texts))
	for start := 0; start < len(texts); start += openAIBatch {
		chunk := texts[start:min(start+openAIBatch, len(texts))]
		p := oai.EmbeddingNewParams{
			Input:          oai.EmbeddingNewParamsInputUnion{OfArrayOfStrings: chunk},
			Model:          o.model,
			EncodingFormat: oai.EmbeddingNewParamsEncodingFormatFloat,
		}
		if o.cfg.SendDimensions {
			p.Dimensions = oai.Int(int64(o.dim))
		}
		resp, err := o.client.Embeddings.New(ctx, p)
		if err != nil {
			return nil, fmt.Errorf("openai embed: %s", redact(err.Error(), o.cfg.APIKey))
		}
		if len(resp.Data) != len(chunk) {
			return nil, fmt.Errorf("openai embed: %d embeddings for %d texts", len(resp.Data), len(chunk))
		}
		vs := make([][]float32, len(chunk))
		for _, d := range resp.Data {
			if d.Index < 0 || int(d.Index) >= len(chunk) || vs[d.Index] != nil {
				return nil, fmt.Errorf("openai embed: bad index %d", d.Index)
			}
			if len(d.Embedding) != o.dim {
				return nil, fmt.Errorf("openai embed: got dimension %d, want %d", len(d.Embedding), o.dim)
			}
			v := make([]float32, len(d.Embedding))
			for i, x := range d.Embedding {
				v[i] = float32(x)
			}
			vs[d.Index] = v
		}
		out = append(out, vs...)
	}
	return out, nil
}

// redact removes secret from s.
func redact(s, secret string) string {
	if secret == "" {
		return s
	}
	return strings.ReplaceAll(s, secret, "[redacted]")
}
