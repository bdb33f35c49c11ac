// Package membench benchmarks vector search backends on one synthetic dataset: clustered 768-d vectors from a
// fixed seed, with exact ground truth computed by brute force. For each backend it reports the ingest rate,
// recall@k against the ground truth, query latency p50/p99 and single-client QPS. It backs `loom bench memory`.
//
// Backends: the embedded localstore, pgstore (through memory.Store, HNSW index maintained while inserting),
// pgvector by direct SQL (COPY first, HNSW index built after: the best case for ingest), and chromem-go (an
// in-process brute-force library) for reference.
package membench

import (
	"context"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"slices"
	"sort"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/pgvector/pgvector-go"
	pgxvec "github.com/pgvector/pgvector-go/pgx"
	"github.com/philippgille/chromem-go"

	"github.com/loom-dev/loom/memory"
	"github.com/loom-dev/loom/memory/localstore"
	"github.com/loom-dev/loom/memory/pgstore"
)

// Config sizes a run. Zero values take the defaults in brackets.
type Config struct {
	// N vectors [20000] of Dim elements [768] in Clusters clusters [100]; Queries queries [200]; K results [10].
	N, Dim, Clusters, Queries, K int
	// Seed of the dataset [1].
	Seed uint64
	// PostgresURL, when set, adds the pgstore and direct-SQL pgvector backends. The database must have the
	// vector extension; the benchmark creates and drops its own tables.
	PostgresURL string
	// EfSearch for the HNSW backends [100].
	EfSearch int
	// Backends limits the run to these names ("localstore", "pgstore", "pgvector-sql", "chromem"); empty runs all
	// available.
	Backends []string
}

func (c *Config) defaults() {
	def := func(v *int, d int) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&c.N, 20000)
	def(&c.Dim, 768)
	def(&c.Clusters, 100)
	def(&c.Queries, 200)
	def(&c.K, 10)
	def(&c.EfSearch, 100)
	if c.Seed == 0 {
		c.Seed = 1
	}
}

// Result is one backend's figures.
type Result struct {
	Backend    string
	IngestRate float64 // vectors per second, index included
	Recall     float64 // recall@K
	P50, P99   time.Duration
	QPS        float64
}

// dataset is vectors around random centroids, L2-normalised, and queries drawn the same way.
type dataset struct {
	vecs, queries [][]float32
	truth         [][]int // exact top K per query
}

func makeDataset(c Config) dataset {
	r := rand.New(rand.NewPCG(c.Seed, 0x6d656d))
	centroids := make([][]float32, c.Clusters)
	for i := range centroids {
		centroids[i] = gauss(r, c.Dim, nil, 1)
	}
	draw := func() []float32 { return normalise(gauss(r, c.Dim, centroids[r.IntN(c.Clusters)], 0.35)) }
	d := dataset{vecs: make([][]float32, c.N), queries: make([][]float32, c.Queries)}
	for i := range d.vecs {
		d.vecs[i] = draw()
	}
	for i := range d.queries {
		d.queries[i] = draw()
	}
	d.truth = make([][]int, c.Queries)
	for qi, q := range d.queries {
		type sc struct {
			i int
			s float64
		}
		all := make([]sc, c.N)
		for i, v := range d.vecs {
			var s float64
			for j := range v {
				s += float64(v[j]) * float64(q[j])
			}
			all[i] = sc{i, s}
		}
		sort.Slice(all, func(a, b int) bool { return all[a].s > all[b].s })
		for _, x := range all[:c.K] {
			d.truth[qi] = append(d.truth[qi], x.i)
		}
	}
	return d
}

func gauss(r *rand.Rand, dim int, center []float32, sd float64) []float32 {
	v := make([]float32, dim)
	for i := range v {
		v[i] = float32(r.NormFloat64() * sd)
		if center != nil {
			v[i] += center[i]
		}
	}
	return v
}

func normalise(v []float32) []float32 {
	var n float64
	for _, x := range v {
		n += float64(x) * float64(x)
	}
	inv := float32(1 / math.Sqrt(n))
	for i := range v {
		v[i] *= inv
	}
	return v
}

// backend is one system under test. search returns the dataset indices of the top k.
type backend struct {
	name   string
	ingest func(ctx context.Context, vecs [][]float32) error
	search func(ctx context.Context, q []float32, k int) ([]int, error)
	close  func()
}

