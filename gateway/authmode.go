package gateway

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/loom-dev/loom/internal/rpcclient"
	"github.com/loom-dev/loom/internal/rpcserver"
)

// ErrBackendRequiresAuth is returned by [CheckBackendsAllowLocal] when a backend runs with --auth required.
var ErrBackendRequiresAuth = errors.New("backend requires credentials")

// CheckBackendsAllowLocal asks every address of every backend target which authentication mode it runs (the
// rpcserver.AuthModeHeader of its /healthz) and returns ErrBackendRequiresAuth, naming the backend, if any says
// "required". A gateway in --auth local mode calls it before serving: it would otherwise forward anonymous
// callers as the development principal to backends that never grant it. Each address is tried until ctx ends;
// the addresses that could not be reached are returned, so the caller can warn about them (those backends
// refuse such calls themselves).
func CheckBackendsAllowLocal(ctx context.Context, backends map[string]string) (unreachable []string, err error) {
	client := &http.Client{Timeout: time.Second}
	for service, target := range backends {
		t, err := rpcclient.ParseTarget(target)
		if err != nil {
			return nil, fmt.Errorf("gateway: backend of %s: %w", service, err)
		}
		addrs := t.Addrs
		if t.DNSHost != "" {
			ips, err := net.DefaultResolver.LookupHost(ctx, t.DNSHost)
			if err != nil {
				unreachable = append(unreachable, target)
				continue
			}
			for _, ip := range ips {
				addrs = append(addrs, net.JoinHostPort(ip, t.DNSPort))
			}
		}
		for _, addr := range addrs {
			mode, err := authMode(ctx, client, addr)
			if err != nil {
				unreachable = append(unreachable, addr)
				continue
			}
			if mode == "required" {
				return unreachable, fmt.Errorf("gateway: %s at %s: %w", service, addr, ErrBackendRequiresAuth)
			}
		}
	}
	return unreachable, nil
}

// authMode asks addr's /healthz for its authentication mode, retrying until ctx ends.
func authMode(ctx context.Context, client *http.Client, addr string) (string, error) {
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/healthz", nil)
		if err != nil {
			return "", err
		}
		res, err := client.Do(req)
		if err == nil {
			res.Body.Close()
			return res.Header.Get(rpcserver.AuthModeHeader), nil
		}
		select {
		case <-ctx.Done():
			return "", err
		case <-time.After(200 * time.Millisecond):
		}
	}
}
