package engine_test

import (
	"context"
	"database/sql"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"github.com/riverqueue/river/riverdriver/riversqlite"
	"github.com/riverqueue/river/rivermigrate"

	orchestratorv1 "github.com/loom-dev/loom/gen/loom/orchestrator/v1"
	"github.com/loom-dev/loom/internal/sqldb"
	"github.com/loom-dev/loom/internal/sqldb/sqldbtest"
	"github.com/loom-dev/loom/orchestrator/engine"
	"github.com/loom-dev/loom/orchestrator/orchestratortest"
	"github.com/loom-dev/loom/orchestrator/sqlstore"
)

// The benchmarks measure their own baselines in the same process, on the same fresh database, so the reported
// ratios do not depend on the machine:
//
//	BenchmarkSequentialStep:  per-step latency of a chain of durable agent steps vs one durable commit (a
//	                          single-row INSERT in its own transaction, measured between the runs so both see
//	                          the same load). Target: p50 <= 1.5x a commit (p50/floor).
//	BenchmarkIndependentSteps: burn-down of one-step runs vs River's own burn-down of as many no-op jobs with
//	                          the same worker count and fetch settings. Target: >= 1.0x River.
//	BenchmarkParallelJoin:    a 100-way parallel step of agent steps and a join step after it, from StartRun to
//	                          the run's end, in durable commits. Target: <= 20 commits.
//
// Run: LOOM_TEST_DATABASE_URL=... go test ./orchestrator/engine -run '^$' -bench . -benchtime 3s

// benchConfigs are the engine settings measured: what `loom serve` runs (the zero Config), and a 1 ms fetch
// poll (which also lowers River's fetch cooldown from 100 ms to 1 ms).
var benchConfigs = []struct {
	name string
	cfg  engine.Config
}{
	{"default", engine.Config{}},
	{"poll1ms", engine.Config{FetchPollInterval: time.Millisecond}},
}

type benchDB struct {
	db      *sqldb.DB
	store   *sqlstore.Store
	floorID int64
}

func openBenchDB(b *testing.B, dialect sqldb.Dialect) *benchDB {
	b.Helper()
	ctx := context.Background()
	db, _ := openShared(b, dialect)
	out := &benchDB{db: db}
	var err error
	if out.store, err = sqlstore.New(ctx, db); err != nil {
		b.Fatal(err)
	}
	return out
}

func (d *benchDB) engine(b *testing.B, cfg engine.Config) *engine.Engine {
	b.Helper()
	eng, err := engine.New(context.Background(), nil, d.db, &orchestratortest.Agents{}, nil, cfg)
	if err != nil {
		b.Fatal(err)
	}
	return eng
}

func (d *benchDB) blueprint(b *testing.B, name string, steps int) *orchestratorv1.Blueprint {
	b.Helper()
	var src strings.Builder
	fmt.Fprintf(&src, "name: %s\nsteps:\n", name)
	for i := range steps {
		fmt.Fprintf(&src, "  - id: s%d\n    agent: {agent: a, input: \"'x'\"}\n", i)
		if i > 0 {
			fmt.Fprintf(&src, "    depends_on: [s%d]\n", i-1)
		}
	}
	return d.create(b, src.String())
}

// create loads the blueprint in YAML src and stores it.
func (d *benchDB) create(b *testing.B, src string) *orchestratorv1.Blueprint {
	b.Helper()
	return createBlueprint(b, d.store, src)
}