// Run generates the dataset, runs every backend and writes a table to w.
func Run(ctx context.Context, w io.Writer, cfg Config) ([]Result, error) {
	cfg.defaults()
	start := time.Now()
	d := makeDataset(cfg)
	fmt.Fprintf(w, "dataset: %d x %d, %d clusters, %d queries, k=%d, seed %d (ground truth in %v)\n",
		cfg.N, cfg.Dim, cfg.Clusters, cfg.Queries, cfg.K, cfg.Seed, time.Since(start).Round(time.Millisecond))
	var backends []func() (*backend, error)
	want := func(name string) bool { return len(cfg.Backends) == 0 || slices.Contains(cfg.Backends, name) }
	if want("localstore") {
		backends = append(backends, func() (*backend, error) { return localBackend(ctx, cfg) })
	}
	if cfg.PostgresURL != "" && want("pgstore") {
		backends = append(backends, func() (*backend, error) { return pgstoreBackend(ctx, cfg) })
	}
	if cfg.PostgresURL != "" && want("pgvector-sql") {
		backends = append(backends, func() (*backend, error) { return sqlBackend(ctx, cfg) })
	}
	if want("chromem") {
		backends = append(backends, func() (*backend, error) { return chromemBackend(cfg) })
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "backend\tingest vec/s\trecall@k\tp50\tp99\tQPS\t")
	var results []Result
	for _, mk := range backends {
		b, err := mk()
		if err != nil {
			return results, err
		}
		res, err := measure(ctx, b, d, cfg.K)
		b.close()
		if err != nil {
			return results, fmt.Errorf("%s: %w", b.name, err)
		}
		results = append(results, res)
		fmt.Fprintf(tw, "%s\t%.0f\t%.3f\t%v\t%v\t%.0f\t\n", res.Backend, res.IngestRate, res.Recall,
			res.P50.Round(time.Microsecond), res.P99.Round(time.Microsecond), res.QPS)
	}
	return results, tw.Flush()
}

func measure(ctx context.Context, b *backend, d dataset, k int) (Result, error) {
	start := time.Now()
	if err := b.ingest(ctx, d.vecs); err != nil {
		return Result{}, fmt.Errorf("ingest: %w", err)
	}
	res := Result{Backend: b.name, IngestRate: float64(len(d.vecs)) / time.Since(start).Seconds()}
	lat := make([]time.Duration, len(d.queries))
	found := 0
	start = time.Now()
	for qi, q := range d.queries {
		t0 := time.Now()
		got, err := b.search(ctx, q, k)
		if err != nil {
			return Result{}, fmt.Errorf("search: %w", err)
		}
		lat[qi] = time.Since(t0)
		for _, i := range got {
			if slices.Contains(d.truth[qi], i) {
				found++
			}
		}
	}
	res.QPS = float64(len(d.queries)) / time.Since(start).Seconds()
	slices.Sort(lat)
	res.P50, res.P99 = lat[len(lat)/2], lat[min(len(lat)-1, len(lat)*99/100)]
	res.Recall = float64(found) / float64(k*len(d.queries))
	return res, nil
}

func storeBackend(name string, s memory.Store, cfg Config, closeFn func()) (*backend, error) {
	ctx := context.Background()
	if _, err := s.CreateNamespace(ctx, "bench", memory.Namespace{Name: "bench", Dimension: cfg.Dim, Metric: memory.MetricCosine, EfSearch: cfg.EfSearch}); err != nil {
		closeFn()
		return nil, err
	}
	return &backend{
		name: name,
		ingest: func(ctx context.Context, vecs [][]float32) error {
			for startI := 0; startI < len(vecs); startI += 1000 {
				batch := make([]memory.Record, 0, 1000)
				for i := startI; i < min(startI+1000, len(vecs)); i++ {
					batch = append(batch, memory.Record{ID: strconv.Itoa(i), Vector: vecs[i], UpdateTime: time.Now()})
				}
				if err := s.Upsert(ctx, "bench", "bench", batch); err != nil {
					return err
				}
			}
			return nil
		},
		search: func(ctx context.Context, q []float32, k int) ([]int, error) {
			hits, err := s.Search(ctx, "bench", "bench", memory.Query{Vector: q, TopK: k})
			if err != nil {
				return nil, err
			}
			out := make([]int, len(hits))
			for i, h := range hits {
				out[i], _ = strconv.Atoi(h.Record.ID)
			}
			return out, nil
		},
		close: closeFn,
	}, nil
}

