package rpcserver

import (
	"context"
	"errors"
	"strings"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"

	authv1 "github.com/loom-dev/loom/gen/loom/auth/v1"
	"github.com/loom-dev/loom/internal/principal"
	"github.com/loom-dev/loom/internal/procedure"
)

// RequiredRole returns the role the contract declares for procedure ("/pkg.Service/Method") with the
// (loom.auth.v1.required_role) method option, or ROLE_UNSPECIFIED when there is none.
func RequiredRole(proc string) authv1.Role {
	md, ok := procedure.Method(proc)
	if !ok || md.Options() == nil {
		return authv1.Role_ROLE_UNSPECIFIED
	}
	role, _ := proto.GetExtension(md.Options(), authv1.E_RequiredRole).(authv1.Role)
	return role
}

// roleRank maps a principal's role names to the contract's ordered roles.
var roleRank = map[string]authv1.Role{
	"reader": authv1.Role_ROLE_READER,
	"writer": authv1.Role_ROLE_WRITER,
	"admin":  authv1.Role_ROLE_ADMIN,
}

// Allowed reports whether p may call a procedure that requires role. ROLE_UNSPECIFIED allows no one.
func Allowed(p principal.Principal, role authv1.Role) bool {
	if role == authv1.Role_ROLE_UNSPECIFIED {
		return false
	}
	for _, r := range p.Roles {
		if roleRank[r] >= role {
			return true
		}
	}
	return false
}

// authzInterceptor enforces each RPC's declared role, for unary and streaming calls alike.
type authzInterceptor struct{}

func authorize(ctx context.Context, procedure string) error {
	p, ok := principal.FromContext(ctx)
	if !ok {
		return connect.NewError(connect.CodeUnauthenticated, errors.New("no credentials"))
	}
	role := RequiredRole(procedure)
	if !Allowed(p, role) {
		if role == authv1.Role_ROLE_UNSPECIFIED {
			return connect.NewError(connect.CodePermissionDenied, errors.New("procedure declares no role; denied by default"))
		}
		return connect.NewError(connect.CodePermissionDenied, errors.New("requires role "+strings.ToLower(strings.TrimPrefix(role.String(), "ROLE_"))))
	}
	return nil
}

func (authzInterceptor) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		if req.Spec().IsClient {
			return next(ctx, req)
		}
		if err := authorize(ctx, req.Spec().Procedure); err != nil {
			return nil, err
		}
		return next(ctx, req)
	}
}

func (authzInterceptor) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

func (authzInterceptor) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return func(ctx context.Context, conn connect.StreamingHandlerConn) error {
		if err := authorize(ctx, conn.Spec().Procedure); err != nil {
			return err
		}
		return next(ctx, conn)
	}
}
