package main

import (
	"bufio"
	"context"
	"errors"
	"io"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	adminv1 "github.com/loom-dev/loom/gen/loom/admin/v1"
	agentv1 "github.com/loom-dev/loom/gen/loom/agent/v1"
	memoryv1 "github.com/loom-dev/loom/gen/loom/memory/v1"
	orchestratorv1 "github.com/loom-dev/loom/gen/loom/orchestrator/v1"
	"github.com/loom-dev/loom/internal/sqldb/sqldbtest"
	"github.com/loom-dev/loom/orchestrator/orchestratortest"
)

// dialGRPC dials addr with grpc-go, in plaintext, and closes the connection when the test ends.
func dialGRPC(t *testing.T, addr string) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// rpcClients are the four services' grpc-go clients on one connection.
type rpcClients struct {
	memory memoryv1.MemoryServiceClient
	agent  agentv1.AgentServiceClient
	orch   orchestratorv1.OrchestratorServiceClient
	admin  adminv1.AdminServiceClient
}

// dialAll dials addr with grpc-go and returns the four services' clients.
func dialAll(t *testing.T, addr string) rpcClients {
	t.Helper()
	conn := dialGRPC(t, addr)
	return rpcClients{
		memory: memoryv1.NewMemoryServiceClient(conn),
		agent:  agentv1.NewAgentServiceClient(conn),
		orch:   orchestratorv1.NewOrchestratorServiceClient(conn),
		admin:  adminv1.NewAdminServiceClient(conn),
	}
}

// msg fills m from its JSON form, the way the README's grpcurl examples spell requests.
func msg[M proto.Message](t *testing.T, m M, js string) M {
	t.Helper()
	if err := protojson.Unmarshal([]byte(js), m); err != nil {
		t.Fatalf("request %s: %v", js, err)
	}
	return m
}

