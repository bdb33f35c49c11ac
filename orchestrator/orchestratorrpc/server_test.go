package orchestratorrpc_test

import (
	"context"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/structpb"

	orchestratorv1 "github.com/loom-dev/loom/gen/loom/orchestrator/v1"
	"github.com/loom-dev/loom/gen/loom/orchestrator/v1/orchestratorv1connect"
	"github.com/loom-dev/loom/internal/rpcserver"
	"github.com/loom-dev/loom/internal/rpcserver/rpcservertest"
	"github.com/loom-dev/loom/internal/sqldb"
	"github.com/loom-dev/loom/internal/sqldb/sqldbtest"
	"github.com/loom-dev/loom/orchestrator/engine"
	"github.com/loom-dev/loom/orchestrator/orchestratorrpc"
	"github.com/loom-dev/loom/orchestrator/orchestratortest"
	"github.com/loom-dev/loom/orchestrator/sqlstore"
)

// tenantHeader carries the tenant in tests; rpcservertest.TenantAuthenticator stands in for authentication.
const tenantHeader = rpcservertest.TenantHeader

type clients struct {
	connect orchestratorv1connect.OrchestratorServiceClient
	grpc    orchestratorv1.OrchestratorServiceClient
}

// start serves an orchestrator on the real server (interceptors, limits) and returns Connect and grpc-go clients.
func start(t *testing.T) clients { return startWith(t, nil) }

// startWith serves an orchestrator whose run engine (SQLite) calls agents (nil: fakes that answer at once).
func startWith(t *testing.T, agents *orchestratortest.Agents) clients {
	t.Helper()
	c, _ := startWithURL(t, agents)
	return c
}

// startWithURL is startWith, also returning the server's URL for other clients.
func startWithURL(t *testing.T, agents *orchestratortest.Agents) (clients, string) {
	t.Helper()
	return startWithEngine(t, agents, engine.Config{FetchPollInterval: 50 * time.Millisecond})
}

// startWithEngine is startWithURL with the engine's configuration given.
func startWithEngine(t *testing.T, agents *orchestratortest.Agents, cfg engine.Config) (clients, string) {
	t.Helper()
	ctx := context.Background()
	db := sqldbtest.Open(t, sqldb.SQLite)
	store, err := sqlstore.New(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	if agents == nil {
		agents = &orchestratortest.Agents{}
	}
	eng, err := engine.NewSQLite(ctx, nil, db, agents, &orchestratortest.Memory{}, cfg)
	if err != nil {
		t.Fatal(err)
	}
	orchestratortest.StartEngine(t, eng)
	svc := orchestratorrpc.New(nil, store, eng, orchestratorrpc.WithWatchPollInterval(20*time.Millisecond)).Service()
	srv := rpcservertest.Start(t, rpcserver.Config{}, rpcservertest.TenantAuthenticator, svc)
	conn := srv.GRPCConn(t)
	return clients{
		connect: orchestratorv1connect.NewOrchestratorServiceClient(rpcservertest.HTTPClient(), srv.URL),
		grpc:    orchestratorv1.NewOrchestratorServiceClient(conn),
	}, srv.URL
}

func request[T any](tenant string, msg *T) *connect.Request[T] {
	req := connect.NewRequest(msg)
	if tenant != "" {
		req.Header().Set(tenantHeader, tenant)
	}
	return req
}

func grpcCtx(t *testing.T, tenant string) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return metadata.AppendToOutgoingContext(ctx, strings.ToLower(tenantHeader), tenant)
}

func yamlSource(src string) *orchestratorv1.BlueprintSource {
	return &orchestratorv1.BlueprintSource{Source: &orchestratorv1.BlueprintSource_Yaml{Yaml: src}}
}

func msgSource(bp *orchestratorv1.Blueprint) *orchestratorv1.BlueprintSource {
	return &orchestratorv1.BlueprintSource{Source: &orchestratorv1.BlueprintSource_Blueprint{Blueprint: bp}}
}

const invalidYAML = `name: broken
steps:
  - id: a
    depends_on: [ghost]
    agent: {agent: echo, input: "1 + 1"}
`

