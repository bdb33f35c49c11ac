package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"testing"

	"connectrpc.com/connect"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	adminv1 "github.com/loom-dev/loom/gen/loom/admin/v1"
	agentv1 "github.com/loom-dev/loom/gen/loom/agent/v1"
	memoryv1 "github.com/loom-dev/loom/gen/loom/memory/v1"
	"github.com/loom-dev/loom/gen/loom/memory/v1/memoryv1connect"
)

// newServiceTokenKey returns a fresh Ed25519 seed in the form LOOM_SERVICE_TOKEN_KEY takes.
func newServiceTokenKey() string {
	seed := make([]byte, 32)
	_, _ = rand.Read(seed)
	return base64.StdEncoding.EncodeToString(seed)
}

// setServiceTokenKey sets LOOM_SERVICE_TOKEN_KEY to a new key for the test (and the loom processes it starts)
// and returns it.
func setServiceTokenKey(t *testing.T) string {
	t.Helper()
	key := newServiceTokenKey()
	t.Setenv("LOOM_SERVICE_TOKEN_KEY", key)
	return key
}

// keyDir creates a data directory with an API key in it for each "tenant:roles" spec and returns the directory
// and the keys' secrets, in the order of specs.
func keyDir(t *testing.T, specs ...string) (string, []string) {
	t.Helper()
	dataDir := t.TempDir()
	secrets := make([]string, len(specs))
	for i, spec := range specs {
		tenant, roles, _ := strings.Cut(spec, ":")
		secrets[i] = createKey(t, dataDir, tenant, roles)
	}
	return dataDir, secrets
}

// createKey runs `loom keys create` against dataDir and returns the secret.
func createKey(t *testing.T, dataDir, tenant, roles string) string {
	t.Helper()
	out, err := exec.Command(bins(t)["loom"], "keys", "create", "--data-dir", dataDir, "--tenant", tenant, "--name", tenant+"-"+roles, "--roles", roles).CombinedOutput()
	if err != nil {
		t.Fatalf("loom keys create: %v\n%s", err, out)
	}
	for _, line := range strings.Split(string(out), "\n") {
		if s, ok := strings.CutPrefix(line, "secret: "); ok {
			return s
		}
	}
	t.Fatalf("no secret in %s", out)
	return ""
}

// TestGatewayWithRequiredAuth runs the split deployment of compose.yaml in miniature: backends with
// --auth required behind a gateway, sharing the service-token key and the key database.
func TestGatewayWithRequiredAuth(t *testing.T) {
	b := bins(t)
	tokenKey := setServiceTokenKey(t)
	dataDir, keys := keyDir(t, "tenant-a:admin", "tenant-a:reader", "tenant-b:writer")
	adminA, readerA, writerB := keys[0], keys[1], keys[2]

	backend := startLoomIn(t, dataDir, "--auth", "required")
	gw := startLoomIn(t, dataDir, "--auth", "required", "--services", "gateway",
		"--gateway-memory", backend.addr, "--gateway-admin", backend.addr, "--gateway-agent", backend.addr, "--gateway-orchestrator", backend.addr)

	ctx := context.Background()
	conn := dialGRPC(t, gw.addr)
	mem := memoryv1.NewMemoryServiceClient(conn)
	as := func(secret string) context.Context {
		return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+secret)
	}

	// Health is public at the gateway; nothing else is.
	if res, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{}); err != nil || res.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("gateway health: %v %v", res, err)
	}
	if _, err := mem.ListNamespaces(ctx, &memoryv1.ListNamespacesRequest{}); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("no credentials: %v, want Unauthenticated", err)
	}
	if _, err := mem.ListNamespaces(as("loom_nope_nope"), &memoryv1.ListNamespacesRequest{}); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("bad key: %v, want Unauthenticated", err)
	}

	// An admin of tenant a creates a namespace through the gateway (gRPC), a reader may read but not write.
	ns := &memoryv1.CreateNamespaceRequest{Namespace: &memoryv1.Namespace{Name: "secrets", Dimension: 8}}
	if _, err := mem.CreateNamespace(as(adminA), ns); err != nil {
		t.Fatalf("admin create: %v", err)
	}
	if _, err := mem.GetNamespace(as(readerA), &memoryv1.GetNamespaceRequest{Name: "secrets"}); err != nil {
		t.Fatalf("reader get: %v", err)
	}
	if _, err := mem.DeleteNamespace(as(readerA), &memoryv1.DeleteNamespaceRequest{Name: "secrets"}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("reader delete: %v, want PermissionDenied", err)
	}

	// Tenant b sees nothing of tenant a's, through Connect too.
	cc := memoryv1connect.NewMemoryServiceClient(http.DefaultClient, "http://"+gw.addr)
	req := connect.NewRequest(&memoryv1.GetNamespaceRequest{Name: "secrets"})
	req.Header().Set("Authorization", "Bearer "+writerB)
	if _, err := cc.GetNamespace(ctx, req); connect.CodeOf(err) != connect.CodeNotFound {
		t.Fatalf("tenant b reading tenant a's namespace: %v, want NotFound", err)
	}
	list := connect.NewRequest(&memoryv1.ListNamespacesRequest{})
	list.Header().Set("Authorization", "Bearer "+writerB)
	if res, err := cc.ListNamespaces(ctx, list); err != nil || len(res.Msg.GetNamespaces()) != 0 {
		t.Fatalf("tenant b lists %v (%v), want nothing", res, err)
	}

	// The audit trail (admin only) shows the refused delete, and no secret.
	events, err := adminv1NewClient(conn).ListAuditEvents(as(adminA), &adminv1.ListAuditEventsRequest{})
	if err != nil {
		t.Fatalf("audit: %v", err)
	}
	var sawDenied bool
	for _, e := range events.GetEvents() {
		if e.GetProcedure() == "/loom.memory.v1.MemoryService/DeleteNamespace" && e.GetResult() == "permission_denied" {
			sawDenied = true
		}
	}
	if !sawDenied {
		t.Errorf("audit trail lacks the refused delete: %v", events)
	}
	// grpcurl through the gateway: reflection describes the services it forwards to.
	out, err := exec.Command(b["grpcurl"], "-plaintext", "-H", "authorization: Bearer "+readerA, gw.addr, "list").CombinedOutput()
	if err != nil {
		t.Fatalf("grpcurl list through the gateway: %v\n%s", err, out)
	}
	for _, svc := range []string{"loom.memory.v1.MemoryService", "loom.agent.v1.AgentService", "loom.orchestrator.v1.OrchestratorService", "loom.admin.v1.AdminService"} {
		if !strings.Contains(string(out), svc) {
			t.Errorf("grpcurl list through the gateway lacks %s:\n%s", svc, out)
		}
	}
	for _, p := range []*process{backend, gw} {
		for _, secret := range []string{adminA, readerA, writerB, tokenKey} {
			if strings.Contains(p.logs.String(), secret) {
				t.Errorf("a secret appears in the logs")
			}
		}
	}
}

