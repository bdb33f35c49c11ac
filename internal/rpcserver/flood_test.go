package rpcserver_test

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/loom-dev/loom/internal/rpcserver"
	"github.com/loom-dev/loom/internal/rpcserver/rpcservertest"
)

// HTTP/2 frames written by hand, so the attacks below send exactly what an attacker would, with no client
// library smoothing them over (RFC 9113 section 4.1 and 6).
const (
	frameHeaders      = 0x1
	frameRSTStream    = 0x3
	frameSettings     = 0x4
	frameGoAway       = 0x7
	frameContinuation = 0x9

	flagEndHeaders = 0x4
)

func writeFrame(w io.Writer, typ, flags byte, stream uint32, payload []byte) error {
	hdr := make([]byte, 9, 9+len(payload))
	hdr[0], hdr[1], hdr[2] = byte(len(payload)>>16), byte(len(payload)>>8), byte(len(payload))
	hdr[3], hdr[4] = typ, flags
	binary.BigEndian.PutUint32(hdr[5:], stream&0x7fffffff)
	_, err := w.Write(append(hdr, payload...))
	return err
}

// hpackLiteral encodes name: value as a literal header field without indexing (RFC 7541 6.2.2), no Huffman.
// Names and values must be shorter than 127 bytes.
func hpackLiteral(name, value string) []byte {
	b := []byte{0x00, byte(len(name))}
	b = append(b, name...)
	b = append(b, byte(len(value)))
	return append(b, value...)
}

func healthHeaders(authority string) []byte {
	var b []byte
	for _, kv := range [][2]string{
		{":method", "POST"}, {":scheme", "http"}, {":path", "/grpc.health.v1.Health/Check"},
		{":authority", authority}, {"content-type", "application/grpc"}, {"te", "trailers"},
	} {
		b = append(b, hpackLiteral(kv[0], kv[1])...)
	}
	return b
}

// h2Conn opens a prior-knowledge h2c connection and reads (and drops) whatever the server sends, noting a
// GOAWAY and the end of the connection.
type h2Conn struct {
	net.Conn
	w      *bufio.Writer
	goaway atomic.Bool
	closed chan struct{}
}

func dialH2(t *testing.T, addr string) *h2Conn {
	t.Helper()
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	c := &h2Conn{Conn: nc, w: bufio.NewWriterSize(nc, 64<<10), closed: make(chan struct{})}
	t.Cleanup(func() { nc.Close() })
	go func() {
		defer close(c.closed)
		r := bufio.NewReader(nc)
		hdr := make([]byte, 9)
		for {
			if _, err := io.ReadFull(r, hdr); err != nil {
				return
			}
			n := int(hdr[0])<<16 | int(hdr[1])<<8 | int(hdr[2])
			if hdr[3] == frameGoAway {
				c.goaway.Store(true)
			}
			if _, err := r.Discard(n); err != nil {
				return
			}
		}
	}()
	if _, err := c.w.WriteString("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	if err := writeFrame(c.w, frameSettings, 0, 0, nil); err != nil {
		t.Fatal(err)
	}
	return c
}

// healthProbe checks health over a fresh grpc-go connection every few milliseconds until stop closes, and
// counts answers and failures.
func healthProbe(t *testing.T, addr string, stop <-chan struct{}) (ok, failed *atomic.Int64, wait func()) {
	t.Helper()
	conn, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	ok, failed = new(atomic.Int64), new(atomic.Int64)
	var wg sync.WaitGroup
	wg.Go(func() {
		defer conn.Close()
		hc := healthpb.NewHealthClient(conn)
		for {
			select {
			case <-stop:
				return
			case <-time.After(5 * time.Millisecond):
			}
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			_, err := hc.Check(ctx, &healthpb.HealthCheckRequest{})
			cancel()
			if err != nil {
				failed.Add(1)
			} else {
				ok.Add(1)
			}
		}
	})
	return ok, failed, wg.Wait
}