func TestBlueprintLifecycleConnect(t *testing.T) {
	t.Parallel()
	c := start(t).connect
	ctx := context.Background()

	created, err := c.CreateBlueprint(ctx, request("acme", &orchestratorv1.CreateBlueprintRequest{
		Source: msgSource(orchestratortest.Blueprint("alpha", "input.q")),
	}))
	if err != nil {
		t.Fatalf("CreateBlueprint() error = %v", err)
	}
	if v := created.Msg.GetBlueprint().GetVersion(); v != 1 {
		t.Errorf("CreateBlueprint() version = %d, want 1", v)
	}
	updated, err := c.UpdateBlueprint(ctx, request("acme", &orchestratorv1.UpdateBlueprintRequest{
		Name: "alpha", ExpectedVersion: 1,
		Source: yamlSource("name: alpha\nsteps:\n  - id: a\n    agent: {agent: echo, input: \"'v2'\"}\n"),
	}))
	if err != nil || updated.Msg.GetBlueprint().GetVersion() != 2 {
		t.Fatalf("UpdateBlueprint() = %v, %v; want version 2", updated.Msg.GetBlueprint().GetVersion(), err)
	}
	_, err = c.UpdateBlueprint(ctx, request("acme", &orchestratorv1.UpdateBlueprintRequest{
		Name: "alpha", ExpectedVersion: 1, Source: msgSource(orchestratortest.Blueprint("alpha", "'stale'")),
	}))
	wantCode(t, err, connect.CodeAborted)
	_, err = c.UpdateBlueprint(ctx, request("acme", &orchestratorv1.UpdateBlueprintRequest{
		Name: "other", Source: msgSource(orchestratortest.Blueprint("alpha", "'x'")),
	}))
	wantCode(t, err, connect.CodeInvalidArgument)

	got, err := c.GetBlueprint(ctx, request("acme", &orchestratorv1.GetBlueprintRequest{Name: "alpha", Version: 1}))
	if err != nil {
		t.Fatalf("GetBlueprint() error = %v", err)
	}
	if diff := cmp.Diff(created.Msg.GetBlueprint(), got.Msg.GetBlueprint(), protocmp.Transform()); diff != "" {
		t.Errorf("GetBlueprint(version 1) (-want +got):\n%s", diff)
	}
	_, err = c.GetBlueprint(ctx, request("other-tenant", &orchestratorv1.GetBlueprintRequest{Name: "alpha"}))
	wantCode(t, err, connect.CodeNotFound)

	for _, name := range []string{"beta", "gamma"} {
		if _, err := c.CreateBlueprint(ctx, request("acme", &orchestratorv1.CreateBlueprintRequest{
			Source: msgSource(orchestratortest.Blueprint(name, "'x'")),
		})); err != nil {
			t.Fatal(err)
		}
	}
	_, err = c.CreateBlueprint(ctx, request("acme", &orchestratorv1.CreateBlueprintRequest{Source: msgSource(orchestratortest.Blueprint("beta", "'x'"))}))
	wantCode(t, err, connect.CodeAlreadyExists)

	page1, err := c.ListBlueprints(ctx, request("acme", &orchestratorv1.ListBlueprintsRequest{PageSize: 2}))
	if err != nil || len(page1.Msg.GetBlueprints()) != 2 || page1.Msg.GetNextPageToken() == "" {
		t.Fatalf("ListBlueprints() page 1 = %v, %v", page1, err)
	}
	page2, err := c.ListBlueprints(ctx, request("acme", &orchestratorv1.ListBlueprintsRequest{PageSize: 2, PageToken: page1.Msg.GetNextPageToken()}))
	if err != nil || len(page2.Msg.GetBlueprints()) != 1 || page2.Msg.GetNextPageToken() != "" || page2.Msg.GetBlueprints()[0].GetName() != "gamma" {
		t.Fatalf("ListBlueprints() page 2 = %v, %v", page2, err)
	}
	_, err = c.ListBlueprints(ctx, request("acme", &orchestratorv1.ListBlueprintsRequest{PageToken: "garbage"}))
	wantCode(t, err, connect.CodeInvalidArgument)

	canvasRef, err := c.GenerateCanvas(ctx, request("acme", &orchestratorv1.GenerateCanvasRequest{
		Target: &orchestratorv1.GenerateCanvasRequest_Ref{Ref: &orchestratorv1.BlueprintRef{Name: "alpha", Version: 1}},
	}))
	if err != nil || len(canvasRef.Msg.GetCanvas().GetNodes()) != 2 || canvasRef.Msg.GetCanvas().GetBlueprint().GetVersion() != 1 {
		t.Fatalf("GenerateCanvas(ref) = %v, %v; want 2 nodes of version 1", canvasRef, err)
	}
	_, err = c.GenerateCanvas(ctx, request("acme", &orchestratorv1.GenerateCanvasRequest{
		Target: &orchestratorv1.GenerateCanvasRequest_Source{Source: yamlSource(invalidYAML)},
	}))
	wantCode(t, err, connect.CodeInvalidArgument)

	if _, err := c.DeleteBlueprint(ctx, request("acme", &orchestratorv1.DeleteBlueprintRequest{Name: "alpha"})); err != nil {
		t.Fatalf("DeleteBlueprint() error = %v", err)
	}
	_, err = c.GetBlueprint(ctx, request("acme", &orchestratorv1.GetBlueprintRequest{Name: "alpha"}))
	wantCode(t, err, connect.CodeNotFound)
	_, err = c.DeleteBlueprint(ctx, request("acme", &orchestratorv1.DeleteBlueprintRequest{Name: "alpha"}))
	wantCode(t, err, connect.CodeNotFound)
}

