// Package gemini is the Gemini API embedder for the memory service (batchEmbedContents), with an overridable
// base URL.
package gemini

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"google.golang.org/genai"

	"github.com/loom-dev/loom/memory/embed"
)

// Config configures the Gemini embedder. The API key comes from the server's configuration; it is sent
// only in the request header and never appears in logs or errors.
type Config struct {
	// APIKey is required.
	APIKey string
	// BaseURL overrides https://generativelanguage.googleapis.com/ (tests, proxies).
	BaseURL string
	// HTTPClient overrides the default client.
	HTTPClient *http.Client
}

// Embedder embeds with the Gemini API (models/{model}:batchEmbedContents), asking for outputDimensionality equal to
// the namespace's dimension.
type Embedder struct {
	client *genai.Client
	model  string
	dim    int
}

// geminiBatch is the most texts sent in one batchEmbedContents request.
const geminiBatch = 100

// New returns an embedder for model (for example "text-embedding-004") producing dim-element vectors.
func New(ctx context.Context, cfg Config, model string, dim int) (*Embedder, error) {
	if cfg.APIKey == "" {
		return nil, errors.New("gemini: no API key configured")
	}
	if model == "" {
		model = "text-embedding-004"
	}
	c, err := genai.NewClient(ctx, &genai.ClientConfig{
		APIKey:      cfg.APIKey,
		Backend:     genai.BackendGeminiAPI,
		HTTPClient:  cfg.HTTPClient,
		HTTPOptions: genai.HTTPOptions{BaseURL: cfg.BaseURL},
	})
	if err != nil {
		return nil, fmt.Errorf("gemini: new client: %s", redact(err.Error(), cfg.APIKey))
	}
	return &Embedder{client: c, model: model, dim: dim}, nil
}

// Factory returns a embed.Factory building Gemini embedders from cfg, for Registry.Register("gemini", ...).
func Factory(cfg Config) embed.Factory {
	return func(model string, dim int) (embed.Embedder, error) {
		return New(context.Background(), cfg, model, dim)
	}
}

// Dimension implements embed.Embedder.
func (g *Embedder) Dimension() int { return g.dim }

// Embed implements embed.Embedder.
func (g *Embedder) Embed(ctx context.Context, texts []string) ([][]float32, error) {
	out := make([][]float32, 0, len(texts))
	dim := int32(g.dim)
	for start := 0; start < len(texts); start += geminiBatch {
		chunk := texts[start:min(start+geminiBatch, len(texts))]
		contents := make([]*genai.Content, len(chunk))
		for i, t := range chunk {
			contents[i] = genai.NewContentFromText(t, genai.RoleUser)
		}
		resp, err := g.client.Models.EmbedContent(ctx, g.model, contents, &genai.EmbedContentConfig{OutputDimensionality: &dim})
		if err != nil {
			return nil, fmt.Errorf("gemini embed: %s", redact(err.Error(), g.client.ClientConfig().APIKey))
		}
		if len(resp.Embeddings) != len(chunk) {
			return nil, fmt.Errorf("gemini embed: %d embeddings for %d texts", len(resp.Embeddings), len(chunk))
		}
		for _, e := range resp.Embeddings {
			if len(e.Values) != g.dim {
				return nil, fmt.Errorf("gemini embed: got dimension %d, want %d", len(e.Values), g.dim)
			}
			out = append(out, e.Values)
		}
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
