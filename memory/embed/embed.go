// Package embed turns text into vectors for the memory service: a built-in offline "local" embedder, Gemini and
// OpenAI-compatible provider embedders, an LRU cache, and a Registry that hands the server the embedder of a
// namespace.
package embed

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash/fnv"
	"math"
	"strings"
	"sync"
	"sync/atomic"
	"unicode"

	lru "github.com/hashicorp/golang-lru/v2"
)

// Embedder turns texts into vectors of Dimension elements. Implementations are safe for concurrent use.
type Embedder interface {
	// Embed returns one vector per text, in order. On return, the result is non-nil if and only if err is nil.
	Embed(ctx context.Context, texts []string) ([][]float32, error)
	// Dimension is the length of every vector Embed returns.
	Dimension() int
}

// ErrUnknownProvider is returned by Registry.Embedder for a provider that is not configured.
var ErrUnknownProvider = errors.New("embedding provider not configured")

// Local is the built-in embedder: deterministic, offline and free. It hashes word unigrams and bigrams and
// character trigrams into Dimension buckets with a sign bit, then L2-normalises. Its quality is lexical: texts
// sharing words and spellings land close together; synonyms and paraphrases do not. Use it for development,
// tests and keyword-like recall; use a provider model for semantic search.
type Local struct {
	dim int
}

// NewLocal returns a local embedder producing vectors of dim elements (dim >= 1).
func NewLocal(dim int) *Local { return &Local{dim: dim} }

// Dimension implements Embedder.
func (l *Local) Dimension() int { return l.dim }

// Embed implements Embedder. It never fails except on a cancelled context.
func (l *Local) Embed(ctx context.Context, texts []string) ([][]float32, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	out := make([][]float32, len(texts))
	for i, t := range texts {
		out[i] = l.embed(t)
	}
	return out, nil
}

func (l *Local) embed(text string) []float32 {
	v := make([]float32, l.dim)
	add := func(feature string, w float32) {
		h := fnv.New64a()
		h.Write([]byte(feature))
		x := h.Sum64()
		sign := float32(1)
		if x>>63 == 1 {
			sign = -1
		}
		v[x%uint64(l.dim)] += sign * w
	}
	words := strings.FieldsFunc(strings.ToLower(text), func(r rune) bool { return !unicode.IsLetter(r) && !unicode.IsDigit(r) })
	for i, w := range words {
		add("w:"+w, 1)
		if i > 0 {
			add("b:"+words[i-1]+" "+w, 0.5)
		}
		r := []rune(" " + w + " ")
		for j := 0; j+3 <= len(r); j++ {
			add("c:"+string(r[j:j+3]), 0.25)
		}
	}
	var n float64
	for _, x := range v {
		n += float64(x) * float64(x)
	}
	if n == 0 {
		// Empty or symbol-only text: a fixed unit vector, so cosine stays defined.
		v[0] = 1
		return v
	}
	inv := float32(1 / math.Sqrt(n))
	for i := range v {
		v[i] *= inv
	}
	return v
}

// Cache is an LRU cache of vectors keyed by a model key and the SHA-256 of the text
// (github.com/hashicorp/golang-lru/v2), counting hits and misses. It is safe for concurrent use.
type Cache struct {
	lru *lru.Cache[[32]byte, []float32] // nil: caching is off

	hits, misses atomic.Uint64 // texts answered from the cache, and texts the embedder had to embed
}

// NewCache returns a cache holding at most max vectors (max <= 0 disables caching).
func NewCache(max int) *Cache {
	c := &Cache{}
	if max > 0 {
		c.lru, _ = lru.New[[32]byte, []float32](max) // fails only for a size <= 0
	}
	return c
}

func cacheKey(model, text string) [32]byte {
	h := sha256.New()
	h.Write([]byte(model))
	h.Write([]byte{0})
	h.Write([]byte(text))
	var k [32]byte
	h.Sum(k[:0])
	return k
}

