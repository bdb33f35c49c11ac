package memory

import (
	"context"
	"fmt"
	"math"
	"time"

	"github.com/loom-dev/loom/internal/fault"
)

// Sentinel errors returned (wrapped with what was being attempted) by every Store: the kinds every service
// shares (internal/fault), under the names memory's callers use. The transport (memory/memoryrpc) maps them to
// connect codes through internal/rpcerr.
var (
	// ErrNotFound: the namespace does not exist in the tenant.
	ErrNotFound = fault.ErrNotFound
	// ErrAlreadyExists: a namespace of that name already exists in the tenant.
	ErrAlreadyExists = fault.ErrAlreadyExists
	// ErrInvalidArgument: the caller's input is wrong (dimension mismatch, zero vector under cosine, bad
	// filter...). Errors wrapping it carry a message naming the offending field.
	ErrInvalidArgument = fault.ErrInvalidArgument
	// ErrFailedPrecondition: the request is well formed but the system is not in a state to run it (for example
	// an embedder that is not configured on this server).
	ErrFailedPrecondition = fault.ErrFailedPrecondition
)

// FieldError is an ErrInvalidArgument naming the offending request field, for example
// "records[3].vector: dimension 5, namespace wants 4".
type FieldError = fault.FieldError

// Invalidf returns a *FieldError for field.
func Invalidf(field, format string, args ...any) error {
	return &FieldError{Field: field, Reason: fmt.Sprintf(format, args...)}
}

// Metric is the similarity a namespace ranks by. Scores are always "higher is closer".
type Metric int

// The metrics, numbered as the contract's enum Metric (the stores persist the numbers). The zero value is not
// valid; the server fills MetricCosine as the default.
const (
	MetricCosine     Metric = 1
	MetricDotProduct Metric = 2
	MetricL2         Metric = 3
)

// IndexKind selects how a namespace is searched. Zero means the store's default.
type IndexKind int

// The index kinds, numbered as the contract's enum IndexKind (the stores persist the numbers).
const (
	IndexDefault IndexKind = 0
	IndexExact   IndexKind = 1
	IndexHNSW    IndexKind = 2
)

// Limits of the contract that the domain relies on.
const (
	// MaxDimension is the largest vector dimension of a namespace.
	MaxDimension = 4096
	// MaxBatch is the most records one Upsert takes over the RPC (the contract's max_items).
	MaxBatch = 1000
)

// Namespace is a named collection of records of one vector dimension, within a tenant.
type Namespace struct {
	Name      string
	Dimension int
	Metric    Metric
	// EmbedderProvider and EmbedderModel name the embedder for text; an empty provider means "local".
	EmbedderProvider string
	EmbedderModel    string
	// Index parameters; zero values take the store's defaults.
	IndexKind      IndexKind
	M              int
	EfConstruction int
	EfSearch       int
	Description    string
	// CreateTime is set by the store on CreateNamespace.
	CreateTime time.Time
	// Stats is filled by GetNamespace only.
	Stats NamespaceStats
}

// NamespaceStats describes a namespace's live contents.
type NamespaceStats struct {
	// RecordCount counts live (unexpired) records.
	RecordCount int64
	// SizeBytes approximates the bytes used by vectors, text and metadata.
	SizeBytes int64
}

// Record is one memory. A record's metadata (and the lists in it) must not be mutated after it is handed to a
// Store.
type Record struct {
	ID       string
	Text     string
	Vector   []float32
	Metadata map[string]Value
	// ExpireTime is when the record stops being visible; zero means never.
	ExpireTime time.Time
	// UpdateTime is when the record was written; set by the caller of Upsert (the server), stored as given.
	UpdateTime time.Time
}

// Expired reports whether r is expired at now.
func (r *Record) Expired(now time.Time) bool {
	return !r.ExpireTime.IsZero() && !now.Before(r.ExpireTime)
}

// Query is a search.
type Query struct {
	// Vector is the query vector, of the namespace's dimension. When it is nil, the store calls Embed.
	Vector []float32
	// Embed, used when Vector is nil, returns the query vector for the namespace as the store read it (its
	// embedder, its dimension), so a text search reads the namespace once. The store calls it at most once per
	// namespace it reads, outside its locks and transactions, and returns its error wrapped.
	Embed func(ctx context.Context, ns Namespace) ([]float32, error)
	// Text is the query text; used for the full-text side of a hybrid search.
	Text string
	// Hybrid fuses vector and full-text results by reciprocal rank fusion (k = RRFK). Needs Text.
	Hybrid bool
	// TopK is the number of results wanted (> 0). When at least TopK live records match Filter, exactly TopK are
	// returned (fewer only when MinScore cuts them).
	TopK int
	// Filter restricts results to records whose metadata matches; nil matches all.
	Filter *Filter
	// MinScore, when non-nil, drops results scoring below it. Ignored in hybrid mode.
	MinScore *float32
	// IncludeVectors returns each record's vector.
	IncludeVectors bool
}

// RRFK is the k of reciprocal rank fusion: a document's fused score is the sum over lists of 1/(RRFK + rank),
// rank starting at 1.
const RRFK = 60

// Hit is a search result.
type Hit struct {
	Record Record
	// Score is the metric's similarity (cosine; inner product; negated Euclidean distance) or the fused RRF score
	// in hybrid mode. Higher is closer.
	Score float32
}

