package rpcclient

import (
	"context"
	"fmt"

	"google.golang.org/grpc/credentials"

	"github.com/loom-dev/loom/internal/principal"
)

// TokenMinter mints a short-lived service token that carries p to the service named audience. *authn.Minter
// implements it. An empty token and no error sends the call without one.
type TokenMinter interface {
	Mint(p principal.Principal, audience string) (string, error)
}

// serviceTokens sends, with every call, a service token minted for the principal the call is made on behalf
// of (the one in the call's context) with the target service as audience.
type serviceTokens struct {
	minter   TokenMinter
	audience string
	secure   bool
}

var _ credentials.PerRPCCredentials = serviceTokens{}

func (s serviceTokens) GetRequestMetadata(ctx context.Context, _ ...string) (map[string]string, error) {
	p, ok := principal.FromContext(ctx)
	if !ok {
		// Nothing to act for: grpc-go's own health checks, for example. The call goes without a token, and a
		// server that requires credentials refuses it unless the procedure is public.
		return nil, nil
	}
	tok, err := s.minter.Mint(p, s.audience)
	if err != nil {
		return nil, fmt.Errorf("rpcclient: mint service token: %w", err)
	}
	if tok == "" {
		return nil, nil
	}
	return map[string]string{"authorization": "Bearer " + tok}, nil
}

// RequireTransportSecurity is false: inside a deployment, calls may run over h2c. Tokens live 60 s and are bound
// to one audience; use TLS (Config.TLS) where the network is not trusted.
func (s serviceTokens) RequireTransportSecurity() bool { return s.secure }
