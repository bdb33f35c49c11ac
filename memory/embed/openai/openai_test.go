package openai

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
)

const secret = "sk-test-SECRET-123"

// openAIServer speaks POST /v1/embeddings.
func openAIServer(t *testing.T, status int) *httptest.Server {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || r.URL.Path != "/v1/embeddings" {
			t.Errorf("unexpected request %s %s", r.Method, r.URL.Path)
			http.NotFound(w, r)
			return
		}
		if r.Header.Get("Authorization") != "Bearer "+secret {
			t.Errorf("authorization = %q", r.Header.Get("Authorization"))
		}
		if status != http.StatusOK {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(status)
			w.Write([]byte(`{"error":{"message":"Incorrect API key provided","type":"invalid_request_error"}}`))
			return
		}
		var body struct {
			Input      []string `json:"input"`
			Model      string   `json:"model"`
			Dimensions int      `json:"dimensions"`
		}
		if err := json.NewDecoder(r.Body).Decode(&body); err != nil {
			t.Errorf("decode: %v", err)
		}
		if body.Model != "text-embedding-3-small" || body.Dimensions != 3 {
			t.Errorf("model %q dimensions %d", body.Model, body.Dimensions)
		}
		type item struct {
			Object    string    `json:"object"`
			Index     int       `json:"index"`
			Embedding []float64 `json:"embedding"`
		}
		resp := struct {
			Object string `json:"object"`
			Data   []item `json:"data"`
			Model  string `json:"model"`
		}{Object: "list", Model: body.Model}
		// Answer in reverse order: the client must place vectors by index.
		for i := len(body.Input) - 1; i >= 0; i-- {
			resp.Data = append(resp.Data, item{"embedding", i, []float64{float64(len(body.Input[i])), 0, 1}})
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(resp)
	}))
	t.Cleanup(srv.Close)
	return srv
}

func TestOpenAI(t *testing.T) {
	srv := openAIServer(t, http.StatusOK)
	o, err := New(Config{APIKey: secret, BaseURL: srv.URL + "/v1/", SendDimensions: true}, "text-embedding-3-small", 3)
	if err != nil {
		t.Fatal(err)
	}
	vs, err := o.Embed(context.Background(), []string{"a", "bbb", "cc"})
	if err != nil {
		t.Fatalf("Embed: %v", err)
	}
	want := [][]float32{{1, 0, 1}, {3, 0, 1}, {2, 0, 1}}
	for i := range want {
		if !slices.Equal(vs[i], want[i]) {
			t.Errorf("vector %d = %v, want %v", i, vs[i], want[i])
		}
	}
}

func TestOpenAIErrorHidesKey(t *testing.T) {
	srv := openAIServer(t, http.StatusUnauthorized)
	o, _ := New(Config{APIKey: secret, BaseURL: srv.URL + "/v1/", SendDimensions: true}, "text-embedding-3-small", 3)
	_, err := o.Embed(context.Background(), []string{"a"})
	if err == nil || strings.Contains(err.Error(), secret) {
		t.Errorf("Embed error = %v; want an error without the key", err)
	}
}
