// Package membench benchmarks vector search backends on one synthetic dataset: clustered 768-d vectors from a
// fixed seed, with exact ground truth computed by brute force. For each backend it reports the ingest rate,
// recall@k against the ground truth, query latency p50/p99 and single-client QPS. It backs `loom bench memory`.
//
// Backends: the embedded localstore (exact float32 scan; the default, an IVF index over int8 codes with exact
// re-ranking, the int8 scan until it is built; the same index as IndexConfig kind HNSW selects), pgstore (through memory.Store: COPY-staged
// batches, HNSW index built after the load by BuildIndexes), and pgvector by direct SQL (COPY first, HNSW index
// built after: the best case for ingest). chromem-go (an in-process brute-force library) is a reference run by
// the package's tests only (chromem_test.go, TestRunSized), so that `loom`, which runs this package as
// `loom bench memory`, does not carry it.
//
// Each backend also runs a filtered search at 10% selectivity (metadata bucket = 3 of 0..9), scored against the
// exact filtered top k; "rows==k" says whether every query returned exactly k rows. The table gives each
// backend's QPS and p50 as ratios to the pgvector direct-SQL baseline, and, when chromem-go ran, localstore's
// speed-up over it (chromem p50 / localstore p50). "load vec/s" counts until the last write is acknowledged,
// "ingest vec/s" until the index is built too. Below the table: the memory-bandwidth floor (a streaming read of
// the dataset's float32 bytes, measured in the same run) and the exact scan's p50 against it; and, for the
// embedded store, a restart: the store closed and reopened on its directory, with Open's duration, the first
// search against the warm p50, and the resident memory (VmRSS) the reopened store added. Progress is drawn on w
// as a throttled bar, one line per phase.
package membench

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"maps"
	"os"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/pgvector/pgvector-go"
	pgxvec "github.com/pgvector/pgvector-go/pgx"

	"github.com/loom-dev/loom/internal/sqldb"
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
	// EfSearch zero uses pgstore.DefaultEfSearch, for pgstore and the direct-SQL baseline alike.
	// Backends limits the run to these names ("localstore", "localstore-int8", "localstore-ivf", "pgstore",
	// "pgvector-sql", and those of extra); empty runs all available.
	Backends []string
	// NoProgress turns off the progress bar.
	NoProgress bool
	// Progress, when set, receives the progress bar instead of Run's writer.
	Progress io.Writer
	// Selectivity of the filtered search [0.1]: records carry bucket = i mod round(1/Selectivity) and the filter
	// is bucket = 3.
	Selectivity float64
	// CacheDir, when set, keeps the generated dataset and its ground truth there between runs (one file per set
	// of parameters); empty generates it every run.
	CacheDir string

	// extra are more backends by name, run after the others: the tests' chromem-go reference.
	extra map[string]func(Config) (*backend, error)
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
	def(&c.EfSearch, pgstore.DefaultEfSearch)
	if c.Selectivity <= 0 || c.Selectivity > 1 {
		c.Selectivity = 0.1
	}
	if c.Seed == 0 {
		c.Seed = 1
	}
}

// Result is one backend's figures.
type Result struct {
	Backend    string
	IngestRate float64 // vectors per second, index included
	LoadRate   float64 // vectors per second until the last write was acknowledged, before any index build
	Recall     float64 // recall@K
	P50, P99   time.Duration
	QPS        float64
	// Filtered search at Config.Selectivity: recall@K against the exact filtered top K, latency, QPS, and
	// whether every query returned exactly K rows. Zero when the backend was not run filtered.
	FilteredRecall     float64
	FilteredP50        time.Duration
	FilteredP99        time.Duration
	FilteredQPS        float64
	FilteredAlwaysK    bool
	FilteredMinRows    int
	filteredMeasured   bool
	QPSVsSQL, P50VsSQL float64 // QPS and p50 divided by the pgvector direct-SQL baseline's; zero without it
	// FloorP50 is the memory-bandwidth floor (a streaming read of the N x Dim float32 bytes) and ScanP50 the
	// backend's p50, each query followed by one read, for the exact scans; zero for others.
	FloorP50, ScanP50 time.Duration
	// Restart is measured for the embedded store: the store closed and opened again on the same directory.
	Restart *Restart
}

