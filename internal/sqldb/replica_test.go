package sqldb_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/loom-dev/loom/internal/principal"
	"github.com/loom-dev/loom/internal/sqldb"
	"github.com/loom-dev/loom/internal/sqldb/sqldbtest"
)

// The tests of this file share one streaming replica of the test server (see sqldbtest.SharedReplica) and run
// one after the other: some stop it or pause its replay.

func TestMain(m *testing.M) { sqldbtest.Main(m) }

// replicated opens a fresh database with a read replica and a table loom.kv (k int primary key, v int) holding
// rows 0..rows-1, and waits until the replica serves reads.
func replicated(t testing.TB, rows int, opts sqldb.Options) (*sqldb.DB, *sqldbtest.Replica) {
	t.Helper()
	ctx := context.Background()
	rep := sqldbtest.SharedReplica(t)
	primaryURL := sqldbtest.PostgresURL(t)
	setup, err := sqldb.Open(ctx, primaryURL)
	if err != nil {
		t.Fatal(err)
	}
	kv := setup.Component("test")
	for _, q := range []string{
		"CREATE SCHEMA " + pgx.Identifier{kv.Schema}.Sanitize(),
		kv.Rebind("CREATE TABLE loom.kv (k int PRIMARY KEY, v int NOT NULL)"),
		kv.Rebind("INSERT INTO loom.kv SELECT g, 0 FROM generate_series(0, ?::int - 1) g"),
	} {
		args := []any{}
		if q[0] == 'I' {
			args = append(args, rows)
		}
		if _, err := kv.Pool.Exec(ctx, q, args...); err != nil {
			t.Fatal(err)
		}
	}
	setup.Close()
	opts.ReadURL = rep.URL(t, primaryURL)
	db, err := sqldb.Open(ctx, primaryURL, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	db = db.Component("test")
	waitFor(t, db, "the replica to be up", func(st sqldb.ReplicaStatus) bool { return !st.CheckedAt.IsZero() && st.Err == nil })
	return db, rep
}

// waitFor polls (each poll routes a read, which wakes the tracker) until cond holds.
func waitFor(t testing.TB, db *sqldb.DB, what string, cond func(sqldb.ReplicaStatus) bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond(db.ReplicaStatus()) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s: %+v", what, db.ReplicaStatus())
		}
		db.ReadPool(context.Background())
		time.Sleep(2 * time.Millisecond)
	}
}

func as(tenant, subject string) context.Context {
	return principal.NewContext(context.Background(), principal.Principal{Tenant: tenant, Subject: subject})
}

func diff(after, before map[string]float64) map[string]float64 {
	out := map[string]float64{}
	for k, v := range after {
		if d := v - before[k]; d != 0 {
			out[k] = d
		}
	}
	return out
}

func write(t testing.TB, ctx context.Context, db *sqldb.DB, k, v int) {
	t.Helper()
	if _, err := db.Pool.Exec(ctx, db.Rebind("UPDATE loom.kv SET v = ? WHERE k = ?"), v, k); err != nil {
		t.Fatal(err)
	}
	db.Wrote(ctx)
}

// read returns row k's value and whether the replica served it.
func read(ctx context.Context, db *sqldb.DB, k int) (v int, onReplica bool, err error) {
	err = db.Read(ctx, func(pool *pgxpool.Pool) error {
		onReplica = pool != db.Pool
		return pool.QueryRow(ctx, db.Rebind("SELECT v FROM loom.kv WHERE k = ?"), k).Scan(&v)
	})
	return v, onReplica, err
}

