package kubernetes

import (
	"fmt"
	"maps"
	"net"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"
)

// variants are the kustomizations rendered and checked. testdata/mesh is overlays/example with the mesh
// component, as README.md tells users to add it.
var variants = []struct {
	name      string
	dir       string
	namespace string // every namespaced object's namespace; "" for the base
	mesh      bool   // memory and agent are reached through ClusterIP Services, not dns:/// over headless ones
}{
	{name: "base", dir: "base"},
	{name: "example", dir: "overlays/example", namespace: "loom"},
	{name: "mesh", dir: "testdata/mesh", namespace: "loom", mesh: true},
}

// callers lists, for each service, the Loom components that call it and so must reach it through the network
// policies; no other pod may. The gateway is reachable from anywhere.
var callers = map[string][]string{
	"memory":       {"agent", "orchestrator", "gateway"},
	"agent":        {"orchestrator", "gateway"},
	"orchestrator": {"gateway"},
	"admin":        {"gateway"},
	"gateway":      nil,
}

// targets maps each address variable to the component it must point at.
var targets = map[string]string{
	"LOOM_MEMORY_ADDR":          "memory",
	"LOOM_AGENT_ADDR":           "agent",
	"LOOM_GATEWAY_MEMORY":       "memory",
	"LOOM_GATEWAY_AGENT":        "agent",
	"LOOM_GATEWAY_ORCHESTRATOR": "orchestrator",
	"LOOM_GATEWAY_ADMIN":        "admin",
}

// needs lists the address variables each component must have set: who calls whom.
var needs = map[string][]string{
	"agent":        {"LOOM_MEMORY_ADDR"},
	"orchestrator": {"LOOM_MEMORY_ADDR", "LOOM_AGENT_ADDR"},
	"gateway":      {"LOOM_GATEWAY_MEMORY", "LOOM_GATEWAY_AGENT", "LOOM_GATEWAY_ORCHESTRATOR", "LOOM_GATEWAY_ADMIN"},
}

func TestManifests(t *testing.T) {
	help, err := loomHelp()
	if err != nil {
		t.Fatal(err)
	}
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range variants {
		t.Run(v.name, func(t *testing.T) {
			t.Parallel()
			r := render(t, v.dir)
			env := map[string]map[string]envVar{}
			for name, d := range r.deployments {
				env[name] = containerEnv(t, r, d)
			}
			t.Run("namespace", func(t *testing.T) { checkNamespace(t, r, v.namespace) })
			t.Run("deployments", func(t *testing.T) { checkDeployments(t, r, env, help, v.namespace != "") })
			t.Run("services", func(t *testing.T) { checkServices(t, r) })
			t.Run("addresses", func(t *testing.T) { checkAddresses(t, r, env, v.mesh) })
			t.Run("disruption", func(t *testing.T) { checkDisruption(t, r) })
			t.Run("networkpolicies", func(t *testing.T) { checkNetworkPolicies(t, r) })
			t.Run("env", func(t *testing.T) { checkEnv(t, r, env, help, string(readme)) })
		})
	}
}

// TestDecodeStrict makes sure the decoding the checks rely on really refuses unknown fields.
func TestDecodeStrict(t *testing.T) {
	t.Parallel()
	good := "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: x\nspec:\n  template:\n    spec:\n      containers:\n        - name: x\n          imagePullPolicy: Always\n"
	if _, err := decodeStrict([]byte(good)); err != nil {
		t.Fatalf("decode a valid Deployment: %v", err)
	}
	for name, doc := range map[string]string{
		"misspelt field":  strings.Replace(good, "imagePullPolicy", "imagePullPolcy", 1),
		"misplaced field": strings.Replace(good, "  template:", "  replica: 2\n  template:", 1),
		"duplicate key":   strings.Replace(good, "  name: x\n", "  name: x\n  name: y\n", 1),
		"unknown kind":    strings.Replace(good, "kind: Deployment", "kind: Deploymnt", 1),
		"secret":          "apiVersion: v1\nkind: Secret\nmetadata:\n  name: x\n",
	} {
		if _, err := decodeStrict([]byte(doc)); err == nil {
			t.Errorf("%s: decoded without error", name)
		}
	}
}

// rendered holds the objects of one kustomization, decoded.
type rendered struct {
	deployments     map[string]*appsv1.Deployment
	services        map[string]*corev1.Service
	configMaps      map[string]*corev1.ConfigMap
	serviceAccounts map[string]*corev1.ServiceAccount
	namespaces      map[string]*corev1.Namespace
	pdbs            []*policyv1.PodDisruptionBudget
	hpas            []*autoscalingv2.HorizontalPodAutoscaler
	policies        []*networkingv1.NetworkPolicy
	objects         []object
}

// object is any rendered object's identity and metadata.
type object struct {
	kind string
	meta *metav1.ObjectMeta
}