// Store keeps namespaces and records. Every method takes the caller's tenant explicitly and never reads or writes
// outside it: tenant B never sees tenant A's namespaces or records. Implementations are safe for concurrent use.
// Errors wrap ErrNotFound, ErrAlreadyExists, ErrInvalidArgument or ErrFailedPrecondition when the caller is at fault;
// anything else is a server fault.
type Store interface {
	// CreateNamespace creates ns (defaults already filled by the caller) and returns it as stored, with
	// CreateTime set. ErrAlreadyExists if the name is taken.
	CreateNamespace(ctx context.Context, tenant string, ns Namespace) (Namespace, error)
	// GetNamespace returns a namespace, with its stats when withStats is true (which may cost a scan).
	// ErrNotFound if it does not exist.
	GetNamespace(ctx context.Context, tenant, name string, withStats bool) (Namespace, error)
	// ListNamespaces returns up to limit namespaces with names greater than after, ordered by name. Stats are
	// not filled.
	ListNamespaces(ctx context.Context, tenant, after string, limit int) ([]Namespace, error)
	// DeleteNamespace deletes a namespace and every record in it. ErrNotFound if it does not exist.
	DeleteNamespace(ctx context.Context, tenant, name string) error
	// Upsert writes records all or nothing: on error nothing was written. Records are keyed by ID (non-empty),
	// and a later record of the same ID in one batch wins. On success the batch is durable.
	Upsert(ctx context.Context, tenant, namespace string, records []Record) error
	// Search returns the best hits for q, best first. Expired records never appear.
	Search(ctx context.Context, tenant, namespace string, q Query) ([]Hit, error)
	// Get returns the live records among ids, in the order of ids; missing or expired ids are left out.
	Get(ctx context.Context, tenant, namespace string, ids []string, includeVectors bool) ([]Record, error)
	// Delete removes the records with the given ids, or, when ids is empty, every record matching filter
	// (which must then be non-nil), and returns how many live records it removed.
	Delete(ctx context.Context, tenant, namespace string, ids []string, filter *Filter) (int64, error)
	// Ping reports whether the store can serve requests.
	Ping(ctx context.Context) error
	// Close releases the store's resources.
	Close() error
}

// SearchObserver watches the searches a store runs, for traces and metrics (the stores take one as an option;
// memoryrpc.SearchTelemetry is the server's). Implementations are safe for concurrent use.
type SearchObserver interface {
	// StartSearch is called when a store starts a search of namespace in mode ("exact", "int8", "ivf", "hnsw" or
	// "hybrid") for k results, after any wait for its turn. It returns the context the search runs in and a
	// function the store calls once, with the number of results and the search's error, when the search ends.
	StartSearch(ctx context.Context, namespace, mode string, k int) (context.Context, func(results int, err error))
}

// StartSearch calls o.StartSearch, or does nothing when o is nil.
func StartSearch(ctx context.Context, o SearchObserver, namespace, mode string, k int) (context.Context, func(results int, err error)) {
	if o == nil {
		return ctx, func(int, error) {}
	}
	return o.StartSearch(ctx, namespace, mode, k)
}

// CheckNamespace reports an ErrInvalidArgument when ns cannot be stored: a dimension outside [1, MaxDimension]. Every
// store checks it on CreateNamespace.
func CheckNamespace(ns Namespace) error {
	if ns.Dimension < 1 || ns.Dimension > MaxDimension {
		return Invalidf("namespace.dimension", "must be in [1, %d], got %d", MaxDimension, ns.Dimension)
	}
	return nil
}

// CheckVector reports an ErrInvalidArgument naming field when v does not have dimension dim, has a non-finite element,
// or is the zero vector under the cosine metric (it has no direction). Stores and the server share it.
func CheckVector(field string, v []float32, dim int, metric Metric) error {
	if len(v) != dim {
		return Invalidf(field, "dimension %d, namespace wants %d", len(v), dim)
	}
	nonZero := false
	for i, x := range v {
		if math.IsNaN(float64(x)) || math.IsInf(float64(x), 0) {
			return Invalidf(fmt.Sprintf("%s[%d]", field, i), "must be finite, got %v", x)
		}
		if x != 0 {
			nonZero = true
		}
	}
	if metric == MetricCosine && !nonZero {
		return Invalidf(field, "zero vector has no direction under the cosine metric")
	}
	return nil
}

// CheckRecords validates a batch against ns: ids present, vectors of the right dimension and finite (rules the
// contract leaves to the stores, which know the dimension), and metadata values set and finite (which the
// contract checks on the wire, and a store needs of everything it keeps, since it must read it back). It is the
// one check shared by every store before it writes anything.
func CheckRecords(ns Namespace, records []Record) error {
	if len(records) == 0 {
		return Invalidf("records", "at least one record is required")
	}
	for i, r := range records {
		if r.ID == "" {
			return Invalidf(fmt.Sprintf("records[%d].id", i), "must not be empty")
		}
		if err := CheckVector(fmt.Sprintf("records[%d].vector", i), r.Vector, ns.Dimension, ns.Metric); err != nil {
			return err
		}
		for k, v := range r.Metadata {
			if err := checkValue(fmt.Sprintf("records[%d].metadata[%q]", i, k), v); err != nil {
				return err
			}
		}
	}
	return nil
}

func finite(f float64) bool { return !math.IsNaN(f) && !math.IsInf(f, 0) }

func checkValue(field string, v Value) error {
	switch v.Kind {
	case KindList:
		for i, s := range v.List {
			if err := checkScalar(fmt.Sprintf("%s.list_value.values[%d]", field, i), s); err != nil {
				return err
			}
		}
		return nil
	case KindNone:
		return Invalidf(field, "a string, number, bool or list value is required")
	}
	return checkScalar(field, v.Scalar)
}

func checkScalar(field string, s Scalar) error {
	switch s.Kind {
	case KindString, KindBool:
		return nil
	case KindNumber:
		if !finite(s.Num) {
			return Invalidf(field+".number_value", "must be finite")
		}
		return nil
	}
	return Invalidf(field, "a string, number or bool value is required")
}
