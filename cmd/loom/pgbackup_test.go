package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	agentv1 "github.com/loom-dev/loom/gen/loom/agent/v1"
	memoryv1 "github.com/loom-dev/loom/gen/loom/memory/v1"
	orchestratorv1 "github.com/loom-dev/loom/gen/loom/orchestrator/v1"
	"github.com/loom-dev/loom/internal/sqldb"
	"github.com/loom-dev/loom/internal/sqldb/sqldbtest"
)

// pgTool finds a PostgreSQL client program; in CI it must be there.
func pgTool(t *testing.T, name string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("%s not found: .ci/postgres.sh installs PostgreSQL", name)
		}
		t.Skipf("%s not found", name)
	}
	return path
}

// pgArgs turns a database URL into the connection flags of pg_dump and pg_restore, with the password in the
// environment rather than on the command line.
func pgArgs(t *testing.T, raw string) (args, env []string) {
	t.Helper()
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	pw, _ := u.User.Password()
	return []string{"-h", u.Hostname(), "-p", u.Port(), "-U", u.User.Username(), "-d", u.Path[1:]},
		append(os.Environ(), "PGPASSWORD="+pw)
}

// TestPostgresBackupAndRestore is the Postgres restore drill of docs/operations.md: pg_dump of the Loom schemas
// while writes go on, pg_restore into a fresh database, Loom started on it. Every record acknowledged before
// the dump began is there, and a run that was waiting for its approval when the dump was taken finishes.
func TestPostgresBackupAndRestore(t *testing.T) {
	pgDump, pgRestore := pgTool(t, "pg_dump"), pgTool(t, "pg_restore")
	src := sqldbtest.PostgresURL(t)
	p := startLoom(t, "--database-url", src)
	c := dialAll(t, p.addr)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	const bulk, dim = 10000, 64
	for _, ns := range []string{"bulk", "live", "research"} {
		d := dim
		if ns == "research" {
			d = 256
		}
		if _, err := c.memory.CreateNamespace(ctx, &memoryv1.CreateNamespaceRequest{Namespace: &memoryv1.Namespace{Name: ns, Dimension: int32(d)}}); err != nil {
			t.Fatal(err)
		}
	}
	vec := func() []float32 {
		v := make([]float32, dim)
		for i := range v {
			v[i] = rand.Float32()
		}
		return v
	}
	for start := 0; start < bulk; start += 1000 {
		req := &memoryv1.UpsertRequest{Namespace: "bulk"}
		for i := start; i < start+1000; i++ {
			req.Records = append(req.Records, &memoryv1.Record{Id: fmt.Sprintf("r%05d", i), Text: "record", Vector: vec()})
		}
		if _, err := c.memory.Upsert(ctx, req); err != nil {
			t.Fatal(err)
		}
	}
	for _, name := range []string{"researcher", "writer"} {
		if _, err := c.agent.CreateAgent(ctx, msg(t, &agentv1.CreateAgentRequest{}, `{"agent":{"name":"`+name+`"}}`)); err != nil {
			t.Fatal(err)
		}
	}
	createResearchBlueprint(t, c)
	run, err := c.orch.StartRun(ctx, msg(t, &orchestratorv1.StartRunRequest{}, `{"blueprint":"research","input":{"topic":"backups"}}`))
	if err != nil {
		t.Fatal(err)
	}
	waitApproval(t, c, run.GetRun().GetId())

	// Writes go on during the dump; those acknowledged before it began must survive the restore.
	var acked atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			_, err := c.memory.Upsert(ctx, &memoryv1.UpsertRequest{Namespace: "live", Records: []*memoryv1.Record{{Id: fmt.Sprintf("l%06d", i), Vector: vec()}}})
			if err != nil {
				t.Errorf("upsert during the dump: %v", err)
				return
			}
			acked.Store(int64(i + 1))
		}
	})
	time.Sleep(200 * time.Millisecond)
	before := acked.Load()
	dump := filepath.Join(t.TempDir(), "loom.dump")
	args, env := pgArgs(t, src)
	schemas := []string{}
	for _, s := range sqldb.Schemas("") {
		schemas = append(schemas, "-n", s)
	}
	start := time.Now()
	cmd := exec.Command(pgDump, append(append([]string{"-Fc", "--no-owner", "-f", dump}, schemas...), args...)...)
	cmd.Env = env
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("pg_dump: %v\n%s", err, out)
	}
	dumpTime := time.Since(start)
	close(stop)
	wg.Wait()

	dst := sqldbtest.PostgresURL(t) // fresh, with the vector extension (not part of the Loom schemas' dump)
	args, env = pgArgs(t, dst)
	start = time.Now()
	cmd = exec.Command(pgRestore, append([]string{"--no-owner", "--exit-on-error"}, append(args, dump)...)...)
	cmd.Env = env
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("pg_restore: %v\n%s", err, out)
	}
	restoreTime := time.Since(start)
	fi, _ := os.Stat(dump)
	t.Logf("pg_dump of %d records x %d dims while writing: %v (%d KiB); pg_restore: %v", bulk, dim, dumpTime.Round(time.Millisecond), fi.Size()>>10, restoreTime.Round(time.Millisecond))

	p.cmd.Process.Kill()
	<-p.done
	p.done <- nil
	q := startLoom(t, "--database-url", dst)
	r := dialAll(t, q.addr)
	ns, err := r.memory.GetNamespace(ctx, &memoryv1.GetNamespaceRequest{Name: "bulk"})
	if err != nil || ns.GetNamespace().GetStats().GetRecordCount() != bulk {
		t.Errorf("bulk after restore: %v %v", ns.GetNamespace().GetStats(), err)
	}
	var ids []string
	for i := range before {
		ids = append(ids, fmt.Sprintf("l%06d", i))
	}
	for len(ids) > 0 {
		n := min(len(ids), 500)
		got, err := r.memory.Get(ctx, &memoryv1.GetRequest{Namespace: "live", Ids: ids[:n]})
		if err != nil || len(got.GetRecords()) != n {
			t.Fatalf("records acknowledged before the dump: got %d of %d (%v)", len(got.GetRecords()), n, err)
		}
		ids = ids[n:]
	}
	t.Logf("%d writes acknowledged before the dump began, all restored", before)
	approveAndWait(t, r, run.GetRun().GetId())
}

// waitApproval waits until run waits for its approval.
func waitApproval(t *testing.T, c rpcClients, runID string) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		p, err := c.orch.ListPendingApprovals(context.Background(), &orchestratorv1.ListPendingApprovalsRequest{})
		if err != nil {
			t.Fatal(err)
		}
		for _, a := range p.GetApprovals() {
			if a.GetRunId() == runID {
				return
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("run %s never waited for approval", runID)
}
