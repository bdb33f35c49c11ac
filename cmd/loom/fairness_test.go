package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	memoryv1 "github.com/loom-dev/loom/gen/loom/memory/v1"
	orchestratorv1 "github.com/loom-dev/loom/gen/loom/orchestrator/v1"
	"github.com/loom-dev/loom/internal/procstat"
	"github.com/loom-dev/loom/internal/rpcserver"
	"github.com/loom-dev/loom/memory"
)

func TestFairnessAndQuotaFlags(t *testing.T) {
	devnull, _ := os.Open(os.DevNull)
	defer devnull.Close()
	none := func(string) string { return "" }
	cfg, err := parseServe(nil, none, devnull)
	if err != nil {
		t.Fatal(err)
	}
	want := rpcserver.FairnessLimits{TenantMaxInFlight: 256, TenantMaxStreams: 256, PrincipalMaxInFlight: 128, PrincipalMaxStreams: 128}
	if cfg.Fairness != want || cfg.MemoryQuota != memory.DefaultQuota {
		t.Fatalf("defaults: fairness %+v, quota %+v; want %+v, %+v", cfg.Fairness, cfg.MemoryQuota, want, memory.DefaultQuota)
	}
	env := map[string]string{"LOOM_TENANT_MAX_STREAMS": "0", "LOOM_MEMORY_MAX_RECORDS": "0", "LOOM_PRINCIPAL_MAX_IN_FLIGHT": "7"}
	cfg, err = parseServe([]string{"--memory-max-bytes", "1024", "--principal-max-in-flight", "9"}, func(k string) string { return env[k] }, devnull)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Fairness.TenantMaxStreams != -1 || cfg.Fairness.PrincipalMaxInFlight != 9 || cfg.MemoryQuota.Records != 0 || cfg.MemoryQuota.Bytes != 1024 {
		t.Fatalf("flags and env: fairness %+v, quota %+v", cfg.Fairness, cfg.MemoryQuota)
	}
	for _, flag := range []string{"tenant-max-in-flight", "tenant-max-streams", "principal-max-streams", "memory-max-namespaces", "memory-max-bytes"} {
		if _, err := parseServe([]string{"--" + flag, "-5"}, none, devnull); err == nil || !strings.Contains(err.Error(), "--"+flag) {
			t.Errorf("--%s -5: err = %v, want one naming the flag", flag, err)
		}
	}
}

