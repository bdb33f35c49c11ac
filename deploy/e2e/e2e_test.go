package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	adminv1 "github.com/loom-dev/loom/gen/loom/admin/v1"
	agentv1 "github.com/loom-dev/loom/gen/loom/agent/v1"
	memoryv1 "github.com/loom-dev/loom/gen/loom/memory/v1"
	orchestratorv1 "github.com/loom-dev/loom/gen/loom/orchestrator/v1"
)

// The repository root, from deploy/e2e.
const repoRoot = "../.."

// binaries are built once per test binary: loom (or LOOM_BIN, a prebuilt one) and grpcurl from tools/go.mod.
type binaries struct{ loom, grpcurl string }

var binDir string

var buildBinaries = sync.OnceValues(func() (binaries, error) {
	root, err := filepath.Abs(repoRoot)
	if err != nil {
		return binaries{}, err
	}
	b := binaries{loom: filepath.Join(binDir, "loom"), grpcurl: filepath.Join(binDir, "grpcurl")}
	builds := [][]string{{"build", "-modfile=tools/go.mod", "-o", b.grpcurl, "github.com/fullstorydev/grpcurl/cmd/grpcurl"}}
	if bin := os.Getenv("LOOM_BIN"); bin != "" {
		b.loom = bin // a prebuilt binary, as web/test takes it
	} else {
		builds = append(builds, []string{"build", "-o", b.loom, "./cmd/loom"})
	}
	errs := make([]error, len(builds))
	var wg sync.WaitGroup
	for i, args := range builds {
		wg.Go(func() {
			cmd := exec.Command("go", args...)
			cmd.Dir = root
			if out, err := cmd.CombinedOutput(); err != nil {
				errs[i] = fmt.Errorf("go %s: %v\n%s", strings.Join(args, " "), err, out)
			}
		})
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return binaries{}, err
		}
	}
	return b, nil
})

func TestMain(m *testing.M) {
	var err error
	binDir, err = os.MkdirTemp("", "loom-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(binDir)
	os.Exit(code)
}

// inCI reports whether the suite runs in CI, where a missing prerequisite fails instead of skipping.
func inCI() bool { return os.Getenv("CI") != "" && os.Getenv("CI") != "false" }

// prerequisite skips the test for a missing prerequisite, or fails it in CI.
func prerequisite(t *testing.T, msg string) {
	t.Helper()
	if inCI() {
		t.Fatalf("prerequisite missing (CI=%s, so this fails instead of skipping): %s", os.Getenv("CI"), msg)
	}
	t.Skip("prerequisite missing: " + msg)
}

// suite is the running deployment and the clients that users point at its gateway.
type suite struct {
	*deployment
	gateway  string // the one published address
	conn     *grpc.ClientConn
	mem      memoryv1.MemoryServiceClient
	agents   agentv1.AgentServiceClient
	orch     orchestratorv1.OrchestratorServiceClient
	admin    adminv1.AdminServiceClient
	adminKey string // from `loom keys create`
	writer   string // created through AdminService
	figures  []string
	figMu    sync.Mutex
	// failoverOnce guards the setup the fault steps share (failoverSetup).
	failoverOnce sync.Once
}

// figure records one measured figure; all are printed together at the end.
func (s *suite) figure(t *testing.T, format string, args ...any) {
	t.Helper()
	line := fmt.Sprintf(format, args...)
	t.Logf("FIGURE %s", line)
	s.figMu.Lock()
	s.figures = append(s.figures, line)
	s.figMu.Unlock()
}

// as returns ctx carrying key as a bearer token for grpc-go calls.
func as(ctx context.Context, key string) context.Context {
	return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+key)
}