// render builds the kustomization in dir as `kubectl apply -k` would, and decodes every object strictly.
func render(t *testing.T, dir string) *rendered {
	t.Helper()
	resources, err := krusty.MakeKustomizer(krusty.MakeDefaultOptions()).Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		t.Fatalf("kustomize build %s: %v", dir, err)
	}
	r := &rendered{
		deployments:     map[string]*appsv1.Deployment{},
		services:        map[string]*corev1.Service{},
		configMaps:      map[string]*corev1.ConfigMap{},
		serviceAccounts: map[string]*corev1.ServiceAccount{},
		namespaces:      map[string]*corev1.Namespace{},
	}
	for _, res := range resources.Resources() {
		doc, err := res.AsYAML()
		if err != nil {
			t.Fatalf("%s: %v", res.CurId(), err)
		}
		obj, err := decodeStrict(doc)
		if err != nil {
			t.Errorf("%s: %v", res.CurId(), err)
			continue
		}
		switch o := obj.(type) {
		case *appsv1.Deployment:
			r.deployments[o.Name] = o
			r.objects = append(r.objects, object{"Deployment", &o.ObjectMeta})
		case *corev1.Service:
			r.services[o.Name] = o
			r.objects = append(r.objects, object{"Service", &o.ObjectMeta})
		case *corev1.ConfigMap:
			r.configMaps[o.Name] = o
			r.objects = append(r.objects, object{"ConfigMap", &o.ObjectMeta})
		case *corev1.ServiceAccount:
			r.serviceAccounts[o.Name] = o
			r.objects = append(r.objects, object{"ServiceAccount", &o.ObjectMeta})
		case *corev1.Namespace:
			r.namespaces[o.Name] = o
			r.objects = append(r.objects, object{"Namespace", &o.ObjectMeta})
		case *policyv1.PodDisruptionBudget:
			r.pdbs = append(r.pdbs, o)
			r.objects = append(r.objects, object{"PodDisruptionBudget", &o.ObjectMeta})
		case *autoscalingv2.HorizontalPodAutoscaler:
			r.hpas = append(r.hpas, o)
			r.objects = append(r.objects, object{"HorizontalPodAutoscaler", &o.ObjectMeta})
		case *networkingv1.NetworkPolicy:
			r.policies = append(r.policies, o)
			r.objects = append(r.objects, object{"NetworkPolicy", &o.ObjectMeta})
		}
	}
	if t.Failed() {
		t.FailNow()
	}
	return r
}

// decodeStrict decodes one rendered object into its k8s.io/api type. Unknown fields, duplicate keys and kinds
// the test does not know are errors; a Secret is refused outright, since Secrets are created with kubectl and
// never rendered from the manifests.
func decodeStrict(doc []byte) (any, error) {
	var tm metav1.TypeMeta
	if err := yaml.Unmarshal(doc, &tm); err != nil {
		return nil, err
	}
	var obj any
	switch tm.APIVersion + " " + tm.Kind {
	case "apps/v1 Deployment":
		obj = new(appsv1.Deployment)
	case "v1 Service":
		obj = new(corev1.Service)
	case "v1 ConfigMap":
		obj = new(corev1.ConfigMap)
	case "v1 ServiceAccount":
		obj = new(corev1.ServiceAccount)
	case "v1 Namespace":
		obj = new(corev1.Namespace)
	case "policy/v1 PodDisruptionBudget":
		obj = new(policyv1.PodDisruptionBudget)
	case "autoscaling/v2 HorizontalPodAutoscaler":
		obj = new(autoscalingv2.HorizontalPodAutoscaler)
	case "networking.k8s.io/v1 NetworkPolicy":
		obj = new(networkingv1.NetworkPolicy)
	case "v1 Secret":
		return nil, fmt.Errorf("a Secret is rendered: create Secrets with kubectl (README.md), never in the manifests")
	default:
		return nil, fmt.Errorf("unexpected %s %s: add its type to decodeStrict and check it", tm.APIVersion, tm.Kind)
	}
	if err := yaml.UnmarshalStrict(doc, obj); err != nil {
		return nil, err
	}
	return obj, nil
}

// serveHelp is what `loom serve --help` says the command reads.
type serveHelp struct {
	env     map[string]bool // every variable: flags' and secrets' (with their _FILE forms)
	secrets map[string]bool // the variables listed as secrets
	listen  string          // the --listen default
}

// loomHelp runs `loom serve --help` from the repository root once, so the names checked are those the binary
// really reads.
var loomHelp = sync.OnceValues(func() (serveHelp, error) {
	cmd := exec.Command("go", "run", "github.com/loom-dev/loom/cmd/loom", "serve", "--help")
	cmd.Dir = filepath.Join("..", "..")
	out, err := cmd.CombinedOutput()
	if err != nil {
		return serveHelp{}, fmt.Errorf("go run ./cmd/loom serve --help: %v\n%s", err, out)
	}
	return parseHelp(string(out))
})