// TestReadYourWrites writes and at once reads back, many times: the caller always sees its write, while another
// caller's reads go to the replica and the writer's own reads return to it once it has replayed the write.
func TestReadYourWrites(t *testing.T) {
	db, _ := replicated(t, 2, sqldb.Options{})
	writer, other := as("acme", "alice"), as("acme", "bob")
	before := sqldbtest.ReadCounts(t, db)
	const n = 500
	for i := 1; i <= n; i++ {
		write(t, writer, db, 0, i)
		v, _, err := read(writer, db, 0)
		if err != nil {
			t.Fatal(err)
		}
		if v != i {
			t.Fatalf("iteration %d: the writer read %d after writing %d", i, v, i)
		}
		if _, onReplica, err := read(other, db, 1); err != nil || !onReplica {
			t.Fatalf("iteration %d: another caller's read: on replica %v, %v", i, onReplica, err)
		}
	}
	got := diff(sqldbtest.ReadCounts(t, db), before)
	if got["primary/read_your_writes"] < n || got["replica/ok"] < n {
		t.Errorf("reads = %v, want at least %d read_your_writes (the writer) and %d on the replica (the other caller)", got, n, n)
	}
	t.Logf("reads: %v", got)

	// The same principal in another tenant is another caller.
	if _, onReplica, err := read(as("other", "alice"), db, 1); err != nil || !onReplica {
		t.Errorf("alice of another tenant: on replica %v, %v", onReplica, err)
	}
	// Once the replica has replayed the write, the writer's reads go back to it, and see the write.
	deadline := time.Now().Add(10 * time.Second)
	for {
		v, onReplica, err := read(writer, db, 0)
		if err != nil {
			t.Fatal(err)
		}
		if onReplica {
			if v != n {
				t.Fatalf("the replica served the writer %d, want %d", v, n)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the writer's reads never went back to the replica")
		}
		time.Sleep(time.Millisecond)
	}
}

// TestReaderReadYourWrites is TestReadYourWrites for database/sql reads through a Reader.
func TestReaderReadYourWrites(t *testing.T) {
	db, _ := replicated(t, 1, sqldb.Options{})
	ctx := as("acme", "carol")
	for i := 1; i <= 200; i++ {
		write(t, ctx, db, 0, i)
		var v int
		rows, err := db.Reader(ctx).QueryContext(ctx, db.Rebind("SELECT v FROM loom.kv WHERE k = ?"), 0)
		if err != nil {
			t.Fatal(err)
		}
		for rows.Next() {
			if err := rows.Scan(&v); err != nil {
				t.Fatal(err)
			}
		}
		if err := rows.Close(); err != nil {
			t.Fatal(err)
		}
		if v != i {
			t.Fatalf("read %d after writing %d", v, i)
		}
	}
}

// TestReplicaStopped stops the replica under a steady load of reads: none fails, they move to the primary, and
// back to the replica once it is started again.
func TestReplicaStopped(t *testing.T) {
	db, rep := replicated(t, 10, sqldb.Options{})
	t.Cleanup(func() { rep.Start(t) })
	var (
		stop     atomic.Bool
		wg       sync.WaitGroup
		failed   atomic.Int64
		served   atomic.Int64
		errOnce  sync.Once
		firstErr error
	)
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx := as("acme", fmt.Sprintf("reader-%d", g))
			for i := 0; !stop.Load(); i++ {
				var err error
				if i%2 == 0 {
					_, _, err = read(ctx, db, i%10)
				} else {
					var rows interface{ Close() error }
					rows, err = db.Reader(ctx).QueryContext(ctx, db.Rebind("SELECT v FROM loom.kv WHERE k = ?"), i%10)
					if err == nil {
						err = rows.Close()
					}
				}
				if err != nil {
					failed.Add(1)
					errOnce.Do(func() { firstErr = err })
				}
				served.Add(1)
			}
		}()
	}
	time.Sleep(200 * time.Millisecond)
	before := sqldbtest.ReadCounts(t, db)
	rep.Stop(t)
	waitFor(t, db, "the replica to be seen down", func(st sqldb.ReplicaStatus) bool { return st.Err != nil })
	time.Sleep(300 * time.Millisecond)
	down := diff(sqldbtest.ReadCounts(t, db), before)
	rep.Start(t)
	waitFor(t, db, "the replica to be seen up again", func(st sqldb.ReplicaStatus) bool { return st.Err == nil })
	mid := sqldbtest.ReadCounts(t, db)
	time.Sleep(200 * time.Millisecond)
	stop.Store(true)
	wg.Wait()
	after := diff(sqldbtest.ReadCounts(t, db), mid)
	if n := failed.Load(); n > 0 {
		t.Fatalf("%d of %d reads failed; first: %v", n, served.Load(), firstErr)
	}
	if down["primary/replica_down"] == 0 {
		t.Errorf("reads while the replica was down: %v, want some primary/replica_down", down)
	}
	if after["replica/ok"] == 0 {
		t.Errorf("reads after the replica came back: %v, want some on the replica", after)
	}
	t.Logf("%d reads, none failed; while down: %v; after the restart: %v", served.Load(), down, after)
}