// Restart is what reopening an embedded store costs: Open (log replay and index load), the first search after
// it against the warm p50, and the resident memory the reopened store holds.
type Restart struct {
	Open        time.Duration
	FirstSearch time.Duration
	// FirstVsWarm is FirstSearch / the warm p50 measured before the restart.
	FirstVsWarm float64
	// RSS is the growth of the process's resident set (VmRSS on Linux; the Go runtime's mapped memory
	// elsewhere) over Open, measured after the previous store was closed and its memory returned; RawBytes is
	// N x Dim x 4, the float32 vectors alone.
	RSS, RawBytes int64
}

// backend is one system under test. search returns the dataset indices of the top k; filtered does the same
// among records of bucket filterBucket (nil: not supported). ingest reports progress through done.
type backend struct {
	name     string
	ingest   func(ctx context.Context, d dataset, done func(n int)) error
	search   func(ctx context.Context, q []float32, k int) ([]int, error)
	filtered func(ctx context.Context, q []float32, k int) ([]int, error)
	// exact marks a full float32 scan, measured against the bandwidth floor.
	exact bool
	// restart, when set, closes the store, opens it again on the same data and returns the reopened backend's
	// first-search function with Open's duration and the resident memory it added.
	restart func(ctx context.Context) (search func(ctx context.Context, q []float32, k int) ([]int, error), open time.Duration, rss int64, err error)
	close   func()
}

// progress draws a throttled bar on w: "\r[#####.....]  52% localstore ingest", ending with a newline.
type progress struct {
	w     io.Writer
	off   bool
	label string
	total int
	last  time.Time
	shown int
}

func (p *progress) start(label string, total int) {
	p.label, p.total, p.last, p.shown = label, max(total, 1), time.Time{}, -1
	p.set(0)
}

func (p *progress) set(done int) {
	if p.off {
		return
	}
	pct := min(100*done/p.total, 100)
	if pct == p.shown || pct < 100 && time.Since(p.last) < 100*time.Millisecond {
		return
	}
	p.last, p.shown = time.Now(), pct
	const width = 20
	bar := strings.Repeat("#", pct*width/100) + strings.Repeat(".", width-pct*width/100)
	fmt.Fprintf(p.w, "\r[%s] %3d%% %s", bar, pct, p.label)
}

func (p *progress) end() {
	if p.off {
		return
	}
	if p.shown != 100 {
		p.shown = -1
		p.set(p.total)
	}
	fmt.Fprintln(p.w)
}

