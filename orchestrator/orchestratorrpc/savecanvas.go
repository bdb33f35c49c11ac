package orchestratorrpc

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"connectrpc.com/connect"

	orchestratorv1 "github.com/loom-dev/loom/gen/loom/orchestrator/v1"
	"github.com/loom-dev/loom/internal/principal"
	"github.com/loom-dev/loom/orchestrator/canvas"
)

// SaveCanvas stores an edited canvas as a new version of its blueprint.
func (s *Server) SaveCanvas(ctx context.Context, req *connect.Request[orchestratorv1.SaveCanvasRequest]) (*connect.Response[orchestratorv1.SaveCanvasResponse], error) {
	t := principal.TenantOf(ctx)
	edited, errs := canvas.Blueprint(req.Msg.GetCanvas())
	if len(errs) > 0 {
		return nil, s.connectError(ctx, &invalidBlueprintError{errs: errs})
	}
	if edited.GetName() != req.Msg.GetName() {
		return nil, s.connectError(ctx, &invalidBlueprintError{errs: []*orchestratorv1.ValidationError{{
			Path:    "canvas.blueprint.name",
			Message: fmt.Sprintf("blueprint name %q does not match the name in the request %q", edited.GetName(), req.Msg.GetName()),
		}}})
	}
	edited.Version, edited.CreateTime = 0, nil // output only
	bp, err := s.load(&orchestratorv1.BlueprintSource{Source: &orchestratorv1.BlueprintSource_Blueprint{Blueprint: edited}})
	if err != nil {
		return nil, s.connectError(ctx, prefixPaths(err, "canvas.blueprint."))
	}
	stored, err := s.store.UpdateBlueprint(ctx, t, bp, req.Msg.GetExpectedVersion())
	if err != nil {
		return nil, s.connectError(ctx, err)
	}
	return connect.NewResponse(&orchestratorv1.SaveCanvasResponse{Blueprint: stored, Canvas: canvas.Generate(stored)}), nil
}

// prefixPaths puts prefix before the paths of an invalid blueprint's errors, so they name fields of the request.
func prefixPaths(err error, prefix string) error {
	var invalid *invalidBlueprintError
	if !errors.As(err, &invalid) {
		return err
	}
	for _, e := range invalid.errs {
		if !strings.HasPrefix(e.GetPath(), prefix) {
			e.Path = prefix + e.GetPath()
		}
	}
	return invalid
}