func TestInvalidBlueprintDetailsConnect(t *testing.T) {
	t.Parallel()
	c := start(t).connect
	_, err := c.CreateBlueprint(context.Background(), request("acme", &orchestratorv1.CreateBlueprintRequest{Source: yamlSource(invalidYAML)}))
	ce := wantCode(t, err, connect.CodeInvalidArgument)
	for _, path := range []string{"steps[0].depends_on[0]", "steps[0].agent.input"} {
		if !strings.Contains(ce.Message(), path) {
			t.Errorf("message %q does not name %s", ce.Message(), path)
		}
	}
	var detail *orchestratorv1.ValidateBlueprintResponse
	for _, d := range ce.Details() {
		if v, err := d.Value(); err == nil {
			detail, _ = v.(*orchestratorv1.ValidateBlueprintResponse)
		}
	}
	want := &orchestratorv1.ValidateBlueprintResponse{Errors: []*orchestratorv1.ValidationError{
		{Path: "steps[0].agent.input", Message: "expression has type int, want string", Line: 5, Column: 33},
		{Path: "steps[0].depends_on[0]", Message: `unknown step "ghost"`, Line: 4, Column: 18},
	}}
	if diff := cmp.Diff(want, detail, protocmp.Transform()); diff != "" {
		t.Errorf("error detail (-want +got):\n%s", diff)
	}
	resp, err := c.ValidateBlueprint(context.Background(), request("acme", &orchestratorv1.ValidateBlueprintRequest{Source: yamlSource(invalidYAML)}))
	if err != nil {
		t.Fatalf("ValidateBlueprint() error = %v", err)
	}
	if diff := cmp.Diff(want, resp.Msg, protocmp.Transform()); diff != "" {
		t.Errorf("ValidateBlueprint() (-want +got):\n%s", diff)
	}
}

func TestRequestsAreCheckedConnect(t *testing.T) {
	t.Parallel()
	c := start(t).connect
	ctx := context.Background()
	// protovalidate rejects the request before the handler runs.
	_, err := c.GetBlueprint(ctx, request("acme", &orchestratorv1.GetBlueprintRequest{Name: "Not Valid"}))
	wantCode(t, err, connect.CodeInvalidArgument)
	_, err = c.CreateBlueprint(ctx, request("acme", &orchestratorv1.CreateBlueprintRequest{}))
	wantCode(t, err, connect.CodeInvalidArgument)
	// No principal: the middleware did not authenticate the call.
	_, err = c.ListBlueprints(ctx, request("", &orchestratorv1.ListBlueprintsRequest{}))
	wantCode(t, err, connect.CodeUnauthenticated)
}

