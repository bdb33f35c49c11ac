package orchestratorrpc

import (
	"context"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/durationpb"

	agentv1 "github.com/loom-dev/loom/gen/loom/agent/v1"
	orchestratorv1 "github.com/loom-dev/loom/gen/loom/orchestrator/v1"
	"github.com/loom-dev/loom/internal/principal"
)

const defaultEstimateWindow = 200

// defaultAgentRunDuration is the agent service's default time budget of a run, the bound of an agent without one.
const defaultAgentRunDuration = 300 // seconds

// EstimateRun forecasts a run of a blueprint version from its recent successful runs (quantiles, with the
// sample size), and gives each agent and map step its agent's configured budget: the bound to go by when there
// is no history.
func (s *Server) EstimateRun(ctx context.Context, req *connect.Request[orchestratorv1.EstimateRunRequest]) (*connect.Response[orchestratorv1.EstimateRunResponse], error) {
	t := principal.TenantOf(ctx)
	bp, err := s.store.GetBlueprint(ctx, t, req.Msg.GetBlueprint(), req.Msg.GetVersion())
	if err != nil {
		return nil, s.connectError(ctx, err)
	}
	window := int(req.Msg.GetWindow())
	if window <= 0 {
		window = defaultEstimateWindow
	}
	out, err := s.runs.Forecast(ctx, t, bp, window)
	if err != nil {
		return nil, s.connectError(ctx, err)
	}
	if s.agents != nil {
		budgets := map[string]*orchestratorv1.AgentBudget{}
		for i, d := range bp.GetSteps() {
			name := d.GetAgent().GetAgent()
			if m := d.GetMap(); m != nil {
				name = m.GetAgent()
			}
			if name == "" || i >= len(out.GetSteps()) {
				continue
			}
			b, ok := budgets[name]
			if !ok {
				b = s.agentBudget(ctx, name)
				budgets[name] = b
			}
			out.Steps[i].Budget = b
		}
	}
	return connect.NewResponse(out), nil
}

// agentBudget reads an agent's per-run limits; nil when the agent cannot be read (the estimate stands without).
func (s *Server) agentBudget(ctx context.Context, name string) *orchestratorv1.AgentBudget {
	resp, err := s.agents.GetAgent(ctx, &agentv1.GetAgentRequest{Name: name})
	if err != nil {
		s.logger.DebugContext(ctx, "estimate: agent budget", "agent", name, "error", err)
		return nil
	}
	b := resp.GetAgent().GetBudgets()
	out := &orchestratorv1.AgentBudget{Agent: name, MaxCost: b.GetMaxCost(), MaxTokens: b.GetMaxTokens(),
		MaxDuration: b.GetMaxDuration()}
	if out.MaxDuration == nil || out.MaxDuration.AsDuration() <= 0 {
		out.MaxDuration = &durationpb.Duration{Seconds: defaultAgentRunDuration}
	}
	return out
}