// Run generates the dataset, runs every backend and writes a table to w.
func Run(ctx context.Context, w io.Writer, cfg Config) ([]Result, error) {
	cfg.defaults()
	start := time.Now()
	d, err := loadDataset(cfg)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(w, "dataset: %d x %d, %d clusters, %d queries, k=%d, seed %d, ef_search %d, filter selectivity %.0f%% (generated or loaded in %v)\n",
		cfg.N, cfg.Dim, cfg.Clusters, cfg.Queries, cfg.K, cfg.Seed, cfg.EfSearch, 100/float64(d.buckets),
		time.Since(start).Round(time.Millisecond))
	var backends []func() (*backend, error)
	want := func(name string) bool { return len(cfg.Backends) == 0 || slices.Contains(cfg.Backends, name) }
	if want("localstore") {
		backends = append(backends, func() (*backend, error) { return localBackend(ctx, cfg, memory.IndexExact) })
	}
	if want("localstore-int8") {
		backends = append(backends, func() (*backend, error) { return localBackend(ctx, cfg, memory.IndexDefault) })
	}
	if want("localstore-ivf") {
		backends = append(backends, func() (*backend, error) { return localBackend(ctx, cfg, memory.IndexHNSW) })
	}
	if cfg.PostgresURL != "" && want("pgstore") {
		backends = append(backends, func() (*backend, error) { return pgstoreBackend(ctx, cfg) })
	}
	if cfg.PostgresURL != "" && want("pgvector-sql") {
		backends = append(backends, func() (*backend, error) { return sqlBackend(ctx, cfg) })
	}
	for _, name := range slices.Sorted(maps.Keys(cfg.extra)) {
		if want(name) {
			backends = append(backends, func() (*backend, error) { return cfg.extra[name](cfg) })
		}
	}
	pw := w
	if cfg.Progress != nil {
		pw = cfg.Progress
	}
	p := &progress{w: pw, off: cfg.NoProgress}
	// The memory-bandwidth floor: a streaming read of the N x Dim float32 bytes, split over the cores like a
	// scan; measured before and after the backends, the smaller median kept (the faster the floor, the harder
	// the ratio against it).
	floor0 := floor(d.flat, 9)
	var results []Result
	for _, mk := range backends {
		b, err := mk()
		if err != nil {
			return results, err
		}
		res, err := measure(ctx, p, b, d, cfg.K)
		b.close()
		if err != nil {
			return results, fmt.Errorf("%s: %w", b.name, err)
		}
		results = append(results, res)
	}
	var sqlRes, chromemRes *Result
	for i := range results {
		switch {
		case strings.HasPrefix(results[i].Backend, "pgvector-sql"):
			sqlRes = &results[i]
		case strings.HasPrefix(results[i].Backend, "chromem"):
			chromemRes = &results[i]
		}
	}
	ratio := func(a, b float64) string {
		if a == 0 || b == 0 {
			return "-"
		}
		return fmt.Sprintf("%.2fx", a/b)
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "backend\tload vec/s\tingest vec/s\trecall@k\tp50\tp99\tQPS\tQPS/sql\tp50/sql\tvs chromem\trows==k\t")
	for i := range results {
		r := &results[i]
		var vsChromem string
		if sqlRes != nil {
			r.QPSVsSQL, r.P50VsSQL = r.QPS/sqlRes.QPS, float64(r.P50)/float64(sqlRes.P50)
		}
		if chromemRes != nil && strings.HasPrefix(r.Backend, "localstore") {
			vsChromem = ratio(float64(chromemRes.P50), float64(r.P50)) + " faster"
		}
		fmt.Fprintf(tw, "%s\t%.0f\t%.0f\t%.3f\t%v\t%v\t%.0f\t%s\t%s\t%s\t\t\n", r.Backend, r.LoadRate, r.IngestRate, r.Recall,
			r.P50.Round(time.Microsecond), r.P99.Round(time.Microsecond), r.QPS, ratio(r.QPSVsSQL, 1), ratio(r.P50VsSQL, 1), cmp.Or(vsChromem, "-"))
		if r.filteredMeasured {
			var fq, fp float64
			if sqlRes != nil && sqlRes.filteredMeasured {
				fq, fp = r.FilteredQPS/sqlRes.FilteredQPS, float64(r.FilteredP50)/float64(sqlRes.FilteredP50)
			}
			rowsK := "yes"
			if !r.FilteredAlwaysK {
				rowsK = fmt.Sprintf("no (min %d)", r.FilteredMinRows)
			}
			fmt.Fprintf(tw, "  filtered %.0f%%\t\t\t%.3f\t%v\t%v\t%.0f\t%s\t%s\t\t%s\t\n", 100/float64(d.buckets), r.FilteredRecall,
				r.FilteredP50.Round(time.Microsecond), r.FilteredP99.Round(time.Microsecond), r.FilteredQPS, ratio(fq, 1), ratio(fp, 1), rowsK)
		}
	}
	if err := tw.Flush(); err != nil {
		return results, err
	}
	fl := min(floor0, floor(d.flat, 9))
	bytes := float64(len(d.flat)) * 4
	fmt.Fprintf(w, "memory-bandwidth floor (streaming read of the %.0f MB of float32, %d cores): %v (%.1f GB/s); int8 (a quarter): %v\n",
		bytes/1e6, runtime.GOMAXPROCS(0), fl.Round(time.Microsecond), bytes/fl.Seconds()/1e9, (fl / 4).Round(time.Microsecond))
	for _, r := range results {
		if r.FloorP50 > 0 {
			fmt.Fprintf(w, "%s against the floor, each query followed by a streaming read of the same bytes: p50 %v, floor p50 %v (%.1f GB/s): %.2fx the floor\n",
				r.Backend, r.ScanP50.Round(time.Microsecond), r.FloorP50.Round(time.Microsecond), bytes/r.FloorP50.Seconds()/1e9, float64(r.ScanP50)/float64(r.FloorP50))
		}
	}
	for _, r := range results {
		if x := r.Restart; x != nil {
			fmt.Fprintf(w, "%s restart: open %v, first search %v (%.2fx the warm p50 %v), resident %.0f MB (%.2fx the %.0f MB of raw float32)\n",
				r.Backend, x.Open.Round(time.Millisecond), x.FirstSearch.Round(time.Microsecond), x.FirstVsWarm, r.P50.Round(time.Microsecond),
				float64(x.RSS)/1e6, float64(x.RSS)/float64(x.RawBytes), float64(x.RawBytes)/1e6)
		}
	}
	return results, nil
}

