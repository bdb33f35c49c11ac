package memoryrpc_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"os"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/status"

	memoryv1 "github.com/loom-dev/loom/gen/loom/memory/v1"
	"github.com/loom-dev/loom/gen/loom/memory/v1/memoryv1connect"
	"github.com/loom-dev/loom/internal/principal"
	"github.com/loom-dev/loom/internal/procstat"
	"github.com/loom-dev/loom/internal/rpcserver"
	"github.com/loom-dev/loom/internal/rpcserver/rpcservertest"
	"github.com/loom-dev/loom/memory"
	"github.com/loom-dev/loom/memory/localstore"
	"github.com/loom-dev/loom/memory/memoryrpc"
)

// serveStore serves store through the real server (default limits, fairness included), the tenant taken from
// the test header, and returns a Connect client and a grpc-go client.
func serveStore(t *testing.T, store memory.Store) (connectClient, grpcClient) {
	t.Helper()
	srv := memoryrpc.New(slog.New(slog.NewTextHandler(io.Discard, nil)), store, nil)
	// The subject comes from X-Test-Subject when set, so one tenant can call with several keys.
	auth := func(r *http.Request) (principal.Principal, error) {
		p, err := rpcservertest.TenantAuthenticator(r)
		if s := r.Header.Get("X-Test-Subject"); s != "" {
			p.Subject = s
		}
		return p, err
	}
	hs := rpcservertest.Start(t, rpcserver.Config{}, auth, srv.Service())
	return connectClient{memoryv1connect.NewMemoryServiceClient(rpcservertest.HTTPClient(), hs.URL)},
		grpcClient{memoryv1.NewMemoryServiceClient(hs.GRPCConn(t))}
}

func openQuota(t *testing.T, q memory.Quota) *localstore.Store {
	t.Helper()
	s, err := localstore.Open(t.TempDir(), localstore.WithQuota(q))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// quotaViolation returns the QuotaFailure violation of a Connect or gRPC error, or nil.
func quotaViolation(err error) *errdetails.QuotaFailure_Violation {
	var details []any
	var ce *connect.Error
	if errors.As(err, &ce) {
		for _, d := range ce.Details() {
			if v, err := d.Value(); err == nil {
				details = append(details, v)
			}
		}
	} else {
		details = status.Convert(err).Details()
	}
	for _, d := range details {
		if qf, ok := d.(*errdetails.QuotaFailure); ok && len(qf.GetViolations()) > 0 {
			return qf.GetViolations()[0]
		}
	}
	return nil
}

// TestQuotaRPC checks quota refusals through the transport, with both clients: ResourceExhausted naming the
// quota, a QuotaFailure detail, and nothing of a refused batch written.
func TestQuotaRPC(t *testing.T) {
	t.Parallel()
	cc, gc := serveStore(t, openQuota(t, memory.Quota{Namespaces: 1, Records: 5}))
	for name, c := range map[string]client{"connect": cc, "grpc": gc} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			ctx := withTenant(context.Background(), "quota-"+name)
			if _, err := c.CreateNamespace(ctx, &memoryv1.CreateNamespaceRequest{Namespace: &memoryv1.Namespace{Name: "a", Dimension: 3}}); err != nil {
				t.Fatal(err)
			}
			_, err := c.CreateNamespace(ctx, &memoryv1.CreateNamespaceRequest{Namespace: &memoryv1.Namespace{Name: "b", Dimension: 3}})
			checkQuotaErr(t, "second namespace", err, "namespaces", "quota-"+name)
			batch := make([]*memoryv1.Record, 6)
			for i := range batch {
				batch[i] = &memoryv1.Record{Id: strconv.Itoa(i), Vector: []float32{1, float32(i), 0}}
			}
			_, err = c.Upsert(ctx, &memoryv1.UpsertRequest{Namespace: "a", Records: batch})
			checkQuotaErr(t, "batch of 6 at a quota of 5", err, "records", "quota-"+name)
			got, err := c.Get(ctx, &memoryv1.GetRequest{Namespace: "a", Ids: []string{"0", "5"}})
			if err != nil || len(got.GetRecords()) != 0 {
				t.Fatalf("refused batch left %d records (%v)", len(got.GetRecords()), err)
			}
			if _, err := c.Upsert(ctx, &memoryv1.UpsertRequest{Namespace: "a", Records: batch[:5]}); err != nil {
				t.Fatalf("batch of 5 at a quota of 5: %v", err)
			}
		})
	}
}

func checkQuotaErr(t *testing.T, what string, err error, quota, tenant string) {
	t.Helper()
	code, msg := codeOf(err)
	if code != connect.CodeResourceExhausted || !strings.Contains(msg, quota) {
		t.Fatalf("%s: %v, want ResourceExhausted naming %s", what, err, quota)
	}
	v := quotaViolation(err)
	if v == nil || v.GetSubject() != "tenant:"+tenant || v.GetQuotaMetric() != "memory."+quota || v.GetQuotaValue() <= 0 {
		t.Fatalf("%s: QuotaFailure violation %v, want subject tenant:%s, metric memory.%s and the limit", what, v, tenant, quota)
	}
}