func TestGRPCClient(t *testing.T) {
	t.Parallel()
	c := start(t).grpc
	ctx := grpcCtx(t, "acme")
	created, err := c.CreateBlueprint(ctx, &orchestratorv1.CreateBlueprintRequest{Source: yamlSource(
		"name: viagrpc\nsteps:\n  - id: a\n    agent: {agent: echo, input: \"input.q\"}\n")})
	if err != nil || created.GetBlueprint().GetVersion() != 1 {
		t.Fatalf("CreateBlueprint() = %v, %v", created, err)
	}
	got, err := c.GetBlueprint(ctx, &orchestratorv1.GetBlueprintRequest{Name: "viagrpc"})
	if err != nil {
		t.Fatalf("GetBlueprint() error = %v", err)
	}
	if diff := cmp.Diff(created.GetBlueprint(), got.GetBlueprint(), protocmp.Transform()); diff != "" {
		t.Errorf("GetBlueprint() (-want +got):\n%s", diff)
	}
	list, err := c.ListBlueprints(ctx, &orchestratorv1.ListBlueprintsRequest{})
	if err != nil || len(list.GetBlueprints()) != 1 {
		t.Errorf("ListBlueprints() = %v, %v", list, err)
	}
	cv, err := c.GenerateCanvas(ctx, &orchestratorv1.GenerateCanvasRequest{
		Target: &orchestratorv1.GenerateCanvasRequest_Source{Source: msgSource(orchestratortest.Blueprint("inline", "'x'"))},
	})
	if err != nil || len(cv.GetCanvas().GetEdges()) != 1 {
		t.Errorf("GenerateCanvas(inline) = %v, %v", cv, err)
	}

	_, err = c.CreateBlueprint(ctx, &orchestratorv1.CreateBlueprintRequest{Source: yamlSource(invalidYAML)})
	st := status.Convert(err)
	if st.Code() != codes.InvalidArgument {
		t.Fatalf("CreateBlueprint(invalid) code = %v, want InvalidArgument", st.Code())
	}
	var detail *orchestratorv1.ValidateBlueprintResponse
	for _, d := range st.Details() {
		if v, ok := d.(*orchestratorv1.ValidateBlueprintResponse); ok {
			detail = v
		}
	}
	if len(detail.GetErrors()) != 2 {
		t.Errorf("grpc error details = %v, want a ValidateBlueprintResponse with 2 errors", st.Details())
	}
	_, err = c.UpdateBlueprint(ctx, &orchestratorv1.UpdateBlueprintRequest{
		Name: "viagrpc", ExpectedVersion: 7, Source: msgSource(orchestratortest.Blueprint("viagrpc", "'x'")),
	})
	if status.Code(err) != codes.Aborted {
		t.Errorf("UpdateBlueprint(stale) code = %v, want Aborted", status.Code(err))
	}
	if _, err := c.GetBlueprint(grpcCtx(t, "intruder"), &orchestratorv1.GetBlueprintRequest{Name: "viagrpc"}); status.Code(err) != codes.NotFound {
		t.Errorf("GetBlueprint(other tenant) code = %v, want NotFound", status.Code(err))
	}
	// The run RPCs over grpc-go: a run starts and its events stream.
	in, _ := structpb.NewStruct(map[string]any{"q": "hi"})
	run, err := c.StartRun(ctx, &orchestratorv1.StartRunRequest{Blueprint: "viagrpc", Input: in})
	if err != nil {
		t.Fatalf("StartRun() error = %v", err)
	}
	stream, err := c.WatchRun(ctx, &orchestratorv1.WatchRunRequest{Id: run.GetRun().GetId()})
	var ev *orchestratorv1.WatchRunResponse
	if err == nil {
		ev, err = stream.Recv()
	}
	if err != nil || ev.GetRunStarted() == nil {
		t.Errorf("WatchRun() first event = %v, %v, want RunStarted", ev, err)
	}
}

func wantCode(t *testing.T, err error, code connect.Code) *connect.Error {
	t.Helper()
	var ce *connect.Error
	if !errors.As(err, &ce) || ce.Code() != code {
		t.Errorf("error = %v, want code %v", err, code)
		return nil
	}
	return ce
}

const approvalYAML = `name: approve
input_schema: {type: object, required: [topic]}
steps:
  - id: draft
    agent: {agent: writer, input: "input.topic"}
  - id: review
    depends_on: [draft]
    approval: {prompt: "Publish?", payload_schema: {type: object, required: [ok]}}
`

