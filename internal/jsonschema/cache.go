package jsonschema

import (
	"encoding/json"
	"sync"
)

// Cache memoises compiled schemas, and the errors of schemas that do not compile, by their JSON encoding:
// compiling checks a schema against its metaschema, which costs about 20 times a validation. It holds at most
// max entries and starts over when full. It is safe for concurrent use.
type Cache struct {
	limits Limits
	max    int

	mu sync.Mutex
	m  map[string]compiled
}

type compiled struct {
	s   *Schema
	err error
}

// NewCache returns a cache compiling within limits and holding at most max schemas (max <= 0 means 1024).
func NewCache(limits Limits, max int) *Cache {
	if max <= 0 {
		max = 1024
	}
	return &Cache{limits: limits, max: max, m: map[string]compiled{}}
}

// Compile is Compile(doc, limits) for the cache's limits, answered from the cache when doc was compiled before.
func (c *Cache) Compile(doc any) (*Schema, error) {
	b, err := json.Marshal(doc) // map keys sorted: one key per schema
	if err != nil || len(b) > c.limits.withDefaults().MaxSchemaBytes {
		return Compile(doc, c.limits) // reports what is wrong, uncached
	}
	key := string(b)
	c.mu.Lock()
	e, ok := c.m[key]
	c.mu.Unlock()
	if ok {
		return e.s, e.err
	}
	s, err := Compile(doc, c.limits)
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.m) >= c.max {
		clear(c.m)
	}
	c.m[key] = compiled{s, err}
	return s, err
}
