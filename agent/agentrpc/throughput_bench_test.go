package agentrpc_test

import (
	"context"
	"io"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"

	"github.com/loom-dev/loom/agent/agentrpc"
	"github.com/loom-dev/loom/agent/agenttest"
	"github.com/loom-dev/loom/agent/sqlstore"
	agentv1 "github.com/loom-dev/loom/gen/loom/agent/v1"
	"github.com/loom-dev/loom/internal/rpcserver"
	"github.com/loom-dev/loom/internal/rpcserver/rpcservertest"
	"github.com/loom-dev/loom/internal/sqldb"
	"github.com/loom-dev/loom/internal/sqldb/sqldbtest"
)

// BenchmarkRunThroughput is issue 15's agent throughput: Run from 50 concurrent grpc-go callers through the real
// server, sim model at zero latency, against the floor of the same database measured in the same run: durable
// single-row commits per second (autocommit INSERTs), from 50 concurrent writers (commits/s, x-commits) and from
// one (commits/s@1, x-commits@1). Targets: runs/s >= 0.5x the floor; p99 at 50 callers <= 10x p50 at 1. It also
// prints the RPC path against the transport's ceiling on the same server: GetAgent (a one-row read through the
// whole interceptor chain) from 50 callers against grpc.health.v1 Check from 50 (rpc-x-health; target >= 0.8).
func BenchmarkRunThroughput(b *testing.B) {
	sqldbtest.EachDialect(b, func(b *testing.B, dialect sqldb.Dialect) {
		ctx := context.Background()
		db := sqldbtest.Open(b, dialect)
		store, err := sqlstore.New(ctx, db)
		if err != nil {
			b.Fatal(err)
		}
		srv, err := agentrpc.New(slog.New(slog.NewTextHandler(io.Discard, nil)), store, agenttest.NewMemory(), agentrpc.Config{})
		if err != nil {
			b.Fatal(err)
		}
		hs := rpcservertest.Start(b, rpcserver.Config{}, rpcservertest.TenantAuthenticator, srv.Service())
		c := agentv1.NewAgentServiceClient(hs.GRPCConn(b))
		tctx := metadata.AppendToOutgoingContext(ctx, "x-test-tenant", "bench")
		if _, err := c.CreateAgent(tctx, &agentv1.CreateAgentRequest{Agent: simAgent("bench", &agentv1.SimScript{Turns: []*agentv1.SimTurn{{Reply: "ok"}}})}); err != nil {
			b.Fatal(err)
		}
		health := healthpb.NewHealthClient(hs.GRPCConn(b))
		check := func() (time.Duration, error) {
			start := time.Now()
			_, err := health.Check(tctx, &healthpb.HealthCheckRequest{})
			return time.Since(start), err
		}
		getAgent := func() (time.Duration, error) {
			start := time.Now()
			_, err := c.GetAgent(tctx, &agentv1.GetAgentRequest{Name: "bench"})
			return time.Since(start), err
		}
		run := func() (time.Duration, error) {
			start := time.Now()
			_, err := c.Run(tctx, &agentv1.RunRequest{Agent: "bench", Input: "question"})
			return time.Since(start), err
		}
		if _, err := db.ExecContext(ctx, "CREATE TABLE floor (id BIGINT PRIMARY KEY, v TEXT NOT NULL)"); err != nil {
			b.Fatal(err)
		}
		insert := db.Rebind("INSERT INTO floor (id, v) VALUES (?, ?)")
		var ids atomic.Int64
		// concurrently runs n calls of f from 50 goroutines and returns calls per second and latencies.
		concurrently := func(n int, f func() (time.Duration, error)) (float64, []time.Duration) {
			lat := make([]time.Duration, n)
			var next atomic.Int64
			var wg sync.WaitGroup
			start := time.Now()
			for range 50 {
				wg.Go(func() {
					for i := next.Add(1) - 1; i < int64(n); i = next.Add(1) - 1 {
						d, err := f()
						if err != nil {
							b.Error(err)
							return
						}
						lat[i] = d
					}
				})
			}
			wg.Wait()
			return float64(n) / time.Since(start).Seconds(), lat
		}
		commit := func() (time.Duration, error) {
			start := time.Now()
			_, err := db.ExecContext(ctx, insert, ids.Add(1), "x")
			return time.Since(start), err
		}
		for range 100 { // warm up
			if _, err := run(); err != nil {
				b.Fatal(err)
			}
		}
		var single []time.Duration
		var runsPerSec, commitsPerSec, oneWriter, checksPerSec, getsPerSec float64
		var at50 []time.Duration
		rounds := 0
		for b.Loop() {
			start := time.Now()
			for range 500 {
				if _, err := commit(); err != nil {
					b.Fatal(err)
				}
			}
			oneWriter += 500 / time.Since(start).Seconds()
			cps, _ := concurrently(500, commit)
			rps, lat := concurrently(500, run)
			commitsPerSec += cps
			runsPerSec += rps
			hps, _ := concurrently(1000, check)
			gps, _ := concurrently(1000, getAgent)
			checksPerSec += hps
			getsPerSec += gps
			at50 = append(at50, lat...)
			for range 50 {
				d, err := run()
				if err != nil {
					b.Fatal(err)
				}
				single = append(single, d)
			}
			rounds++
		}
		slices.Sort(single)
		slices.Sort(at50)
		p50one, p99fifty := single[len(single)/2], at50[len(at50)*99/100]
		b.ReportMetric(runsPerSec/float64(rounds), "runs/s")
		b.ReportMetric(commitsPerSec/float64(rounds), "commits/s")
		b.ReportMetric(runsPerSec/commitsPerSec, "x-commits")
		b.ReportMetric(oneWriter/float64(rounds), "commits/s@1")
		b.ReportMetric(runsPerSec/oneWriter, "x-commits@1")
		b.ReportMetric(float64(p50one.Microseconds()), "p50@1-us")
		b.ReportMetric(float64(p99fifty.Microseconds()), "p99@50-us")
		b.ReportMetric(float64(p99fifty)/float64(p50one), "p99@50/p50@1")
		b.ReportMetric(checksPerSec/float64(rounds), "health/s")
		b.ReportMetric(getsPerSec/float64(rounds), "getagent/s")
		b.ReportMetric(getsPerSec/checksPerSec, "rpc-x-health")
	})
}