func localBackend(ctx context.Context, cfg Config) (*backend, error) {
	dir, err := os.MkdirTemp("", "membench-")
	if err != nil {
		return nil, err
	}
	s, err := localstore.Open(dir)
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	return storeBackend("localstore (exact)", s, cfg, func() { s.Close(); os.RemoveAll(dir) })
}

func pgstoreBackend(ctx context.Context, cfg Config) (*backend, error) {
	s, err := pgstore.Open(ctx, cfg.PostgresURL)
	if err != nil {
		return nil, err
	}
	_ = s.DeleteNamespace(ctx, "bench", "bench")
	return storeBackend("pgstore (hnsw)", s, cfg, func() {
		_ = s.DeleteNamespace(context.Background(), "bench", "bench")
		s.Close()
	})
}

// sqlBackend is pgvector by hand: COPY into a bare table, then build the HNSW index, then query.
func sqlBackend(ctx context.Context, cfg Config) (*backend, error) {
	conn, err := pgx.Connect(ctx, cfg.PostgresURL)
	if err != nil {
		return nil, err
	}
	if err := pgxvec.RegisterTypes(ctx, conn); err != nil {
		conn.Close(ctx)
		return nil, err
	}
	for _, q := range []string{
		"DROP TABLE IF EXISTS membench_items",
		fmt.Sprintf("CREATE TABLE membench_items (id int PRIMARY KEY, embedding vector(%d))", cfg.Dim),
	} {
		if _, err := conn.Exec(ctx, q); err != nil {
			conn.Close(ctx)
			return nil, err
		}
	}
	return &backend{
		name: "pgvector-sql (copy, then hnsw)",
		ingest: func(ctx context.Context, vecs [][]float32) error {
			rows := make([][]any, len(vecs))
			for i, v := range vecs {
				rows[i] = []any{i, pgvector.NewVector(v)}
			}
			if _, err := conn.CopyFrom(ctx, pgx.Identifier{"membench_items"}, []string{"id", "embedding"}, pgx.CopyFromRows(rows)); err != nil {
				return err
			}
			if _, err := conn.Exec(ctx, "CREATE INDEX ON membench_items USING hnsw (embedding vector_cosine_ops) WITH (m = 16, ef_construction = 64)"); err != nil {
				return err
			}
			_, err := conn.Exec(ctx, "SET hnsw.ef_search = "+strconv.Itoa(cfg.EfSearch))
			return err
		},
		search: func(ctx context.Context, q []float32, k int) ([]int, error) {
			rows, err := conn.Query(ctx, "SELECT id FROM membench_items ORDER BY embedding <=> $1 LIMIT $2", pgvector.NewVector(q), k)
			if err != nil {
				return nil, err
			}
			return pgx.CollectRows(rows, pgx.RowTo[int])
		},
		close: func() {
			_, _ = conn.Exec(context.Background(), "DROP TABLE IF EXISTS membench_items")
			conn.Close(context.Background())
		},
	}, nil
}

func chromemBackend(cfg Config) (*backend, error) {
	db := chromem.NewDB()
	col, err := db.CreateCollection("bench", nil, func(context.Context, string) ([]float32, error) {
		return nil, fmt.Errorf("membench: no embedding function")
	})
	if err != nil {
		return nil, err
	}
	return &backend{
		name: "chromem-go (exact)",
		ingest: func(ctx context.Context, vecs [][]float32) error {
			docs := make([]chromem.Document, len(vecs))
			for i, v := range vecs {
				docs[i] = chromem.Document{ID: strconv.Itoa(i), Embedding: v, Content: "x"}
			}
			return col.AddDocuments(ctx, docs, 2)
		},
		search: func(ctx context.Context, q []float32, k int) ([]int, error) {
			res, err := col.QueryEmbedding(ctx, q, k, nil, nil)
			if err != nil {
				return nil, err
			}
			out := make([]int, len(res))
			for i, r := range res {
				out[i], _ = strconv.Atoi(r.ID)
			}
			return out, nil
		},
		close: func() {},
	}, nil
}
