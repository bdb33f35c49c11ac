package embed

import (
	"context"
	"errors"
	"math"
	"slices"
	"sync/atomic"
	"testing"
)

func cos(a, b []float32) float64 {
	var d, na, nb float64
	for i := range a {
		d += float64(a[i]) * float64(b[i])
		na += float64(a[i]) * float64(a[i])
		nb += float64(b[i]) * float64(b[i])
	}
	return d / math.Sqrt(na*nb)
}

func TestLocal(t *testing.T) {
	e := NewLocal(128)
	vs, err := e.Embed(context.Background(), []string{"the cat sat on the mat", "The cat sat on a mat!", "quarterly revenue growth", "", "!!!"})
	if err != nil {
		t.Fatal(err)
	}
	for i, v := range vs {
		if len(v) != 128 {
			t.Fatalf("vector %d has dimension %d", i, len(v))
		}
		var n float64
		for _, x := range v {
			n += float64(x) * float64(x)
		}
		if math.Abs(n-1) > 1e-5 {
			t.Errorf("vector %d has norm %v, want 1", i, math.Sqrt(n))
		}
	}
	if near, far := cos(vs[0], vs[1]), cos(vs[0], vs[2]); near < 0.7 || far > 0.3 {
		t.Errorf("cos(similar) = %.2f, cos(unrelated) = %.2f; want > 0.7 and < 0.3", near, far)
	}
	again, _ := NewLocal(128).Embed(context.Background(), []string{"the cat sat on the mat"})
	if !slices.Equal(again[0], vs[0]) {
		t.Error("local embedder is not deterministic")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := e.Embed(ctx, []string{"x"}); !errors.Is(err, context.Canceled) {
		t.Errorf("Embed(cancelled) = %v", err)
	}
}

type countingEmbedder struct {
	Embedder
	calls, texts atomic.Int64
}

func (c *countingEmbedder) Embed(ctx context.Context, texts []string) ([][]float32, error) {
	c.calls.Add(1)
	c.texts.Add(int64(len(texts)))
	return c.Embedder.Embed(ctx, texts)
}

func TestCache(t *testing.T) {
	inner := &countingEmbedder{Embedder: NewLocal(8)}
	c := NewCache(2)
	e := Cached(inner, c, "m")
	ctx := context.Background()
	first, _ := e.Embed(ctx, []string{"a", "b"})
	second, _ := e.Embed(ctx, []string{"b", "a"})
	if inner.texts.Load() != 2 || !slices.Equal(first[0], second[1]) {
		t.Errorf("cache miss on repeat: provider saw %d texts", inner.texts.Load())
	}
	e.Embed(ctx, []string{"c"}) // evicts "b" (least recently used after the second call touched b then a)
	if c.Len() != 2 {
		t.Errorf("cache holds %d, want 2", c.Len())
	}
	e.Embed(ctx, []string{"a"})
	e.Embed(ctx, []string{"b"})
	if got := inner.texts.Load(); got != 4 {
		t.Errorf("provider saw %d texts, want 4 (a, b, c, then b again after eviction)", got)
	}
	// Another model does not share entries.
	Cached(inner, c, "other").Embed(ctx, []string{"a"})
	if got := inner.texts.Load(); got != 5 {
		t.Errorf("provider saw %d texts, want 5", got)
	}
}

func TestRegistry(t *testing.T) {
	r := NewRegistry(10)
	e, err := r.Embedder("", "", 16)
	if err != nil || e.Dimension() != 16 {
		t.Fatalf("local = %v, %v", e, err)
	}
	if e2, _ := r.Embedder("local", "", 16); e2 != e {
		t.Error("registry does not memoise embedders")
	}
	if _, err := r.Embedder("gemini", "x", 16); !errors.Is(err, ErrUnknownProvider) {
		t.Errorf("unregistered provider: %v", err)
	}
}