var (
	helpFlagEnv = regexp.MustCompile(`\(env (LOOM_[A-Z0-9_]+)\)`)
	helpSecret  = regexp.MustCompile(`(?m)^\s+(LOOM_[A-Z0-9_]+), (LOOM_[A-Z0-9_]+_FILE)\s*$`)
	helpListen  = regexp.MustCompile(`(?m)^\s+--?listen string\n.*\(default "([^"]*)"\)\s*$`)
)

func parseHelp(out string) (serveHelp, error) {
	h := serveHelp{env: map[string]bool{}, secrets: map[string]bool{}}
	for _, m := range helpFlagEnv.FindAllStringSubmatch(out, -1) {
		h.env[m[1]] = true
	}
	for _, m := range helpSecret.FindAllStringSubmatch(out, -1) {
		h.env[m[1]], h.env[m[2]], h.secrets[m[1]] = true, true, true
	}
	if m := helpListen.FindStringSubmatch(out); m != nil {
		h.listen = m[1]
	}
	if len(h.env) == 0 || len(h.secrets) == 0 || h.listen == "" {
		return h, fmt.Errorf("loom serve --help: found %d variables, %d secrets, listen %q; has its format changed?\n%s",
			len(h.env), len(h.secrets), h.listen, out)
	}
	return h, nil
}

// envVar is one variable of a container's environment.
type envVar struct {
	value   string // the value, when written in the manifests (env value or ConfigMap)
	literal bool   // value is written in the manifests, readable by anyone who can read them
	source  string // where it comes from, for messages
	secret  *corev1.SecretKeySelector
}

// containerEnv is the environment of d's container as the kubelet builds it: envFrom in order, then env.
func containerEnv(t *testing.T, r *rendered, d *appsv1.Deployment) map[string]envVar {
	t.Helper()
	env := map[string]envVar{}
	c := d.Spec.Template.Spec.Containers[0]
	for _, from := range c.EnvFrom {
		switch {
		case from.ConfigMapRef != nil:
			cm, ok := r.configMaps[from.ConfigMapRef.Name]
			if !ok {
				t.Errorf("deployment %s: envFrom ConfigMap %s is not in the manifests", d.Name, from.ConfigMapRef.Name)
				continue
			}
			for k, v := range cm.Data {
				env[from.Prefix+k] = envVar{value: v, literal: true, source: "ConfigMap " + cm.Name}
			}
		case from.SecretRef != nil:
			t.Errorf("deployment %s: envFrom Secret %s: use one secretKeyRef per variable so the names can be checked",
				d.Name, from.SecretRef.Name)
		}
	}
	for _, e := range c.Env {
		switch {
		case e.ValueFrom == nil:
			env[e.Name] = envVar{value: e.Value, literal: true, source: "env value"}
		case e.ValueFrom.SecretKeyRef != nil:
			ref := e.ValueFrom.SecretKeyRef
			env[e.Name] = envVar{source: "Secret " + ref.Name + "/" + ref.Key, secret: ref}
		case e.ValueFrom.ConfigMapKeyRef != nil:
			ref := e.ValueFrom.ConfigMapKeyRef
			cm, ok := r.configMaps[ref.Name]
			if !ok {
				t.Errorf("deployment %s: %s: ConfigMap %s is not in the manifests", d.Name, e.Name, ref.Name)
				continue
			}
			env[e.Name] = envVar{value: cm.Data[ref.Key], literal: true, source: "ConfigMap " + ref.Name}
		default:
			env[e.Name] = envVar{source: "field"}
		}
	}
	return env
}

func checkNamespace(t *testing.T, r *rendered, namespace string) {
	for _, o := range r.objects {
		if o.kind == "Namespace" {
			continue
		}
		if o.meta.Namespace != namespace {
			t.Errorf("%s %s: namespace %q, want %q", o.kind, o.meta.Name, o.meta.Namespace, namespace)
		}
		if o.meta.Labels["app.kubernetes.io/part-of"] != "loom" {
			t.Errorf("%s %s: no label app.kubernetes.io/part-of: loom", o.kind, o.meta.Name)
		}
	}
	if namespace == "" {
		return
	}
	ns, ok := r.namespaces[namespace]
	if !ok {
		t.Fatalf("no Namespace %s", namespace)
	}
	if got := ns.Labels["pod-security.kubernetes.io/enforce"]; got != "restricted" {
		t.Errorf("Namespace %s: pod-security.kubernetes.io/enforce is %q, want restricted", namespace, got)
	}
}