// TestRunsThroughTransport starts a run with a Connect client, follows it with a grpc-go WatchRun stream,
// approves it, and checks the stream ends with the run.
func TestRunsThroughTransport(t *testing.T) {
	t.Parallel()
	c := startWith(t, &orchestratortest.Agents{})
	ctx := context.Background()
	if _, err := c.connect.CreateBlueprint(ctx, request("acme", &orchestratorv1.CreateBlueprintRequest{Source: yamlSource(approvalYAML)})); err != nil {
		t.Fatal(err)
	}
	_, err := c.connect.StartRun(ctx, request("acme", &orchestratorv1.StartRunRequest{Blueprint: "approve"}))
	wantCode(t, err, connect.CodeInvalidArgument) // input misses "topic"
	_, err = c.connect.StartRun(ctx, request("acme", &orchestratorv1.StartRunRequest{Blueprint: "missing"}))
	wantCode(t, err, connect.CodeNotFound)

	in, _ := structpb.NewStruct(map[string]any{"topic": "otters"})
	started, err := c.connect.StartRun(ctx, request("acme", &orchestratorv1.StartRunRequest{Blueprint: "approve", Input: in, IdempotencyKey: "k1"}))
	if err != nil {
		t.Fatalf("StartRun() error = %v", err)
	}
	again, err := c.connect.StartRun(ctx, request("acme", &orchestratorv1.StartRunRequest{Blueprint: "approve", Input: in, IdempotencyKey: "k1"}))
	if err != nil || again.Msg.GetRun().GetId() != started.Msg.GetRun().GetId() {
		t.Fatalf("StartRun(same key) = %v, %v; want the same run", again.Msg.GetRun().GetId(), err)
	}
	id := started.Msg.GetRun().GetId()

	stream, err := c.grpc.WatchRun(grpcCtx(t, "acme"), &orchestratorv1.WatchRunRequest{Id: id})
	if err != nil {
		t.Fatal(err)
	}
	var seqs []int64
	approved := false
	for {
		ev, err := stream.Recv()
		if err != nil {
			if !errors.Is(err, io.EOF) {
				t.Fatalf("Recv() error = %v", err)
			}
			break
		}
		seqs = append(seqs, ev.GetSequence())
		if ev.GetWaitingForApproval() != nil && !approved {
			approved = true
			list, err := c.connect.ListPendingApprovals(ctx, request("acme", &orchestratorv1.ListPendingApprovalsRequest{RunId: id}))
			if err != nil || len(list.Msg.GetApprovals()) != 1 {
				t.Fatalf("ListPendingApprovals() = %v, %v", list, err)
			}
			_, err = c.grpc.SubmitApproval(grpcCtx(t, "acme"), &orchestratorv1.SubmitApprovalRequest{
				RunId: id, StepId: "review", Decision: orchestratorv1.Decision_DECISION_APPROVE})
			if status.Code(err) != codes.InvalidArgument {
				t.Errorf("SubmitApproval(no payload) code = %v, want InvalidArgument", status.Code(err))
			}
			payload, _ := structpb.NewStruct(map[string]any{"ok": true})
			if _, err := c.grpc.SubmitApproval(grpcCtx(t, "acme"), &orchestratorv1.SubmitApprovalRequest{
				RunId: id, StepId: "review", Decision: orchestratorv1.Decision_DECISION_APPROVE, Payload: payload}); err != nil {
				t.Fatalf("SubmitApproval() error = %v", err)
			}
		}
		if ev.GetRunCompleted() != nil && ev.GetRunCompleted().GetOutput().GetStructValue().GetFields()["ok"].GetBoolValue() != true {
			t.Errorf("run output = %v, want the approval payload (output of the final step)", ev.GetRunCompleted().GetOutput())
		}
	}
	for i, s := range seqs {
		if s != int64(i+1) {
			t.Fatalf("sequences = %v, want 1..n", seqs)
		}
	}
	run, err := c.connect.GetRun(ctx, request("acme", &orchestratorv1.GetRunRequest{Id: id}))
	if err != nil || run.Msg.GetRun().GetState() != orchestratorv1.RunState_RUN_STATE_SUCCEEDED || run.Msg.GetRun().GetLastSequence() != int64(len(seqs)) {
		t.Fatalf("GetRun() = %v, %v; want succeeded with %d events", run, err, len(seqs))
	}
	// Replay from the middle.
	replay, err := c.connect.WatchRun(ctx, request("acme", &orchestratorv1.WatchRunRequest{Id: id, AfterSequence: 2}))
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for replay.Receive() {
		n++
	}
	if replay.Err() != nil || n != len(seqs)-2 {
		t.Errorf("replay after 2 = %d events, %v; want %d", n, replay.Err(), len(seqs)-2)
	}
	list, err := c.connect.ListRuns(ctx, request("acme", &orchestratorv1.ListRunsRequest{State: orchestratorv1.RunState_RUN_STATE_SUCCEEDED}))
	if err != nil || len(list.Msg.GetRuns()) != 1 {
		t.Errorf("ListRuns(succeeded) = %v, %v", list, err)
	}
	_, err = c.connect.CancelRun(ctx, request("acme", &orchestratorv1.CancelRunRequest{Id: id}))
	wantCode(t, err, connect.CodeFailedPrecondition)
	_, err = c.connect.GetRun(ctx, request("intruder", &orchestratorv1.GetRunRequest{Id: id}))
	wantCode(t, err, connect.CodeNotFound)
}
