package e2e

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/compose-spec/compose-go/v2/graph"
	"github.com/compose-spec/compose-go/v2/types"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/loom-dev/loom/internal/logtest"
)

// replacedServices are the compose services the suite replaces instead of running: Postgres becomes a private
// cluster (startPostgres). Every other service of compose.yaml runs as `loom` processes, one per replica.
var replacedServices = []string{"postgres"}

// overlays are environment variables the suite adds to a service on top of compose.yaml's, each with its
// reason. They are logged at startup.
var overlays = map[string]map[string]string{
	// Successful RPCs are logged at debug by default; the fault steps count the searches each memory replica
	// served from its log, so every successful call is logged at info here.
	"memory": {"LOOM_LOG_RPC_SAMPLE": "1"},
}

// loadProject loads compose.yaml as `docker compose up` would with env as the only variables set (the file's
// defaults apply to the others).
func loadProject(t *testing.T, root string, env []string) *types.Project {
	t.Helper()
	opts, err := cli.NewProjectOptions([]string{filepath.Join(root, "compose.yaml")},
		cli.WithWorkingDirectory(root), cli.WithName("loom"), cli.WithEnv(env))
	if err != nil {
		t.Fatal(err)
	}
	p, err := opts.LoadProject(context.Background())
	if err != nil {
		t.Fatalf("compose.yaml does not load: %v", err)
	}
	return p
}

// deployment is compose.yaml running as processes on loopback.
type deployment struct {
	t        *testing.T
	bins     binaries
	project  *types.Project
	pg       *pgCluster
	dbURL    string // the private cluster, as services reach it
	services map[string]*service
	logDir   string   // every replica's whole log, one file each; kept when the test fails
	order    []string // services in the order they were started
	orderMu  sync.Mutex
}

// service is one compose service and its replicas.
type service struct {
	name     string
	cfg      types.ServiceConfig
	replicas []*replica
}

// replica is one `loom` process of a service. It can be killed and started again with the same address,
// environment and data directory, like a container restarted by its orchestrator.
type replica struct {
	name    string // "memory-1", as compose names containers
	logPath string // the whole log of every process of this replica, appended across restarts
	addr    string // 127.0.0.1:port
	dataDir string
	args    []string
	env     []string
	bin     string

	mu      sync.Mutex
	cmd     *exec.Cmd
	logs    *logtest.Buffer
	done    chan struct{} // closed when the current process exited
	exit    error         // the current process's exit status, valid once done is closed
	restart string        // compose's restart policy
	crashes []string      // the last log line of each process that exited before it was healthy
}

// newServiceTokenKey returns a fresh Ed25519 seed in the form LOOM_SERVICE_TOKEN_KEY takes, as compose.yaml's
// comment makes one: head -c 32 /dev/urandom | base64.
func newServiceTokenKey() string {
	seed := make([]byte, 32)
	_, _ = rand.Read(seed)
	return base64.StdEncoding.EncodeToString(seed)
}

// planDeployment maps compose.yaml to processes: each Loom service with its command, its environment rewritten
// for loopback, its replicas, each with a free port and its own data directory. Nothing is started yet.
func planDeployment(t *testing.T, b binaries, p *types.Project) *deployment {
	t.Helper()
	d := &deployment{t: t, bins: b, project: p, services: map[string]*service{}}
	var err error
	if d.logDir, err = os.MkdirTemp("", "loom-e2e-logs-"); err != nil {
		t.Fatal(err)
	}
	for _, name := range replacedServices {
		if _, err := p.GetService(name); err != nil {
			t.Fatalf("compose.yaml has no %s service to replace: %v", name, err)
		}
	}
	for _, name := range p.ServiceNames() {
		if slices.Contains(replacedServices, name) {
			continue
		}
		cfg := p.Services[name]
		if len(cfg.Entrypoint) > 0 && !slices.Equal([]string(cfg.Entrypoint), []string{"loom"}) {
			t.Fatalf("service %s: entrypoint %v: the suite runs only the loom binary", name, cfg.Entrypoint)
		}
		if len(cfg.Command) == 0 || cfg.Command[0] != "serve" {
			t.Fatalf("service %s: command %v is not `loom serve ...`; teach the suite how to run it", name, cfg.Command)
		}
		for _, a := range cfg.Command {
			if strings.HasPrefix(a, "--listen") || strings.HasPrefix(a, "--data-dir") {
				t.Fatalf("service %s: command sets %s; the suite sets LOOM_LISTEN and LOOM_DATA_DIR", name, a)
			}
		}
		n := cfg.GetScale()
		for k, v := range overlays[name] {
			t.Logf("overlay: %s gets %s=%s on top of compose.yaml", name, k, v)
		}
		s := &service{name: name, cfg: cfg}
		for i := range n {
			rname := fmt.Sprintf("%s-%d", name, i+1)
			s.replicas = append(s.replicas, &replica{
				name: rname, addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(freePort(t))),
				dataDir: t.TempDir(), args: slices.Clone([]string(cfg.Command)), bin: b.loom,
				logPath: filepath.Join(d.logDir, rname+".log"), restart: cfg.Restart,
			})
		}
		d.services[name] = s
	}
	return d
}

