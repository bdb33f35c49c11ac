// Package admin is Loom's admin service: a tenant's API keys, its model provider keys and its audit trail, and
// WhoAmI. Every RPC needs the admin role, except WhoAmI (reader); roles are declared in the contract and enforced by
// the server's authorization interceptor. Every RPC acts on the caller's own tenant only.
package admin

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/timestamppb"

	adminv1 "github.com/loom-dev/loom/gen/loom/admin/v1"
	"github.com/loom-dev/loom/gen/loom/admin/v1/adminv1connect"
	"github.com/loom-dev/loom/internal/audit/auditsql"
	"github.com/loom-dev/loom/internal/authn"
	"github.com/loom-dev/loom/internal/principal"
	"github.com/loom-dev/loom/internal/rpcerr"
	"github.com/loom-dev/loom/internal/rpcserver"
	"github.com/loom-dev/loom/internal/secrets"
)

var _ adminv1connect.AdminServiceHandler = (*Server)(nil)

// Server implements AdminService. It is safe for concurrent use.
type Server struct {
	logger *slog.Logger
	keys   *authn.KeyStore
	trail  *auditsql.Store
	// providers is nil when no master key is configured.
	providers *secrets.ProviderKeys
	// mode is the server's auth mode, reported by WhoAmI; never empty.
	mode   authn.Mode
	errors *rpcerr.Mapper
}

// New returns a server over the key store, the audit store and the provider key store. providers may be nil (no
// master key configured): the provider key RPCs then answer FailedPrecondition. mode is the auth mode the server's
// authenticator runs in, reported by WhoAmI; empty means [authn.ModeRequired], as in [authn.Config].
func New(logger *slog.Logger, keys *authn.KeyStore, trail *auditsql.Store, providers *secrets.ProviderKeys, mode authn.Mode) *Server {
	if mode == "" {
		mode = authn.ModeRequired
	}
	return &Server{logger: logger, keys: keys, trail: trail, providers: providers, mode: mode, errors: newErrors(logger)}
}

// Service returns the service for the RPC server.
func (s *Server) Service() rpcserver.Service {
	return rpcserver.Service{
		Name: adminv1connect.AdminServiceName,
		Handler: func(opts ...connect.HandlerOption) (string, http.Handler) {
			return adminv1connect.NewAdminServiceHandler(s, opts...)
		},
	}
}

// CreateApiKey creates a key and returns its secret once.
func (s *Server) CreateApiKey(ctx context.Context, req *connect.Request[adminv1.CreateApiKeyRequest]) (*connect.Response[adminv1.CreateApiKeyResponse], error) {
	t := principal.TenantOf(ctx)
	var expires time.Time
	if req.Msg.GetExpireTime() != nil {
		expires = req.Msg.GetExpireTime().AsTime()
		if !expires.After(time.Now()) {
			return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("expire_time: must be in the future"))
		}
	}
	secret, key, err := s.keys.Create(ctx, t, req.Msg.GetName(), req.Msg.GetRoles(), expires)
	if err != nil {
		return nil, s.toConnect(ctx, err)
	}
	return connect.NewResponse(&adminv1.CreateApiKeyResponse{Key: toProto(key), Secret: secret}), nil
}

// ListApiKeys lists the tenant's keys without secrets.
func (s *Server) ListApiKeys(ctx context.Context, _ *connect.Request[adminv1.ListApiKeysRequest]) (*connect.Response[adminv1.ListApiKeysResponse], error) {
	t := principal.TenantOf(ctx)
	keys, err := s.keys.List(ctx, t)
	if err != nil {
		return nil, s.toConnect(ctx, err)
	}
	res := &adminv1.ListApiKeysResponse{}
	for _, k := range keys {
		res.Keys = append(res.Keys, toProto(k))
	}
	return connect.NewResponse(res), nil
}

// RevokeApiKey revokes one of the tenant's keys.
func (s *Server) RevokeApiKey(ctx context.Context, req *connect.Request[adminv1.RevokeApiKeyRequest]) (*connect.Response[adminv1.RevokeApiKeyResponse], error) {
	t := principal.TenantOf(ctx)
	if err := s.keys.Revoke(ctx, t, req.Msg.GetId()); err != nil {
		return nil, s.toConnect(ctx, err)
	}
	return connect.NewResponse(&adminv1.RevokeApiKeyResponse{}), nil
}

// ListAuditEvents lists the tenant's audit trail, newest first.
func (s *Server) ListAuditEvents(ctx context.Context, req *connect.Request[adminv1.ListAuditEventsRequest]) (*connect.Response[adminv1.ListAuditEventsResponse], error) {
	t := principal.TenantOf(ctx)
	size := int(req.Msg.GetPageSize())
	if size == 0 {
		size = 100
	}
	events, next, err := s.trail.List(ctx, t, size, req.Msg.GetPageToken())
	if err != nil {
		return nil, s.toConnect(ctx, err)
	}
	res := &adminv1.ListAuditEventsResponse{NextPageToken: next}
	for _, e := range events {
		res.Events = append(res.Events, &adminv1.AuditEvent{
			Id: e.Seq, Time: timestamppb.New(e.Time), Subject: e.Subject, Procedure: e.Procedure,
			Resource: e.Resource, Result: e.Result,
		})
	}
	return connect.NewResponse(res), nil
}

