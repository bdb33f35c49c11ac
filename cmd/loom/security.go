package main

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"

	"connectrpc.com/connect"

	"github.com/loom-dev/loom/gen/loom/admin/v1/adminv1connect"
	"github.com/loom-dev/loom/gen/loom/agent/v1/agentv1connect"
	"github.com/loom-dev/loom/gen/loom/memory/v1/memoryv1connect"
	"github.com/loom-dev/loom/gen/loom/orchestrator/v1/orchestratorv1connect"
	"github.com/loom-dev/loom/internal/audit/auditsql"
	"github.com/loom-dev/loom/internal/authn"
	"github.com/loom-dev/loom/internal/principal"
	"github.com/loom-dev/loom/internal/rpcserver"
	sealed "github.com/loom-dev/loom/internal/secrets"
	"github.com/loom-dev/loom/internal/sqldb"
)

// serviceNames maps --services names to the full names service tokens are addressed to.
var serviceNames = map[string]string{
	"memory":       memoryv1connect.MemoryServiceName,
	"agent":        agentv1connect.AgentServiceName,
	"orchestrator": orchestratorv1connect.OrchestratorServiceName,
	"admin":        adminv1connect.AdminServiceName,
}

// security is the process's authentication, service tokens, API keys and audit trail.
type security struct {
	authenticate rpcserver.Authenticator
	minter       *authn.Minter
	keys         *authn.KeyStore
	providerKeys *sealed.ProviderKeys // nil without LOOM_MASTER_KEY
	trail        *auditsql.Store
	throttle     *authn.Throttle // slows credential guessing; its metrics go on /metrics
}

// buildSecurity opens the key and audit store (the auth database) and builds the authenticator.
func buildSecurity(ctx context.Context, cfg config, logger *slog.Logger, dbs *databases) (*security, error) {
	db, err := dbs.open(ctx, "auth.db")
	if err != nil {
		return nil, fmt.Errorf("auth database: %w", err)
	}
	sec := &security{}
	if sec.keys, err = authn.NewKeyStore(ctx, db); err != nil {
		return nil, err
	}
	if sec.trail, err = auditsql.Open(ctx, db); err != nil {
		return nil, err
	}
	if sec.providerKeys, err = providerKeys(ctx, cfg, db); err != nil {
		return nil, err
	}
	priv, err := serviceKey(cfg, logger)
	if err != nil {
		return nil, err
	}
	if sec.minter, err = authn.NewMinter(priv, 0); err != nil {
		return nil, err
	}
	var served []string
	for _, name := range cfg.Services {
		if full, ok := serviceNames[name]; ok {
			served = append(served, full)
		}
	}
	mode := authn.ModeLocal
	if cfg.Auth == "required" {
		mode = authn.ModeRequired
	}
	acfg := authn.Config{
		Mode:     mode,
		Issuer:   cfg.OIDCIssuer,
		Audience: cfg.OIDCAudience,
		JWKSURL:  cfg.OIDCJWKSURL,
		JWKSFile: cfg.OIDCJWKSFile,
	}
	if len(served) > 0 { // the gateway serves nothing itself and accepts no service tokens
		acfg.Services = served
		acfg.ServiceKeys = []ed25519.PublicKey{priv.Public().(ed25519.PublicKey)}
		acfg.ServiceClientCert = cfg.TLSClientCA != ""
	}
	sec.throttle = authn.NewThrottle(authn.ThrottleConfig{})
	acfg.Throttle = sec.throttle
	a, err := authn.New(acfg, sec.keys, logger)
	if err != nil {
		return nil, fmt.Errorf("authentication: %w", err)
	}
	sec.authenticate = func(r *http.Request) (principal.Principal, error) {
		p, err := a.Authenticate(r)
		if errors.Is(err, authn.ErrUnavailable) {
			// The key store did not answer (a database restart): a fault to retry, not a verdict on the key.
			return p, connect.NewError(connect.CodeUnavailable, err)
		}
		return p, err
	}
	return sec, nil
}

// providerKeys opens the store of tenants' own provider keys, sealed under LOOM_MASTER_KEY; nil without one.
func providerKeys(ctx context.Context, cfg config, db *sqldb.DB) (*sealed.ProviderKeys, error) {
	if cfg.Secrets.MasterKey == "" {
		return nil, nil
	}
	cur, err := sealed.DecodeKey(cfg.Secrets.MasterKey.Reveal())
	if err != nil {
		return nil, fmt.Errorf("LOOM_MASTER_KEY: %w", err)
	}
	var prev [][]byte
	for _, v := range splitList(cfg.Secrets.MasterKeyPrevious.Reveal()) {
		k, err := sealed.DecodeKey(v)
		if err != nil {
			return nil, fmt.Errorf("LOOM_MASTER_KEY_PREVIOUS: %w", err)
		}
		prev = append(prev, k)
	}
	box, err := sealed.NewBox(cur, prev...)
	if err != nil {
		return nil, err
	}
	return sealed.NewProviderKeys(ctx, db, box)
}

// serviceKey loads the service-token signing key, or makes one for this process alone.
func serviceKey(cfg config, logger *slog.Logger) (ed25519.PrivateKey, error) {
	v := cfg.Secrets.ServiceTokenKey.Reveal()
	switch {
	case strings.HasPrefix(v, "-----BEGIN"):
		k, err := authn.ParsePrivateKeyPEM([]byte(v))
		if err != nil {
			return nil, fmt.Errorf("LOOM_SERVICE_TOKEN_KEY: not an Ed25519 private key")
		}
		return k, nil
	case v != "":
		k, err := authn.PrivateKeyFromSeed(v)
		if err != nil {
			return nil, fmt.Errorf("LOOM_SERVICE_TOKEN_KEY: not a base64 Ed25519 seed")
		}
		return k, nil
	}
	if cfg.Auth == "required" && (cfg.MemoryAddr != "" || cfg.AgentAddr != "" || len(cfg.Services) < len(allServices)) {
		logger.Warn("LOOM_SERVICE_TOKEN_KEY is not set: this process signs service tokens with a key of its own, which other processes will not accept")
	}
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	return priv, err
}