func checkDeployments(t *testing.T, r *rendered, env map[string]map[string]envVar, help serveHelp, overlay bool) {
	var names []string
	for name := range r.deployments {
		names = append(names, name)
	}
	slices.Sort(names)
	want := slices.Sorted(maps.Keys(callers))
	if !slices.Equal(names, want) {
		t.Fatalf("deployments %v, want %v", names, want)
	}
	var image string
	for _, name := range names {
		d := r.deployments[name]
		spec := d.Spec.Template.Spec
		if len(spec.Containers) != 1 || len(spec.InitContainers) != 0 {
			t.Errorf("%s: want exactly one container", name)
			continue
		}
		c := spec.Containers[0]
		if image == "" {
			image = c.Image
		}
		if c.Image != image || c.Image == "" {
			t.Errorf("%s: image %q, want the one image %q for every service", name, c.Image, image)
		}
		if overlay && (!strings.ContainsAny(c.Image, ":@") || strings.HasSuffix(c.Image, ":latest")) {
			t.Errorf("%s: image %q: pin a tag or digest", name, c.Image)
		}
		if want := []string{"serve", "--services", name}; len(c.Command) != 0 || !slices.Equal(c.Args, want) {
			t.Errorf("%s: command %q args %q, want the image's entrypoint with args %q", name, c.Command, c.Args, want)
		}
		if d.Spec.Replicas != nil {
			t.Errorf("%s: replicas set; the HorizontalPodAutoscaler owns the count", name)
		}
		sel, err := metav1.LabelSelectorAsSelector(d.Spec.Selector)
		if err != nil || sel.Empty() || !sel.Matches(labels.Set(d.Spec.Template.Labels)) {
			t.Errorf("%s: selector %v does not select its own pods (%v)", name, d.Spec.Selector, err)
		}

		// The port serves gRPC, Connect and the health service; it must be the one `loom serve` listens on.
		listen := help.listen
		if v, ok := env[name]["LOOM_LISTEN"]; ok {
			listen = v.value
		}
		_, portStr, err := net.SplitHostPort(listen)
		port, _ := strconv.Atoi(portStr)
		if err != nil || port == 0 {
			t.Errorf("%s: cannot read the listen port of %q", name, listen)
		}
		if len(c.Ports) != 1 || c.Ports[0].Name != "grpc" || int(c.Ports[0].ContainerPort) != port {
			t.Errorf("%s: ports %+v, want one named grpc on %d (the listen address %q)", name, c.Ports, port, listen)
		}
		for probeName, p := range map[string]*corev1.Probe{"readiness": c.ReadinessProbe, "liveness": c.LivenessProbe, "startup": c.StartupProbe} {
			switch {
			case p == nil:
				t.Errorf("%s: no %s probe", name, probeName)
			case p.GRPC == nil || p.HTTPGet != nil || p.TCPSocket != nil || p.Exec != nil:
				t.Errorf("%s: %s probe is not a grpc probe", name, probeName)
			case int(p.GRPC.Port) != port:
				t.Errorf("%s: %s probe on port %d, want %d", name, probeName, p.GRPC.Port, port)
			case p.GRPC.Service != nil && *p.GRPC.Service != "":
				t.Errorf("%s: %s probe asks for service %q; the server's overall status is service \"\"", name, probeName, *p.GRPC.Service)
			}
		}

		checkSecurity(t, name, spec, c)
		checkResources(t, name, c)
		if _, ok := r.serviceAccounts[spec.ServiceAccountName]; !ok {
			t.Errorf("%s: service account %q is not in the manifests", name, spec.ServiceAccountName)
		}
	}
}

func checkSecurity(t *testing.T, name string, spec corev1.PodSpec, c corev1.Container) {
	pod := spec.SecurityContext
	if pod == nil {
		pod = &corev1.PodSecurityContext{}
	}
	sc := c.SecurityContext
	if sc == nil {
		t.Errorf("%s: container has no securityContext", name)
		return
	}
	isTrue := func(b *bool) bool { return b != nil && *b }
	isFalse := func(b *bool) bool { return b != nil && !*b }
	if !isTrue(effective(sc.RunAsNonRoot, pod.RunAsNonRoot)) {
		t.Errorf("%s: runAsNonRoot is not true", name)
	}
	// The image's user is a name; the kubelet can only verify runAsNonRoot against a numeric user.
	if uid := effective(sc.RunAsUser, pod.RunAsUser); uid == nil || *uid == 0 {
		t.Errorf("%s: runAsUser must be a non-zero uid", name)
	}
	if !isTrue(sc.ReadOnlyRootFilesystem) {
		t.Errorf("%s: readOnlyRootFilesystem is not true", name)
	}
	if !isFalse(sc.AllowPrivilegeEscalation) || isTrue(sc.Privileged) {
		t.Errorf("%s: allowPrivilegeEscalation must be false and privileged unset", name)
	}
	if sc.Capabilities == nil || !slices.Contains(sc.Capabilities.Drop, "ALL") || len(sc.Capabilities.Add) != 0 {
		t.Errorf("%s: capabilities %+v, want drop ALL and add none", name, sc.Capabilities)
	}
	if sp := effective(sc.SeccompProfile, pod.SeccompProfile); sp == nil || sp.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("%s: seccomp profile %+v, want RuntimeDefault", name, sp)
	}
	if spec.HostNetwork || spec.HostPID || spec.HostIPC {
		t.Errorf("%s: shares a host namespace", name)
	}
	if !isFalse(spec.AutomountServiceAccountToken) {
		t.Errorf("%s: automountServiceAccountToken must be false: Loom does not call the Kubernetes API", name)
	}
	volumes := map[string]corev1.Volume{}
	for _, v := range spec.Volumes {
		volumes[v.Name] = v
		if v.EmptyDir == nil && v.Secret == nil && v.ConfigMap == nil && v.Projected == nil {
			t.Errorf("%s: volume %s is neither an emptyDir nor a Secret or ConfigMap", name, v.Name)
		}
	}
	tmp := false
	for _, m := range c.VolumeMounts {
		v, ok := volumes[m.Name]
		if !ok {
			t.Errorf("%s: mount %s has no volume", name, m.Name)
		}
		if m.MountPath == "/tmp" && v.EmptyDir != nil {
			tmp = true
		}
	}
	if !tmp {
		t.Errorf("%s: /tmp is not a writable emptyDir (the root filesystem is read-only)", name)
	}
}

