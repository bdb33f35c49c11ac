// Package scale_test measures, on a real PostgreSQL, how the costs of the tables that grow without bound (run
// events, memory records) change with their size, and what retention costs by DELETE against dropping a
// partition. docs/operations.md ("Past one database") quotes its figures. Run it with:
//
//	LOOM_TEST_DATABASE_URL=postgres://... go test ./deploy/scale -run '^$' -bench . -benchtime 1x -timeout 30m
//
// Every ratio is against the smallest size of the same run (the baseline); LOOM_SCALE_EVENTS and
// LOOM_SCALE_RECORDS (comma-separated sizes) change the sizes.
package scale_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"math"
	mrand "math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/loom-dev/loom/internal/sqldb"
	"github.com/loom-dev/loom/internal/sqldb/sqldbtest"
	"github.com/loom-dev/loom/memory"
	"github.com/loom-dev/loom/memory/pgstore"
)

const (
	eventsPerRun = 20
	eventBytes   = 120 // a typical encoded WatchRunResponse (a step output of a short text)
	days         = 30  // the events of a table span this many days, one partition each when partitioned
	dayMicros    = int64(24 * time.Hour / time.Microsecond)
)

func sizes(b *testing.B, env string, def []int) []int {
	v := os.Getenv(env)
	if v == "" {
		return def
	}
	var out []int
	for _, f := range strings.Split(v, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n <= 0 {
			b.Fatalf("%s: %q is not a size", env, f)
		}
		out = append(out, n)
	}
	return out
}

func pct(ds []time.Duration, p int) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[min(len(s)-1, len(s)*p/100)]
}

func ms(d time.Duration) string { return fmt.Sprintf("%.3f ms", float64(d.Microseconds())/1000) }

func ratio(d, base time.Duration) string { return fmt.Sprintf("%.2fx", float64(d)/float64(base)) }

func hexID(r *mrand.Rand) string {
	var b [12]byte
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return "run_" + hex.EncodeToString(b[:])
}

// eventTable is one layout of run_events: plain (the layout before partitions, plus the event_time index that
// DELETE-based retention needs) or partitioned by day.
type eventTable struct {
	name        string
	partitioned bool
}

func (t eventTable) create(ctx context.Context, b *testing.B, pool *pgxpool.Pool, start int64) {
	b.Helper()
	stmts := []string{}
	if t.partitioned {
		stmts = append(stmts, `CREATE TABLE `+t.name+` (run_id TEXT NOT NULL, sequence BIGINT NOT NULL, event BYTEA NOT NULL,
			event_time BIGINT NOT NULL, PRIMARY KEY (run_id, sequence, event_time)) PARTITION BY RANGE (event_time)`)
		for d := range days + 2 {
			lo := start + int64(d)*dayMicros
			stmts = append(stmts, fmt.Sprintf(`CREATE TABLE %s_%d PARTITION OF %s FOR VALUES FROM (%d) TO (%d)`, t.name, d, t.name, lo, lo+dayMicros))
		}
	} else {
		stmts = append(stmts, `CREATE TABLE `+t.name+` (run_id TEXT NOT NULL, sequence BIGINT NOT NULL, event BYTEA NOT NULL,
			event_time BIGINT NOT NULL, PRIMARY KEY (run_id, sequence))`, `CREATE INDEX ON `+t.name+` (event_time)`)
	}
	for _, q := range stmts {
		if _, err := pool.Exec(ctx, q); err != nil {
			b.Fatal(err)
		}
	}
}

// load adds n events (n/eventsPerRun runs, spread evenly over the days) by COPY and returns the runs added with
// their first event's time.
func (t eventTable) load(ctx context.Context, b *testing.B, pool *pgxpool.Pool, r *mrand.Rand, n int, start int64) map[string]int64 {
	b.Helper()
	runs := map[string]int64{}
	payload := make([]byte, eventBytes)
	_, _ = rand.Read(payload)
	rows := make([][]any, 0, n)
	for len(rows) < n {
		id := hexID(r)
		at := start + r.Int64N(int64(days)*dayMicros-dayMicros/2)
		runs[id] = at
		for s := 1; s <= eventsPerRun && len(rows) < n; s++ {
			rows = append(rows, []any{id, int64(s), payload, at + int64(s)})
		}
	}
	if _, err := pool.CopyFrom(ctx, pgx.Identifier{t.name}, []string{"run_id", "sequence", "event", "event_time"}, pgx.CopyFromRows(rows)); err != nil {
		b.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `VACUUM ANALYZE `+t.name); err != nil {
		b.Fatal(err)
	}
	return runs
}

