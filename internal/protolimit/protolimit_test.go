package protolimit_test

import (
	"errors"
	"strconv"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	agentv1 "github.com/loom-dev/loom/gen/loom/agent/v1"
	orchestratorv1 "github.com/loom-dev/loom/gen/loom/orchestrator/v1"
	"github.com/loom-dev/loom/internal/protolimit"
)

// Deep returns a Struct nesting depth JSON objects ({"a":{"a":...}}), alternating with arrays when lists is set.
func deep(depth int, lists bool) *structpb.Struct {
	v := structpb.NewStringValue("leaf")
	for i := 1; i < depth; i++ {
		if lists && i%2 == 0 {
			v = structpb.NewListValue(&structpb.ListValue{Values: []*structpb.Value{v}})
		} else {
			v = structpb.NewStructValue(&structpb.Struct{Fields: map[string]*structpb.Value{"a": v}})
		}
	}
	return &structpb.Struct{Fields: map[string]*structpb.Value{"a": v}}
}

func TestCheck(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		msg  func(*structpb.Struct) proto.Message
		path string
	}{
		{"run input", func(s *structpb.Struct) proto.Message {
			return &orchestratorv1.StartRunRequest{Blueprint: "b", Input: s}
		}, "input"},
		{"approval payload", func(s *structpb.Struct) proto.Message { return &orchestratorv1.SubmitApprovalRequest{Payload: s} }, "payload"},
		{"input schema", func(s *structpb.Struct) proto.Message {
			return &orchestratorv1.CreateBlueprintRequest{Source: &orchestratorv1.BlueprintSource{Source: &orchestratorv1.BlueprintSource_Blueprint{
				Blueprint: &orchestratorv1.Blueprint{InputSchema: s}}}}
		}, "source.blueprint.input_schema"},
		{"payload schema", func(s *structpb.Struct) proto.Message {
			return &orchestratorv1.CreateBlueprintRequest{Source: &orchestratorv1.BlueprintSource{Source: &orchestratorv1.BlueprintSource_Blueprint{
				Blueprint: &orchestratorv1.Blueprint{Steps: []*orchestratorv1.Step{{}, {Kind: &orchestratorv1.Step_Approval{
					Approval: &orchestratorv1.ApprovalStep{PayloadSchema: s}}}}}}}}
		}, "source.blueprint.steps[1].approval.payload_schema"},
		{"sim tool-call arguments", func(s *structpb.Struct) proto.Message {
			return &agentv1.CreateAgentRequest{Agent: &agentv1.Agent{Model: &agentv1.Model{Sim: &agentv1.SimScript{Turns: []*agentv1.SimTurn{
				{}, {ToolCalls: []*agentv1.ToolCall{{}, {Arguments: s}}}}}}}}
		}, "agent.model.sim.turns[1].tool_calls[1].arguments"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			for _, lists := range []bool{false, true} {
				for depth, refused := range map[int]bool{1: false, 64: false, 65: true, 4000: true} {
					err := protolimit.Check(tc.msg(deep(depth, lists)), protolimit.MaxDepth)
					if (err != nil) != refused {
						t.Errorf("lists=%v depth %d: %v, want refused=%v", lists, depth, err, refused)
					}
					if err != nil && (!errors.Is(err, protolimit.ErrTooDeep) || !strings.HasPrefix(err.Error(), tc.path+": ")) {
						t.Errorf("lists=%v depth %d: %v, want it to name %s", lists, depth, err, tc.path)
					}
				}
			}
		})
	}
}

func TestCheckStructAndValueFields(t *testing.T) {
	t.Parallel()
	if err := protolimit.CheckStruct(deep(65, false), "args", 64); err == nil || !strings.HasPrefix(err.Error(), "args: ") {
		t.Errorf("CheckStruct(65) = %v", err)
	}
	if err := protolimit.CheckStruct(deep(64, true), "args", 64); err != nil {
		t.Errorf("CheckStruct(64) = %v", err)
	}
	// A Value field (a run's output) and a list of them.
	r := &orchestratorv1.WorkflowRun{Output: structpb.NewStructValue(deep(65, false))}
	if err := protolimit.Check(r, 64); err == nil || !strings.HasPrefix(err.Error(), "output: ") {
		t.Errorf("Check(run output 65) = %v", err)
	}
	if err := protolimit.Check(structpb.NewStructValue(deep(100, false)), 64); err == nil || !strings.HasPrefix(err.Error(), "(request): ") {
		t.Errorf("Check(Value) = %v", err)
	}
	if err := protolimit.Check(nil, 64); err != nil {
		t.Error(err)
	}
}

func BenchmarkCheckWide(b *testing.B) {
	fields := map[string]*structpb.Value{}
	for i := range 10000 {
		fields[strconv.Itoa(i)] = structpb.NewStructValue(deep(10, true))
	}
	req := &orchestratorv1.StartRunRequest{Input: &structpb.Struct{Fields: fields}}
	for b.Loop() {
		if err := protolimit.Check(req, 64); err != nil {
			b.Fatal(err)
		}
	}
}