func checkResources(t *testing.T, name string, c corev1.Container) {
	for _, res := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
		req, okReq := c.Resources.Requests[res]
		lim, okLim := c.Resources.Limits[res]
		switch {
		case !okReq || !okLim:
			t.Errorf("%s: %s needs a request and a limit", name, res)
		case req.Sign() <= 0 || req.Cmp(lim) > 0:
			t.Errorf("%s: %s request %s, limit %s", name, res, req.String(), lim.String())
		}
	}
}

func checkServices(t *testing.T, r *rendered) {
	for _, s := range r.services {
		d := selected(r, s.Spec.Selector)
		if d == nil {
			t.Errorf("service %s: selector %v selects no one Deployment's pods", s.Name, s.Spec.Selector)
			continue
		}
		if s.Name != d.Name && s.Name != d.Name+"-mesh" {
			t.Errorf("service %s selects %s's pods", s.Name, d.Name)
		}
		switch s.Spec.Type {
		case "", corev1.ServiceTypeClusterIP:
		default:
			if d.Name != "gateway" {
				t.Errorf("service %s: type %s; only the gateway is reachable from outside", s.Name, s.Spec.Type)
			}
		}
		if len(s.Spec.Ports) == 0 {
			t.Errorf("service %s: no ports", s.Name)
		}
		c := d.Spec.Template.Spec.Containers[0]
		for _, p := range s.Spec.Ports {
			target := p.TargetPort
			if target.Type == intstr.Int && target.IntVal == 0 {
				target = intstr.FromInt32(p.Port) // unset: the Service's own port
			}
			if containerPort(c, target) == nil {
				t.Errorf("service %s: targetPort %s is no port of %s's container", s.Name, p.TargetPort.String(), d.Name)
			}
			// A mesh (and a Gateway API route) treats the port as HTTP/2 only when told.
			if p.AppProtocol == nil || (*p.AppProtocol != "grpc" && *p.AppProtocol != "kubernetes.io/h2c") {
				t.Errorf("service %s: port %s: appProtocol must be grpc or kubernetes.io/h2c", s.Name, p.Name)
			}
		}
	}
	for name, headless := range map[string]bool{"memory": true, "agent": true, "orchestrator": false, "admin": false, "gateway": false} {
		s, ok := r.services[name]
		switch {
		case !ok:
			t.Errorf("no Service %s", name)
		case headless && s.Spec.ClusterIP != corev1.ClusterIPNone:
			t.Errorf("service %s must be headless (clusterIP: None): its clients resolve every pod and balance", name)
		case !headless && s.Spec.ClusterIP == corev1.ClusterIPNone:
			t.Errorf("service %s must have a cluster IP", name)
		case s.Spec.PublishNotReadyAddresses:
			t.Errorf("service %s publishes pods that are not ready", name)
		}
	}
}

// checkAddresses checks that every service target points at a Service of the right pods: dns:/// over a
// headless Service (the clients balance), or in mesh mode a ClusterIP Service (the sidecar balances).
func checkAddresses(t *testing.T, r *rendered, env map[string]map[string]envVar, mesh bool) {
	for component, vars := range needs {
		for _, v := range vars {
			if env[component][v].value == "" {
				t.Errorf("%s: %s is not set", component, v)
			}
		}
	}
	for component, vars := range env {
		for name, v := range vars {
			want, ok := targets[name]
			if !ok {
				continue
			}
			dns, addrs, err := parseTarget(v.value)
			if err != nil {
				t.Errorf("%s: %s=%q: %v", component, name, v.value, err)
				continue
			}
			for _, a := range addrs {
				host, port, _ := net.SplitHostPort(a)
				s := r.services[strings.Split(host, ".")[0]]
				if s == nil {
					t.Errorf("%s: %s=%q: no Service %s", component, name, v.value, host)
					continue
				}
				if d := selected(r, s.Spec.Selector); d == nil || d.Name != want {
					t.Errorf("%s: %s=%q: Service %s does not select the %s pods", component, name, v.value, s.Name, want)
				}
				if !slices.ContainsFunc(s.Spec.Ports, func(p corev1.ServicePort) bool { return strconv.Itoa(int(p.Port)) == port }) {
					t.Errorf("%s: %s=%q: Service %s has no port %s", component, name, v.value, s.Name, port)
				}
				headless := s.Spec.ClusterIP == corev1.ClusterIPNone
				if want != "memory" && want != "agent" {
					continue
				}
				switch {
				case !mesh && (!dns || !headless):
					t.Errorf("%s: %s=%q: want dns:/// over a headless Service, so the client balances over every pod", component, name, v.value)
				case mesh && headless:
					t.Errorf("%s: %s=%q: behind a mesh, use the ClusterIP Service so the sidecar alone balances", component, name, v.value)
				}
			}
		}
	}
}

