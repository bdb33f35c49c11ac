package telemetry

import (
	"net"
	"net/http"
	"net/http/pprof"
	"strings"
)

// DebugHandler serves the Go runtime's profiles under /debug/pprof/ (net/http/pprof: index, cmdline, profile,
// symbol, trace and the named profiles such as heap, goroutine, mutex, block). It is meant for a listener of its
// own (see [DebugAddr]), never the public port: profiles reveal internals and cost CPU.
func DebugHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	mux.Handle("GET /{$}", http.RedirectHandler("/debug/pprof/", http.StatusFound))
	return mux
}

// DebugAddr is the address a --debug-listen value means: a port alone ("6060" or ":6060") listens on loopback
// only (127.0.0.1); a value with a host ("0.0.0.0:6060", "[::1]:6060") is used as given. Empty stays empty
// (off).
func DebugAddr(s string) string {
	s = strings.TrimSpace(s)
	if s == "" {
		return ""
	}
	if !strings.Contains(s, ":") {
		s = ":" + s
	}
	host, port, err := net.SplitHostPort(s)
	if err != nil || host != "" {
		return s
	}
	return net.JoinHostPort("127.0.0.1", port)
}
