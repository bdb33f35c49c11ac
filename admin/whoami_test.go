package admin_test

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/testing/protocmp"

	"github.com/loom-dev/loom/admin"
	adminv1 "github.com/loom-dev/loom/gen/loom/admin/v1"
	"github.com/loom-dev/loom/gen/loom/admin/v1/adminv1connect"
	"github.com/loom-dev/loom/internal/authn"
	"github.com/loom-dev/loom/internal/rpcserver"
	"github.com/loom-dev/loom/internal/rpcserver/rpcservertest"
)

// whoAmIServer serves an admin server behind the real authenticator in mode, and returns it with the secret of a
// reader key of tenant "acme".
func whoAmIServer(t *testing.T, mode authn.Mode) (srv *rpcservertest.Server, readerSecret, readerID string) {
	t.Helper()
	ctx := context.Background()
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	_, keys, trail := openStores(t)
	secret, key, err := keys.Create(ctx, "acme", "ci reader", []string{"reader"}, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	a, err := authn.New(authn.Config{Mode: mode}, keys, logger)
	if err != nil {
		t.Fatal(err)
	}
	svc := admin.New(logger, keys, trail, nil, mode)
	return rpcservertest.Start(t, rpcserver.Config{}, a.Authenticate, svc.Service()), secret, key.ID
}

// whoAmI calls WhoAmI with the Connect client and the grpc-go client, with secret as a bearer credential unless
// empty, checks both answer the same, and returns the answer or the error code.
func whoAmI(t *testing.T, srv *rpcservertest.Server, secret string) (*adminv1.WhoAmIResponse, codes.Code) {
	t.Helper()
	cc := adminv1connect.NewAdminServiceClient(rpcservertest.HTTPClient(), srv.URL)
	req := connect.NewRequest(&adminv1.WhoAmIRequest{})
	ctx := t.Context()
	if secret != "" {
		req.Header().Set("Authorization", "Bearer "+secret)
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+secret)
	}
	var viaConnect *adminv1.WhoAmIResponse
	connectCode := codes.OK
	if res, err := cc.WhoAmI(t.Context(), req); err != nil {
		connectCode = codes.Code(connect.CodeOf(err))
	} else {
		viaConnect = res.Msg
	}
	viaGRPC, err := adminv1.NewAdminServiceClient(srv.GRPCConn(t)).WhoAmI(ctx, &adminv1.WhoAmIRequest{})
	if status.Code(err) != connectCode {
		t.Fatalf("WhoAmI: Connect client %v, grpc-go client %v", connectCode, err)
	}
	if diff := cmp.Diff(viaConnect, viaGRPC, protocmp.Transform()); diff != "" {
		t.Errorf("WhoAmI: Connect and grpc-go answers differ (-connect +grpc):\n%s", diff)
	}
	return viaGRPC, connectCode
}

func TestWhoAmI(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name     string
		mode     authn.Mode
		withKey  bool
		wantCode codes.Code
		want     func(keyID string) *adminv1.WhoAmIResponse
	}{
		{
			name: "reader key, auth required", mode: authn.ModeRequired, withKey: true,
			want: func(id string) *adminv1.WhoAmIResponse {
				return &adminv1.WhoAmIResponse{Tenant: "acme", Subject: "apikey:" + id, Roles: []string{"reader"}, AuthMode: "required", CredentialKind: "api_key"}
			},
		},
		{
			name: "reader key, local mode", mode: authn.ModeLocal, withKey: true,
			want: func(id string) *adminv1.WhoAmIResponse {
				return &adminv1.WhoAmIResponse{Tenant: "acme", Subject: "apikey:" + id, Roles: []string{"reader"}, AuthMode: "local", CredentialKind: "api_key"}
			},
		},
		{
			name: "no credentials, local mode", mode: authn.ModeLocal,
			want: func(string) *adminv1.WhoAmIResponse {
				return &adminv1.WhoAmIResponse{Tenant: "local", Subject: "local-dev", Roles: []string{"admin"}, AuthMode: "local", CredentialKind: "none"}
			},
		},
		{name: "no credentials, auth required", mode: authn.ModeRequired, wantCode: codes.Unauthenticated},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			srv, secret, id := whoAmIServer(t, tc.mode)
			if !tc.withKey {
				secret = ""
			}
			got, code := whoAmI(t, srv, secret)
			if code != tc.wantCode {
				t.Fatalf("WhoAmI code = %v, want %v", code, tc.wantCode)
			}
			if tc.want == nil {
				return
			}
			if diff := cmp.Diff(tc.want(id), got, protocmp.Transform()); diff != "" {
				t.Errorf("WhoAmI (-want +got):\n%s", diff)
			}
		})
	}
}

// TestWhoAmIReaderOnly checks that the reader key that may call WhoAmI is still refused the admin RPCs, so WhoAmI's
// role is the only one lowered.
func TestWhoAmIReaderOnly(t *testing.T) {
	t.Parallel()
	srv, secret, _ := whoAmIServer(t, authn.ModeRequired)
	cc := adminv1connect.NewAdminServiceClient(rpcservertest.HTTPClient(), srv.URL)
	req := connect.NewRequest(&adminv1.ListApiKeysRequest{})
	req.Header().Set("Authorization", "Bearer "+secret)
	if _, err := cc.ListApiKeys(t.Context(), req); connect.CodeOf(err) != connect.CodePermissionDenied {
		t.Errorf("reader ListApiKeys = %v, want PermissionDenied", err)
	}
}