// parseTarget reads a target as `loom serve` does: "dns:///host:port" or "host:port[,host:port...]".
func parseTarget(s string) (dns bool, addrs []string, err error) {
	if rest, ok := strings.CutPrefix(s, "dns:///"); ok {
		dns, s = true, rest
	} else if strings.Contains(s, "://") {
		return false, nil, fmt.Errorf("only dns:/// or host:port lists")
	}
	for a := range strings.SplitSeq(s, ",") {
		if _, _, err := net.SplitHostPort(strings.TrimSpace(a)); err != nil {
			return false, nil, err
		}
		addrs = append(addrs, strings.TrimSpace(a))
	}
	return dns, addrs, nil
}

func checkDisruption(t *testing.T, r *rendered) {
	for name, d := range r.deployments {
		var hpa *autoscalingv2.HorizontalPodAutoscaler
		for _, h := range r.hpas {
			if ref := h.Spec.ScaleTargetRef; ref.APIVersion == "apps/v1" && ref.Kind == "Deployment" && ref.Name == name {
				if hpa != nil {
					t.Errorf("%s: more than one HorizontalPodAutoscaler", name)
				}
				hpa = h
			}
		}
		minReplicas := int32(1)
		switch {
		case hpa == nil:
			t.Errorf("%s: no HorizontalPodAutoscaler", name)
		case hpa.Spec.MinReplicas == nil || *hpa.Spec.MinReplicas < 2:
			t.Errorf("%s: minReplicas below 2: one replica cannot survive a node drain", name)
		case hpa.Spec.MaxReplicas < *hpa.Spec.MinReplicas:
			t.Errorf("%s: maxReplicas %d below minReplicas %d", name, hpa.Spec.MaxReplicas, *hpa.Spec.MinReplicas)
		case len(hpa.Spec.Metrics) == 0:
			t.Errorf("%s: HorizontalPodAutoscaler has no metrics", name)
		default:
			minReplicas = *hpa.Spec.MinReplicas
			for _, m := range hpa.Spec.Metrics {
				if m.Resource == nil || m.Resource.Target.Type != autoscalingv2.UtilizationMetricType {
					continue
				}
				if _, ok := d.Spec.Template.Spec.Containers[0].Resources.Requests[m.Resource.Name]; !ok {
					t.Errorf("%s: scales on %s utilization without a %s request", name, m.Resource.Name, m.Resource.Name)
				}
			}
		}

		var pdbs []*policyv1.PodDisruptionBudget
		for _, p := range r.pdbs {
			if p.Spec.Selector != nil && len(p.Spec.Selector.MatchExpressions) == 0 && selected(r, p.Spec.Selector.MatchLabels) == d {
				pdbs = append(pdbs, p)
			}
		}
		if len(pdbs) != 1 {
			t.Errorf("%s: %d PodDisruptionBudgets select its pods, want 1", name, len(pdbs))
			continue
		}
		p := pdbs[0].Spec
		switch {
		case p.MaxUnavailable != nil:
			if n, err := intstr.GetScaledValueFromIntOrPercent(p.MaxUnavailable, int(minReplicas), true); err != nil || n < 1 {
				t.Errorf("%s: maxUnavailable %s allows no disruption", name, p.MaxUnavailable.String())
			}
		case p.MinAvailable != nil:
			if n, err := intstr.GetScaledValueFromIntOrPercent(p.MinAvailable, int(minReplicas), true); err != nil || n >= int(minReplicas) {
				t.Errorf("%s: minAvailable %s blocks every eviction at %d replicas", name, p.MinAvailable.String(), minReplicas)
			}
		default:
			t.Errorf("%s: PodDisruptionBudget sets neither maxUnavailable nor minAvailable", name)
		}
	}
	for _, h := range r.hpas {
		if r.deployments[h.Spec.ScaleTargetRef.Name] == nil {
			t.Errorf("HorizontalPodAutoscaler %s scales no Deployment of the manifests", h.Name)
		}
	}
	for _, p := range r.pdbs {
		if p.Spec.Selector == nil || selected(r, p.Spec.Selector.MatchLabels) == nil {
			t.Errorf("PodDisruptionBudget %s selects no one Deployment's pods", p.Name)
		}
	}
}

