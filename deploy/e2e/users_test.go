package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/structpb"

	adminv1 "github.com/loom-dev/loom/gen/loom/admin/v1"
	agentv1 "github.com/loom-dev/loom/gen/loom/agent/v1"
	memoryv1 "github.com/loom-dev/loom/gen/loom/memory/v1"
	orchestratorv1 "github.com/loom-dev/loom/gen/loom/orchestrator/v1"
)

// notes are the records of the "notes" namespace: a topic in metadata, so searches can filter on it.
var notes = []struct{ id, topic, text string }{
	{"cat", "pets", "the cat sat on the mat"},
	{"dog", "pets", "the dog sleeps in the sun by the door"},
	{"fish", "pets", "a goldfish swims in a round bowl"},
	{"parrot", "pets", "the parrot repeats every word it hears"},
	{"bread", "food", "bread rises in a warm oven"},
	{"soup", "food", "tomato soup simmers on the stove"},
	{"train", "travel", "the night train crosses the mountains"},
	{"ship", "travel", "a ship sails past the lighthouse"},
}

func topicFilter(topic string) *memoryv1.Filter {
	return &memoryv1.Filter{Kind: &memoryv1.Filter_Field{Field: &memoryv1.FieldCondition{
		Key: "topic", Op: &memoryv1.FieldCondition_Eq{Eq: &memoryv1.Scalar{Kind: &memoryv1.Scalar_StringValue{StringValue: topic}}}}}}
}

// testGrpcurl: grpcurl through the gateway, as the README shows: list the services, create an API key through
// AdminService with the bootstrapped admin key, create the namespace on pgvector.
func (s *suite) testGrpcurl(t *testing.T) {
	if out, err := s.grpcurl(t, "", "-d", "{}", s.gateway, "loom.memory.v1.MemoryService/ListNamespaces"); err == nil || !strings.Contains(out, "Unauthenticated") {
		t.Errorf("a call without credentials: %v\n%s", err, out)
	}
	out, err := s.grpcurl(t, s.adminKey, s.gateway, "list")
	if err != nil {
		t.Errorf("grpcurl list through the gateway: %v\n%s", err, out)
	}
	for _, svc := range []string{"loom.memory.v1.MemoryService", "loom.agent.v1.AgentService", "loom.orchestrator.v1.OrchestratorService", "loom.admin.v1.AdminService"} {
		if !strings.Contains(out, svc) {
			t.Errorf("grpcurl list through the gateway lacks %s:\n%s", svc, out)
		}
	}

	out, err = s.grpcurl(t, s.adminKey, "-d", `{"name":"e2e-writer","roles":["writer"]}`, s.gateway, "loom.admin.v1.AdminService/CreateApiKey")
	if err != nil {
		t.Fatalf("CreateApiKey: %v\n%s", err, out)
	}
	var created struct {
		Key    struct{ ID string }
		Secret string
	}
	decodeJSON(t, out, &created)
	if created.Secret == "" {
		t.Fatalf("CreateApiKey returned no secret: %s", out)
	}
	s.writer = created.Secret

	out, err = s.grpcurl(t, s.writer, "-d", `{"namespace":{"name":"notes","dimension":256,"description":"e2e notes"}}`, s.gateway, "loom.memory.v1.MemoryService/CreateNamespace")
	if err != nil {
		t.Fatalf("CreateNamespace: %v\n%s", err, out)
	}
	// The writer may not manage keys.
	if out, err := s.grpcurl(t, s.writer, "-d", `{}`, s.gateway, "loom.admin.v1.AdminService/ListApiKeys"); err == nil || !strings.Contains(out, "PermissionDenied") {
		t.Errorf("a writer listing keys: %v\n%s", err, out)
	}
}