// TestReplicaLagging pauses replay on the replica while the primary keeps writing: reads leave the replica once
// it lags more than ReadMaxLag, not before, and return when replay resumes.
func TestReplicaLagging(t *testing.T) {
	const maxLag = 400 * time.Millisecond
	db, rep := replicated(t, 1, sqldb.Options{ReadMaxLag: maxLag})
	rep.PauseReplay(t)
	t.Cleanup(func() { rep.ResumeReplay(t) })
	reader := as("acme", "dave")
	// Another process writes: WAL advances, the replica does not replay it.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ctx.Err() == nil; i++ {
			_, _ = db.Pool.Exec(ctx, db.Rebind("UPDATE loom.kv SET v = ? WHERE k = 0"), i)
			time.Sleep(time.Millisecond)
		}
	}()
	start := time.Now()
	var lagged time.Duration
	for lagged == 0 {
		_, onReplica, err := read(reader, db, 0)
		if err != nil {
			t.Fatal(err)
		}
		if !onReplica {
			lagged = time.Since(start)
		}
		if time.Since(start) > 30*time.Second {
			t.Fatal("reads never left the paused replica")
		}
		time.Sleep(time.Millisecond)
	}
	cancel()
	wg.Wait()
	// The lag clock starts at the oldest primary sample the replica has not replayed, which can predate the
	// pause by the replication delay of that moment (the cluster is shared with other tests, so WAL always moves):
	// tens of milliseconds on a loaded machine. Leaving well before the bound is the bug this looks for.
	const slack = 150 * time.Millisecond
	if lagged < maxLag-slack {
		t.Errorf("reads left the replica after %v, before the bound %v (less %v of replication delay)", lagged, maxLag, slack)
	}
	if got := sqldbtest.ReadCounts(t, db); got["primary/replica_lagging"] == 0 {
		t.Errorf("reads = %v, want primary/replica_lagging", got)
	}
	t.Logf("replay paused: reads left the replica after %v (bound %v); lag seen %v", lagged.Round(time.Millisecond), maxLag, db.ReplicaStatus().Lag.Round(time.Millisecond))
	rep.ResumeReplay(t)
	waitFor(t, db, "the replica to catch up", func(st sqldb.ReplicaStatus) bool { return st.Err == nil && st.Lag == 0 })
	if _, onReplica, err := read(reader, db, 0); err != nil || !onReplica {
		t.Errorf("after replay resumed: on replica %v, %v", onReplica, err)
	}
}

