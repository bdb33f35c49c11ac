package main

import (
	"context"
	"database/sql"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/metadata"

	adminv1 "github.com/loom-dev/loom/gen/loom/admin/v1"
	agentv1 "github.com/loom-dev/loom/gen/loom/agent/v1"
	memoryv1 "github.com/loom-dev/loom/gen/loom/memory/v1"
	orchestratorv1 "github.com/loom-dev/loom/gen/loom/orchestrator/v1"
	"github.com/loom-dev/loom/memory"
	"github.com/loom-dev/loom/memory/localstore"
)

// runInProcess runs the loom command line in this process, with an empty environment, and returns what it
// printed.
func runInProcess(t *testing.T, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	dir := t.TempDir()
	outF, err1 := os.Create(filepath.Join(dir, "stdout"))
	errF, err2 := os.Create(filepath.Join(dir, "stderr"))
	if err := errors.Join(err1, err2); err != nil {
		t.Fatal(err)
	}
	defer outF.Close()
	defer errF.Close()
	err = run(context.Background(), args, func(string) string { return "" }, outF, errF)
	o, _ := os.ReadFile(outF.Name())
	e, _ := os.ReadFile(errF.Name())
	return string(o), string(e), err
}

// TestBackupRestoreWhileServing backs up the data dir of a running `loom serve` while a client keeps writing,
// restores the backup into a new data dir, serves it, and checks that everything acknowledged before the backup
// began is there: memory records (bit for bit), agents, a blueprint and API keys.
func TestBackupRestoreWhileServing(t *testing.T) {
	const (
		records = 10000
		dim     = 64
	)
	dataDir, keys := keyDir(t, "acme:admin")
	adminKey := keys[0]
	p := startLoomIn(t, dataDir, "--auth", "required")
	conn := dialGRPC(t, p.addr)
	base, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	ctx := metadata.AppendToOutgoingContext(base, "authorization", "Bearer "+adminKey)
	mem := memoryv1.NewMemoryServiceClient(conn)
	ag := agentv1.NewAgentServiceClient(conn)
	orch := orchestratorv1.NewOrchestratorServiceClient(conn)
	adm := adminv1.NewAdminServiceClient(conn)

	if _, err := mem.CreateNamespace(ctx, &memoryv1.CreateNamespaceRequest{Namespace: &memoryv1.Namespace{Name: "notes", Dimension: dim}}); err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	want := make([]*memoryv1.Record, records)
	for i := range want {
		vec := make([]float32, dim)
		for j := range vec {
			vec[j] = rng.Float32()*2 - 1
		}
		want[i] = &memoryv1.Record{Id: fmt.Sprintf("r%05d", i), Text: fmt.Sprintf("record %d", i), Vector: vec}
	}
	for i := 0; i < records; i += 500 {
		if _, err := mem.Upsert(ctx, &memoryv1.UpsertRequest{Namespace: "notes", Records: want[i : i+500]}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := ag.CreateAgent(ctx, &agentv1.CreateAgentRequest{Agent: &agentv1.Agent{Name: "bot", Instructions: "be brief"}}); err != nil {
		t.Fatal(err)
	}
	bp := &orchestratorv1.Blueprint{Name: "flow", Steps: []*orchestratorv1.Step{{Id: "ok", Kind: &orchestratorv1.Step_Approval{Approval: &orchestratorv1.ApprovalStep{Prompt: "ship it?"}}}}}
	if _, err := orch.CreateBlueprint(ctx, &orchestratorv1.CreateBlueprintRequest{Source: &orchestratorv1.BlueprintSource{Source: &orchestratorv1.BlueprintSource_Blueprint{Blueprint: bp}}}); err != nil {
		t.Fatal(err)
	}
	ci, err := adm.CreateApiKey(ctx, &adminv1.CreateApiKeyRequest{Name: "ci", Roles: []string{"writer"}})
	if err != nil {
		t.Fatal(err)
	}

	// A client keeps writing, one acknowledged write after another, to the vector store and to the agent
	// database (and, through the audit trail, the auth database), before, during and after the backup.
	var memAcked, agentsAcked atomic.Int64
	writeCtx, stopWriting := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; writeCtx.Err() == nil; i++ {
			vec := make([]float32, dim)
			vec[i%dim] = 1
			_, err := mem.Upsert(writeCtx, &memoryv1.UpsertRequest{Namespace: "notes", Records: []*memoryv1.Record{{Id: fmt.Sprint("live-", i), Vector: vec}}})
			if err != nil {
				if writeCtx.Err() == nil {
					t.Errorf("live upsert %d: %v", i, err)
				}
				return
			}
			memAcked.Store(int64(i + 1))
			if i%4 == 0 {
				if _, err := ag.CreateAgent(writeCtx, &agentv1.CreateAgentRequest{Agent: &agentv1.Agent{Name: fmt.Sprint("live-agent-", i/4)}}); err != nil {
					if writeCtx.Err() == nil {
						t.Errorf("live agent %d: %v", i/4, err)
					}
					return
				}
				agentsAcked.Store(int64(i/4 + 1))
			}
		}
	}()
	for memAcked.Load() < 20 && !t.Failed() {
		time.Sleep(5 * time.Millisecond)
	}
	memBefore, agentsBefore := memAcked.Load(), agentsAcked.Load()
	backupDir := filepath.Join(t.TempDir(), "backup")
	start := time.Now()
	out, errOut, err := runInProcess(t, "backup", "--data-dir", dataDir, "--to", backupDir)
	backupTime := time.Since(start)
	memDuring := memAcked.Load() - memBefore
	stopWriting()
	wg.Wait()
	if err != nil {
		t.Fatalf("loom backup: %v\n%s%s", err, out, errOut)
	}
	t.Logf("loom backup:\n%s", out)
	if memDuring == 0 {
		t.Errorf("no write was acknowledged while the backup ran: the test does not test a live backup")
	}
	p.cmd.Process.Kill()
	<-p.done
	p.done <- nil // for startLoomWith's cleanup

	restored := filepath.Join(t.TempDir(), "restored")
	start = time.Now()
	out, errOut, err = runInProcess(t, "restore", "--from", backupDir, "--data-dir", restored)
	restoreTime := time.Since(start)
	if err != nil {
		t.Fatalf("loom restore: %v\n%s%s", err, out, errOut)
	}
	start = time.Now()
	p2 := startLoomIn(t, restored, "--auth", "required")
	readyTime := time.Since(start)
	var size int64
	filepath.WalkDir(backupDir, func(_ string, d fs.DirEntry, _ error) error {
		if info, err := d.Info(); err == nil && d.Type().IsRegular() {
			size += info.Size()
		}
		return nil
	})
	t.Logf("%d memory records of dim %d (+%d live writes, %d of them during the backup), 3 SQLite databases, %s backed up: backup %v, restore %v, restored server ready in %v",
		records, dim, memAcked.Load(), memDuring, humanBytes(size), backupTime.Round(time.Millisecond), restoreTime.Round(time.Millisecond), readyTime.Round(time.Millisecond))

	conn2 := dialGRPC(t, p2.addr)
	mem, ag, orch = memoryv1.NewMemoryServiceClient(conn2), agentv1.NewAgentServiceClient(conn2), orchestratorv1.NewOrchestratorServiceClient(conn2)

	// Every record written before the backup, bit for bit.
	for i := 0; i < records; i += 1000 {
		var ids []string
		for _, r := range want[i : i+1000] {
			ids = append(ids, r.GetId())
		}
		got, err := mem.Get(ctx, &memoryv1.GetRequest{Namespace: "notes", Ids: ids, IncludeVectors: true})
		if err != nil {
			t.Fatal(err)
		}
		if len(got.GetRecords()) != 1000 {
			t.Fatalf("records %d..%d: %d restored, want 1000", i, i+999, len(got.GetRecords()))
		}
		for j, r := range got.GetRecords() {
			if w := want[i+j]; r.GetId() != w.GetId() || r.GetText() != w.GetText() || !slices.Equal(r.GetVector(), w.GetVector()) {
				t.Fatalf("record %s restored as %v", w.GetId(), r)
			}
		}
	}
	// The live writes: all those acknowledged before the backup began, and no gap (the log is copied as a prefix).
	var live []string
	for i := range memAcked.Load() + 1 {
		live = append(live, fmt.Sprint("live-", i))
	}
	var liveRestored int64
	for chunk := range slices.Chunk(live, 1000) {
		got, err := mem.Get(ctx, &memoryv1.GetRequest{Namespace: "notes", Ids: chunk})
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range got.GetRecords() {
			if r.GetId() != live[liveRestored] {
				t.Fatalf("live record %s restored after a gap at %s", r.GetId(), live[liveRestored])
			}
			liveRestored++
		}
	}
	if liveRestored < memBefore {
		t.Errorf("%d live records restored, %d were acknowledged before the backup began", liveRestored, memBefore)
	}
	res, err := mem.Search(ctx, &memoryv1.SearchRequest{Namespace: "notes", TopK: 1, Query: &memoryv1.SearchRequest_Vector{Vector: &memoryv1.Vector{Values: want[4242].GetVector()}}})
	if err != nil || len(res.GetHits()) != 1 || res.GetHits()[0].GetRecord().GetId() != "r04242" {
		t.Errorf("search after restore: %v %v", res, err)
	}
	for _, name := range []string{"bot", "live-agent-0", fmt.Sprint("live-agent-", agentsBefore-1)} {
		if _, err := ag.GetAgent(ctx, &agentv1.GetAgentRequest{Name: name}); err != nil {
			t.Errorf("agent %s after restore: %v", name, err)
		}
	}
	if _, err := orch.GetBlueprint(ctx, &orchestratorv1.GetBlueprintRequest{Name: "flow"}); err != nil {
		t.Errorf("blueprint after restore: %v", err)
	}
	// The key made through AdminService still authenticates (and the admin key made by `loom keys` did above).
	ciCtx := metadata.AppendToOutgoingContext(base, "authorization", "Bearer "+ci.GetSecret())
	if _, err := mem.ListNamespaces(ciCtx, &memoryv1.ListNamespacesRequest{}); err != nil {
		t.Errorf("API key created before the backup, after restore: %v", err)
	}
}

// newSmallDataDir makes a data dir as `loom serve` leaves it, without running it: an API key in auth.db, a
// table in agent.db and 100 records in the vector store.
func newSmallDataDir(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "data")
	if out, errOut, err := runInProcess(t, "keys", "create", "--data-dir", dir, "--tenant", "acme", "--name", "ci", "--roles", "admin"); err != nil {
		t.Fatalf("loom keys create: %v\n%s%s", err, out, errOut)
	}
	db, err := sql.Open("sqlite", "file:"+filepath.Join(dir, "agent.db")+"?_pragma=journal_mode(WAL)")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.Exec("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT); INSERT INTO t (v) VALUES ('kept')"); err != nil {
		t.Fatal(err)
	}
	s, err := localstore.Open(filepath.Join(dir, "memory"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	if _, err := s.CreateNamespace(ctx, "acme", memory.Namespace{Name: "notes", Dimension: 4, Metric: memory.MetricCosine}); err != nil {
		t.Fatal(err)
	}
	for i := range 100 {
		if err := s.Upsert(ctx, "acme", "notes", []memory.Record{{ID: fmt.Sprint("r", i), Vector: []float32{1, float32(i), 0, 0}}}); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// copyTree copies the regular files under src to the new directory dst.
func copyTree(t *testing.T, src, dst string) {
	t.Helper()
	err := filepath.WalkDir(src, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, path)
		if d.IsDir() {
			return os.MkdirAll(filepath.Join(dst, rel), 0o750)
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dst, rel), b, 0o640)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// treeState lists the files under dir with their contents, to tell whether anything changed.
func treeState(t *testing.T, dir string) map[string]string {
	t.Helper()
	state := map[string]string{}
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if errors.Is(err, fs.ErrNotExist) && path == dir {
			return fs.SkipAll
		}
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, path)
		if d.IsDir() {
			state[rel+"/"] = ""
			return nil
		}
		b, err := os.ReadFile(path)
		state[rel] = string(b)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return state
}

// TestRestoreRefusesBadBackups restores damaged backups and a backup into a non-empty data dir: each is refused
// with an error naming the problem, and the target (and the directory around it) is left as it was.
func TestRestoreRefusesBadBackups(t *testing.T) {
	dataDir := newSmallDataDir(t)
	good := filepath.Join(t.TempDir(), "backup")
	if out, errOut, err := runInProcess(t, "backup", "--data-dir", dataDir, "--to", good); err != nil {
		t.Fatalf("loom backup: %v\n%s%s", err, out, errOut)
	}
	for _, tc := range []struct {
		name    string
		damage  func(t *testing.T, backup string)
		target  func(t *testing.T, target string) // prepares the data dir; nil leaves it absent
		wantErr []string
	}{
		{
			name:    "missing manifest",
			damage:  func(t *testing.T, b string) { mustT(t, os.Remove(filepath.Join(b, "MANIFEST.json"))) },
			wantErr: []string{"no MANIFEST.json", "incomplete"},
		},
		{
			name: "truncated file",
			damage: func(t *testing.T, b string) {
				p := filepath.Join(b, "memory", "memory.log")
				st, err := os.Stat(p)
				mustT(t, err)
				mustT(t, os.Truncate(p, st.Size()-10))
			},
			wantErr: []string{"memory/memory.log", "truncated"},
		},
		{
			name: "flipped byte",
			damage: func(t *testing.T, b string) {
				p := filepath.Join(b, "agent.db")
				data, err := os.ReadFile(p)
				mustT(t, err)
				data[len(data)/2] ^= 0x01
				mustT(t, os.WriteFile(p, data, 0o640))
			},
			wantErr: []string{"agent.db", "SHA-256", "corrupt"},
		},
		{
			name:    "missing file",
			damage:  func(t *testing.T, b string) { mustT(t, os.Remove(filepath.Join(b, "auth.db"))) },
			wantErr: []string{"auth.db: missing"},
		},
		{
			name: "extra file",
			damage: func(t *testing.T, b string) {
				mustT(t, os.WriteFile(filepath.Join(b, "notes.txt"), []byte("x"), 0o640))
			},
			wantErr: []string{"notes.txt: not in the manifest"},
		},
		{
			name: "non-empty data dir",
			target: func(t *testing.T, d string) {
				mustT(t, os.WriteFile(filepath.Join(d, "precious.txt"), []byte("keep me"), 0o640))
			},
			wantErr: []string{"is not empty", "precious.txt", "nothing was changed"},
		},
		{
			name: "non-empty data dir with a backup's worth of files",
			target: func(t *testing.T, d string) {
				mustT(t, os.WriteFile(filepath.Join(d, "agent.db"), []byte("live data"), 0o640))
				mustT(t, os.Mkdir(filepath.Join(d, "memory"), 0o750))
			},
			wantErr: []string{"is not empty", "agent.db, memory"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			backupDir := filepath.Join(t.TempDir(), "backup")
			copyTree(t, good, backupDir)
			if tc.damage != nil {
				tc.damage(t, backupDir)
			}
			parent := t.TempDir()
			target := filepath.Join(parent, "data")
			if tc.target != nil {
				mustT(t, os.Mkdir(target, 0o750))
				tc.target(t, target)
			}
			before := treeState(t, parent)
			_, _, err := runInProcess(t, "restore", "--from", backupDir, "--data-dir", target)
			if err == nil {
				t.Fatal("restore succeeded")
			}
			for _, w := range tc.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
			if after := treeState(t, parent); fmt.Sprint(after) != fmt.Sprint(before) {
				t.Errorf("the refused restore changed the target's directory:\nbefore %v\nafter  %v", sortedKeys(before), sortedKeys(after))
			}
		})
	}

	// The good backup restores into an existing empty directory, and the stores open with their data.
	target := filepath.Join(t.TempDir(), "data")
	mustT(t, os.Mkdir(target, 0o750))
	if out, errOut, err := runInProcess(t, "restore", "--from", good, "--data-dir", target); err != nil {
		t.Fatalf("loom restore: %v\n%s%s", err, out, errOut)
	}
	s, err := localstore.Open(filepath.Join(target, "memory"))
	mustT(t, err)
	defer s.Close()
	ns, err := s.GetNamespace(context.Background(), "acme", "notes", true)
	if err != nil || ns.Stats.RecordCount != 100 {
		t.Errorf("restored vector store: %+v %v", ns.Stats, err)
	}
	db, err := sql.Open("sqlite", "file:"+filepath.Join(target, "agent.db"))
	mustT(t, err)
	defer db.Close()
	var v string
	if err := db.QueryRow("SELECT v FROM t").Scan(&v); err != nil || v != "kept" {
		t.Errorf("restored agent.db: %q %v", v, err)
	}
	if out, _, err := runInProcess(t, "keys", "list", "--data-dir", target, "--tenant", "acme"); err != nil || !strings.Contains(out, "ci") {
		t.Errorf("restored auth.db: %q %v", out, err)
	}
}

func TestBackupHelpAndRefusals(t *testing.T) {
	for _, cmd := range []string{"backup", "restore"} {
		out, errOut, err := runInProcess(t, cmd, "--help")
		if !errors.Is(err, flag.ErrHelp) || !strings.Contains(out, "Usage: loom "+cmd) || !strings.Contains(out, "-data-dir") || errOut != "" {
			t.Errorf("loom %s --help: err %v, stdout %q, stderr %q", cmd, err, out, errOut)
		}
		out, errOut, err = runInProcess(t, cmd, "--nope")
		if err == nil || out != "" || !strings.Contains(errOut, "Usage: loom "+cmd) {
			t.Errorf("loom %s --nope: err %v, stdout %q, stderr %q", cmd, err, out, errOut)
		}
	}
	if _, _, err := runInProcess(t, "backup", "--data-dir", t.TempDir()); err == nil || !strings.Contains(err.Error(), "--to is required") {
		t.Errorf("backup without --to: %v", err)
	}

	dataDir := newSmallDataDir(t)
	occupied := t.TempDir()
	mustT(t, os.WriteFile(filepath.Join(occupied, "old"), nil, 0o640))
	if _, _, err := runInProcess(t, "backup", "--data-dir", dataDir, "--to", occupied); err == nil || !strings.Contains(err.Error(), "not empty (holds old)") {
		t.Errorf("backup into a non-empty dir: %v", err)
	}
	if _, _, err := runInProcess(t, "backup", "--data-dir", t.TempDir(), "--to", filepath.Join(t.TempDir(), "b")); err == nil || !strings.Contains(err.Error(), "holds no Loom data") {
		t.Errorf("backup of an empty data dir: %v", err)
	}
	// A corrupt vector store log fails the backup midway (after the databases are copied): what was written
	// is removed, and no manifest claims a backup.
	corrupt := newSmallDataDir(t)
	logPath := filepath.Join(corrupt, "memory", "memory.log")
	data, err := os.ReadFile(logPath)
	mustT(t, err)
	data[len(data)/2] ^= 0xff
	mustT(t, os.WriteFile(logPath, data, 0o640))
	half := filepath.Join(t.TempDir(), "b")
	if _, _, err := runInProcess(t, "backup", "--data-dir", corrupt, "--to", half); err == nil || !strings.Contains(err.Error(), "corrupt frame") {
		t.Errorf("backup of a corrupt log: %v", err)
	}
	if _, err := os.Stat(half); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("a failed backup left %s behind: %v", half, err)
	}

	// A file the backup does not know is refused, not skipped, and nothing is left behind.
	mustT(t, os.WriteFile(filepath.Join(dataDir, "mystery.db"), []byte("?"), 0o640))
	to := filepath.Join(t.TempDir(), "b")
	if _, _, err := runInProcess(t, "backup", "--data-dir", dataDir, "--to", to); err == nil || !strings.Contains(err.Error(), "mystery.db") {
		t.Errorf("backup of a data dir with an unknown file: %v", err)
	}
	if _, err := os.Stat(to); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("a refused backup left %s behind: %v", to, err)
	}
}

func mustT(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}
