package orchestrator

import (
	"context"
	"errors"

	"connectrpc.com/connect"

	orchestratorv1 "github.com/loom-dev/loom/gen/loom/orchestrator/v1"
)

// EstimateRun implements orchestratorv1connect.OrchestratorServiceHandler.
func (s *Server) EstimateRun(context.Context, *connect.Request[orchestratorv1.EstimateRunRequest]) (*connect.Response[orchestratorv1.EstimateRunResponse], error) {
	return nil, connect.NewError(connect.CodeUnimplemented, errors.New("EstimateRun is not implemented yet"))
}