// TestMixedLoad runs many callers that write their own row now and then and read it back often, and reports
// the share of reads the replica served. Every read must see the caller's last write.
func TestMixedLoad(t *testing.T) {
	const callers, workers, writeEvery = 64, 8, 10 // one operation in writeEvery is a write
	db, _ := replicated(t, callers, sqldb.Options{})
	before := sqldbtest.ReadCounts(t, db)
	var last [callers]atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	deadline := time.Now().Add(2 * time.Second)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Worker w runs the callers c with c % workers == w, so a caller's operations are sequential.
			for i := 0; time.Now().Before(deadline); i++ {
				c := w + i%(callers/workers)*workers
				ctx := as("acme", fmt.Sprintf("caller-%d", c))
				if i/(callers/workers)%writeEvery == 0 {
					v := int(last[c].Add(1))
					if _, err := db.Pool.Exec(ctx, db.Rebind("UPDATE loom.kv SET v = ? WHERE k = ?"), v, c); err != nil {
						errs <- err
						return
					}
					db.Wrote(ctx)
					continue
				}
				v, _, err := read(ctx, db, c)
				if err != nil {
					errs <- err
					return
				}
				if want := int(last[c].Load()); v != want {
					errs <- fmt.Errorf("caller %d read %d after writing %d", c, v, want)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	got := diff(sqldbtest.ReadCounts(t, db), before)
	total := 0.0
	for _, v := range got {
		total += v
	}
	if got["replica/ok"] == 0 {
		t.Errorf("reads = %v, want some on the replica", got)
	}
	t.Logf("mixed load (1 write in %d operations, %d callers): %.0f reads, %.1f%% served by the replica; by reason: %v",
		writeEvery, callers, total, 100*got["replica/ok"]/total, got)
}

func TestReadURLNeedsPostgres(t *testing.T) {
	_, err := sqldb.Open(context.Background(), "sqlite:"+sqldbtest.SQLitePath(t), sqldb.Options{ReadURL: "postgres://x/y"})
	if err == nil {
		t.Fatal("Open(sqlite, ReadURL) succeeded")
	}
}

// TestReplicaDownAtOpen: a replica that does not answer does not keep the process from starting; reads use the
// primary and say why.
func TestReplicaDownAtOpen(t *testing.T) {
	primaryURL := sqldbtest.PostgresURL(t)
	db, err := sqldb.Open(context.Background(), primaryURL, sqldb.Options{ReadURL: "postgres://loom:loom@127.0.0.1:1/nowhere?sslmode=disable"})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	waitFor(t, db, "the replica to be seen down", func(st sqldb.ReplicaStatus) bool { return st.Err != nil })
	var one int
	if err := db.Read(context.Background(), func(pool *pgxpool.Pool) error { return pool.QueryRow(context.Background(), "SELECT 1").Scan(&one) }); err != nil {
		t.Fatal(err)
	}
	if got := sqldbtest.ReadCounts(t, db); got["primary/replica_down"] == 0 {
		t.Errorf("reads = %v, want primary/replica_down", got)
	}
	t.Logf("status: %v", db.ReplicaStatus().Err)
}

// BenchmarkRead compares one indexed point read: on the primary without a replica configured (the baseline),
// on the replica, and on the primary through the routing (a caller whose write the replica has not replayed).
// Reported per op; the "route" benchmark is the routing decision alone.
func BenchmarkRead(b *testing.B) {
	db, _ := replicated(b, 100, sqldb.Options{})
	plain, err := sqldb.Open(context.Background(), sqldbtest.PostgresURL(b))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { plain.Close() })
	if _, err := plain.Pool.Exec(context.Background(), "CREATE TABLE kv AS SELECT g AS k, 0 AS v FROM generate_series(0, 99) g; ALTER TABLE kv ADD PRIMARY KEY (k)"); err != nil {
		b.Fatal(err)
	}
	ctx := as("acme", "bench")
	run := func(b *testing.B, db *sqldb.DB, query string, wantReplica bool) {
		i := 0
		for b.Loop() {
			var v int
			var onReplica bool
			err := db.Read(ctx, func(pool *pgxpool.Pool) error {
				onReplica = pool != db.Pool
				return pool.QueryRow(ctx, query, i%100).Scan(&v)
			})
			if err != nil {
				b.Fatal(err)
			}
			if onReplica != wantReplica {
				b.Fatalf("on replica = %v, want %v", onReplica, wantReplica)
			}
			i++
		}
	}
	b.Run("primary-only", func(b *testing.B) { run(b, plain, "SELECT v FROM kv WHERE k = $1", false) })
	b.Run("replica", func(b *testing.B) {
		// After an idle spell longer than ReadMaxLag the first read goes to the primary (the state is too old to
		// trust) and wakes the tracker: wait for a fresh state.
		waitFor(b, db, "a fresh state", func(st sqldb.ReplicaStatus) bool { return st.Err == nil && time.Since(st.CheckedAt) < time.Second })
		run(b, db, db.Rebind("SELECT v FROM loom.kv WHERE k = ?"), true)
	})
	b.Run("routed-to-primary", func(b *testing.B) {
		// A caller who writes before every read: the routing sends its reads to the primary.
		writer := as("acme", "writer")
		i := 0
		for b.Loop() {
			db.Wrote(writer)
			var v int
			err := db.Read(writer, func(pool *pgxpool.Pool) error {
				return pool.QueryRow(writer, db.Rebind("SELECT v FROM loom.kv WHERE k = ?"), i%100).Scan(&v)
			})
			if err != nil {
				b.Fatal(err)
			}
			i++
		}
	})
	b.Run("route", func(b *testing.B) {
		for b.Loop() {
			_ = db.ReadPool(ctx)
		}
	})
	b.Run("wrote", func(b *testing.B) {
		for b.Loop() {
			db.Wrote(ctx)
		}
	})
}
