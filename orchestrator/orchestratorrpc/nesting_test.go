package orchestratorrpc_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"connectrpc.com/connect"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	orchestratorv1 "github.com/loom-dev/loom/gen/loom/orchestrator/v1"
	"github.com/loom-dev/loom/gen/loom/orchestrator/v1/orchestratorv1connect"
	"github.com/loom-dev/loom/internal/rpcserver/rpcservertest"
	"github.com/loom-dev/loom/orchestrator/orchestratortest"
)

// deepStruct nests depth JSON objects: {"a":{"a":...{"a":"leaf"}}}.
func deepStruct(depth int) *structpb.Struct {
	v := structpb.NewStringValue("leaf")
	for i := 1; i < depth; i++ {
		v = structpb.NewStructValue(&structpb.Struct{Fields: map[string]*structpb.Value{"a": v}})
	}
	return &structpb.Struct{Fields: map[string]*structpb.Value{"a": v}}
}

// TestNestingLimitThroughTransport sends run inputs, approval payloads and blueprint schemas nested 4,000 deep
// (and 65) through the real server with a Connect JSON client, a Connect protobuf client and a grpc-go client:
// each is refused with InvalidArgument, and where the request decodes at all the message names the field; 64
// deep is accepted and reads back.
func TestNestingLimitThroughTransport(t *testing.T) {
	t.Parallel()
	srvClients, url := startWithURL(t, &orchestratortest.Agents{})
	ctx := context.Background()
	jsonClient := orchestratorv1connect.NewOrchestratorServiceClient(rpcservertest.HTTPClient(), url, connect.WithProtoJSON())
	if _, err := srvClients.connect.CreateBlueprint(ctx, request("acme", &orchestratorv1.CreateBlueprintRequest{Source: yamlSource(approvalYAML)})); err != nil {
		t.Fatal(err)
	}
	tried, refused, named := 0, 0, 0
	check := func(what string, err error, field string, mustName bool) {
		t.Helper()
		tried++
		var code connect.Code
		var msg string
		if ce := new(connect.Error); errors.As(err, &ce) {
			code, msg = ce.Code(), ce.Message()
		} else if st, ok := status.FromError(err); ok && err != nil {
			code, msg = connect.Code(st.Code()), st.Message()
		}
		if code != connect.CodeInvalidArgument {
			t.Errorf("%s: %v, want InvalidArgument", what, err)
			return
		}
		refused++
		if strings.Contains(msg, field+": JSON nested deeper than 64 levels") {
			named++
		} else if mustName {
			t.Errorf("%s: message %q does not name %s", what, msg, field)
		}
	}
	for _, depth := range []int{65, 3000, 4000} {
		in := &structpb.Struct{Fields: map[string]*structpb.Value{"topic": structpb.NewStringValue("x"), "deep": structpb.NewStructValue(deepStruct(depth))}}
		start := &orchestratorv1.StartRunRequest{Blueprint: "approve", Input: in}
		// Protobuf binary needs 3 message levels per JSON level: past ~3,300 the server's decoder refuses it
		// before any handler (InvalidArgument, without the field); below, the nesting check names it.
		binaryNames := depth <= 3000
		_, err := jsonClient.StartRun(ctx, request("acme", start))
		check("connect json StartRun", err, "input", true)
		_, err = srvClients.connect.StartRun(ctx, request("acme", start))
		check("connect proto StartRun", err, "input", binaryNames)
		_, err = srvClients.grpc.StartRun(grpcCtx(t, "acme"), start)
		check("grpc StartRun", err, "input", binaryNames)

		bp := &orchestratorv1.Blueprint{Name: "schemas", InputSchema: deepStruct(depth), Steps: []*orchestratorv1.Step{{Id: "a",
			Kind: &orchestratorv1.Step_Approval{Approval: &orchestratorv1.ApprovalStep{Prompt: "ok?", PayloadSchema: deepStruct(depth)}}}}}
		_, err = jsonClient.CreateBlueprint(ctx, request("acme", &orchestratorv1.CreateBlueprintRequest{Source: msgSource(bp)}))
		check("connect json CreateBlueprint", err, "source.blueprint.input_schema", true)
		_, err = srvClients.grpc.ValidateBlueprint(grpcCtx(t, "acme"), &orchestratorv1.ValidateBlueprintRequest{Source: msgSource(bp)})
		check("grpc ValidateBlueprint", err, "source.blueprint.input_schema", binaryNames)
		bp.InputSchema = nil
		_, err = jsonClient.CreateBlueprint(ctx, request("acme", &orchestratorv1.CreateBlueprintRequest{Source: msgSource(bp)}))
		check("connect json CreateBlueprint payload_schema", err, "source.blueprint.steps[0].approval.payload_schema", true)
		_, err = jsonClient.SubmitApproval(ctx, request("acme", &orchestratorv1.SubmitApprovalRequest{RunId: "r", StepId: "a",
			Decision: orchestratorv1.Decision_DECISION_APPROVE, Payload: deepStruct(depth)}))
		check("connect json SubmitApproval", err, "payload", true)
	}
	t.Logf("nesting: %d deep requests tried, %d refused with InvalidArgument, %d naming the field", tried, refused, named)

	// 64 deep is accepted, stored, and reads back, alone and in a list.
	in := &structpb.Struct{Fields: map[string]*structpb.Value{"topic": structpb.NewStringValue("x"), "deep": structpb.NewStructValue(deepStruct(63))}}
	run, err := jsonClient.StartRun(ctx, request("acme", &orchestratorv1.StartRunRequest{Blueprint: "approve", Input: in}))
	if err != nil {
		t.Fatalf("StartRun(64 deep) = %v", err)
	}
	if _, err := srvClients.grpc.GetRun(grpcCtx(t, "acme"), &orchestratorv1.GetRunRequest{Id: run.Msg.GetRun().GetId()}); err != nil {
		t.Errorf("GetRun(64 deep) = %v", err)
	}
	if _, err := srvClients.grpc.ListRuns(grpcCtx(t, "acme"), &orchestratorv1.ListRunsRequest{}); err != nil {
		t.Errorf("ListRuns = %v", err)
	}
	bp := &orchestratorv1.Blueprint{Name: "schemas64", InputSchema: deepStruct(64), Steps: []*orchestratorv1.Step{{Id: "a",
		Kind: &orchestratorv1.Step_Approval{Approval: &orchestratorv1.ApprovalStep{Prompt: "ok?", PayloadSchema: deepStruct(64)}}}}}
	if _, err := srvClients.grpc.CreateBlueprint(grpcCtx(t, "acme"), &orchestratorv1.CreateBlueprintRequest{Source: msgSource(bp)}); err != nil {
		t.Errorf("CreateBlueprint(64 deep schemas) = %v", err)
	}
	if _, err := srvClients.grpc.ListBlueprints(grpcCtx(t, "acme"), &orchestratorv1.ListBlueprintsRequest{}); err != nil {
		t.Errorf("ListBlueprints = %v", err)
	}
}
