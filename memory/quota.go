package memory

import (
	"errors"
	"fmt"
)

// ErrQuotaExceeded: a write would take the tenant over one of its quotas. Errors wrapping it are *QuotaError.
var ErrQuotaExceeded = errors.New("quota exceeded")

// Quota bounds what one tenant may keep in a store. A field <= 0 means no limit on it. Records and Bytes count
// what the store holds, expired records included until they are removed (every store removes a namespace's
// expired records before refusing a write for want of room).
type Quota struct {
	// Namespaces bounds the tenant's namespaces.
	Namespaces int64
	// Records bounds the tenant's records, over all its namespaces.
	Records int64
	// Bytes bounds the tenant's record bytes, over all its namespaces, as the store measures a record (see each
	// store's WithQuota).
	Bytes int64
}

// DefaultQuota is what `loom serve` gives every tenant unless configured otherwise: generous for an agent's
// memory, finite so that one tenant cannot exhaust the server. 2 GiB of record bytes is, for example, about
// 650k vectors of 768 dimensions with a little text each.
var DefaultQuota = Quota{Namespaces: 1000, Records: 2_000_000, Bytes: 2 << 30}

// Usage is what a tenant holds.
type Usage struct {
	Namespaces, Records, Bytes int64
}

// QuotaError is an ErrQuotaExceeded naming the quota: "namespaces", "records" or "bytes".
type QuotaError struct {
	// Quota is the quota's name: "namespaces", "records" or "bytes".
	Quota string
	// Limit is the quota; Used is what the tenant holds; Want is what the write would add.
	Limit, Used, Want int64
}

// Error implements error.
func (e *QuotaError) Error() string {
	return fmt.Sprintf("memory quota exceeded: %s: the tenant holds %d, the write adds %d, the quota is %d", e.Quota, e.Used, e.Want, e.Limit)
}

// Is makes errors.Is(err, ErrQuotaExceeded) true for every QuotaError.
func (e *QuotaError) Is(target error) bool { return target == ErrQuotaExceeded }

// Check returns a *QuotaError for the first count (namespaces, records, bytes) that add increases and that
// used plus add takes over q, and nil otherwise. A write that shrinks a count (an overwrite by a smaller record) is never refused for it.
func (q Quota) Check(used, add Usage) error {
	over := func(name string, limit, used, add int64) error {
		if limit > 0 && add > 0 && used+add > limit {
			return &QuotaError{Quota: name, Limit: limit, Used: used, Want: add}
		}
		return nil
	}
	if err := over("namespaces", q.Namespaces, used.Namespaces, add.Namespaces); err != nil {
		return err
	}
	if err := over("records", q.Records, used.Records, add.Records); err != nil {
		return err
	}
	return over("bytes", q.Bytes, used.Bytes, add.Bytes)
}