// testGrpcGo: the generated grpc-go clients through the gateway: upsert, a filtered search, an agent with
// memory streaming a run.
func (s *suite) testGrpcGo(t *testing.T) {
	ctx := as(t.Context(), s.writer)
	var recs []*memoryv1.Record
	for _, n := range notes {
		recs = append(recs, &memoryv1.Record{Id: n.id, Text: n.text,
			Metadata: map[string]*memoryv1.Value{"topic": {Kind: &memoryv1.Value_StringValue{StringValue: n.topic}}}})
	}
	if res, err := s.mem.Upsert(ctx, &memoryv1.UpsertRequest{Namespace: "notes", Records: recs}); err != nil || len(res.GetIds()) != len(notes) {
		t.Fatalf("Upsert: %v %v", res, err)
	}
	res, err := s.mem.Search(ctx, &memoryv1.SearchRequest{Namespace: "notes", Query: &memoryv1.SearchRequest_Text{Text: "an animal at home"},
		TopK: 10, Filter: topicFilter("pets")})
	if err != nil {
		t.Fatalf("filtered Search: %v", err)
	}
	if len(res.GetHits()) != 4 {
		t.Errorf("filtered search: %d hits, want the 4 pets (a filter must not return fewer rows than match)", len(res.GetHits()))
	}
	for _, h := range res.GetHits() {
		if h.GetRecord().GetMetadata()["topic"].GetStringValue() != "pets" {
			t.Errorf("filtered search returned %s with topic %v", h.GetRecord().GetId(), h.GetRecord().GetMetadata()["topic"])
		}
	}
	ns, err := s.mem.GetNamespace(ctx, &memoryv1.GetNamespaceRequest{Name: "notes"})
	if err != nil || ns.GetNamespace().GetStats().GetRecordCount() != int64(len(notes)) {
		t.Errorf("GetNamespace: %v %v", ns, err)
	}

	if _, err := s.agents.CreateAgent(ctx, &agentv1.CreateAgentRequest{Agent: &agentv1.Agent{Name: "helper",
		Instructions: "Answer from memory.", Memory: &agentv1.MemoryConfig{Namespace: "notes"}}}); err != nil {
		t.Fatalf("CreateAgent: %v", err)
	}
	stream, err := s.agents.RunStream(ctx, &agentv1.RunStreamRequest{Agent: "helper", Input: "where did the cat sit"})
	if err != nil {
		t.Fatal(err)
	}
	var hits, deltas int
	var warnings []string
	var completed *agentv1.Run
	for {
		ev, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("RunStream: %v", err)
		}
		hits += len(ev.GetMemoryHits().GetHits())
		if ev.GetTextDelta() != nil {
			deltas++
		}
		if w := ev.GetWarning(); w != nil {
			warnings = append(warnings, w.GetMessage())
		}
		if c := ev.GetCompleted(); c != nil {
			completed = c
		}
	}
	if completed.GetState() != agentv1.RunState_RUN_STATE_SUCCEEDED || deltas == 0 {
		t.Fatalf("RunStream: completed %v after %d text deltas", completed, deltas)
	}
	if hits == 0 || len(warnings) != 0 {
		t.Errorf("the agent's memory: %d hits, warnings %q (the agent reaches memory with a service token for acme)", hits, warnings)
	}
}

// connectCall makes a Connect unary call with JSON over plain net/http, as curl would.
func (s *suite) connectCall(ctx context.Context, key, procedure string, body any) (int, map[string]any, error) {
	b, err := json.Marshal(body)
	if err != nil {
		return 0, nil, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+s.gateway+"/"+procedure, bytes.NewReader(b))
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer res.Body.Close()
	raw, err := io.ReadAll(res.Body)
	if err != nil {
		return res.StatusCode, nil, err
	}
	var out map[string]any
	if err := json.Unmarshal(raw, &out); err != nil {
		return res.StatusCode, nil, fmt.Errorf("decode %q: %w", raw, err)
	}
	return res.StatusCode, out, nil
}