// commits performs n floor commits and returns their latencies. Benchmarks interleave them with the work they
// measure, so that both see the same load on a shared machine.
func (d *benchDB) commits(b *testing.B, n int) []time.Duration {
	b.Helper()
	ctx := context.Background()
	if _, err := d.db.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS bench_floor (id BIGINT PRIMARY KEY, v TEXT NOT NULL)`); err != nil {
		b.Fatal(err)
	}
	lat := make([]time.Duration, n)
	for i := range n {
		d.floorID++
		id := d.floorID
		start := time.Now()
		var err error
		if d.db.Pool != nil {
			ptx, perr := d.db.Pool.Begin(ctx)
			if err = perr; err == nil {
				if _, err = ptx.Exec(ctx, `INSERT INTO bench_floor (id, v) VALUES ($1, 'x')`, id); err == nil {
					err = ptx.Commit(ctx)
				}
			}
		} else {
			stx, serr := d.db.BeginTx(ctx, nil)
			if err = serr; err == nil {
				if _, err = stx.ExecContext(ctx, `INSERT INTO bench_floor (id, v) VALUES (?, 'x')`, id); err == nil {
					err = stx.Commit()
				}
			}
		}
		if err != nil {
			b.Fatal(err)
		}
		lat[i] = time.Since(start)
	}
	return lat
}

// waitEnded polls the run's state with one small query (on SQLite every read takes the one connection the
// engine commits on: reading the whole run each time would slow what is measured).
func (d *benchDB) waitEnded(b *testing.B, id string, every time.Duration) {
	b.Helper()
	db := d.db.Component(sqldb.OrchestratorComponent)
	q := db.Rebind(`SELECT end_time FROM loom.runs WHERE id = ?`)
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(every) {
		var ended int64
		if err := db.QueryRowContext(context.Background(), q, id).Scan(&ended); err != nil {
			b.Fatal(err)
		}
		if ended != 0 {
			return
		}
		if time.Now().After(deadline) {
			b.Fatalf("run %s did not end", id)
		}
	}
}

func percentile(ds []time.Duration, p int) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[min(len(s)-1, len(s)*p/100)]
}

// BenchmarkSequentialStep runs b.N agent steps as chains (runs of up to 20 steps, each depending on the one
// before) against an instant agent, one run at a time.
func BenchmarkSequentialStep(b *testing.B) {
	for _, dialect := range []sqldb.Dialect{sqldb.SQLite, sqldb.Postgres} {
		for _, c := range benchConfigs {
			b.Run(string(dialect)+"/"+c.name, func(b *testing.B) {
				target := 500 * time.Microsecond
				if dialect == sqldb.Postgres {
					target = 1200 * time.Microsecond
				}
				d := openBenchDB(b, dialect)
				floors := d.commits(b, 100)
				eng := d.engine(b, c.cfg)
				orchestratortest.StartEngine(b, eng)
				const chain = 20
				full := d.blueprint(b, "chain", chain)
				var rest *orchestratorv1.Blueprint
				if b.N%chain != 0 {
					rest = d.blueprint(b, "rest", b.N%chain)
				}
				ctx := context.Background()
				var perStep []time.Duration
				b.ResetTimer()
				for done := 0; done < b.N; {
					bp := full
					if b.N-done < chain {
						bp = rest
					}
					r, err := eng.StartRun(ctx, tenant, bp, nil, "")
					if err != nil {
						b.Fatal(err)
					}
					d.waitEnded(b, r.GetId(), time.Millisecond)
					if r, err = eng.GetRun(ctx, tenant, r.GetId()); err != nil {
						b.Fatal(err)
					}
					if r.GetState() != orchestratorv1.RunState_RUN_STATE_SUCCEEDED {
						b.Fatalf("run = %v", r)
					}
					// A step's latency: from the commit that made it ready to the commit that recorded its output.
					for _, s := range r.GetSteps() {
						perStep = append(perStep, s.GetEndTime().AsTime().Sub(s.GetStartTime().AsTime()))
					}
					done += len(r.GetSteps())
					b.StopTimer()
					floors = append(floors, d.commits(b, len(r.GetSteps()))...) // the baseline under the same load
					b.StartTimer()
				}
				b.StopTimer()
				floor := percentile(floors, 50)
				wall := float64(b.Elapsed().Nanoseconds()) / float64(b.N)
				p50 := percentile(perStep, 50)
				b.ReportMetric(wall, "ns/step")
				b.ReportMetric(float64(p50.Microseconds())/1000, "p50-ms/step")
				b.ReportMetric(float64(percentile(perStep, 99).Microseconds())/1000, "p99-ms/step")
				b.ReportMetric(float64(floor.Microseconds())/1000, "floor-ms/commit")
				b.ReportMetric(float64(p50)/float64(floor), "p50/floor")
				b.ReportMetric(float64(p50)/float64(target), "p50/target")
			})
		}
	}
}

// migrateRiver applies River's migrations: the engine does not use River, its baseline does.
func migrateRiver[TTx any](b *testing.B, driver riverdriver.Driver[TTx], schema string) {
	b.Helper()
	m, err := rivermigrate.New(driver, &rivermigrate.Config{Schema: schema})
	if err != nil {
		b.Fatal(err)
	}
	if _, err := m.Migrate(context.Background(), rivermigrate.DirectionUp, nil); err != nil {
		b.Fatal(err)
	}
}

type noopArgs struct{}

func (noopArgs) Kind() string { return "bench_noop" }

// riverBurnDown inserts n no-op jobs, then starts a River client with the given workers and fetch settings and
// times until all of them have run.
func (d *benchDB) riverBurnDown(b *testing.B, n, workers int, poll, cooldown time.Duration) time.Duration {
	b.Helper()
	ctx := context.Background()
	var ran atomic.Int64
	done := make(chan struct{})
	ws := river.NewWorkers()
	river.AddWorker(ws, river.WorkFunc(func(context.Context, *river.Job[noopArgs]) error {
		if ran.Add(1) == int64(n) {
			close(done)
		}
		return nil
	}))
	cfg := &river.Config{
		Queues:            map[string]river.QueueConfig{"bench_noop": {MaxWorkers: workers}},
		Workers:           ws,
		FetchPollInterval: poll,
		FetchCooldown:     cooldown,
	}
	params := make([]river.InsertManyParams, n)
	for i := range params {
		params[i] = river.InsertManyParams{Args: noopArgs{}, InsertOpts: &river.InsertOpts{Queue: "bench_noop"}}
	}
	var (
		start, stop func(context.Context) error
		err         error
	)
	if d.db.Pool != nil {
		var c *river.Client[pgx.Tx]
		cfg.Schema = d.db.Component(sqldb.OrchestratorComponent).Schema
		driver := riverpgxv5.New(d.db.Pool)
		migrateRiver(b, driver, cfg.Schema)
		if c, err = river.NewClient(driver, cfg); err == nil {
			_, err = c.InsertMany(ctx, params)
			start, stop = c.Start, c.Stop
		}
	} else {
		var c *river.Client[*sql.Tx]
		driver := riversqlite.New(d.db.DB)
		migrateRiver(b, driver, "")
		if c, err = river.NewClient(driver, cfg); err == nil {
			_, err = c.InsertMany(ctx, params)
			start, stop = c.Start, c.Stop
		}
	}
	if err != nil {
		b.Fatal(err)
	}
	t0 := time.Now()
	if err := start(ctx); err != nil {
		b.Fatal(err)
	}
	select {
	case <-done:
	case <-time.After(2 * time.Minute):
		b.Fatalf("River burn-down: %d of %d jobs ran", ran.Load(), n)
	}
	elapsed := time.Since(t0)
	stopCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	_ = stop(stopCtx)
	return elapsed
}

// BenchmarkIndependentSteps queues b.N one-step runs with the engine stopped, then starts it and times until
// every run has succeeded; the baseline is River burning down b.N no-op jobs on the same database.
func BenchmarkIndependentSteps(b *testing.B) {
	for _, dialect := range []sqldb.Dialect{sqldb.SQLite, sqldb.Postgres} {
		for _, c := range benchConfigs {
			b.Run(string(dialect)+"/"+c.name, func(b *testing.B) {
				ctx := context.Background()
				d := openBenchDB(b, dialect)
				eng := d.engine(b, c.cfg) // also applies River's migrations
				bp := d.blueprint(b, "one", 1)
				// River with the engine's worker count and fetch poll (its own defaults otherwise).
				workers := 128 // engine.Config default
				poll := time.Second
				if c.cfg.FetchPollInterval > 0 {
					poll = c.cfg.FetchPollInterval
				}
				riverTime := d.riverBurnDown(b, b.N, workers, poll, min(poll, 100*time.Millisecond))
				for range b.N {
					if _, err := eng.StartRun(ctx, tenant, bp, nil, ""); err != nil {
						b.Fatal(err)
					}
				}
				count := `SELECT count(*) FROM loom.runs WHERE state = ?`
				b.ResetTimer()
				orchestratortest.StartEngine(b, eng)
				for {
					var n int
					if err := d.db.Component(sqldb.OrchestratorComponent).QueryRowContext(ctx, d.db.Component(sqldb.OrchestratorComponent).Rebind(count), int64(orchestratorv1.RunState_RUN_STATE_SUCCEEDED)).Scan(&n); err != nil {
						b.Fatal(err)
					}
					if n == b.N {
						break
					}
					time.Sleep(5 * time.Millisecond)
				}
				b.StopTimer()
				engineRate := float64(b.N) / b.Elapsed().Seconds()
				riverRate := float64(b.N) / riverTime.Seconds()
				b.ReportMetric(engineRate, "steps/s")
				b.ReportMetric(riverRate, "river-jobs/s")
				b.ReportMetric(engineRate/riverRate, "x-river")
			})
		}
	}
}

// BenchmarkParallelJoin runs a 100-way parallel block of agent steps (an instant agent; two parallel steps of 50
// under one, as a parallel step holds at most 64) and a join step after it, one run at a time. Its cost is the run's span (from the StartRun commit's clock to the clock of the commit
// that ends the run, both taken before their commits) plus one commit, in durable commits of the same database
// measured between the runs.
func BenchmarkParallelJoin(b *testing.B) {
	sqldbtest.EachDialect(b, func(b *testing.B, dialect sqldb.Dialect) {
		const width = 100
		d := openBenchDB(b, dialect)
		floors := d.commits(b, 50)
		eng := d.engine(b, engine.Config{})
		orchestratortest.StartEngine(b, eng)
		var src strings.Builder
		members := make([]string, width)
		for i := range members {
			members[i] = fmt.Sprintf("p%d", i)
		}
		// A parallel step holds at most 64 members: two groups of 50 under one.
		fmt.Fprintf(&src, "name: wide\nsteps:\n  - id: fan\n    parallel: {steps: [g0, g1]}\n")
		fmt.Fprintf(&src, "  - id: g0\n    parallel: {steps: [%s]}\n", strings.Join(members[:width/2], ", "))
		fmt.Fprintf(&src, "  - id: g1\n    parallel: {steps: [%s]}\n", strings.Join(members[width/2:], ", "))
		for _, m := range members {
			fmt.Fprintf(&src, "  - id: %s\n    agent: {agent: a, input: \"'x'\"}\n", m)
		}
		src.WriteString("  - id: join\n    depends_on: [fan]\n    agent: {agent: a, input: \"string(size(steps))\"}\n")
		stored := d.create(b, src.String())
		ctx := context.Background()
		var spans []time.Duration
		b.ResetTimer()
		for range b.N {
			r, err := eng.StartRun(ctx, tenant, stored, nil, "")
			if err != nil {
				b.Fatal(err)
			}
			d.waitEnded(b, r.GetId(), 2*time.Millisecond)
			if r, err = eng.GetRun(ctx, tenant, r.GetId()); err != nil {
				b.Fatal(err)
			}
			if r.GetState() != orchestratorv1.RunState_RUN_STATE_SUCCEEDED {
				b.Fatalf("run = %v", r)
			}
			if got := stepState(r, "join").GetStartTime().AsTime(); got.Before(stepState(r, "fan").GetEndTime().AsTime()) {
				b.Fatalf("join started before the parallel step ended")
			}
			spans = append(spans, r.GetEndTime().AsTime().Sub(r.GetCreateTime().AsTime()))
			b.StopTimer()
			floors = append(floors, d.commits(b, 10)...)
			b.StartTimer()
		}
		b.StopTimer()
		floor := percentile(floors, 50)
		p50 := percentile(spans, 50) + floor // the last commit is not in the span
		b.ReportMetric(float64(p50.Microseconds())/1000, "p50-ms/run")
		b.ReportMetric(float64(floor.Microseconds())/1000, "floor-ms/commit")
		b.ReportMetric(float64(p50)/float64(floor), "commits/run")
	})
}