// runQueries times search over every query and returns recall against truth, latencies sorted, the QPS, and
// the fewest rows any query returned.
func runQueries(ctx context.Context, p *progress, label string, search func(ctx context.Context, q []float32, k int) ([]int, error), d dataset, truth [][]int, k int) (recall float64, lat []time.Duration, qps float64, minRows int, err error) {
	lat = make([]time.Duration, len(d.queries))
	found := 0
	minRows = k
	p.start(label, len(d.queries))
	start := time.Now()
	for qi, q := range d.queries {
		t0 := time.Now()
		got, err := search(ctx, q, k)
		if err != nil {
			return 0, nil, 0, 0, fmt.Errorf("search: %w", err)
		}
		lat[qi] = time.Since(t0)
		minRows = min(minRows, len(got))
		for _, i := range got {
			if slices.Contains(truth[qi], i) {
				found++
			}
		}
		p.set(qi + 1)
	}
	qps = float64(len(d.queries)) / time.Since(start).Seconds()
	p.end()
	slices.Sort(lat)
	return float64(found) / float64(k*len(d.queries)), lat, qps, minRows, nil
}

func measure(ctx context.Context, p *progress, b *backend, d dataset, k int) (Result, error) {
	p.start(b.name+" ingest", len(d.vecs))
	start := time.Now()
	var loaded time.Duration
	done := func(n int) {
		if n >= len(d.vecs) && loaded == 0 {
			loaded = time.Since(start)
		}
		p.set(n)
	}
	if err := b.ingest(ctx, d, done); err != nil {
		return Result{}, fmt.Errorf("ingest: %w", err)
	}
	p.end()
	total := time.Since(start)
	res := Result{Backend: b.name, IngestRate: float64(len(d.vecs)) / total.Seconds(), LoadRate: float64(len(d.vecs)) / cmp.Or(loaded, total).Seconds()}
	recall, lat, qps, _, err := runQueries(ctx, p, b.name+" search", b.search, d, d.truth, k)
	if err != nil {
		return Result{}, err
	}
	res.Recall, res.QPS = recall, qps
	res.P50, res.P99 = lat[len(lat)/2], lat[min(len(lat)-1, len(lat)*99/100)]
	if b.exact {
		// Against the floor: each query followed by a streaming read of the same float32 bytes, so both see
		// the same machine (on a shared machine a floor measured apart can be off by 2x either way).
		scan, fl := make([]time.Duration, len(d.queries)), make([]time.Duration, len(d.queries))
		for qi, q := range d.queries {
			t0 := time.Now()
			if _, err := b.search(ctx, q, k); err != nil {
				return Result{}, err
			}
			scan[qi] = time.Since(t0)
			fl[qi] = floor(d.flat, 1)
		}
		slices.Sort(scan)
		slices.Sort(fl)
		res.FloorP50, res.ScanP50 = fl[len(fl)/2], scan[len(scan)/2]
	}
	if b.filtered != nil {
		if err := measureFiltered(ctx, p, b, d, k, &res); err != nil {
			return Result{}, err
		}
	}
	if b.restart == nil {
		return res, nil
	}
	search, open, rss0, err := b.restart(ctx)
	if err != nil {
		return Result{}, fmt.Errorf("restart: %w", err)
	}
	t0 := time.Now()
	if _, err := search(ctx, d.queries[0], k); err != nil {
		return Result{}, fmt.Errorf("first search after restart: %w", err)
	}
	first := time.Since(t0)
	rss := residentBytes() - rss0
	res.Restart = &Restart{Open: open, FirstSearch: first, FirstVsWarm: float64(first) / float64(res.P50), RSS: rss, RawBytes: int64(len(d.flat)) * 4}
	return res, nil
}