// testConnectJSON: the Connect protocol with JSON over plain HTTP: a filtered search, and the errors a client
// sees (no credentials, an invalid request).
func (s *suite) testConnectJSON(t *testing.T) {
	ctx := t.Context()
	code, out, err := s.connectCall(ctx, s.writer, "loom.memory.v1.MemoryService/Search", map[string]any{
		"namespace": "notes", "text": "something warm to eat", "topK": 5,
		"filter": map[string]any{"field": map[string]any{"key": "topic", "eq": map[string]any{"stringValue": "food"}}},
	})
	if err != nil || code != http.StatusOK {
		t.Fatalf("Search: %d %v %v", code, out, err)
	}
	hits, _ := out["hits"].([]any)
	var ids []string
	for _, h := range hits {
		rec, _ := h.(map[string]any)["record"].(map[string]any)
		ids = append(ids, fmt.Sprint(rec["id"]))
	}
	if len(ids) != 2 || !strings.Contains(strings.Join(ids, ","), "bread") || !strings.Contains(strings.Join(ids, ","), "soup") {
		t.Errorf("filtered search over Connect JSON: ids %v, want bread and soup", ids)
	}

	code, out, err = s.connectCall(ctx, "", "loom.memory.v1.MemoryService/ListNamespaces", map[string]any{})
	if err != nil || code != http.StatusUnauthorized || out["code"] != "unauthenticated" {
		t.Errorf("no credentials: %d %v %v, want 401 unauthenticated", code, out, err)
	}
	code, out, err = s.connectCall(ctx, s.writer, "loom.memory.v1.MemoryService/GetNamespace", map[string]any{"name": "Not Valid"})
	if err != nil || code != http.StatusBadRequest || out["code"] != "invalid_argument" || !strings.Contains(fmt.Sprint(out["message"]), "name") {
		t.Errorf("invalid request: %d %v %v, want 400 invalid_argument naming the field", code, out, err)
	}
}

// testConnectWeb: Connect-Web in Chromium (playwright-core from web/node_modules), from a page on another
// origin, with the bearer key: unary calls and a server stream through the gateway.
func (s *suite) testConnectWeb(t *testing.T) {
	chromium := os.Getenv("CHROMIUM")
	if chromium == "" {
		chromium = "/usr/bin/chromium"
	}
	if _, err := os.Stat(chromium); err != nil {
		prerequisite(t, "no Chromium at "+chromium+" (apt-get install chromium)")
	}
	node, err := exec.LookPath("node")
	if err != nil {
		prerequisite(t, "no node on PATH")
	}
	modules, _ := filepath.Abs(filepath.Join(repoRoot, "web", "node_modules"))
	for _, m := range []string{"playwright-core", "esbuild", "@connectrpc/connect-web"} {
		if _, err := os.Stat(filepath.Join(modules, m)); err != nil {
			prerequisite(t, "web/node_modules lacks "+m+" (cd web && npm ci)")
		}
	}
	ctx, cancel := context.WithTimeout(t.Context(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, node, "connectweb.mjs")
	cmd.Dir = "testdata"
	cmd.Env = append(os.Environ(), "NODE_PATH="+modules, "CHROMIUM="+chromium,
		"LOOM_GATEWAY=http://"+s.gateway, "LOOM_KEY="+s.writer, "LOOM_PROFILE="+t.TempDir())
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("node connectweb.mjs: %v\nstdout: %s\nstderr: %s", err, out, stderr.String())
	}
	var got struct {
		Origin     string   `json:"origin"`
		Namespaces []string `json:"namespaces"`
		SearchIDs  []string `json:"searchIds"`
		Stream     struct {
			Events    int    `json:"events"`
			Deltas    int    `json:"deltas"`
			State     string `json:"state"`
			MemoryHit bool   `json:"memoryHit"`
		} `json:"stream"`
		Unauthenticated string `json:"unauthenticated"`
	}
	decodeJSON(t, string(out), &got)
	t.Logf("Connect-Web from %s: %+v", got.Origin, got)
	if !strings.Contains(strings.Join(got.Namespaces, ","), "notes") {
		t.Errorf("ListNamespaces from the browser: %v", got.Namespaces)
	}
	if strings.Join(got.SearchIDs, ",") == "" || strings.Contains(strings.Join(got.SearchIDs, ","), "bread") {
		t.Errorf("filtered search from the browser: %v, want only travel records", got.SearchIDs)
	}
	if got.Stream.State != "RUN_STATE_SUCCEEDED" || got.Stream.Deltas < 1 || !got.Stream.MemoryHit {
		t.Errorf("RunStream from the browser: %+v", got.Stream)
	}
	if got.Unauthenticated != "unauthenticated" {
		t.Errorf("a browser call without the key: %q, want unauthenticated", got.Unauthenticated)
	}
}