// TestServeDoS replays issue 17's two DoS patterns against `loom serve --auth required` and prints the server
// process's RSS through each: 1,100 WatchRun streams from one reader key while another tenant calls
// ListNamespaces, then 3 MB upserts from one tenant until its memory bytes quota refuses them, then
// DeleteNamespace.
func TestServeDoS(t *testing.T) {
	const streams, victimCalls, quota = 1100, 30, 24 << 20
	setServiceTokenKey(t)
	dataDir, keys := keyDir(t, "tenant-a:writer", "tenant-a:reader", "tenant-b:reader")
	writerA, readerA, readerB := keys[0], keys[1], keys[2]
	p := startLoomIn(t, dataDir, "--auth", "required", "--memory-max-bytes", strconv.Itoa(quota))
	pid := p.cmd.Process.Pid
	dial := func() *grpc.ClientConn { return dialGRPC(t, p.addr) }
	base, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	as := func(key string) context.Context {
		return metadata.AppendToOutgoingContext(base, "authorization", "Bearer "+key)
	}
	conn := dial()
	orch := orchestratorv1.NewOrchestratorServiceClient(conn)
	mem := memoryv1.NewMemoryServiceClient(conn)

	// A run that waits for an approval: WatchRun on it stays open.
	bp := &orchestratorv1.Blueprint{Name: "wait", Steps: []*orchestratorv1.Step{{Id: "ok", Kind: &orchestratorv1.Step_Approval{Approval: &orchestratorv1.ApprovalStep{Prompt: "?"}}}}}
	if _, err := orch.CreateBlueprint(as(writerA), &orchestratorv1.CreateBlueprintRequest{Source: &orchestratorv1.BlueprintSource{Source: &orchestratorv1.BlueprintSource_Blueprint{Blueprint: bp}}}); err != nil {
		t.Fatal(err)
	}
	run, err := orch.StartRun(as(writerA), &orchestratorv1.StartRunRequest{Blueprint: "wait"})
	if err != nil {
		t.Fatal(err)
	}
	rssStart := procstat.RSSMiB(pid)

	// Streams flood. grpc-go queues streams beyond a connection's HTTP/2 limit (250), so spread them.
	sctx, stopStreams := context.WithCancel(as(readerA))
	var mu sync.Mutex
	var open, refused int
	var other []error
	var wg sync.WaitGroup
	var conns []*grpc.ClientConn
	for range 5 {
		conns = append(conns, dial())
	}
	for i := range streams {
		c := orchestratorv1.NewOrchestratorServiceClient(conns[i%len(conns)])
		wg.Go(func() {
			s, err := c.WatchRun(sctx, &orchestratorv1.WatchRunRequest{Id: run.GetRun().GetId()})
			if err == nil {
				_, err = s.Recv()
			}
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				open++
			case status.Code(err) == codes.ResourceExhausted:
				refused++
			default:
				other = append(other, err)
			}
		})
	}
	wg.Wait()
	rssStreams := procstat.RSSMiB(pid)
	var victimRefused int
	for range victimCalls {
		if _, err := mem.ListNamespaces(as(readerB), &memoryv1.ListNamespacesRequest{}); err != nil {
			if status.Code(err) != codes.ResourceExhausted {
				t.Fatalf("tenant b ListNamespaces: %v", err)
			}
			victimRefused++
		}
	}
	stopStreams()
	t.Logf("streams flood: %d WatchRun streams from one reader key: %d open, %d refused (ResourceExhausted), %d other errors; tenant b's ListNamespaces refused %d of %d; loom RSS %.0f MiB before, %.0f MiB with the streams open",
		streams, open, refused, len(other), victimRefused, victimCalls, rssStart, rssStreams)
	if len(other) > 0 {
		t.Errorf("streams failed otherwise than ResourceExhausted: %v", other[0])
	}
	if victimRefused != 0 || open > 128 {
		t.Errorf("tenant b refused %d of %d with %d streams open; want 0 refused and at most 128 open", victimRefused, victimCalls, open)
	}

	// Big upserts to the quota.
	if _, err := mem.CreateNamespace(as(writerA), &memoryv1.CreateNamespaceRequest{Namespace: &memoryv1.Namespace{Name: "big", Dimension: 768}}); err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(5, 6))
	rssBefore := procstat.RSSMiB(pid)
	var accepted, quotaRefused int
	for i := 0; quotaRefused < 5; i++ {
		recs := make([]*memoryv1.Record, 1000)
		for j := range recs {
			v := make([]float32, 768)
			for k := range v {
				v[k] = float32(r.NormFloat64())
			}
			recs[j] = &memoryv1.Record{Id: fmt.Sprintf("%d-%d", i, j), Vector: v}
		}
		_, err := mem.Upsert(as(writerA), &memoryv1.UpsertRequest{Namespace: "big", Records: recs})
		switch {
		case err == nil:
			accepted++
		case status.Code(err) == codes.ResourceExhausted && quotaMetric(err) == "memory.bytes":
			quotaRefused++
		default:
			t.Fatalf("upsert %d: %v", i, err)
		}
		if accepted > 2*quota/(4*768*1000) {
			t.Fatalf("%d batches of 3 MB accepted under a %d MiB quota", accepted, quota>>20)
		}
	}
	rssQuota := procstat.RSSMiB(pid)
	ns, err := mem.GetNamespace(as(writerA), &memoryv1.GetNamespaceRequest{Name: "big"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := mem.DeleteNamespace(as(writerA), &memoryv1.DeleteNamespaceRequest{Name: "big"}); err != nil {
		t.Fatal(err)
	}
	rssDeleted := procstat.RSSMiB(pid)
	// The store returns a large namespace's memory to the OS in the background: look a bounded number of times.
	rssFreed := rssDeleted
	for range 50 {
		if rssFreed = procstat.RSSMiB(pid); rssFreed < rssBefore+(rssQuota-rssBefore)/2 {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	stored := float64(ns.GetNamespace().GetStats().GetSizeBytes()) / (1 << 20)
	t.Logf("big upserts: quota %d MiB; %d batches of 1000 x 768 accepted (%.1f MiB stored), %d refused (ResourceExhausted, QuotaFailure memory.bytes); loom RSS %.0f MiB before, %.0f MiB at the quota, %.0f MiB just after DeleteNamespace, %.0f MiB once the store gave the memory back",
		quota>>20, accepted, stored, quotaRefused, rssBefore, rssQuota, rssDeleted, rssFreed)
	if stored > quota>>20 {
		t.Errorf("stored %.1f MiB over the %d MiB quota", stored, quota>>20)
	}
}

// quotaMetric returns the quota_metric of a gRPC error's QuotaFailure detail.
func quotaMetric(err error) string {
	for _, d := range status.Convert(err).Details() {
		if qf, ok := d.(*errdetails.QuotaFailure); ok && len(qf.GetViolations()) > 0 {
			return qf.GetViolations()[0].GetQuotaMetric()
		}
	}
	return ""
}