// memFigures are the process's Go heap in use (after a GC) and resident set size, in MiB.
type memFigures struct{ heap, rss float64 }

func (m memFigures) String() string { return fmt.Sprintf("heap %.0f MiB, RSS %.0f MiB", m.heap, m.rss) }

func measure(t *testing.T) memFigures {
	t.Helper()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return memFigures{heap: float64(ms.HeapInuse) / (1 << 20), rss: procstat.RSSMiB(os.Getpid())}
}

func randomBatch(r *rand.Rand, prefix string, n, dim int) []*memoryv1.Record {
	out := make([]*memoryv1.Record, n)
	for i := range out {
		v := make([]float32, dim)
		for j := range v {
			v[j] = float32(r.NormFloat64())
		}
		out[i] = &memoryv1.Record{Id: fmt.Sprintf("%s-%d", prefix, i), Vector: v}
	}
	return out
}

// TestDoSBigUpsertsToQuota is issue 17's memory attack against the embedded store, through the transport:
// one tenant upserts 3 MB batches of 768-d vectors until its bytes quota refuses them, then keeps trying. The
// process's memory must stop growing at the quota, and be given back after DeleteNamespace. It prints the
// heap and RSS at each point. Not parallel: it measures the process.
func TestDoSBigUpsertsToQuota(t *testing.T) {
	const quota = 32 << 20
	const dim, batch, extra = 768, 1000, 20
	store := openQuota(t, memory.Quota{Bytes: quota})
	c, _ := serveStore(t, store)
	ctx := withTenant(context.Background(), "attacker")
	victim := withTenant(context.Background(), "victim")
	for _, ctx := range []context.Context{ctx, victim} {
		if _, err := c.CreateNamespace(ctx, &memoryv1.CreateNamespaceRequest{Namespace: &memoryv1.Namespace{Name: "big", Dimension: dim}}); err != nil {
			t.Fatal(err)
		}
	}
	r := rand.New(rand.NewPCG(1, 2))
	before := measure(t)
	var accepted, refused int
	for i := 0; refused == 0; i++ {
		_, err := c.Upsert(ctx, &memoryv1.UpsertRequest{Namespace: "big", Records: randomBatch(r, strconv.Itoa(i), batch, dim)})
		switch code, _ := codeOf(err); {
		case err == nil:
			accepted++
		case code == connect.CodeResourceExhausted && quotaViolation(err).GetQuotaMetric() == "memory.bytes":
			refused++
		default:
			t.Fatalf("upsert %d: %v", i, err)
		}
		if i > 2*quota/(4*dim*batch) {
			t.Fatalf("%d batches of %d MB accepted under a %d MiB quota", accepted, 4*dim*batch>>20, quota>>20)
		}
	}
	atQuota := measure(t)
	for i := range extra {
		if _, err := c.Upsert(ctx, &memoryv1.UpsertRequest{Namespace: "big", Records: randomBatch(r, "x"+strconv.Itoa(i), batch, dim)}); err == nil {
			t.Fatalf("upsert past the quota accepted")
		}
		refused++
	}
	// Another tenant still writes: the quota is per tenant.
	if _, err := c.Upsert(victim, &memoryv1.UpsertRequest{Namespace: "big", Records: randomBatch(r, "v", 10, dim)}); err != nil {
		t.Fatalf("victim upsert while the attacker is at its quota: %v", err)
	}
	afterRefused := measure(t)
	ns, err := c.GetNamespace(ctx, &memoryv1.GetNamespaceRequest{Name: "big"})
	if err != nil {
		t.Fatal(err)
	}
	stored := float64(ns.GetNamespace().GetStats().GetSizeBytes()) / (1 << 20)
	if _, err := c.DeleteNamespace(ctx, &memoryv1.DeleteNamespaceRequest{Name: "big"}); err != nil {
		t.Fatal(err)
	}
	afterDelete := measure(t)
	debug.FreeOSMemory() // what the store starts in the background for a large namespace, waited for here
	afterFree := measure(t)
	t.Logf("big upserts to a %d MiB bytes quota: %d batches of %d x %d accepted (%.1f MiB stored), %d refused (ResourceExhausted, QuotaFailure memory.bytes), 0 half-written",
		quota>>20, accepted, batch, dim, stored, refused)
	t.Logf("process memory: before %v; at quota %v; after %d more refused batches %v; after DeleteNamespace %v; after the store's FreeOSMemory %v",
		before, atQuota, extra, afterRefused, afterDelete, afterFree)
	if stored > quota>>20 {
		t.Errorf("stored %.1f MiB over a %d MiB quota", stored, quota>>20)
	}
	// Generous bounds: the figures are what the test is for.
	if grown := afterRefused.heap - atQuota.heap; grown > 32 {
		t.Errorf("heap grew %.0f MiB over %d refused batches", grown, extra)
	}
	if held := atQuota.heap - before.heap; held > 6*quota>>20 {
		t.Errorf("heap at the quota is %.0f MiB over the start, more than 6x the %d MiB quota", held, quota>>20)
	}
	if left := afterDelete.heap - before.heap; left > 16 {
		t.Errorf("heap after DeleteNamespace is still %.0f MiB over the start", left)
	}
}