func measureFiltered(ctx context.Context, p *progress, b *backend, d dataset, k int, res *Result) error {
	recall, lat, qps, minRows, err := runQueries(ctx, p, b.name+" filtered search", b.filtered, d, d.ftruth, k)
	if err != nil {
		return fmt.Errorf("filtered: %w", err)
	}
	res.filteredMeasured = true
	res.FilteredRecall, res.FilteredQPS, res.FilteredMinRows, res.FilteredAlwaysK = recall, qps, minRows, minRows == k
	res.FilteredP50, res.FilteredP99 = lat[len(lat)/2], lat[min(len(lat)-1, len(lat)*99/100)]
	return nil
}

// bucketFilter selects records whose bucket is filterBucket.
var bucketFilter = memory.Eq("bucket", memory.Number(filterBucket))

// storeSearch searches the bench namespace of s and returns the dataset indices of the hits.
func storeSearch(s memory.Store, filter *memory.Filter) func(ctx context.Context, q []float32, k int) ([]int, error) {
	return func(ctx context.Context, q []float32, k int) ([]int, error) {
		hits, err := s.Search(ctx, "bench", "bench", memory.Query{Vector: q, TopK: k, Filter: filter})
		if err != nil {
			return nil, err
		}
		out := make([]int, len(hits))
		for i, h := range hits {
			out[i], _ = strconv.Atoi(h.Record.ID)
		}
		return out, nil
	}
}

// storeBackend drives a memory.Store in batches of memory.MaxBatch, the RPC's limit. A store with deferred index
// builds (pgstore) has them run at the end of the load, inside the timed ingest.
func storeBackend(name string, s memory.Store, cfg Config, kind memory.IndexKind, closeFn func()) (*backend, error) {
	ctx := context.Background()
	if _, err := s.CreateNamespace(ctx, "bench", memory.Namespace{Name: "bench", Dimension: cfg.Dim, Metric: memory.MetricCosine, IndexKind: kind, EfSearch: cfg.EfSearch}); err != nil {
		closeFn()
		return nil, err
	}
	search := func(filter *memory.Filter) func(ctx context.Context, q []float32, k int) ([]int, error) {
		return storeSearch(s, filter)
	}
	return &backend{
		name: name,
		ingest: func(ctx context.Context, d dataset, done func(int)) error {
			bucket := make([]map[string]memory.Value, d.buckets)
			for i := range bucket {
				bucket[i] = map[string]memory.Value{"bucket": memory.NumberValue(float64(i))}
			}
			for startI := 0; startI < len(d.vecs); startI += memory.MaxBatch {
				batch := make([]memory.Record, 0, memory.MaxBatch)
				for i := startI; i < min(startI+memory.MaxBatch, len(d.vecs)); i++ {
					batch = append(batch, memory.Record{ID: strconv.Itoa(i), Vector: d.vecs[i], Metadata: bucket[i%d.buckets], UpdateTime: time.Now()})
				}
				if err := s.Upsert(ctx, "bench", "bench", batch); err != nil {
					return err
				}
				done(startI + len(batch))
			}
			if b, ok := s.(interface{ BuildIndexes(context.Context) error }); ok {
				if err := b.BuildIndexes(ctx); err != nil {
					return err
				}
			}
			// One search builds any index a store makes lazily (localstore's IVF), inside the timed ingest.
			_, err := s.Search(ctx, "bench", "bench", memory.Query{Vector: d.vecs[0], TopK: 1})
			return err
		},
		search:   search(nil),
		filtered: search(bucketFilter),
		close:    closeFn,
	}, nil
}