type eventCosts struct {
	insert, read, readRecent time.Duration
}

// measure times, 300 times each: one transaction inserting a new run's 10 events (one multi-row INSERT, as the
// engine writes them) and reading 20 events of an existing run as WatchRun does (by run, from its creation,
// after a sequence).
func (t eventTable) measure(ctx context.Context, b *testing.B, pool *pgxpool.Pool, r *mrand.Rand, runs map[string]int64, now int64) eventCosts {
	b.Helper()
	ids := make([]string, 0, len(runs))
	for id := range runs {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	payload := make([]byte, eventBytes)
	var ins, rd []time.Duration
	ph := make([]string, 10)
	for i := range ph {
		ph[i] = fmt.Sprintf("($%d, $%d, $%d, $%d)", 4*i+1, 4*i+2, 4*i+3, 4*i+4)
	}
	insert := `INSERT INTO ` + t.name + ` (run_id, sequence, event, event_time) VALUES ` + strings.Join(ph, ", ")
	// As the engine reads: from the run's creation to its end plus an hour.
	read := `SELECT event FROM ` + t.name + ` WHERE run_id = $1 AND event_time >= $2 AND event_time <= $3 AND sequence > $4 ORDER BY sequence LIMIT 100`
	var recent []string // runs of the last day
	for _, id := range ids {
		if runs[id] >= now-dayMicros*3/2 {
			recent = append(recent, id)
		}
	}
	readRun := func(q string) time.Duration {
		t0 := time.Now()
		rows, err := pool.Query(ctx, read, q, runs[q], runs[q]+3600e6, 0)
		if err != nil {
			b.Fatal(err)
		}
		got := 0
		for rows.Next() {
			got++
		}
		rows.Close()
		if got == 0 {
			b.Fatalf("%s: run %s has no events", t.name, q)
		}
		return time.Since(t0)
	}
	var rdRecent []time.Duration
	for i := range 350 {
		id := hexID(r)
		args := make([]any, 0, 40)
		for s := range 10 {
			args = append(args, id, int64(s+1), payload, now+int64(s))
		}
		t0 := time.Now()
		if _, err := pool.Exec(ctx, insert, args...); err != nil {
			b.Fatal(err)
		}
		insert := time.Since(t0)
		any := readRun(ids[r.IntN(len(ids))])
		last := readRun(recent[r.IntN(len(recent))])
		if i < 50 {
			continue // warm-up
		}
		ins, rd, rdRecent = append(ins, insert), append(rd, any), append(rdRecent, last)
	}
	return eventCosts{insert: pct(ins, 50), read: pct(rd, 50), readRecent: pct(rdRecent, 50)}
}

// retention removes the oldest day's events: DELETE (then VACUUM, which DELETE-based retention needs to reuse
// the space) from the plain table, DETACH CONCURRENTLY and DROP of one partition from the partitioned one.
func (t eventTable) retention(ctx context.Context, b *testing.B, pool *pgxpool.Pool, start int64) (time.Duration, time.Duration, int64) {
	b.Helper()
	t0 := time.Now()
	if !t.partitioned {
		tag, err := pool.Exec(ctx, fmt.Sprintf(`DELETE FROM %s WHERE event_time < %d`, t.name, start+dayMicros))
		if err != nil {
			b.Fatal(err)
		}
		del := time.Since(t0)
		t1 := time.Now()
		if _, err := pool.Exec(ctx, `VACUUM `+t.name); err != nil {
			b.Fatal(err)
		}
		return del, time.Since(t1), tag.RowsAffected()
	}
	var n int64
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM `+t.name+`_0`).Scan(&n); err != nil {
		b.Fatal(err)
	}
	t0 = time.Now()
	if _, err := pool.Exec(ctx, `ALTER TABLE `+t.name+` DETACH PARTITION `+t.name+`_0 CONCURRENTLY`); err != nil {
		b.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `DROP TABLE `+t.name+`_0`); err != nil {
		b.Fatal(err)
	}
	return time.Since(t0), 0, n
}

func openPool(b *testing.B) *pgxpool.Pool {
	b.Helper()
	url := sqldbtest.PostgresURL(b)
	pool, err := pgxpool.New(context.Background(), url)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(pool.Close)
	return pool
}

// BenchmarkEventsAtScale loads run events at growing sizes into both layouts and prints, per size, the p50 of an
// insert transaction and of a WatchRun read, and the cost of removing the oldest of 30 days.
func BenchmarkEventsAtScale(b *testing.B) {
	ns := sizes(b, "LOOM_SCALE_EVENTS", []int{10_000, 500_000, 3_000_000})
	ctx := context.Background()
	for b.Loop() {
		pool := openPool(b)
		r := mrand.New(mrand.NewPCG(1, 2))
		start := (time.Now().UnixMicro()/dayMicros - days) * dayMicros
		now := start + int64(days)*dayMicros + dayMicros/2
		type row struct {
			n                 int
			plain, part       eventCosts
			del, vac, drop    time.Duration
			deleted, dropped  int64
			sizePlain, sizePt int64
		}
		var out []row
		for i, n := range ns {
			res := row{n: n}
			for _, t := range []eventTable{{fmt.Sprintf("plain_%d", i), false}, {fmt.Sprintf("part_%d", i), true}} {
				t.create(ctx, b, pool, start)
				runs := t.load(ctx, b, pool, r, n, start)
				// The load's WAL is flushed before measuring, so a checkpoint does not land in the middle (needs
				// pg_checkpoint or superuser; without it the measurement goes on regardless).
				_, _ = pool.Exec(ctx, `CHECKPOINT`)
				var size int64
				if err := pool.QueryRow(ctx, `SELECT sum(pg_total_relation_size(c.oid)) FROM pg_class c
					WHERE c.relname = $1 OR c.relname LIKE $1 || '\_%'`, t.name).Scan(&size); err != nil {
					b.Fatal(err)
				}
				c := t.measure(ctx, b, pool, r, runs, now)
				d, v, k := t.retention(ctx, b, pool, start)
				if t.partitioned {
					res.part, res.drop, res.dropped, res.sizePt = c, d, k, size
				} else {
					res.plain, res.del, res.vac, res.deleted, res.sizePlain = c, d, v, k, size
				}
				if _, err := pool.Exec(ctx, `DROP TABLE `+t.name); err != nil {
					b.Fatal(err)
				}
			}
			out = append(out, res)
		}
		base := out[0].plain
		b.Logf("run events over %d days: p50 of a 10-event insert transaction and of a 20-event WatchRun read (of any run; of a run of the last day); ratios against the plain table of %d events", days, ns[0])
		b.Logf("| events | size | insert plain | insert partitioned | read plain | read partitioned | read recent plain | read recent partitioned | DELETE 1 day (+VACUUM) | DROP 1 partition |")
		b.Logf("|---|---|---|---|---|---|---|---|---|---|")
		for _, x := range out {
			b.Logf("| %d | %.0f MiB | %s (%s) | %s (%s) | %s (%s) | %s (%s) | %s (%s) | %s (%s) | %s + %s (%d rows) | %s (%d rows, %.0fx faster) |",
				x.n, float64(x.sizePlain)/(1<<20),
				ms(x.plain.insert), ratio(x.plain.insert, base.insert), ms(x.part.insert), ratio(x.part.insert, base.insert),
				ms(x.plain.read), ratio(x.plain.read, base.read), ms(x.part.read), ratio(x.part.read, base.read),
				ms(x.plain.readRecent), ratio(x.plain.readRecent, base.readRecent), ms(x.part.readRecent), ratio(x.part.readRecent, base.readRecent),
				ms(x.del), ms(x.vac), x.deleted, ms(x.drop), x.dropped, float64(x.del+x.vac)/math.Max(1, float64(x.drop)))
		}
		last := out[len(out)-1]
		b.ReportMetric(float64(last.plain.read)/float64(base.read), "read-ratio-largest")
		b.ReportMetric(float64(last.del+last.vac)/float64(last.drop), "delete/drop-largest")
	}
}

// BenchmarkMemoryRecordsAtScale loads one namespace of the memory store on pgvector (dimension 64) per size and
// prints the p50 of a top-10 search before its HNSW index exists (an exact scan), the index build, and then the
// p50 of a 10-record upsert and of a top-10 search, against the smallest size.
func BenchmarkMemoryRecordsAtScale(b *testing.B) {
	ns := sizes(b, "LOOM_SCALE_RECORDS", []int{10_000, 50_000, 150_000})
	const dim = 64
	ctx := context.Background()
	for b.Loop() {
		url := sqldbtest.PostgresURL(b)
		db, err := sqldb.Open(ctx, url)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { db.Close() })
		store, err := pgstore.New(ctx, db)
		if err != nil {
			b.Fatal(err)
		}
		r := mrand.New(mrand.NewPCG(3, 4))
		vec := func() []float32 {
			v := make([]float32, dim)
			for i := range v {
				v[i] = float32(r.NormFloat64())
			}
			return v
		}
		next := 0
		add := func(name string, k int) {
			batch := make([]memory.Record, 0, 1000)
			for range k {
				next++
				batch = append(batch, memory.Record{ID: "r" + strconv.Itoa(next), Text: "record " + strconv.Itoa(next), Vector: vec(),
					Metadata:   map[string]memory.Value{"topic": memory.StringValue(strconv.Itoa(next % 10))},
					UpdateTime: time.Now()})
				if len(batch) == cap(batch) {
					if err := store.Upsert(ctx, "t", name, batch); err != nil {
						b.Fatal(err)
					}
					batch = batch[:0]
				}
			}
			if len(batch) > 0 {
				if err := store.Upsert(ctx, "t", name, batch); err != nil {
					b.Fatal(err)
				}
			}
		}
		search := func(name string) time.Duration {
			t0 := time.Now()
			hits, err := store.Search(ctx, "t", name, memory.Query{Vector: vec(), TopK: 10})
			if err != nil || len(hits) != 10 {
				b.Fatalf("search: %d hits, %v", len(hits), err)
			}
			return time.Since(t0)
		}
		type row struct {
			n                    int
			exact, build         time.Duration
			upsert, search, load time.Duration
		}
		var out []row
		for i, n := range ns {
			name := "n" + strconv.Itoa(i)
			if _, err := store.CreateNamespace(ctx, "t", memory.Namespace{Name: name, Dimension: dim, Metric: memory.MetricCosine,
				IndexKind: memory.IndexHNSW}); err != nil {
				b.Fatal(err)
			}
			t0 := time.Now()
			add(name, n)
			load := time.Since(t0)
			// A few exact scans, then the build at once: the store's own background build would start
			// pgstore.IndexDelay after the last write.
			var exact []time.Duration
			for range 5 {
				exact = append(exact, search(name))
			}
			t0 = time.Now()
			if err := store.BuildIndexes(ctx); err != nil {
				b.Fatal(err)
			}
			build := time.Since(t0)
			var ups, srch []time.Duration
			for j := range 120 {
				t0 := time.Now()
				add(name, 10)
				u := time.Since(t0)
				sd := search(name)
				if j >= 20 { // the first 20 warm up
					ups, srch = append(ups, u), append(srch, sd)
				}
			}
			out = append(out, row{n: n, exact: pct(exact, 50), build: build, upsert: pct(ups, 50), search: pct(srch, 50), load: load})
		}
		base := out[0]
		b.Logf("memory records (one namespace per size, dimension 64): p50 of a top-10 search before the HNSW index (exact scan), the index build, then p50 of a 10-record upsert and a top-10 search with it; ratios against %d records", ns[0])
		b.Logf("| records | load (batches of 1000) | search, no index | HNSW build | upsert 10 | search top 10 |")
		b.Logf("|---|---|---|---|---|---|")
		for _, x := range out {
			b.Logf("| %d | %.0f records/s | %s (%s) | %s | %s (%s) | %s (%s) |", x.n, float64(x.n)/x.load.Seconds(),
				ms(x.exact), ratio(x.exact, base.exact), ms(x.build), ms(x.upsert), ratio(x.upsert, base.upsert), ms(x.search), ratio(x.search, base.search))
		}
		last := out[len(out)-1]
		b.ReportMetric(float64(last.search)/float64(base.search), "search-ratio-largest")
	}
}