// peer is the source of a connection in the network-policy checks.
type peer struct {
	name      string
	labels    map[string]string
	namespace string     // "" with external
	external  bool       // outside the cluster
	ip        netip.Addr // for ipBlock rules
}

func checkNetworkPolicies(t *testing.T, r *rendered) {
	gateway, ok := r.deployments["gateway"]
	if !ok {
		t.Fatal("no gateway Deployment")
	}
	ns := gateway.Namespace
	outsider := peer{name: "the internet", external: true, ip: netip.MustParseAddr("203.0.113.7")}
	stranger := peer{name: "another pod in the namespace", labels: map[string]string{"app": "other"}, namespace: ns, ip: netip.MustParseAddr("10.0.0.7")}
	for name, d := range r.deployments {
		if len(isolating(r, d)) == 0 {
			t.Errorf("%s: no NetworkPolicy isolates its pods for ingress", name)
			continue
		}
		c := d.Spec.Template.Spec.Containers[0]
		port := c.Ports[0]
		if name == "gateway" {
			if !allowed(r, d, port, outsider) {
				t.Errorf("gateway: not reachable from outside the cluster")
			}
			continue
		}
		for _, p := range []peer{outsider, stranger} {
			if allowed(r, d, port, p) {
				t.Errorf("%s: reachable from %s", name, p.name)
			}
		}
		for other, od := range r.deployments {
			from := peer{labels: od.Spec.Template.Labels, namespace: ns, ip: netip.MustParseAddr("10.0.0.8")}
			want := slices.Contains(callers[name], other)
			if got := allowed(r, d, port, from); got != want {
				t.Errorf("%s: reachable from %s: %t, want %t", name, other, got, want)
			}
			// The same pod labels in another namespace are someone else's pods.
			from.namespace = "elsewhere"
			if allowed(r, d, port, from) {
				t.Errorf("%s: reachable from %s pods of another namespace", name, other)
			}
		}
	}
}

// isolating returns the policies that select d's pods for ingress.
func isolating(r *rendered, d *appsv1.Deployment) []*networkingv1.NetworkPolicy {
	var out []*networkingv1.NetworkPolicy
	for _, p := range r.policies {
		ingress := len(p.Spec.PolicyTypes) == 0 || slices.Contains(p.Spec.PolicyTypes, networkingv1.PolicyTypeIngress)
		sel, err := metav1.LabelSelectorAsSelector(&p.Spec.PodSelector)
		if ingress && err == nil && p.Namespace == d.Namespace && sel.Matches(labels.Set(d.Spec.Template.Labels)) {
			out = append(out, p)
		}
	}
	return out
}

// allowed evaluates the network policies as the API defines them: a pod selected by no ingress policy takes
// everything; otherwise a connection needs one rule that admits both its source and its port.
func allowed(r *rendered, d *appsv1.Deployment, port corev1.ContainerPort, from peer) bool {
	policies := isolating(r, d)
	if len(policies) == 0 {
		return true
	}
	for _, p := range policies {
		for _, rule := range p.Spec.Ingress {
			if portAdmitted(rule.Ports, port) && peerAdmitted(rule.From, p.Namespace, from) {
				return true
			}
		}
	}
	return false
}

func portAdmitted(ports []networkingv1.NetworkPolicyPort, port corev1.ContainerPort) bool {
	if len(ports) == 0 {
		return true
	}
	for _, p := range ports {
		if p.Protocol != nil && *p.Protocol != port.Protocol && !(*p.Protocol == corev1.ProtocolTCP && port.Protocol == "") {
			continue
		}
		switch {
		case p.Port == nil:
			return true
		case p.Port.Type == intstr.String && p.Port.StrVal == port.Name:
			return true
		case p.Port.Type == intstr.Int && p.EndPort == nil && p.Port.IntVal == port.ContainerPort:
			return true
		case p.Port.Type == intstr.Int && p.EndPort != nil && p.Port.IntVal <= port.ContainerPort && port.ContainerPort <= *p.EndPort:
			return true
		}
	}
	return false
}

func peerAdmitted(peers []networkingv1.NetworkPolicyPeer, policyNamespace string, from peer) bool {
	if len(peers) == 0 {
		return true
	}
	nsLabels := labels.Set{"kubernetes.io/metadata.name": from.namespace}
	for _, p := range peers {
		if p.IPBlock != nil {
			if ipBlockAdmits(p.IPBlock, from.ip) {
				return true
			}
			continue
		}
		if from.external {
			continue
		}
		nsOK := from.namespace == policyNamespace
		if p.NamespaceSelector != nil {
			sel, err := metav1.LabelSelectorAsSelector(p.NamespaceSelector)
			nsOK = err == nil && sel.Matches(nsLabels)
		}
		podOK := true
		if p.PodSelector != nil {
			sel, err := metav1.LabelSelectorAsSelector(p.PodSelector)
			podOK = err == nil && sel.Matches(labels.Set(from.labels))
		}
		if nsOK && podOK {
			return true
		}
	}
	return false
}