func localBackend(ctx context.Context, cfg Config, kind memory.IndexKind) (*backend, error) {
	dir, err := os.MkdirTemp(cfg.CacheDir, "membench-")
	if err != nil {
		return nil, err
	}
	s, err := localstore.Open(dir)
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	cur := s // the open store: the first, then the reopened one
	name := "localstore (exact)"
	switch kind {
	case memory.IndexDefault:
		name = fmt.Sprintf("localstore (default: ivf over int8, rerank x%d)", localstore.QuantisedRerank)
	case memory.IndexHNSW:
		name = "localstore (kind hnsw: ivf+int8)"
	}
	b, err := storeBackend(name, s, cfg, kind, func() { cur.Close(); os.RemoveAll(dir) })
	if err != nil {
		return nil, err
	}
	b.exact = kind == memory.IndexExact
	b.restart = func(ctx context.Context) (func(ctx context.Context, q []float32, k int) ([]int, error), time.Duration, int64, error) {
		if err := cur.Close(); err != nil {
			return nil, 0, 0, err
		}
		runtime.GC()
		debug.FreeOSMemory()
		rss0 := residentBytes()
		t0 := time.Now()
		s2, err := localstore.Open(dir)
		if err != nil {
			return nil, 0, 0, err
		}
		open := time.Since(t0)
		cur = s2
		return storeSearch(s2, nil), open, rss0, nil
	}
	return b, nil
}

func pgstoreBackend(ctx context.Context, cfg Config) (*backend, error) {
	db, err := sqldb.Open(ctx, cfg.PostgresURL)
	if err != nil {
		return nil, err
	}
	s, err := pgstore.New(ctx, db)
	if err != nil {
		db.Close()
		return nil, err
	}
	_ = s.DeleteNamespace(ctx, "bench", "bench")
	return storeBackend("pgstore (hnsw)", s, cfg, memory.IndexHNSW, func() {
		_ = s.DeleteNamespace(context.Background(), "bench", "bench")
		s.Close()
		db.Close()
	})
}

// sqlBackend is pgvector by hand: COPY into a bare table, then build the HNSW index, then query. Filtered
// queries use hnsw.iterative_scan = relaxed_order, as pgstore does.
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
		fmt.Sprintf("CREATE TABLE membench_items (id int PRIMARY KEY, bucket int NOT NULL, embedding vector(%d))", cfg.Dim),
	} {
		if _, err := conn.Exec(ctx, q); err != nil {
			conn.Close(ctx)
			return nil, err
		}
	}
	query := func(where string) func(ctx context.Context, q []float32, k int) ([]int, error) {
		return func(ctx context.Context, q []float32, k int) ([]int, error) {
			rows, err := conn.Query(ctx, "SELECT id FROM membench_items "+where+" ORDER BY embedding <=> $1 LIMIT $2", pgvector.NewVector(q), k)
			if err != nil {
				return nil, err
			}
			return pgx.CollectRows(rows, pgx.RowTo[int])
		}
	}
	return &backend{
		name: "pgvector-sql (copy, then hnsw)",
		ingest: func(ctx context.Context, d dataset, done func(int)) error {
			rows := make([][]any, len(d.vecs))
			for i, v := range d.vecs {
				rows[i] = []any{i, i % d.buckets, pgvector.NewVector(v)}
			}
			if _, err := conn.CopyFrom(ctx, pgx.Identifier{"membench_items"}, []string{"id", "bucket", "embedding"}, pgx.CopyFromRows(rows)); err != nil {
				return err
			}
			done(len(d.vecs) / 10) // the index build is most of the time
			// The same build memory as pgstore's, so the graph is built in memory by both.
			if _, err := conn.Exec(ctx, "SET maintenance_work_mem = '"+pgstore.BuildMemory+"'"); err != nil {
				return err
			}
			if _, err := conn.Exec(ctx, "CREATE INDEX ON membench_items USING hnsw (embedding vector_cosine_ops) WITH (m = 16, ef_construction = 64)"); err != nil {
				return err
			}
			for _, q := range []string{"ANALYZE membench_items", "SET hnsw.ef_search = " + strconv.Itoa(cfg.EfSearch), "SET hnsw.iterative_scan = relaxed_order"} {
				if _, err := conn.Exec(ctx, q); err != nil {
					return err
				}
			}
			return nil
		},
		search:   query(""),
		filtered: query(fmt.Sprintf("WHERE bucket = %d", filterBucket)),
		close: func() {
			_, _ = conn.Exec(context.Background(), "DROP TABLE IF EXISTS membench_items")
			conn.Close(context.Background())
		},
	}, nil
}