// errNoMasterKey answers the provider key RPCs of a server without a master key.
var errNoMasterKey = connect.NewError(connect.CodeFailedPrecondition, errors.New("no master key configured (LOOM_MASTER_KEY)"))

// SetProviderKey stores the tenant's key for a provider, encrypted. The key is never returned or logged.
func (s *Server) SetProviderKey(ctx context.Context, req *connect.Request[adminv1.SetProviderKeyRequest]) (*connect.Response[adminv1.SetProviderKeyResponse], error) {
	t := principal.TenantOf(ctx)
	if s.providers == nil {
		return nil, errNoMasterKey
	}
	k, err := s.providers.Set(ctx, t, req.Msg.GetProvider(), req.Msg.GetKey())
	if err != nil {
		return nil, s.toConnect(ctx, err)
	}
	return connect.NewResponse(&adminv1.SetProviderKeyResponse{ProviderKey: providerKeyProto(k)}), nil
}

// DeleteProviderKey deletes the tenant's key for a provider.
func (s *Server) DeleteProviderKey(ctx context.Context, req *connect.Request[adminv1.DeleteProviderKeyRequest]) (*connect.Response[adminv1.DeleteProviderKeyResponse], error) {
	t := principal.TenantOf(ctx)
	if s.providers == nil {
		return nil, errNoMasterKey
	}
	if err := s.providers.Delete(ctx, t, req.Msg.GetProvider()); err != nil {
		return nil, s.toConnect(ctx, err)
	}
	return connect.NewResponse(&adminv1.DeleteProviderKeyResponse{}), nil
}

// ListProviderKeys lists the providers the tenant has a key for, without the keys.
func (s *Server) ListProviderKeys(ctx context.Context, _ *connect.Request[adminv1.ListProviderKeysRequest]) (*connect.Response[adminv1.ListProviderKeysResponse], error) {
	t := principal.TenantOf(ctx)
	if s.providers == nil {
		return nil, errNoMasterKey
	}
	keys, err := s.providers.List(ctx, t)
	if err != nil {
		return nil, s.toConnect(ctx, err)
	}
	res := &adminv1.ListProviderKeysResponse{}
	for _, k := range keys {
		res.ProviderKeys = append(res.ProviderKeys, providerKeyProto(k))
	}
	return connect.NewResponse(res), nil
}

// WhoAmI reports the caller's principal and the server's auth mode.
func (s *Server) WhoAmI(ctx context.Context, _ *connect.Request[adminv1.WhoAmIRequest]) (*connect.Response[adminv1.WhoAmIResponse], error) {
	p, ok := principal.FromContext(ctx)
	if !ok {
		return nil, s.toConnect(ctx, principal.ErrNoPrincipal)
	}
	return connect.NewResponse(&adminv1.WhoAmIResponse{
		Tenant:         p.Tenant,
		Subject:        p.Subject,
		Roles:          p.Roles,
		AuthMode:       string(s.mode),
		CredentialKind: s.credentialKind(p),
	}), nil
}

// credentialKind tells what credential made p, where the principal shows it: authn names an API key's principal
// "apikey:<id>", and gives calls without credentials in local mode [principal.Local]. OIDC and service tokens carry
// the token's subject, so they are not told apart: "".
func (s *Server) credentialKind(p principal.Principal) string {
	switch {
	case strings.HasPrefix(p.Subject, "apikey:"):
		return "api_key"
	case s.mode == authn.ModeLocal && p.Tenant == principal.Local.Tenant && p.Subject == principal.Local.Subject:
		return "none"
	}
	return ""
}

func providerKeyProto(k secrets.ProviderKey) *adminv1.ProviderKey {
	return &adminv1.ProviderKey{Provider: k.Provider, UpdateTime: timestamppb.New(k.UpdatedAt)}
}

func toProto(k authn.Key) *adminv1.ApiKey {
	out := &adminv1.ApiKey{Id: k.ID, Name: k.Name, Roles: k.Roles, CreateTime: timestamppb.New(k.CreatedAt)}
	if !k.ExpiresAt.IsZero() {
		out.ExpireTime = timestamppb.New(k.ExpiresAt)
	}
	if !k.RevokedAt.IsZero() {
		out.RevokeTime = timestamppb.New(k.RevokedAt)
	}
	return out
}

// errors maps the admin service's errors to codes (internal/rpcerr holds the shared rules): not-found answers
// name the kind of key and nothing else, the stores' client mistakes keep their message.
func newErrors(logger *slog.Logger) *rpcerr.Mapper {
	fixed := func(target error, code connect.Code, msg string) rpcerr.Rule {
		return func(_ context.Context, err error) *connect.Error {
			if errors.Is(err, target) {
				return connect.NewError(code, errors.New(msg))
			}
			return nil
		}
	}
	return &rpcerr.Mapper{Logger: logger, Service: "admin", Rules: []rpcerr.Rule{
		fixed(authn.ErrNotFound, connect.CodeNotFound, "api key not found"),
		fixed(secrets.ErrNotFound, connect.CodeNotFound, "provider key not found"),
		fixed(auditsql.ErrInvalidPageToken, connect.CodeInvalidArgument, "page_token: invalid"),
		rpcerr.Is(authn.ErrInvalidRole, connect.CodeInvalidArgument),
	}}
}

// toConnect maps err to a Connect error.
func (s *Server) toConnect(ctx context.Context, err error) error { return s.errors.Error(ctx, "", err) }