func ipBlockAdmits(b *networkingv1.IPBlock, ip netip.Addr) bool {
	in := func(cidr string) bool {
		p, err := netip.ParsePrefix(cidr)
		return err == nil && p.Contains(ip)
	}
	return in(b.CIDR) && !slices.ContainsFunc(b.Except, in)
}

var (
	// secretName matches variable names that hold credentials, besides those `loom serve --help` lists as
	// secrets. LOOM_TLS_KEY is a file path, not a key, and does not match.
	secretName = regexp.MustCompile(`PASSWORD|SECRET|TOKEN|API_KEY|MASTER_KEY`)
	// secretLike matches values that look like keys: long base64 or hex runs, PEM blocks.
	secretLike = regexp.MustCompile(`^[A-Za-z0-9+/_=-]{32,}$|-----BEGIN`)
)

// looksSecret reports why a value written in the manifests looks like a credential, or "".
func looksSecret(v string) string {
	if u, err := url.Parse(v); err == nil && u.User != nil {
		if _, ok := u.User.Password(); ok {
			return "a URL with a password"
		}
	}
	mixed := strings.ContainsAny(v, "0123456789") && strings.ContainsAny(v, "ABCDEFGHIJKLMNOPQRSTUVWXYZ") &&
		strings.ContainsAny(v, "abcdefghijklmnopqrstuvwxyz")
	if secretLike.MatchString(v) && (mixed || strings.Contains(v, "-----BEGIN")) {
		return "a key"
	}
	return ""
}

func checkEnv(t *testing.T, r *rendered, env map[string]map[string]envVar, help serveHelp, readme string) {
	for component, vars := range env {
		for name, v := range vars {
			if strings.HasPrefix(name, "LOOM_") && !help.env[name] {
				t.Errorf("%s: %s (%s) is not read by loom serve", component, name, v.source)
			}
			if v.secret == nil && (help.secrets[name] || secretName.MatchString(name) || name == "LOOM_DATABASE_URL") {
				t.Errorf("%s: %s comes from %s; credentials come from a Secret through secretKeyRef", component, name, v.source)
			}
			if why := looksSecret(v.value); v.literal && why != "" {
				t.Errorf("%s: %s (%s) holds what looks like %s", component, name, v.source, why)
			}
			if v.secret != nil && (!strings.Contains(readme, "create secret generic "+v.secret.Name) || !strings.Contains(readme, v.secret.Key+"=")) {
				t.Errorf("%s: %s: README.md does not say how to create Secret %s with key %s", component, name, v.secret.Name, v.secret.Key)
			}
		}
		// Every process opens the auth database and signs or checks service tokens with the shared key.
		for _, name := range []string{"LOOM_DATABASE_URL", "LOOM_SERVICE_TOKEN_KEY"} {
			if v, ok := vars[name]; !ok || v.secret == nil || (v.secret.Optional != nil && *v.secret.Optional) {
				t.Errorf("%s: %s must come from a required secretKeyRef", component, name)
			}
		}
		if got := vars["LOOM_AUTH"].value; got != "required" {
			t.Errorf("%s: LOOM_AUTH=%q, want required", component, got)
		}
	}
	// ConfigMaps nobody mounts can still be read by anyone who reads the namespace.
	for _, cm := range r.configMaps {
		for k, v := range cm.Data {
			if why := looksSecret(v); why != "" {
				t.Errorf("ConfigMap %s: %s holds what looks like %s", cm.Name, k, why)
			}
		}
		if len(cm.BinaryData) != 0 {
			t.Errorf("ConfigMap %s: binaryData is not checked; do not use it", cm.Name)
		}
	}
}

// selected returns the one Deployment whose pods the selector matches, or nil.
func selected(r *rendered, selector map[string]string) *appsv1.Deployment {
	if len(selector) == 0 {
		return nil
	}
	var found *appsv1.Deployment
	for _, d := range r.deployments {
		if labels.SelectorFromSet(selector).Matches(labels.Set(d.Spec.Template.Labels)) {
			if found != nil {
				return nil
			}
			found = d
		}
	}
	return found
}

// containerPort resolves a Service's targetPort against the container, by name or number.
func containerPort(c corev1.Container, target intstr.IntOrString) *corev1.ContainerPort {
	for i, p := range c.Ports {
		if (target.Type == intstr.String && target.StrVal == p.Name) || (target.Type == intstr.Int && target.IntVal == p.ContainerPort) {
			return &c.Ports[i]
		}
	}
	return nil
}

// effective returns the container's setting if set, else the pod's: the container's wins.
func effective[T any](container, pod *T) *T {
	if container != nil {
		return container
	}
	return pod
}