// loomTables lists the tables of the database at url by schema.
func loomTables(t *testing.T, url string) map[string][]string {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, `SELECT schemaname, tablename FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1, 2`)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]string{}
	for rows.Next() {
		var s, tb string
		if err := rows.Scan(&s, &tb); err != nil {
			t.Fatal(err)
		}
		out[s] = append(out[s], tb)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// restoreDump loads a plain-format pg_dump file (made with --inserts) into the database at url.
func restoreDump(t *testing.T, url, path string) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var script strings.Builder
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<24)
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), `\`) { // psql meta-commands (\restrict) are not SQL
			continue
		}
		script.WriteString(sc.Text())
		script.WriteByte('\n')
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	// The dump creates the extension itself.
	if _, err := conn.Exec(ctx, "DROP EXTENSION IF EXISTS vector"); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, script.String()); err != nil {
		t.Fatalf("restore %s: %v", path, err)
	}
}

// exerciseAll drives every service through one realistic path: memory on pgvector with a filtered search, an
// agent run, a blueprint run through its approval, and the admin RPCs. It returns the workflow run's id.
func exerciseAll(t *testing.T, c rpcClients) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := c.memory.CreateNamespace(ctx, msg(t, &memoryv1.CreateNamespaceRequest{}, `{"namespace":{"name":"notes","dimension":4}}`)); err != nil {
		t.Fatal(err)
	}
	if _, err := c.memory.Upsert(ctx, msg(t, &memoryv1.UpsertRequest{}, `{"namespace":"notes","records":[
		{"id":"n1","text":"the cat sat","vector":[1,0,0,0],"metadata":{"topic":{"stringValue":"pets"}}},
		{"id":"n2","text":"dogs bark","vector":[0.9,0.1,0,0],"metadata":{"topic":{"stringValue":"pets"}}},
		{"id":"n3","text":"stocks fell","vector":[1,0,0.1,0],"metadata":{"topic":{"stringValue":"money"}}}]}`)); err != nil {
		t.Fatal(err)
	}
	res, err := c.memory.Search(ctx, msg(t, &memoryv1.SearchRequest{}, `{"namespace":"notes","vector":{"values":[1,0,0,0]},"topK":5,"filter":{"field":{"key":"topic","eq":{"stringValue":"pets"}}}}`))
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, h := range res.GetHits() {
		ids = append(ids, h.GetRecord().GetId())
	}
	if !slices.Equal(ids, []string{"n1", "n2"}) {
		t.Errorf("filtered search = %v, want [n1 n2]", ids)
	}
	for _, name := range []string{"researcher", "writer"} {
		if _, err := c.agent.CreateAgent(ctx, msg(t, &agentv1.CreateAgentRequest{}, `{"agent":{"name":"`+name+`","memory":{"namespace":"notes"}}}`)); err != nil {
			t.Fatal(err)
		}
	}
	run, err := c.agent.Run(ctx, msg(t, &agentv1.RunRequest{}, `{"agent":"writer","input":"hello there"}`))
	if err != nil || run.GetRun().GetState() != agentv1.RunState_RUN_STATE_SUCCEEDED {
		t.Fatalf("agent run: %v %v", run, err)
	}
	if _, err := c.memory.CreateNamespace(ctx, msg(t, &memoryv1.CreateNamespaceRequest{}, `{"namespace":{"name":"research","dimension":256}}`)); err != nil {
		t.Fatal(err)
	}
	createResearchBlueprint(t, c)
	wr, err := c.orch.StartRun(ctx, msg(t, &orchestratorv1.StartRunRequest{}, `{"blueprint":"research","input":{"topic":"octopus cognition"}}`))
	if err != nil {
		t.Fatal(err)
	}
	approveAndWait(t, c, wr.GetRun().GetId())
	if _, err := c.admin.CreateApiKey(ctx, msg(t, &adminv1.CreateApiKeyRequest{}, `{"name":"ci","roles":["reader"]}`)); err != nil {
		t.Fatal(err)
	}
	if ev, err := c.admin.ListAuditEvents(ctx, &adminv1.ListAuditEventsRequest{}); err != nil || len(ev.GetEvents()) == 0 {
		t.Errorf("audit events: %d, %v", len(ev.GetEvents()), err)
	}
}

// createResearchBlueprint creates examples/research.yaml.
func createResearchBlueprint(t *testing.T, c rpcClients) {
	t.Helper()
	yaml, err := os.ReadFile("../../examples/research.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.orch.CreateBlueprint(context.Background(), &orchestratorv1.CreateBlueprintRequest{Source: &orchestratorv1.BlueprintSource{Source: &orchestratorv1.BlueprintSource_Yaml{Yaml: string(yaml)}}}); err != nil {
		t.Fatal(err)
	}
}

// approveAndWait approves run's review step once it waits for it, then waits for the run to succeed and checks
// that its last step remembered the summary in memory.
func approveAndWait(t *testing.T, c rpcClients, runID string) {
	t.Helper()
	waitApproval(t, c, runID)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := c.orch.SubmitApproval(ctx, msg(t, &orchestratorv1.SubmitApprovalRequest{}, `{"runId":"`+runID+`","stepId":"review","decision":"DECISION_APPROVE","payload":{"note":"ok"}}`)); err != nil {
		t.Fatal(err)
	}
	for {
		r, err := c.orch.GetRun(ctx, &orchestratorv1.GetRunRequest{Id: runID})
		if err != nil {
			t.Fatal(err)
		}
		if s := r.GetRun().GetState(); s == orchestratorv1.RunState_RUN_STATE_SUCCEEDED {
			break
		} else if s != orchestratorv1.RunState_RUN_STATE_RUNNING {
			t.Fatalf("run %s ended %v: %s", runID, s, r.GetRun().GetError())
		}
		if ctx.Err() != nil {
			t.Fatalf("run %s did not finish", runID)
		}
		time.Sleep(50 * time.Millisecond)
	}
	ns, err := c.memory.GetNamespace(ctx, &memoryv1.GetNamespaceRequest{Name: "research"})
	if err != nil || ns.GetNamespace().GetStats().GetRecordCount() == 0 {
		t.Errorf("the run's memory step stored nothing: %v %v", ns, err)
	}
}

// TestServeAllServicesOnOneDatabase runs every service on one fresh Postgres database, as compose.yaml does, and
// checks that each component keeps its tables in its own schema and none in public.
func TestServeAllServicesOnOneDatabase(t *testing.T) {
	url := sqldbtest.PostgresURL(t)
	p := startLoom(t, "--database-url", url, "--database-max-conns", "8")
	exerciseAll(t, dialAll(t, p.addr))

	tables := loomTables(t, url)
	if len(tables["public"]) != 0 {
		t.Errorf("tables in public: %v", tables["public"])
	}
	for _, schema := range []string{"loom_memory", "loom_agent", "loom_orchestrator", "loom_admin"} {
		if len(tables[schema]) == 0 {
			t.Errorf("schema %s has no tables", schema)
		}
	}
	if !slices.Contains(tables["loom_orchestrator"], "river_job") {
		t.Errorf("River's tables are not in the orchestrator's schema: %v", tables)
	}
	if !slices.Contains(tables["loom_agent"], "runs") || !slices.Contains(tables["loom_orchestrator"], "runs") {
		t.Errorf("both components' runs tables should exist, each in its schema: %v", tables)
	}

	// A second installation in the same database, under its own prefix, sees none of the first one's records.
	other := startLoom(t, "--database-url", url+"&loom_schema_prefix=staging")
	c := dialAll(t, other.addr)
	ns, err := c.memory.ListNamespaces(context.Background(), &memoryv1.ListNamespacesRequest{})
	if err != nil || len(ns.GetNamespaces()) != 0 {
		t.Errorf("the staging installation sees namespaces %v (%v)", ns.GetNamespaces(), err)
	}
	if len(loomTables(t, url)["staging_agent"]) == 0 {
		t.Error("no tables in staging_agent")
	}
}

// TestUpgradeFromPublicSchema starts from databases made by the release before schemas existed (dumps in
// testdata/upgrade, made with that release: memory, agent and admin in one database, the orchestrator in
// another, since the release could not share one), and checks that every record survives the move into the
// components' schemas and that the run left waiting for its approval finishes.
// shiftRunClock moves every time of the legacy dump's workflow runs forward by the age of its newest run.
func shiftRunClock(t *testing.T, url string) {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var newest int64
	if err := conn.QueryRow(context.Background(), `SELECT max(create_time) FROM public.runs`).Scan(&newest); err != nil {
		t.Fatal(err)
	}
	shift := time.Now().UnixMicro() - newest
	for _, q := range []string{
		`UPDATE public.runs SET create_time = create_time + $1, end_time = CASE WHEN end_time > 0 THEN end_time + $1 ELSE 0 END`,
		`UPDATE public.run_steps SET start_time = CASE WHEN start_time > 0 THEN start_time + $1 ELSE 0 END,
			end_time = CASE WHEN end_time > 0 THEN end_time + $1 ELSE 0 END, deadline = CASE WHEN deadline > 0 THEN deadline + $1 ELSE 0 END`,
	} {
		if _, err := conn.Exec(context.Background(), q, shift); err != nil {
			t.Fatal(err)
		}
	}
}

// watchSequences watches runID from after and returns the sequences received: n of them, or (n = 0) all until
// the run ends.
func watchSequences(t *testing.T, c orchestratorv1.OrchestratorServiceClient, runID string, after int64, n int) []int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := c.WatchRun(ctx, &orchestratorv1.WatchRunRequest{Id: runID, AfterSequence: after})
	if err != nil {
		t.Fatal(err)
	}
	var out []int64
	for n == 0 || len(out) < n {
		ev, err := s.Recv()
		if err != nil {
			if n != 0 || !errors.Is(err, io.EOF) {
				t.Fatalf("WatchRun(%s, after %d): %v after %v", runID, after, err, out)
			}
			break
		}
		out = append(out, ev.GetSequence())
	}
	return out
}

// eventPartitions lists the partitions of the orchestrator's run_events in the database at url (pg_inherits).
func eventPartitions(t *testing.T, url string) []string {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	return orchestratortest.Partitions(t, conn, "loom_orchestrator.run_events")
}

func TestUpgradeFromPublicSchema(t *testing.T) {
	urlA, urlB := sqldbtest.PostgresURL(t), sqldbtest.PostgresURL(t)
	restoreDump(t, urlA, "testdata/upgrade/legacy_a.sql")
	restoreDump(t, urlB, "testdata/upgrade/legacy_b.sql")
	// The dump holds a run waiting for its approval, made when the dump was (its clock: create_time). Move its
	// times to now, as if the upgrade happened moments after the dump, so the run's own deadlines (2 h for the
	// run, the approval's timeout) have not passed when the new release picks it up.
	shiftRunClock(t, urlB)
	mk, err := os.ReadFile("testdata/upgrade/master_key")
	if err != nil {
		t.Fatal(err)
	}
	env := append(os.Environ(), "LOOM_MASTER_KEY="+strings.TrimSpace(string(mk)))
	a := startLoomWith(t, t.TempDir(), env, "--services", "memory,agent,admin", "--database-url", urlA)
	b := startLoomWith(t, t.TempDir(), env, "--services", "orchestrator", "--database-url", urlB,
		"--memory-addr", a.addr, "--agent-addr", a.addr)
	ca, cb := dialAll(t, a.addr), dialAll(t, b.addr)
	ctx := context.Background()

	res, err := ca.memory.Search(ctx, msg(t, &memoryv1.SearchRequest{}, `{"namespace":"notes","vector":{"values":[1,0,0,0]},"topK":5,"filter":{"field":{"key":"topic","eq":{"stringValue":"pets"}}}}`))
	if err != nil {
		t.Fatal(err)
	}
	if len(res.GetHits()) != 2 || res.GetHits()[0].GetRecord().GetId() != "n1" {
		t.Errorf("search after upgrade: %v", res.GetHits())
	}
	got, err := ca.memory.Get(ctx, msg(t, &memoryv1.GetRequest{}, `{"namespace":"notes","ids":["n1","n2","n3"]}`))
	if err != nil || len(got.GetRecords()) != 3 {
		t.Errorf("get after upgrade: %v %v", got, err)
	}
	agents, err := ca.agent.ListAgents(ctx, &agentv1.ListAgentsRequest{})
	if err != nil || len(agents.GetAgents()) != 2 {
		t.Errorf("agents after upgrade: %v %v", agents, err)
	}
	runs, err := ca.agent.ListRuns(ctx, &agentv1.ListRunsRequest{})
	// Three: the run made directly, and the workflow's two agent steps.
	if err != nil || len(runs.GetRuns()) != 3 || !slices.ContainsFunc(runs.GetRuns(), func(r *agentv1.Run) bool {
		return r.GetIdempotencyKey() == "legacy-run-1" && r.GetOutput() == "You said: hello there"
	}) {
		t.Errorf("agent runs after upgrade: %v %v", runs, err)
	}
	keys, err := ca.admin.ListApiKeys(ctx, &adminv1.ListApiKeysRequest{})
	if err != nil || len(keys.GetKeys()) != 1 || keys.GetKeys()[0].GetId() != "c6ocxrb47s7v76jk" {
		t.Errorf("API keys after upgrade: %v %v", keys, err)
	}
	pk, err := ca.admin.ListProviderKeys(ctx, &adminv1.ListProviderKeysRequest{})
	if err != nil || len(pk.GetProviderKeys()) != 1 {
		t.Errorf("provider keys after upgrade: %v %v", pk, err)
	}
	audit, err := ca.admin.ListAuditEvents(ctx, &adminv1.ListAuditEventsRequest{})
	if err != nil || len(audit.GetEvents()) < 8 {
		t.Errorf("audit events after upgrade: %d %v", len(audit.GetEvents()), err)
	}
	bp, err := cb.orch.GetBlueprint(ctx, &orchestratorv1.GetBlueprintRequest{Name: "research"})
	if err != nil || bp.GetBlueprint().GetVersion() != 1 {
		t.Errorf("blueprint after upgrade: %v %v", bp, err)
	}
	// The run's seven events moved into the partitioned event table (its partition run_events_upgraded) and are
	// watched from the start.
	const legacyRun = "run_7629fabd49559ae86bcc78af"
	if got := watchSequences(t, cb.orch, legacyRun, 0, 7); !slices.Equal(got, []int64{1, 2, 3, 4, 5, 6, 7}) {
		t.Errorf("WatchRun of the upgraded run = %v, want its 7 stored events", got)
	}
	if got := eventPartitions(t, urlB); !slices.Contains(got, "run_events_upgraded") || len(got) < 2 {
		t.Errorf("partitions of loom_orchestrator.run_events = %v, want run_events_upgraded and the coming days'", got)
	}
	// The run was waiting for its approval when the old release stopped; River's job moved with it.
	approveAndWait(t, rpcClients{memory: ca.memory, agent: ca.agent, orch: cb.orch, admin: ca.admin}, legacyRun)
	// A watcher resuming after event 5 gets the stored events 6 and 7, then the new ones, in sequence, to the end.
	if got := watchSequences(t, cb.orch, legacyRun, 5, 0); len(got) < 4 || !slices.Equal(got, orchestratortest.Sequences(6, int64(5+len(got)))) {
		t.Errorf("WatchRun after 5 = %v, want 6, 7 and the events after the approval, to the end", got)
	}

	for _, url := range []string{urlA, urlB} {
		if pub := loomTables(t, url)["public"]; len(pub) != 0 {
			t.Errorf("tables left in public after the upgrade: %v", pub)
		}
	}
}
