package agent_test

import (
	"fmt"

	"github.com/loom-dev/loom/agent"
	agentv1 "github.com/loom-dev/loom/gen/loom/agent/v1"
)

func ExampleApplyMask() {
	current := &agentv1.Agent{Name: "helper", Instructions: "Be brief.", Model: &agentv1.Model{Name: "a", MaxOutputTokens: 100}}
	update := &agentv1.Agent{Name: "helper", Instructions: "Be thorough.", Model: &agentv1.Model{Name: "b"}}
	if err := agent.ApplyMask(current, update, []string{"instructions", "model.name"}); err != nil {
		fmt.Println(err)
	}
	fmt.Println(current.GetInstructions(), current.GetModel().GetName(), current.GetModel().GetMaxOutputTokens())
	fmt.Println(agent.ApplyMask(current, update, []string{"version"}))
	// Output:
	// Be thorough. b 100
	// update_mask: path "version": field is output-only or immutable
}
