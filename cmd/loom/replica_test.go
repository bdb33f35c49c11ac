package main

import (
	"context"
	"regexp"
	"strconv"
	"testing"
	"time"

	memoryv1 "github.com/loom-dev/loom/gen/loom/memory/v1"
	"github.com/loom-dev/loom/internal/sqldb/sqldbtest"
)

func TestMain(m *testing.M) { sqldbtest.Main(m) }

// readCounts scrapes loom_db_reads_total from addr's /metrics, by "target/reason".
func readCounts(t *testing.T, addr string) map[string]float64 {
	t.Helper()
	body := metricsText(t, addr)
	counts := map[string]float64{}
	re := regexp.MustCompile(`(?m)^loom_db_reads_total\{reason="([a-z_]+)",target="([a-z]+)"\} (\S+)$`)
	for _, m := range re.FindAllStringSubmatch(body, -1) {
		v, _ := strconv.ParseFloat(m[3], 64)
		counts[m[2]+"/"+m[1]] = v
	}
	if len(counts) == 0 {
		t.Fatalf("no loom_db_reads_total on /metrics:\n%s", body)
	}
	return counts
}

// TestServeWithReadReplica runs every service on one database with --database-read-url naming a streaming
// replica of it (pg_basebackup -R, on another port): the whole exercise works, searches are served by the
// replica once it has replayed the caller's writes, and with the replica stopped reads fall back to the primary.
func TestServeWithReadReplica(t *testing.T) {
	primary := sqldbtest.PostgresURL(t)
	rep := sqldbtest.SharedReplica(t)
	p := startLoom(t, "--database-url", primary, "--database-read-url", rep.URL(t, primary), "--database-read-max-lag", "2s")
	c := dialAll(t, p.addr)
	exerciseAll(t, c)

	rep.WaitCaughtUp(t)
	search := func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, err := c.memory.Search(ctx, msg(t, &memoryv1.SearchRequest{}, `{"namespace":"notes","vector":{"values":[1,0,0,0]},"topK":2}`))
		return err
	}
	before := readCounts(t, p.addr)
	deadline := time.Now().Add(10 * time.Second)
	for readCounts(t, p.addr)["replica/ok"] <= before["replica/ok"] {
		if err := search(); err != nil {
			t.Fatal(err)
		}
		if time.Now().After(deadline) {
			t.Fatalf("no search was served by the replica: %v", readCounts(t, p.addr))
		}
		time.Sleep(50 * time.Millisecond)
	}

	rep.Stop(t)
	t.Cleanup(func() { rep.Start(t) })
	before = readCounts(t, p.addr)
	for i := range 5 {
		if err := search(); err != nil {
			t.Fatalf("search %d with the replica stopped: %v", i, err)
		}
	}
	after := readCounts(t, p.addr)
	fallback := after["primary/replica_down"] + after["primary/replica_error"] - before["primary/replica_down"] - before["primary/replica_error"]
	if fallback < 5 {
		t.Errorf("with the replica stopped, %v of 5 searches were counted as falling back to the primary: %v", fallback, after)
	}
	t.Logf("reads by target/reason: %v", after)
}