func (c *Cache) get(k [32]byte) ([]float32, bool) {
	if c.lru == nil {
		return nil, false
	}
	return c.lru.Get(k)
}

func (c *Cache) put(k [32]byte, v []float32) {
	if c.lru != nil {
		c.lru.Add(k, v)
	}
}

// Stats returns how many texts were answered from the cache (hits) and how many went to an embedder (misses).
func (c *Cache) Stats() (hits, misses uint64) { return c.hits.Load(), c.misses.Load() }

// Len returns the number of cached vectors.
func (c *Cache) Len() int {
	if c.lru == nil {
		return 0
	}
	return c.lru.Len()
}

// Cached wraps e so texts already embedded under model are served from c. Cached vectors are shared: callers
// must not modify them.
func Cached(e Embedder, c *Cache, model string) Embedder { return &cached{e, c, model} }

type cached struct {
	Embedder
	c     *Cache
	model string
}

func (c *cached) Embed(ctx context.Context, texts []string) ([][]float32, error) {
	out := make([][]float32, len(texts))
	keys := make([][32]byte, len(texts))
	var missIdx []int
	var miss []string
	for i, t := range texts {
		keys[i] = cacheKey(c.model, t)
		if v, ok := c.c.get(keys[i]); ok {
			out[i] = v
			c.c.hits.Add(1)
			continue
		}
		c.c.misses.Add(1)
		missIdx = append(missIdx, i)
		miss = append(miss, t)
	}
	if len(miss) == 0 {
		return out, nil
	}
	vs, err := c.Embedder.Embed(ctx, miss)
	if err != nil {
		return nil, err
	}
	if len(vs) != len(miss) {
		return nil, fmt.Errorf("embed: provider returned %d vectors for %d texts", len(vs), len(miss))
	}
	for j, i := range missIdx {
		out[i] = vs[j]
		c.c.put(keys[i], vs[j])
	}
	return out, nil
}

// Factory builds a provider's embedder for a model and a wanted dimension.
type Factory func(model string, dim int) (Embedder, error)

// Registry maps provider names to factories, memoises the embedders it builds, and wraps each in a shared cache.
// "local" (and the empty provider) is always registered. It is safe for concurrent use.
type Registry struct {
	cache     *Cache
	factories map[string]Factory
	mu        sync.Mutex
	built     map[string]Embedder
}

// NewRegistry returns a registry with the local embedder and a cache of cacheSize vectors.
func NewRegistry(cacheSize int) *Registry {
	r := &Registry{cache: NewCache(cacheSize), factories: map[string]Factory{}, built: map[string]Embedder{}}
	r.Register("local", func(_ string, dim int) (Embedder, error) { return NewLocal(dim), nil })
	return r
}

// CacheStats returns the hits and misses of the registry's embedding cache (see [Cache.Stats]).
func (r *Registry) CacheStats() (hits, misses uint64) { return r.cache.Stats() }

// Register sets the factory of provider. Call it before the registry is used.
func (r *Registry) Register(provider string, f Factory) { r.factories[provider] = f }

// Embedder returns the embedder of provider ("" means "local") and model producing dim-element vectors.
// Errors wrap ErrUnknownProvider when the provider is not registered.
func (r *Registry) Embedder(provider, model string, dim int) (Embedder, error) {
	if provider == "" {
		provider = "local"
	}
	f, ok := r.factories[provider]
	if !ok {
		return nil, fmt.Errorf("%q: %w", provider, ErrUnknownProvider)
	}
	key := fmt.Sprintf("%s\x00%s\x00%d", provider, model, dim)
	r.mu.Lock()
	defer r.mu.Unlock()
	if e, ok := r.built[key]; ok {
		return e, nil
	}
	e, err := f(model, dim)
	if err != nil {
		return nil, fmt.Errorf("embedder %s/%s: %w", provider, model, err)
	}
	e = Cached(e, r.cache, key)
	r.built[key] = e
	return e, nil
}
