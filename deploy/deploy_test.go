package deploy_test

import (
	"context"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/compose-spec/compose-go/v2/types"
)

func loadComposeEnv(env []string) (*types.Project, error) {
	opts, err := cli.NewProjectOptions([]string{"../compose.yaml"},
		cli.WithWorkingDirectory(".."), cli.WithName("loom"), cli.WithEnv(env))
	if err != nil {
		return nil, err
	}
	return opts.LoadProject(context.Background())
}

func loadCompose(t *testing.T) *types.Project {
	t.Helper()
	p, err := loadComposeEnv([]string{"LOOM_SERVICE_TOKEN_KEY=dGVzdA=="})
	if err != nil {
		t.Fatalf("compose.yaml does not load: %v", err)
	}
	return p
}

// TestComposeNeedsServiceTokenKey checks that compose.yaml never falls back to a published key.
func TestComposeNeedsServiceTokenKey(t *testing.T) {
	_, err := loadComposeEnv(nil)
	if err == nil || !strings.Contains(err.Error(), "LOOM_SERVICE_TOKEN_KEY") {
		t.Fatalf("compose.yaml loads without LOOM_SERVICE_TOKEN_KEY: err = %v", err)
	}
	b, err := os.ReadFile("../compose.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(b), "LOOM_SERVICE_TOKEN_KEY:-") {
		t.Error("compose.yaml has a default service-token key")
	}
}

func TestDockerignore(t *testing.T) {
	b, err := os.ReadFile("../.dockerignore")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{".git", "loom-data", "node_modules"} {
		if !strings.Contains(string(b), want) {
			t.Errorf(".dockerignore lacks %q", want)
		}
	}
}

func TestComposeSplitDeployment(t *testing.T) {
	p := loadCompose(t)
	pg, err := p.GetService("postgres")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(pg.Image, "pgvector/pgvector:") {
		t.Errorf("postgres image = %q, want pgvector/pgvector", pg.Image)
	}
	if pg.HealthCheck == nil || len(pg.HealthCheck.Test) == 0 {
		t.Error("postgres has no health check")
	}

	for _, name := range []string{"memory", "agent", "orchestrator", "admin", "gateway"} {
		svc, err := p.GetService(name)
		if err != nil {
			t.Fatalf("service %s: %v", name, err)
		}
		if svc.Build == nil || svc.Build.Dockerfile != "Dockerfile" {
			t.Errorf("%s: not built from the repo's Dockerfile", name)
		}
		if !slices.Equal([]string(svc.Command), []string{"serve", "--services", name}) {
			t.Errorf("%s: command = %v", name, svc.Command)
		}
		if svc.HealthCheck == nil || !strings.Contains(strings.Join(svc.HealthCheck.Test, " "), "grpc-health-probe") {
			t.Errorf("%s: no gRPC health check", name)
		}
		if dep, ok := svc.DependsOn["postgres"]; !ok || dep.Condition != types.ServiceConditionHealthy {
			t.Errorf("%s: does not wait for a healthy postgres", name)
		}
		env := svc.Environment
		if v := env["LOOM_DATABASE_URL"]; v == nil || !strings.HasPrefix(*v, "postgres://") {
			t.Errorf("%s: LOOM_DATABASE_URL not set to Postgres", name)
		}
		if v := env["LOOM_MEMORY_ADDR"]; v == nil || *v != "dns:///memory:8080" {
			t.Errorf("%s: LOOM_MEMORY_ADDR should resolve every memory replica via dns:///", name)
		}
		if v := env["LOOM_AUTH"]; v == nil || *v != "required" {
			t.Errorf("%s: LOOM_AUTH should be required", name)
		}
		if v := env["LOOM_SERVICE_TOKEN_KEY"]; v == nil || *v == "" {
			t.Errorf("%s: the services need one shared LOOM_SERVICE_TOKEN_KEY", name)
		}
		if name != "gateway" && len(svc.Ports) != 0 {
			t.Errorf("%s publishes ports; only the gateway is public", name)
		}
	}
	gw, _ := p.GetService("gateway")
	if len(gw.Ports) != 1 || gw.Ports[0].Target != 8080 {
		t.Errorf("gateway should publish 8080, got %v", gw.Ports)
	}
	for _, s := range []string{"MEMORY", "AGENT", "ORCHESTRATOR", "ADMIN"} {
		if v := gw.Environment["LOOM_GATEWAY_"+s]; v == nil || !strings.HasPrefix(*v, "dns:///") {
			t.Errorf("gateway: LOOM_GATEWAY_%s should name the service's replicas", s)
		}
	}
	mem, _ := p.GetService("memory")
	if mem.Deploy == nil || mem.Deploy.Replicas == nil || *mem.Deploy.Replicas != 2 {
		t.Errorf("memory should run two replicas")
	}
	if len(mem.Ports) != 0 {
		t.Errorf("memory replicas cannot publish one host port")
	}
	orch, _ := p.GetService("orchestrator")
	if orch.Deploy == nil || orch.Deploy.Replicas == nil || *orch.Deploy.Replicas != 2 {
		t.Errorf("orchestrator should run two replicas, so a crash fails over")
	}
}

func TestDockerfileBuildsTheBinaryAndProbe(t *testing.T) {
	b, err := os.ReadFile("../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"./cmd/loom", "grpc-health-probe", "espeak-ng", "USER loom", `ENTRYPOINT ["loom"]`} {
		if !strings.Contains(string(b), want) {
			t.Errorf("Dockerfile lacks %q", want)
		}
	}
}