// environment builds a replica's environment: compose's (interpolated with the suite's LOOM_SERVICE_TOKEN_KEY),
// with service addresses and the database URL rewritten for this machine, the overlays, and LOOM_LISTEN and
// LOOM_DATA_DIR. As in a container, nothing comes from the test's own environment but PATH (for espeak-ng);
// HOME and TMPDIR are the replica's data directory.
func (d *deployment) environment(s *service, r *replica) ([]string, error) {
	env := []string{"PATH=" + os.Getenv("PATH"), "HOME=" + r.dataDir, "TMPDIR=" + r.dataDir}
	var errs []error
	keys := make([]string, 0, len(s.cfg.Environment))
	for k := range s.cfg.Environment {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		v := s.cfg.Environment[k]
		if v == nil {
			continue
		}
		nv, err := d.rewrite(*v)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %s: %w", s.name, k, err))
		}
		env = append(env, k+"="+nv)
	}
	for k, v := range overlays[s.name] {
		env = append(env, k+"="+v)
	}
	env = append(env, "LOOM_LISTEN="+r.addr, "LOOM_DATA_DIR="+r.dataDir)
	return env, errors.Join(errs...)
}

var dnsTarget = regexp.MustCompile(`^dns:///([A-Za-z0-9._-]+):(\d+)$`)

// rewrite maps one compose environment value to this machine: a Postgres URL naming compose's postgres service
// becomes the private cluster's; "dns:///NAME:PORT" and "NAME:PORT" lists naming Loom services become the static
// list of their replicas' loopback addresses (each replica listens on its own port instead of the container
// port). Other values pass unchanged.
func (d *deployment) rewrite(v string) (string, error) {
	if strings.HasPrefix(v, "postgres://") || strings.HasPrefix(v, "postgresql://") {
		u, err := url.Parse(v)
		if err != nil {
			return "", err
		}
		if !slices.Contains(replacedServices, u.Hostname()) {
			return "", fmt.Errorf("database host %q is not compose's postgres service", u.Hostname())
		}
		return d.dbURL, nil
	}
	if m := dnsTarget.FindStringSubmatch(v); m != nil {
		return d.addrsOf(m[1])
	}
	// A static list of compose names ("memory:8080,agent:8080") maps too.
	var out []string
	changed := false
	for item := range strings.SplitSeq(v, ",") {
		host, _, err := net.SplitHostPort(strings.TrimSpace(item))
		if _, ok := d.services[host]; err == nil && ok {
			addrs, err := d.addrsOf(host)
			if err != nil {
				return "", err
			}
			out, changed = append(out, addrs), true
			continue
		}
		out = append(out, item)
	}
	if changed {
		return strings.Join(out, ","), nil
	}
	return v, nil
}

// addrsOf is the static target list of a service's replicas ("host1:port,host2:port"), the form rpcclient and
// the gateway take besides dns:///.
func (d *deployment) addrsOf(name string) (string, error) {
	s, ok := d.services[name]
	if !ok {
		return "", fmt.Errorf("target names %q, which is not a Loom service of compose.yaml", name)
	}
	var addrs []string
	for _, r := range s.replicas {
		addrs = append(addrs, r.addr)
	}
	return strings.Join(addrs, ","), nil
}

// start starts every service in compose's dependency order, each replica waiting for grpc.health.v1 SERVING
// before any dependent starts (depends_on: condition: service_healthy). Services without a dependency between
// them start concurrently, as with `docker compose up`.
func (d *deployment) start(ctx context.Context) {
	t := d.t
	t.Helper()
	for _, s := range d.services {
		for _, r := range s.replicas {
			env, err := d.environment(s, r)
			if err != nil {
				t.Fatal(err)
			}
			r.env = env
		}
	}
	t.Cleanup(d.killAll)
	err := graph.InDependencyOrder(ctx, d.project, func(ctx context.Context, name string, _ types.ServiceConfig) error {
		s, ok := d.services[name]
		if !ok {
			return nil // replaced: already running
		}
		var wg sync.WaitGroup
		errs := make([]error, len(s.replicas))
		for i, r := range s.replicas {
			wg.Go(func() { errs[i] = r.start(ctx) })
		}
		wg.Wait()
		d.orderMu.Lock()
		d.order = append(d.order, name)
		d.orderMu.Unlock()
		return errors.Join(errs...)
	})
	if err != nil {
		t.Fatalf("compose up: %v", err)
	}
	for _, r := range d.replicas() {
		for _, c := range r.crashes {
			t.Errorf("%s exited at startup (compose's restart: %s started it again): %s", r.name, r.restart, c)
		}
	}
}

// replicas returns every replica, in start order.
func (d *deployment) replicas() []*replica {
	var out []*replica
	for _, name := range d.order {
		out = append(out, d.services[name].replicas...)
	}
	return out
}

