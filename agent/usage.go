package agent

import (
	"context"
	"errors"

	"connectrpc.com/connect"

	agentv1 "github.com/loom-dev/loom/gen/loom/agent/v1"
)

// GetUsage implements agentv1connect.AgentServiceHandler.
func (s *Server) GetUsage(context.Context, *connect.Request[agentv1.GetUsageRequest]) (*connect.Response[agentv1.GetUsageResponse], error) {
	return nil, connect.NewError(connect.CodeUnimplemented, errors.New("GetUsage is not implemented yet"))
}

// SetTenantBudget implements agentv1connect.AgentServiceHandler.
func (s *Server) SetTenantBudget(context.Context, *connect.Request[agentv1.SetTenantBudgetRequest]) (*connect.Response[agentv1.SetTenantBudgetResponse], error) {
	return nil, connect.NewError(connect.CodeUnimplemented, errors.New("SetTenantBudget is not implemented yet"))
}

// GetTenantBudget implements agentv1connect.AgentServiceHandler.
func (s *Server) GetTenantBudget(context.Context, *connect.Request[agentv1.GetTenantBudgetRequest]) (*connect.Response[agentv1.GetTenantBudgetResponse], error) {
	return nil, connect.NewError(connect.CodeUnimplemented, errors.New("GetTenantBudget is not implemented yet"))
}

// EstimateRun implements agentv1connect.AgentServiceHandler.
func (s *Server) EstimateRun(context.Context, *connect.Request[agentv1.EstimateRunRequest]) (*connect.Response[agentv1.EstimateRunResponse], error) {
	return nil, connect.NewError(connect.CodeUnimplemented, errors.New("EstimateRun is not implemented yet"))
}