// TestRapidReset opens streams and resets them at once, as fast as the connection takes them (CVE-2023-44487):
// the server keeps answering everyone else.
func TestRapidReset(t *testing.T) {
	t.Parallel()
	srv := rpcservertest.Start(t, rpcserver.Config{}, nil, services(&fakeMemory{id: "a"}, &fakeAgent{started: make(chan struct{})})...)
	stop := make(chan struct{})
	ok, failed, wait := healthProbe(t, srv.Addr, stop)

	c := dialH2(t, srv.Addr)
	headers := healthHeaders(srv.Addr)
	const streams = 20000
	sent := 0
	for i := range streams {
		id := uint32(2*i + 1)
		if writeFrame(c.w, frameHeaders, flagEndHeaders, id, headers) != nil ||
			writeFrame(c.w, frameRSTStream, 0, id, []byte{0, 0, 0, 8}) != nil { // CANCEL
			break
		}
		sent++
		if i%100 == 99 && c.w.Flush() != nil {
			break
		}
	}
	_ = c.w.Flush()
	time.Sleep(200 * time.Millisecond)
	close(stop)
	wait()
	t.Logf("rapid reset: %d streams opened and reset; connection told to go away: %v; health meanwhile %d answered, %d failed",
		sent, c.goaway.Load(), ok.Load(), failed.Load())
	if failed.Load() > 0 || ok.Load() == 0 {
		t.Errorf("health during the flood: %d answered, %d failed, want all answered", ok.Load(), failed.Load())
	}
}

// TestContinuationFlood sends one header block that never ends, as CONTINUATION frames (CVE-2023-45288): the
// server must give up on the connection after a bounded number of bytes instead of buffering them all.
func TestContinuationFlood(t *testing.T) {
	t.Parallel()
	srv := rpcservertest.Start(t, rpcserver.Config{MaxHeaderBytes: 64 << 10}, nil, services(&fakeMemory{id: "a"}, &fakeAgent{started: make(chan struct{})})...)
	c := dialH2(t, srv.Addr)
	if err := writeFrame(c.w, frameHeaders, 0, 1, healthHeaders(srv.Addr)); err != nil {
		t.Fatal(err)
	}
	junk := make([]byte, 0, 16<<10)
	for len(junk) < 16<<10-140 {
		junk = append(junk, hpackLiteral("x-junk", string(make([]byte, 120)))...)
	}
	const limit = 64 << 20
	sent, hungUp := 0, false
	for sent < limit && !hungUp {
		_ = c.SetWriteDeadline(time.Now().Add(2 * time.Second))
		if writeFrame(c.w, frameContinuation, 0, 1, junk) != nil || c.w.Flush() != nil {
			hungUp = true
			break
		}
		sent += len(junk) + 9
		select {
		case <-c.closed:
			hungUp = true
		default:
		}
	}
	if !hungUp {
		select {
		case <-c.closed:
		case <-time.After(5 * time.Second):
			t.Fatalf("the server took %d MiB of one header block and kept the connection open", sent>>20)
		}
	}
	t.Logf("continuation flood: the server closed the connection after %d KiB of header block (GOAWAY sent: %v)", sent>>10, c.goaway.Load())
	if sent > 8<<20 {
		t.Errorf("the server read %d MiB of one header block before closing, want a bound near MaxHeaderBytes", sent>>20)
	}
}

// TestSlowloris holds many connections open, each sending a request's headers one byte at a time: they are
// cut at ReadHeaderTimeout, and health answers all along.
func TestSlowloris(t *testing.T) {
	t.Parallel()
	srv := rpcservertest.Start(t, rpcserver.Config{ReadHeaderTimeout: time.Second}, nil, services(&fakeMemory{id: "a"}, &fakeAgent{started: make(chan struct{})})...)
	stop := make(chan struct{})
	ok, failed, wait := healthProbe(t, srv.Addr, stop)

	const conns = 300
	var cut atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for range conns {
		nc, err := net.Dial("tcp", srv.Addr)
		if err != nil {
			t.Fatal(err)
		}
		wg.Go(func() {
			defer nc.Close()
			if _, err := io.WriteString(nc, "GET /healthz HTTP/1.1\r\nHost: loom\r\n"); err != nil {
				cut.Add(1)
				return
			}
			for time.Since(start) < 10*time.Second {
				time.Sleep(300 * time.Millisecond)
				if _, err := io.WriteString(nc, "X"); err != nil {
					cut.Add(1)
					return
				}
				_ = nc.SetReadDeadline(time.Now().Add(time.Millisecond))
				if _, err := nc.Read(make([]byte, 1)); err != nil && !errors.Is(err, context.DeadlineExceeded) && !isTimeout(err) {
					cut.Add(1) // closed by the server (or answered with a 408 and closed)
					return
				}
			}
		})
	}
	wg.Wait()
	close(stop)
	wait()
	t.Logf("slowloris: %d of %d slow connections cut by the server in %v; health meanwhile %d answered, %d failed",
		cut.Load(), conns, time.Since(start).Round(100*time.Millisecond), ok.Load(), failed.Load())
	if cut.Load() != conns {
		t.Errorf("%d of %d slow connections were left open for 10 s", conns-cut.Load(), conns)
	}
	if failed.Load() > 0 || ok.Load() == 0 {
		t.Errorf("health during the attack: %d answered, %d failed, want all answered", ok.Load(), failed.Load())
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