// testResearchWorkflow runs examples/research.yaml as the README does: its agents and namespace, the blueprint,
// a run that waits for approval, the approval, and WatchRun resumed from the last sequence seen before the
// client disconnected.
func (s *suite) testResearchWorkflow(t *testing.T) {
	ctx := as(t.Context(), s.writer)
	src, err := os.ReadFile(filepath.Join(repoRoot, "examples", "research.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.mem.CreateNamespace(ctx, &memoryv1.CreateNamespaceRequest{Namespace: &memoryv1.Namespace{Name: "research", Dimension: 256}}); err != nil {
		t.Fatal(err)
	}
	for name, instr := range map[string]string{"researcher": "Find facts.", "writer": "Summarise."} {
		if _, err := s.agents.CreateAgent(ctx, &agentv1.CreateAgentRequest{Agent: &agentv1.Agent{Name: name, Instructions: instr}}); err != nil {
			t.Fatal(err)
		}
	}
	// The blueprint through grpcurl, with the YAML as a JSON string, as in the README.
	body, _ := json.Marshal(map[string]any{"source": map[string]any{"yaml": string(src)}})
	if out, err := s.grpcurl(t, s.writer, "-d", string(body), s.gateway, "loom.orchestrator.v1.OrchestratorService/CreateBlueprint"); err != nil {
		t.Fatalf("CreateBlueprint: %v\n%s", err, out)
	}
	input, _ := structpb.NewStruct(map[string]any{"topic": "octopus cognition"})
	started, err := s.orch.StartRun(ctx, &orchestratorv1.StartRunRequest{Blueprint: "research", Input: input, IdempotencyKey: "e2e-research-1"})
	if err != nil {
		t.Fatal(err)
	}
	runID := started.GetRun().GetId()
	again, err := s.orch.StartRun(ctx, &orchestratorv1.StartRunRequest{Blueprint: "research", Input: input, IdempotencyKey: "e2e-research-1"})
	if err != nil || again.GetRun().GetId() != runID {
		t.Errorf("StartRun with the same idempotency key: %v %v, want run %s", again.GetRun().GetId(), err, runID)
	}

	// Watch until the run waits for approval, then disconnect.
	var seen []int64
	watchCtx, stopWatch := context.WithCancel(ctx)
	w, err := s.orch.WatchRun(watchCtx, &orchestratorv1.WatchRunRequest{Id: runID})
	if err != nil {
		t.Fatal(err)
	}
	// Agent text deltas are live only (never stored, never replayed): each carries the sequence of the last stored
	// event sent before it, so a watcher resuming after it misses nothing stored and sees nothing twice.
	checkDelta := func(seq int64, stored []int64) {
		t.Helper()
		if len(stored) == 0 || seq != stored[len(stored)-1] {
			t.Errorf("agent text delta with sequence %d after stored events %v", seq, stored)
		}
	}
	for {
		ev, err := w.Recv()
		if err != nil {
			run, gerr := s.orch.GetRun(ctx, &orchestratorv1.GetRunRequest{Id: runID})
			t.Fatalf("WatchRun before approval: %v after events %v; the run: %v %q (%v)", err, seen,
				run.GetRun().GetState(), run.GetRun().GetError(), gerr)
		}
		if ev.GetAgentTextDelta() != nil { // live only: it carries the sequence of the stored event before it
			checkDelta(ev.GetSequence(), seen)
			continue
		}
		seen = append(seen, ev.GetSequence())
		if ev.GetWaitingForApproval() != nil {
			if ev.GetStepId() != "review" {
				t.Errorf("waiting for approval at step %q, want review", ev.GetStepId())
			}
			break
		}
	}
	stopWatch()
	last := seen[len(seen)-1]

	// The approver finds it with Connect JSON and approves it with grpcurl, as the README does.
	code, out, err := s.connectCall(t.Context(), s.writer, "loom.orchestrator.v1.OrchestratorService/ListPendingApprovals", map[string]any{"runId": runID})
	if err != nil || code != http.StatusOK || !strings.Contains(fmt.Sprint(out["approvals"]), "review") {
		t.Fatalf("ListPendingApprovals: %d %v %v", code, out, err)
	}
	approve := fmt.Sprintf(`{"runId":%q,"stepId":"review","decision":"DECISION_APPROVE","payload":{"note":"ok"}}`, runID)
	if out, err := s.grpcurl(t, s.writer, "-d", approve, s.gateway, "loom.orchestrator.v1.OrchestratorService/SubmitApproval"); err != nil {
		t.Fatalf("SubmitApproval: %v\n%s", err, out)
	}

	// Reconnect after the last sequence seen: the rest of the run, nothing twice, no gap.
	w, err = s.orch.WatchRun(ctx, &orchestratorv1.WatchRunRequest{Id: runID, AfterSequence: last})
	if err != nil {
		t.Fatal(err)
	}
	var resumed []int64
	var completed bool
	for {
		ev, err := w.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("WatchRun after reconnect: %v", err)
		}
		if ev.GetAgentTextDelta() != nil {
			checkDelta(ev.GetSequence(), append(seen, resumed...))
			continue
		}
		resumed = append(resumed, ev.GetSequence())
		completed = completed || ev.GetRunCompleted() != nil
	}
	if !completed || len(resumed) == 0 || resumed[0] != last+1 {
		t.Fatalf("resumed watch: completed=%v sequences %v, want %d onwards", completed, resumed, last+1)
	}
	all := append(seen, resumed...)
	for i, seq := range all {
		if seq != int64(i+1) {
			t.Fatalf("sequences across the reconnect %v: want 1..%d without gaps or repeats", all, len(all))
		}
	}
	run, err := s.orch.GetRun(ctx, &orchestratorv1.GetRunRequest{Id: runID})
	if err != nil || run.GetRun().GetState() != orchestratorv1.RunState_RUN_STATE_SUCCEEDED {
		t.Fatalf("GetRun: %v %v", run, err)
	}
	// The remember step wrote the summary into memory.
	ns, err := s.mem.GetNamespace(ctx, &memoryv1.GetNamespaceRequest{Name: "research"})
	if err != nil || ns.GetNamespace().GetStats().GetRecordCount() != 1 {
		t.Errorf("research namespace after the run: %v %v, want the one remembered summary", ns, err)
	}
	t.Logf("research run %s: %d events before the disconnect, %d after the reconnect from sequence %d", runID, len(seen), len(resumed), last)
}

// newKey creates an API key of tenant acme through AdminService (grpc-go), for one workload: the gateway's rate
// limit is per principal, so concurrent workloads each get theirs, as separate clients would.
func (s *suite) newKey(t *testing.T, name, role string) string {
	t.Helper()
	res, err := s.admin.CreateApiKey(as(t.Context(), s.adminKey), &adminv1.CreateApiKeyRequest{Name: name, Roles: []string{role}})
	if err != nil {
		t.Fatalf("CreateApiKey %s: %v", name, err)
	}
	return res.GetSecret()
}
