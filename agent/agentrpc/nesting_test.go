package agentrpc_test

import (
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/loom-dev/loom/agent/agentrpc"
	agentv1 "github.com/loom-dev/loom/gen/loom/agent/v1"
)

func deepArgs(depth int) *structpb.Struct {
	v := structpb.NewStringValue("leaf")
	for i := 1; i < depth; i++ {
		v = structpb.NewStructValue(&structpb.Struct{Fields: map[string]*structpb.Value{"a": v}})
	}
	return &structpb.Struct{Fields: map[string]*structpb.Value{"a": v}}
}

// TestNestingLimit: a sim script whose tool-call arguments nest 65 or 3,000 deep is refused by CreateAgent and
// UpdateAgent, over both clients, with InvalidArgument naming the field; 64 deep is accepted and reads back in a
// list.
func TestNestingLimit(t *testing.T) {
	t.Parallel()
	h := newHarness(t, agentrpc.Config{})
	h.eachClient(t, func(t *testing.T, c agentv1.AgentServiceClient) {
		ctx := testCtx(t)
		withMemory := func(a *agentv1.Agent) *agentv1.Agent {
			a.Memory = &agentv1.MemoryConfig{Namespace: "notes"} // memory tools need a namespace
			return a
		}
		script := func(depth int) *agentv1.SimScript {
			return &agentv1.SimScript{Turns: []*agentv1.SimTurn{{ToolCalls: []*agentv1.ToolCall{{Name: "memory_search", Arguments: deepArgs(depth)}}}}}
		}
		name := "deep-" + strings.ToLower(t.Name()[strings.LastIndex(t.Name(), "/")+1:])
		for _, depth := range []int{65, 3000} {
			_, err := c.CreateAgent(ctx, &agentv1.CreateAgentRequest{Agent: withMemory(simAgent(name, script(depth), searchTool))})
			if status.Code(err) != codes.InvalidArgument || !strings.Contains(status.Convert(err).Message(), "agent.model.sim.turns[0].tool_calls[0].arguments: JSON nested deeper than 64 levels") {
				t.Errorf("CreateAgent(%d deep) = %v, want InvalidArgument naming the field", depth, err)
			}
		}
		create(t, ctx, c, withMemory(simAgent(name, script(64), searchTool)))
		_, err := c.UpdateAgent(ctx, &agentv1.UpdateAgentRequest{Agent: withMemory(simAgent(name, script(65), searchTool))})
		if status.Code(err) != codes.InvalidArgument {
			t.Errorf("UpdateAgent(65 deep) = %v, want InvalidArgument", err)
		}
		if _, err := c.ListAgents(ctx, &agentv1.ListAgentsRequest{}); err != nil {
			t.Errorf("ListAgents = %v", err)
		}
	})
}