var adminv1NewClient = adminv1.NewAdminServiceClient

// startLoomIn is startLoom with a given data dir and environment.
func startLoomIn(t *testing.T, dataDir string, args ...string) *process {
	t.Helper()
	return startLoomWith(t, dataDir, os.Environ(), args...)
}

// TestAgentUsesMemoryWithServiceTokens runs an agent through the gateway under --auth required: the agent's
// call to memory carries a service token for the caller's tenant, so it retrieves that tenant's memories.
func TestAgentUsesMemoryWithServiceTokens(t *testing.T) {
	setServiceTokenKey(t)
	dataDir, keys := keyDir(t, "tenant-a:writer")
	key := keys[0]
	backend := startLoomIn(t, dataDir, "--auth", "required")
	gw := startLoomIn(t, dataDir, "--auth", "required", "--services", "gateway",
		"--gateway-memory", backend.addr, "--gateway-agent", backend.addr)

	conn := dialGRPC(t, gw.addr)
	ctx := metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+key)
	ag := seedHelperAgent(ctx, t, conn)
	stream, err := ag.RunStream(ctx, &agentv1.RunStreamRequest{Agent: "helper", Input: "where did the cat sit"})
	if err != nil {
		t.Fatal(err)
	}
	var hits, warnings int
	var completed *agentv1.Run
	for {
		ev, err := stream.Recv()
		if err != nil {
			break
		}
		hits += len(ev.GetMemoryHits().GetHits())
		if ev.GetWarning() != nil {
			warnings++
			t.Logf("warning: %s", ev.GetWarning().GetMessage())
		}
		if ev.GetCompleted() != nil {
			completed = ev.GetCompleted()
		}
	}
	if completed == nil || completed.GetState() != agentv1.RunState_RUN_STATE_SUCCEEDED {
		t.Fatalf("run did not succeed: %v", completed)
	}
	if hits == 0 || warnings != 0 {
		t.Errorf("memory hits %d, warnings %d: the agent should reach memory as the caller's tenant", hits, warnings)
	}
}

// seedHelperAgent creates, through conn, the namespace "notes" holding one record about a cat and the agent
// "helper" that reads it, and returns the agent client.
func seedHelperAgent(ctx context.Context, t *testing.T, conn grpc.ClientConnInterface) agentv1.AgentServiceClient {
	t.Helper()
	mem := memoryv1.NewMemoryServiceClient(conn)
	if _, err := mem.CreateNamespace(ctx, &memoryv1.CreateNamespaceRequest{Namespace: &memoryv1.Namespace{Name: "notes", Dimension: 128}}); err != nil {
		t.Fatal(err)
	}
	if _, err := mem.Upsert(ctx, &memoryv1.UpsertRequest{Namespace: "notes", Records: []*memoryv1.Record{{Id: "cat", Text: "the cat sat on the mat"}}}); err != nil {
		t.Fatal(err)
	}
	ag := agentv1.NewAgentServiceClient(conn)
	if _, err := ag.CreateAgent(ctx, &agentv1.CreateAgentRequest{Agent: &agentv1.Agent{Name: "helper", Memory: &agentv1.MemoryConfig{Namespace: "notes"}}}); err != nil {
		t.Fatal(err)
	}
	return ag
}