// TestComposeDeployment starts compose.yaml's deployment as processes and tests it as its users run it, then
// with faults. Subtests share the deployment and run in order.
func TestComposeDeployment(t *testing.T) {
	if testing.Short() && !inCI() {
		t.Skip("starts the whole deployment; skipped with -short")
	}
	start := time.Now()
	ctx := t.Context()
	b, err := buildBinaries()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("built loom and grpcurl in %v", time.Since(start).Round(time.Millisecond))

	root, _ := filepath.Abs(repoRoot)
	// The one variable compose.yaml requires, made the way its comment says.
	p := loadProject(t, root, []string{"LOOM_SERVICE_TOKEN_KEY=" + newServiceTokenKey()})
	d := planDeployment(t, b, p)
	composeDB := composeDatabaseURL(t, d)
	d.pg = startPostgres(t, composeDB)
	d.dbURL = d.pg.url(composeDB)
	t.Logf("private postgres on 127.0.0.1:%d (data %s)", d.pg.port, d.pg.data)

	up := time.Now()
	d.start(ctx)
	t.Logf("compose up: %v in %v", d.order, time.Since(up).Round(time.Millisecond))
	for _, r := range d.replicas() {
		t.Logf("  %-16s %s  %s", r.name, r.addr, strings.Join(r.args, " "))
	}

	s := &suite{deployment: d, gateway: publishedAddr(t, d)}
	s.conn, err = grpc.NewClient("passthrough:///"+s.gateway, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer s.conn.Close()
	s.mem = memoryv1.NewMemoryServiceClient(s.conn)
	s.agents = agentv1.NewAgentServiceClient(s.conn)
	s.orch = orchestratorv1.NewOrchestratorServiceClient(s.conn)
	s.admin = adminv1.NewAdminServiceClient(s.conn)
	s.adminKey = s.bootstrapKey(t)

	steps := []struct {
		name string
		fn   func(*testing.T)
	}{
		{"grpcurl", s.testGrpcurl},
		{"grpc-go", s.testGrpcGo},
		{"connect-json", s.testConnectJSON},
		{"connect-web", s.testConnectWeb},
		{"research-workflow", s.testResearchWorkflow},
		{"kill-memory-replica", s.testKillMemoryReplica},
		{"kill-orchestrator-replica", s.testKillOrchestratorReplica},
		{"restart-postgres", s.testRestartPostgres},
		{"sigterm", s.testSIGTERM},
	}
	for _, st := range steps {
		stepStart := time.Now()
		ok := t.Run(st.name, st.fn)
		t.Logf("step %s: %v in %v", st.name, map[bool]string{true: "ok", false: "FAILED"}[ok], time.Since(stepStart).Round(time.Millisecond))
		if !ok && s.writer == "" {
			t.Fatal("the deployment is not usable; later steps would only repeat the failure")
		}
	}
	t.Logf("==== end-to-end figures (suite %v) ====", time.Since(start).Round(time.Millisecond))
	for _, f := range s.figures {
		t.Logf("  %s", f)
	}
}

// composeDatabaseURL is the LOOM_DATABASE_URL compose gives its services; every one must use the same.
func composeDatabaseURL(t *testing.T, d *deployment) string {
	t.Helper()
	var url string
	for _, name := range slices.Sorted(maps.Keys(d.services)) {
		v := d.services[name].cfg.Environment["LOOM_DATABASE_URL"]
		if v == nil {
			continue
		}
		if url != "" && *v != url {
			t.Fatalf("services use different databases (%s); the suite expects one", name)
		}
		url = *v
	}
	if url == "" {
		t.Fatal("no service of compose.yaml sets LOOM_DATABASE_URL")
	}
	return url
}

// publishedAddr is the address of the one service that publishes a port: the gateway, the only entry point
// clients use.
func publishedAddr(t *testing.T, d *deployment) string {
	t.Helper()
	var public []*service
	for _, s := range d.services {
		if len(s.cfg.Ports) > 0 {
			public = append(public, s)
		}
	}
	if len(public) != 1 || len(public[0].replicas) != 1 {
		t.Fatalf("want exactly one published service with one replica (the gateway), got %d", len(public))
	}
	return public[0].replicas[0].addr
}

// bootstrapKey creates the first admin key the way compose.yaml's comment tells users to:
// `docker compose run --rm admin keys create --tenant acme --name me --roles admin`, i.e. the admin service's
// image and environment with that command.
func (s *suite) bootstrapKey(t *testing.T) string {
	t.Helper()
	admin := s.services["admin"]
	if admin == nil {
		t.Fatal("compose.yaml has no admin service to run `keys create` with")
	}
	r := admin.replicas[0]
	cmd := exec.Command(s.bins.loom, "keys", "create", "--tenant", "acme", "--name", "me", "--roles", "admin")
	cmd.Env, cmd.Dir = r.env, t.TempDir()
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("loom keys create: %v\n%s", err, out)
	}
	for line := range strings.SplitSeq(string(out), "\n") {
		if secret, ok := strings.CutPrefix(line, "secret: "); ok {
			return secret
		}
	}
	t.Fatalf("loom keys create printed no secret:\n%s", out)
	return ""
}

// grpcurl runs grpcurl with key as bearer token (none if empty); args name the address. It returns the
// combined output.
func (s *suite) grpcurl(t *testing.T, key string, args ...string) (string, error) {
	t.Helper()
	all := []string{"-plaintext", "-max-time", "30"}
	if key != "" {
		all = append(all, "-H", "authorization: Bearer "+key)
	}
	all = append(all, args...)
	out, err := exec.Command(s.bins.grpcurl, all...).CombinedOutput()
	return string(out), err
}

// decodeJSON decodes grpcurl's or a Connect server's JSON output into v.
func decodeJSON(t *testing.T, out string, v any) {
	t.Helper()
	if err := json.Unmarshal([]byte(out), v); err != nil {
		t.Fatalf("decode %q: %v", out, err)
	}
}