// TestFairnessSearchFlood is issue 17's CPU attack: one tenant keeps 200 expensive searches (exact scans of
// 10,000 x 768) in flight, from two keys so that all 200 are admitted (128 a key), while another tenant runs the
// same search one at a time. The embedded store's scan gate serves tenants in turn, so the other tenant waits for
// about one scan, not for the flood. It prints the other tenant's p50 and p99 unloaded (before and after) and
// under the flood, and asserts only that none of its searches fails: latency on a shared 2-core machine is too
// noisy to assert, the figure is what counts.
func TestFairnessSearchFlood(t *testing.T) {
	const dim, rows, flood, samples = 768, 10_000, 200, 300
	store := openQuota(t, memory.Quota{})
	cc, gc := serveStore(t, store)
	r := rand.New(rand.NewPCG(3, 4))
	for _, tenant := range []string{"flood", "victim"} {
		ctx := withTenant(context.Background(), tenant)
		if _, err := cc.CreateNamespace(ctx, &memoryv1.CreateNamespaceRequest{Namespace: &memoryv1.Namespace{
			Name: "docs", Dimension: dim, Index: &memoryv1.IndexConfig{Kind: memoryv1.IndexKind_INDEX_KIND_EXACT},
		}}); err != nil {
			t.Fatal(err)
		}
		for i := range rows / 1000 {
			if _, err := cc.Upsert(ctx, &memoryv1.UpsertRequest{Namespace: "docs", Records: randomBatch(r, strconv.Itoa(i), 1000, dim)}); err != nil {
				t.Fatal(err)
			}
		}
	}
	query := randomBatch(r, "q", 1, dim)[0].GetVector()
	search := func(ctx context.Context, c client) error {
		_, err := c.Search(ctx, &memoryv1.SearchRequest{Namespace: "docs", TopK: 10, Query: &memoryv1.SearchRequest_Vector{Vector: &memoryv1.Vector{Values: query}}})
		return err
	}
	victim := withTenant(context.Background(), "victim")
	latencies := func() (p50, p99 time.Duration) {
		d := make([]time.Duration, samples)
		for i := range d {
			start := time.Now()
			if err := search(victim, gc); err != nil {
				t.Fatalf("victim search: %v", err)
			}
			d[i] = time.Since(start)
		}
		slices.Sort(d)
		return d[samples/2], d[samples*99/100]
	}
	for range 20 { // warm up
		_ = search(victim, gc)
	}
	p50, p99 := latencies()

	fctx, stop := context.WithCancel(withTenant(context.Background(), "flood"))
	var wg sync.WaitGroup
	var done, failed atomic.Int64
	for i := range flood {
		kctx := context.WithValue(fctx, subjectKey{}, fmt.Sprint("key-", i%2))
		wg.Go(func() {
			for fctx.Err() == nil {
				err := search(kctx, cc)
				switch {
				case err == nil:
					done.Add(1)
				case fctx.Err() == nil:
					failed.Add(1)
					if code, _ := codeOf(err); code != connect.CodeResourceExhausted {
						t.Errorf("flood search: %v", err)
						return
					}
					// Over the per-principal limit: wait the RetryInfo delay, as clients' retry policies do. A
					// client that ignores it burns only its own CPU, which here is the server's too.
					select {
					case <-time.After(retryDelay(err)):
					case <-fctx.Done():
					}
				}
			}
		})
	}
	// Wait until the flood is queued at the store.
	for done.Load() < flood {
		runtime.Gosched()
		time.Sleep(time.Millisecond)
	}
	lp50, lp99 := latencies()
	stop()
	wg.Wait()
	ap50, ap99 := latencies()
	t.Logf("victim search (exact, %d x %d) unloaded: p50 %v, p99 %v (after the flood: p50 %v, p99 %v); under a flood of %d concurrent searches from another tenant: p50 %v, p99 %v (p99 %.1fx the unloaded one before; target 3x); flood searches served %d, refused %d",
		rows, dim, p50, p99, ap50, ap99, flood, lp50, lp99, float64(lp99)/float64(p99), done.Load(), failed.Load())
}

// subjectKey carries the X-Test-Subject header of the Connect test client's calls.
type subjectKey struct{}

// retryDelay is the RetryInfo delay of a Connect error (100 ms if it has none).
func retryDelay(err error) time.Duration {
	var ce *connect.Error
	if errors.As(err, &ce) {
		for _, d := range ce.Details() {
			if v, err := d.Value(); err == nil {
				if ri, ok := v.(*errdetails.RetryInfo); ok {
					return ri.GetRetryDelay().AsDuration()
				}
			}
		}
	}
	return 100 * time.Millisecond
}
