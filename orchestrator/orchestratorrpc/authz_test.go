package orchestratorrpc_test

import (
	"net/http"
	"testing"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/emptypb"

	orchestratorv1 "github.com/loom-dev/loom/gen/loom/orchestrator/v1"
	"github.com/loom-dev/loom/gen/loom/orchestrator/v1/orchestratorv1connect"
	"github.com/loom-dev/loom/internal/principal"
	"github.com/loom-dev/loom/internal/rpcserver"
	"github.com/loom-dev/loom/internal/rpcserver/rpcservertest"
	"github.com/loom-dev/loom/orchestrator/orchestratorrpc"
)

// TestEveryProcedureNeedsATenant: the handlers read their tenant with principal.TenantOf and have no error
// branch, so the server must refuse, before any handler runs, a caller whose principal carries no tenant. The
// server has no store and no engine: a handler that ran would answer something other than Unauthenticated
// (Internal from the recovered panic, or OK).
func TestEveryProcedureNeedsATenant(t *testing.T) {
	t.Parallel()
	noTenant := func(*http.Request) (principal.Principal, error) {
		return principal.Principal{Subject: "s", Roles: []string{"admin"}}, nil
	}
	srv := rpcservertest.Start(t, rpcserver.Config{}, noTenant, orchestratorrpc.New(nil, nil, nil).Service())
	methods := orchestratorv1.File_loom_orchestrator_v1_orchestrator_proto.Services().ByName("OrchestratorService").Methods()
	for i := range methods.Len() {
		md := methods.Get(i)
		t.Run(string(md.Name()), func(t *testing.T) {
			t.Parallel()
			// An empty message is a valid encoding of every request type.
			c := connect.NewClient[emptypb.Empty, emptypb.Empty](rpcservertest.HTTPClient(), srv.URL+"/"+orchestratorv1connect.OrchestratorServiceName+"/"+string(md.Name()))
			var err error
			if md.IsStreamingServer() {
				stream, serr := c.CallServerStream(t.Context(), connect.NewRequest(&emptypb.Empty{}))
				if err = serr; err == nil {
					for stream.Receive() {
					}
					err = stream.Err()
					_ = stream.Close()
				}
			} else {
				_, err = c.CallUnary(t.Context(), connect.NewRequest(&emptypb.Empty{}))
			}
			if connect.CodeOf(err) != connect.CodeUnauthenticated {
				t.Errorf("%s without a tenant: %v, want Unauthenticated", md.FullName(), err)
			}
		})
	}
}