// killAll kills whatever still runs and, if the test failed, prints the end of every replica's log and keeps
// the whole logs.
func (d *deployment) killAll() {
	for _, r := range d.replicas() {
		r.kill()
		if d.t.Failed() {
			d.t.Logf("=== %s (%s) log tail:\n%s", r.name, r.addr, tail(r.logText(), 2000))
		}
	}
	if d.t.Failed() {
		d.t.Logf("whole logs of every process kept in %s", d.logDir)
	} else {
		os.RemoveAll(d.logDir)
	}
}

// start starts the replica's process and waits until its gRPC health check says SERVING. A process that exits
// before it is healthy is started again, up to three times, when the service's restart policy says so (as
// Docker would, after 100 ms, 200 ms, 400 ms); each such crash is recorded in crashes, and the suite fails on
// it: a crash at startup is a bug even when the restart policy hides it.
func (r *replica) start(ctx context.Context) error {
	backoff := 100 * time.Millisecond
	for attempt := 1; ; attempt++ {
		err := r.startOnce(ctx)
		if err == nil || !errors.Is(err, errExited) || r.restart == "no" || r.restart == "" || attempt > 3 {
			return err
		}
		r.mu.Lock()
		r.crashes = append(r.crashes, lastLine(r.logs.String()))
		r.mu.Unlock()
		time.Sleep(backoff)
		backoff *= 2
	}
}

// errExited marks a process that exited before it was healthy.
var errExited = errors.New("the process exited")

func (r *replica) startOnce(ctx context.Context) error {
	r.mu.Lock()
	cmd := exec.Command(r.bin, r.args...)
	cmd.Env = r.env
	cmd.Dir = r.dataDir
	logs := &logtest.Buffer{}
	f, err := os.OpenFile(r.logPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		r.mu.Unlock()
		return err
	}
	out := io.MultiWriter(logs, f)
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		f.Close()
		r.mu.Unlock()
		return fmt.Errorf("%s: %w", r.name, err)
	}
	done := make(chan struct{})
	r.cmd, r.logs, r.done = cmd, logs, done
	r.mu.Unlock()
	go func() {
		err := cmd.Wait()
		f.Close()
		r.mu.Lock()
		r.exit = err
		r.mu.Unlock()
		close(done)
	}()
	if err := waitServing(ctx, r.addr, "", 60*time.Second, done); err != nil {
		return fmt.Errorf("%s (%s) did not become healthy: %w\n%s", r.name, r.addr, err, tail(logs.String(), 3000))
	}
	return nil
}

// lastLine is the last non-empty line of a log: the error a crashed `loom` printed.
func lastLine(log string) string {
	lines := strings.Split(strings.TrimSpace(log), "\n")
	return lines[len(lines)-1]
}

// kill sends SIGKILL (kill -9) and waits for the process to be gone.
func (r *replica) kill() {
	r.mu.Lock()
	cmd, done := r.cmd, r.done
	r.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGKILL)
	<-done
}

// terminate sends SIGTERM and returns the exit error (nil for exit status 0), or an error after timeout.
func (r *replica) terminate(timeout time.Duration) error {
	r.mu.Lock()
	cmd, done := r.cmd, r.done
	r.mu.Unlock()
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		return err
	}
	select {
	case <-done:
		r.mu.Lock()
		defer r.mu.Unlock()
		return r.exit
	case <-time.After(timeout):
		return fmt.Errorf("still running %v after SIGTERM", timeout)
	}
}

// running reports whether the current process is alive.
func (r *replica) running() bool {
	r.mu.Lock()
	done := r.done
	r.mu.Unlock()
	select {
	case <-done:
		return false
	default:
		return true
	}
}

func (r *replica) logText() string {
	r.mu.Lock()
	l := r.logs
	r.mu.Unlock()
	if l == nil {
		return ""
	}
	return l.String()
}

// waitServing polls grpc.health.v1/Check on addr until it answers SERVING, the timeout passes or exited closes.
func waitServing(ctx context.Context, addr, svc string, timeout time.Duration, exited <-chan struct{}) error {
	conn, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	hc := healthpb.NewHealthClient(conn)
	deadline := time.Now().Add(timeout)
	var last error
	for {
		cctx, cancel := context.WithTimeout(ctx, time.Second)
		res, err := hc.Check(cctx, &healthpb.HealthCheckRequest{Service: svc})
		cancel()
		if err == nil && res.GetStatus() == healthpb.HealthCheckResponse_SERVING {
			return nil
		}
		if err == nil {
			err = fmt.Errorf("status %v", res.GetStatus())
		}
		last = err
		if time.Now().After(deadline) {
			return last
		}
		select {
		case <-exited:
			return fmt.Errorf("%w (last check: %v)", errExited, last)
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// readyz reports whether GET /readyz on addr answers 200.
func readyz(addr string) bool {
	c := http.Client{Timeout: 3 * time.Second}
	res, err := c.Get("http://" + addr + "/readyz")
	if err != nil {
		return false
	}
	res.Body.Close()
	return res.StatusCode == http.StatusOK
}

// freePort asks the kernel for an unused loopback port.
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "..." + s[len(s)-n:]
}
