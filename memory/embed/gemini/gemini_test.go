package gemini

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"

	"strings"
	"sync/atomic"
	"testing"
)

const secret = "sk-test-SECRET-123"

// geminiServer speaks the documented batchEmbedContents wire format.
func geminiServer(t *testing.T, status int) (*httptest.Server, *atomic.Int64) {
	var requests atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		requests.Add(1)
		if r.Method != http.MethodPost || !strings.HasSuffix(r.URL.Path, "/models/text-embedding-004:batchEmbedContents") {
			t.Errorf("unexpected request %s %s", r.Method, r.URL.Path)
			http.NotFound(w, r)
			return
		}
		if r.Header.Get("x-goog-api-key") != secret {
			t.Errorf("api key header = %q", r.Header.Get("x-goog-api-key"))
		}
		if strings.Contains(r.URL.RawQuery, secret) {
			t.Errorf("api key in the URL")
		}
		if status != http.StatusOK {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(status)
			w.Write([]byte(`{"error":{"code":400,"message":"API key not valid","status":"INVALID_ARGUMENT"}}`))
			return
		}
		var body struct {
			Requests []struct {
				Model   string `json:"model"`
				Content struct {
					Parts []struct {
						Text string `json:"text"`
					} `json:"parts"`
				} `json:"content"`
				OutputDimensionality int `json:"outputDimensionality"`
			} `json:"requests"`
		}
		if err := json.NewDecoder(r.Body).Decode(&body); err != nil {
			t.Errorf("decode: %v", err)
		}
		type emb struct {
			Values []float32 `json:"values"`
		}
		var resp struct {
			Embeddings []emb `json:"embeddings"`
		}
		for _, req := range body.Requests {
			if req.Model != "models/text-embedding-004" {
				t.Errorf("model = %q", req.Model)
			}
			v := make([]float32, req.OutputDimensionality)
			v[len(req.Content.Parts[0].Text)%len(v)] = 1
			resp.Embeddings = append(resp.Embeddings, emb{v})
		}
		json.NewEncoder(w).Encode(resp)
	}))
	t.Cleanup(srv.Close)
	return srv, &requests
}

func TestGemini(t *testing.T) {
	srv, requests := geminiServer(t, http.StatusOK)
	g, err := New(context.Background(), Config{APIKey: secret, BaseURL: srv.URL}, "text-embedding-004", 4)
	if err != nil {
		t.Fatal(err)
	}
	texts := make([]string, 150) // two batches
	for i := range texts {
		texts[i] = strings.Repeat("x", i)
	}
	vs, err := g.Embed(context.Background(), texts)
	if err != nil {
		t.Fatalf("Embed: %v", err)
	}
	if len(vs) != 150 || requests.Load() != 2 {
		t.Fatalf("%d vectors in %d requests, want 150 in 2", len(vs), requests.Load())
	}
	for i, v := range vs {
		if len(v) != 4 || v[i%4] != 1 {
			t.Fatalf("vector %d = %v, out of order", i, v)
		}
	}
}

func TestGeminiErrorHidesKey(t *testing.T) {
	srv, _ := geminiServer(t, http.StatusBadRequest)
	g, err := New(context.Background(), Config{APIKey: secret, BaseURL: srv.URL}, "text-embedding-004", 4)
	if err != nil {
		t.Fatal(err)
	}
	_, err = g.Embed(context.Background(), []string{"x"})
	if err == nil || strings.Contains(err.Error(), secret) {
		t.Errorf("Embed error = %v; want an error without the key", err)
	}
	if _, err := New(context.Background(), Config{}, "m", 4); err == nil {
		t.Error("NewGemini without a key succeeded")
	}
}
