package mcpserver

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"sync/atomic"

	"github.com/modelcontextprotocol/go-sdk/mcp"
)

// inProcess is an http.RoundTripper that serves each request with handler in this process, for unary Connect
// calls: the request goes through the handler exactly as one from the network would, with header added (the MCP
// caller's credentials), and the response is buffered.
type inProcess struct {
	handler atomic.Pointer[dispatch]
}

type dispatch struct{ http.Handler }

type headerKey struct{}

// withHeader carries the headers the RPCs of one tool call forward from its MCP request (see forwarded).
func withHeader(ctx context.Context, req *mcp.CallToolRequest) context.Context {
	return context.WithValue(ctx, headerKey{}, forwarded(req))
}

type peerKey struct{}

// withPeer records the MCP request's remote address, which the RPCs it makes report as their peer (audit,
// throttling by source address).
func withPeer(ctx context.Context, addr string) context.Context {
	return context.WithValue(ctx, peerKey{}, addr)
}

func (t *inProcess) RoundTrip(req *http.Request) (*http.Response, error) {
	d := t.handler.Load()
	if d == nil || d.Handler == nil {
		return nil, errNoDispatch
	}
	r := req.Clone(req.Context())
	if h, ok := req.Context().Value(headerKey{}).(http.Header); ok {
		for k, v := range h {
			r.Header[k] = v
		}
	}
	r.RequestURI = req.URL.RequestURI()
	r.RemoteAddr = "127.0.0.1:0"
	if addr, ok := req.Context().Value(peerKey{}).(string); ok && addr != "" {
		r.RemoteAddr = addr
	}
	if r.Body == nil {
		r.Body = http.NoBody
	}
	w := &recorder{header: http.Header{}}
	d.ServeHTTP(w, r)
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return &http.Response{
		Status:        http.StatusText(w.status),
		StatusCode:    w.status,
		Proto:         "HTTP/1.1",
		ProtoMajor:    1,
		ProtoMinor:    1,
		Header:        w.header,
		Body:          io.NopCloser(&w.body),
		ContentLength: int64(w.body.Len()),
		Request:       req,
	}, nil
}

// recorder is the http.ResponseWriter of an in-process call.
type recorder struct {
	header http.Header
	status int
	body   bytes.Buffer
}

func (w *recorder) Header() http.Header { return w.header }

func (w *recorder) WriteHeader(status int) {
	if w.status == 0 {
		w.status = status
	}
}

func (w *recorder) Write(p []byte) (int, error) {
	w.WriteHeader(http.StatusOK)
	return w.body.Write(p)
}

// Flush implements http.Flusher; the body is buffered whole anyway.
func (w *recorder) Flush() {}
