package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/loom-dev/loom/internal/rpcserver"
	"github.com/loom-dev/loom/internal/secret"
	"github.com/loom-dev/loom/internal/sqldb"
	"github.com/loom-dev/loom/internal/telemetry"
	"github.com/loom-dev/loom/memory"
	"github.com/loom-dev/loom/orchestrator/engine"
)

// allServices are the services `loom serve` can run, in start order.
var allServices = []string{"memory", "agent", "orchestrator", "admin"}

// optionalServices run only when asked for by name.
var optionalServices = []string{"gateway"}

// config is the effective configuration of `loom serve`: flags override environment variables, which override
// the defaults. Secrets come only from the environment or from files (VAR_FILE), never from flags, which other
// users can read from the process list.
type config struct {
	Listen          string
	DataDir         string
	Services        []string
	DatabaseURL     string
	DatabaseMaxConn int
	DatabaseReadURL string
	ReadMaxLag      time.Duration
	MemoryAddr      string
	AgentAddr       string
	TLSCert         string
	TLSKey          string
	TLSClientCA     string
	TLSCA           string
	TLSClientCert   string
	TLSClientKey    string
	CORSOrigins     []string
	Reflection      bool
	MCP             bool
	// MCPStdioAllow maps the names of stdio MCP servers tenants may register to absolute binary paths
	// (--mcp-stdio-allow).
	MCPStdioAllow   map[string]string
	MaxMessageBytes int
	DefaultTimeout  time.Duration
	MaxTimeout      time.Duration
	ShutdownGrace   time.Duration
	MaxStreams      int
	MaxInFlight     int
	RateLimit       float64
	RateBurst       int
	Auth            string
	OIDCIssuer      string
	OIDCAudience    string
	OIDCJWKSURL     string
	OIDCJWKSFile    string
	GatewayTargets  map[string]string
	RescueAfter     time.Duration
	RunLease        time.Duration // orchestrator run lease (--orchestrator-lease)
	GeminiBaseURL   string
	// PriceTable is the price table file (--price-table) and Prices the per-model overrides (--prices).
	PriceTable    string
	Prices        string
	OpenAIBaseURL string
	LogLevel      slog.Level
	LogFormat     string
	LogRPCSample  float64       // fraction of successful RPCs logged at info (--log-rpc-sample)
	LogSlow       time.Duration // RPCs at least this long are logged at warn (--log-slow)
	DebugListen   string        // pprof listener address, empty for none (--debug-listen)
	// MetricsTenantLabels adds a tenant label to the per-tenant metrics (--metrics-tenant-labels).
	MetricsTenantLabels bool
	// RunEventRetention is how long the orchestrator keeps run events; 0 keeps them forever (--run-event-retention).
	RunEventRetention time.Duration
	// OTel holds the OTEL_* variables tracing is configured by (see telemetry.Setup); obs is what serve builds
	// from them, not a flag.
	OTel telemetry.EnvValues
	obs  observability

	// Fairness bounds each tenant's and principal's unary calls and streams in progress (see --tenant-max-*).
	Fairness rpcserver.FairnessLimits
	// MemoryQuota bounds what each tenant keeps in the memory store (0 in a field means no limit).
	MemoryQuota memory.Quota

	Secrets secrets
}

// secrets are the process's credentials. Each is a secret.String, which masks itself whenever the config is
// printed or logged.
type secrets struct {
	GeminiAPIKey     secret.String
	OpenAIAPIKey     secret.String
	ElevenLabsAPIKey secret.String
	TavusAPIKey      secret.String
	// MasterKey (base64 of 32 bytes) encrypts tenants' provider keys at rest; MasterKeyPrevious lists earlier
	// master keys (comma-separated) that still open older values.
	MasterKey, MasterKeyPrevious secret.String
	// ServiceTokenKey signs and verifies service-to-service tokens: a base64 Ed25519 seed, or (from the file
	// variable) a PEM private key.
	ServiceTokenKey secret.String
}

// secretVars lists each secret's environment variable; VAR_FILE names a file holding it instead.
var secretVars = []struct {
	env string
	dst func(*secrets) *string
}{
	{"LOOM_GEMINI_API_KEY", func(s *secrets) *string { return (*string)(&s.GeminiAPIKey) }},
	{"LOOM_OPENAI_API_KEY", func(s *secrets) *string { return (*string)(&s.OpenAIAPIKey) }},
	{"LOOM_ELEVENLABS_API_KEY", func(s *secrets) *string { return (*string)(&s.ElevenLabsAPIKey) }},
	{"LOOM_TAVUS_API_KEY", func(s *secrets) *string { return (*string)(&s.TavusAPIKey) }},
	{"LOOM_SERVICE_TOKEN_KEY", func(s *secrets) *string { return (*string)(&s.ServiceTokenKey) }},
	{"LOOM_MASTER_KEY", func(s *secrets) *string { return (*string)(&s.MasterKey) }},
	{"LOOM_MASTER_KEY_PREVIOUS", func(s *secrets) *string { return (*string)(&s.MasterKeyPrevious) }},
}

// flagSpec is one flag with the environment variable that backs it.
type flagSpec struct {
	name, env, def, usage string
}

var serveFlags = []flagSpec{
	{"listen", "LOOM_LISTEN", ":8080", "address to serve Connect, gRPC and gRPC-Web on; under --auth local, when not set, 127.0.0.1:8080 (loopback only)"},
	{"data-dir", "LOOM_DATA_DIR", "./loom-data", "directory for embedded data (SQLite, the embedded vector store)"},
	{"services", "LOOM_SERVICES", strings.Join(allServices, ","), "comma-separated services to run: memory, agent, orchestrator, admin; or gateway alone"},
	{"database-url", "LOOM_DATABASE_URL", "", "PostgreSQL URL (postgres://...); empty uses SQLite and the embedded vector store in --data-dir. Each component keeps its tables in a schema of its own (loom_memory, loom_agent, loom_orchestrator, loom_admin); ?loom_schema_prefix=NAME replaces \"loom\""},
	{"database-max-conns", "LOOM_DATABASE_MAX_CONNS", "16", "Postgres: size of the one connection pool shared by every service of the process"},
	{"database-read-url", "LOOM_DATABASE_READ_URL", "", "Postgres: a streaming replica of --database-url; memory Search, Get and List and the reads of WatchRun and ListRuns go to it while it is up, within --database-read-max-lag, and has replayed the caller's own writes; otherwise they go to the primary"},
	{"database-read-max-lag", "LOOM_DATABASE_READ_MAX_LAG", "5s", "Postgres: how far the read replica may lag the primary before reads leave it"},
	{"memory-addr", "LOOM_MEMORY_ADDR", "", "memory service target for other services: dns:///host:port or host1:port,host2:port; empty calls this process"},
	{"agent-addr", "LOOM_AGENT_ADDR", "", "agent service target for the orchestrator; empty calls this process"},
	{"tls-cert", "LOOM_TLS_CERT", "", "TLS certificate file (PEM); with --tls-key enables TLS, otherwise h2c"},
	{"tls-key", "LOOM_TLS_KEY", "", "TLS private key file (PEM)"},
	{"tls-client-ca", "LOOM_TLS_CLIENT_CA", "", "mutual TLS: CA certificate (PEM) that signs the certificates of the other Loom services; with it, service-to-service calls are accepted only from a client certificate it verifies (needs --tls-cert)"},
	{"tls-ca", "LOOM_TLS_CA", "", "CA certificates (PEM) trusted when calling other Loom services over TLS; empty trusts --tls-cert itself (all-in-one) or, with --tls-client-cert, the system roots"},
	{"tls-client-cert", "LOOM_TLS_CLIENT_CERT", "", "mutual TLS: certificate (PEM) presented when calling other Loom services; with it those calls use TLS"},
	{"tls-client-key", "LOOM_TLS_CLIENT_KEY", "", "mutual TLS: private key (PEM) of --tls-client-cert"},
	{"cors-origins", "LOOM_CORS_ORIGINS", "*", "comma-separated origins allowed to call from browsers; empty disables CORS. Under --auth local on a non-loopback address, when not set, CORS is off"},
	{"reflection", "LOOM_REFLECTION", "true", "serve gRPC reflection (v1 and v1alpha)"},
	{"mcp", "LOOM_MCP", "true", "serve memory search and save, agent runs and workflow runs as MCP tools at /mcp (streamable HTTP, under the caller's own credentials)"},
	{"max-message-bytes", "LOOM_MAX_MESSAGE_BYTES", "4194304", "largest request or response message, after decompression"},
	{"default-timeout", "LOOM_DEFAULT_TIMEOUT", "30s", "deadline of unary calls that carry none"},
	{"max-timeout", "LOOM_MAX_TIMEOUT", "1h", "cap on every call's deadline (streams included)"},
	{"shutdown-grace", "LOOM_SHUTDOWN_GRACE", "20s", "time in-flight calls get to finish on SIGTERM/SIGINT"},
	{"max-concurrent-streams", "LOOM_MAX_CONCURRENT_STREAMS", "250", "HTTP/2 streams per connection"},
	{"max-in-flight", "LOOM_MAX_IN_FLIGHT", "1024", "calls in progress at once; more are refused with ResourceExhausted instead of queueing"},
	{"rate-limit", "LOOM_RATE_LIMIT", "0", "calls per second each principal may make (token bucket); 0 disables"},
	{"rate-burst", "LOOM_RATE_BURST", "0", "token bucket size for --rate-limit; 0 means the rate"},
	{"tenant-max-in-flight", "LOOM_TENANT_MAX_IN_FLIGHT", "256", "unary calls one tenant may have in progress at once, apart from --max-in-flight; more are refused with ResourceExhausted; 0 disables"},
	{"tenant-max-streams", "LOOM_TENANT_MAX_STREAMS", "256", "streams (WatchRun, SynthesizeSpeech...) one tenant may have open at once; 0 disables"},
	{"principal-max-in-flight", "LOOM_PRINCIPAL_MAX_IN_FLIGHT", "128", "unary calls one principal (a user or API key) may have in progress at once; 0 disables"},
	{"principal-max-streams", "LOOM_PRINCIPAL_MAX_STREAMS", "128", "streams one principal may have open at once; 0 disables"},
	{"memory-max-namespaces", "LOOM_MEMORY_MAX_NAMESPACES", "1000", "memory: namespaces per tenant; 0 means no limit"},
	{"memory-max-records", "LOOM_MEMORY_MAX_RECORDS", "2000000", "memory: records per tenant, over all its namespaces; 0 means no limit"},
	{"memory-max-bytes", "LOOM_MEMORY_MAX_BYTES", "2147483648", "memory: record bytes (id, text, 4 per vector element, metadata) per tenant; 0 means no limit"},
	{"auth", "LOOM_AUTH", "local", "local (development: calls without credentials act as tenant \"local\") or required"},
	{"oidc-issuer", "LOOM_OIDC_ISSUER", "", "OIDC issuer whose JWT bearer tokens are accepted; empty disables OIDC"},
	{"oidc-audience", "LOOM_OIDC_AUDIENCE", "", "audience OIDC tokens must carry"},
	{"oidc-jwks-url", "LOOM_OIDC_JWKS_URL", "", "URL of the issuer's JWKS; empty: found through the issuer's OIDC discovery document"},
	{"oidc-jwks-file", "LOOM_OIDC_JWKS_FILE", "", "file holding the issuer's JWKS (instead of a URL)"},
	{"gateway-memory", "LOOM_GATEWAY_MEMORY", "", "gateway: memory backends (host:port list or dns:///host:port)"},
	{"gateway-agent", "LOOM_GATEWAY_AGENT", "", "gateway: agent backends"},
	{"gateway-orchestrator", "LOOM_GATEWAY_ORCHESTRATOR", "", "gateway: orchestrator backends"},
	{"gateway-admin", "LOOM_GATEWAY_ADMIN", "", "gateway: admin backends"},
	{"gemini-base-url", "LOOM_GEMINI_BASE_URL", "", "Gemini API base URL; empty uses Google's"},
	{"openai-base-url", "LOOM_OPENAI_BASE_URL", "", "OpenAI-compatible base URL (OpenAI, Ollama, vLLM, llama.cpp), e.g. http://localhost:11434/v1"},
	{"price-table", "LOOM_PRICE_TABLE", "", "agent: price table file (YAML or JSON, see README) the cost of model calls is computed with; empty prices the sim at zero and every other model as unknown"},
	{"mcp-stdio-allow", "LOOM_MCP_STDIO_ALLOW", "", "agent: comma-separated name=/absolute/path of the stdio MCP servers tenants may register (McpServer.stdio_command); each runs with an empty environment; no other command ever runs; empty allows none"},
	{"prices", "LOOM_PRICES", "", "agent: model prices added to the price table, per million tokens: provider/model=input:output[:cached],... e.g. gemini/gemini-2.5-flash=0.30:2.50:0.075"},
	{"rescue-after", "LOOM_RESCUE_AFTER", "1m", "deprecated and ignored: the orchestrator's run lease decides failover (see --orchestrator-lease)"},
	{"orchestrator-lease", "LOOM_ORCHESTRATOR_LEASE", "3s", "orchestrator: a replica owns each run it executes under a lease it renews every third of this; after a crash another replica resumes the run once the lease lapses (a slow step on a live replica is never taken over)"},
	{"run-event-retention", "LOOM_RUN_EVENT_RETENTION", "0", "orchestrator: how long run events (what WatchRun replays) are kept, e.g. 720h; 0 keeps them forever. Events of unfinished runs are never removed. Postgres drops whole daily partitions, SQLite deletes in batches; at least 1h"},
	{"log-level", "LOOM_LOG_LEVEL", "info", "debug, info, warn or error"},
	{"log-format", "LOOM_LOG_FORMAT", "text", "text or json"},
	{"log-rpc-sample", "LOOM_LOG_RPC_SAMPLE", "0", "fraction (0 to 1) of successful RPCs logged at info; the rest are logged at debug. Failed and slow RPCs are always logged"},
	{"log-slow", "LOOM_LOG_SLOW", "1s", "unary RPCs taking at least this long are logged at warn, whatever their outcome"},
	{"metrics-tenant-labels", "LOOM_METRICS_TENANT_LABELS", "false", "add a tenant label to per-tenant metrics (loom_model_tokens_total); off by default, since every tenant is then a series of its own"},
	{"debug-listen", "LOOM_DEBUG_LISTEN", "", "address of a separate listener serving pprof under /debug/pprof/ (never the public port); a port alone (6060 or :6060) listens on loopback; empty disables it"},
}

// flagKinds gives the type of the serve flags whose default does not tell it (see flagKind).
var flagKinds = map[string]string{"rate-limit": "float", "log-rpc-sample": "float", "run-event-retention": "duration"}

// flagKind is the type a serve flag takes: bool, int, float, duration or string, from flagKinds or else from
// its default value.
func flagKind(f flagSpec) string {
	if k, ok := flagKinds[f.name]; ok {
		return k
	}
	switch {
	case f.def == "true" || f.def == "false":
		return "bool"
	case f.def != "" && strings.Trim(f.def, "0123456789") == "":
		return "int"
	}
	if _, err := time.ParseDuration(f.def); err == nil && f.def != "0" {
		return "duration"
	}
	return "string"
}

// specValue is a serve flag's value: checked against its kind when set, kept as the string the rest of
// parseServe reads, so flags and environment variables go through the same conversion.
type specValue struct {
	kind string
	s    *string
}

func (v specValue) String() string {
	if v.s == nil {
		return ""
	}
	return *v.s
}

func (v specValue) Set(s string) error {
	var err error
	switch v.kind {
	case "bool":
		if s != "true" && s != "false" && s != "1" && s != "0" && s != "yes" && s != "no" {
			err = errors.New("want true or false")
		}
	case "int":
		_, err = strconv.Atoi(s)
	case "float":
		_, err = strconv.ParseFloat(s, 64)
	case "duration":
		_, err = time.ParseDuration(s)
	}
	if err != nil {
		return err
	}
	*v.s = s
	return nil
}

// IsBoolFlag lets a bool flag stand alone: --reflection means --reflection=true.
func (v specValue) IsBoolFlag() bool { return v.kind == "bool" }

// printServeUsage writes the help of `loom serve`: every flag with its type, environment variable and default.
func printServeUsage(w io.Writer) {
	fmt.Fprintf(w, "Usage: loom serve [flags]\n\nRuns Loom's services on one port. Precedence: flags > environment > defaults.\n\nFlags:\n")
	for _, f := range serveFlags {
		kind := flagKind(f)
		arg := " " + kind
		if kind == "bool" {
			arg = "[=" + kind + "]"
		}
		def := ""
		if f.def != "" {
			def = fmt.Sprintf(" (default %q)", f.def)
		}
		fmt.Fprintf(w, "  --%s%s\n    \t%s (env %s)%s\n", f.name, arg, f.usage, f.env, def)
	}
	fmt.Fprintf(w, "\nSecrets (environment only; VAR_FILE reads the value from a file):\n")
	for _, s := range secretVars {
		fmt.Fprintf(w, "  %s, %s_FILE\n", s.env, s.env)
	}
}

// parseServe parses `loom serve` arguments with getenv as the environment. --help writes the usage to out and
// returns flag.ErrHelp; a bad flag writes the error and the usage to out.
func parseServe(args []string, getenv func(string) string, out io.Writer) (config, error) {
	fs := flag.NewFlagSet("loom serve", flag.ContinueOnError)
	fs.SetOutput(out)
	vals := make(map[string]*string, len(serveFlags))
	for _, f := range serveFlags {
		v := f.def
		vals[f.name] = &v
		fs.Var(specValue{kind: flagKind(f), s: &v}, f.name, f.usage)
	}
	fs.Usage = func() { printServeUsage(out) }
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return config{}, err
		}
		// The flag package names flags with one dash; the help and the docs use two.
		return config{}, errors.New(strings.Replace(err.Error(), " flag -", " flag --", 1))
	}
	if fs.NArg() > 0 {
		return config{}, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	for _, f := range serveFlags {
		if v, ok := lookupEnv(getenv, f.env); ok && !set[f.name] {
			*vals[f.name] = v
			set[f.name] = true
		}
	}

	var c config
	var errs []error
	get := func(name string) string { return *vals[name] }
	dur := func(name string) time.Duration {
		d, err := time.ParseDuration(get(name))
		if err != nil || d <= 0 {
			errs = append(errs, fmt.Errorf("--%s: want a positive duration such as 30s, got %q", name, get(name)))
		}
		return d
	}
	num := func(name string) int {
		var n int
		if _, err := fmt.Sscan(get(name), &n); err != nil || n <= 0 {
			errs = append(errs, fmt.Errorf("--%s: want a positive integer, got %q", name, get(name)))
		}
		return n
	}
	boolean := func(name string) bool {
		switch get(name) {
		case "true", "1", "yes":
			return true
		case "false", "0", "no":
		default:
			errs = append(errs, fmt.Errorf("--%s: want true or false, got %q", name, get(name)))
		}
		return false
	}
	c.Listen = get("listen")
	c.DataDir = get("data-dir")
	c.Services = splitList(get("services"))
	c.DatabaseURL = get("database-url")
	c.DatabaseMaxConn = num("database-max-conns")
	c.DatabaseReadURL = get("database-read-url")
	c.ReadMaxLag = dur("database-read-max-lag")
	c.MemoryAddr = get("memory-addr")
	c.AgentAddr = get("agent-addr")
	c.TLSCert, c.TLSKey = get("tls-cert"), get("tls-key")
	c.TLSClientCA, c.TLSCA = get("tls-client-ca"), get("tls-ca")
	c.TLSClientCert, c.TLSClientKey = get("tls-client-cert"), get("tls-client-key")
	c.CORSOrigins = splitList(get("cors-origins"))
	c.Reflection = boolean("reflection")
	c.MCP = boolean("mcp")
	c.MaxMessageBytes = num("max-message-bytes")
	c.DefaultTimeout = dur("default-timeout")
	c.MaxTimeout = dur("max-timeout")
	c.ShutdownGrace = dur("shutdown-grace")
	c.RescueAfter = dur("rescue-after")
	c.RunLease = dur("orchestrator-lease")
	if d, err := time.ParseDuration(get("run-event-retention")); err != nil || (d != 0 && d < engine.MinEventRetention) {
		errs = append(errs, fmt.Errorf("--run-event-retention: want 0 (keep forever) or a duration of at least %s such as 720h, got %q", engine.MinEventRetention, get("run-event-retention")))
	} else {
		c.RunEventRetention = d
	}
	c.MaxStreams = num("max-concurrent-streams")
	c.MaxInFlight = num("max-in-flight")
	if _, err := fmt.Sscan(get("rate-limit"), &c.RateLimit); err != nil || c.RateLimit < 0 || c.RateLimit != c.RateLimit {
		errs = append(errs, fmt.Errorf("--rate-limit: want a number >= 0, got %q", get("rate-limit")))
	}
	if _, err := fmt.Sscan(get("rate-burst"), &c.RateBurst); err != nil || c.RateBurst < 0 {
		errs = append(errs, fmt.Errorf("--rate-burst: want an integer >= 0, got %q", get("rate-burst")))
	}
	count := func(name string) int64 {
		var n int64
		if _, err := fmt.Sscan(get(name), &n); err != nil || n < 0 {
			errs = append(errs, fmt.Errorf("--%s: want an integer >= 0, got %q", name, get(name)))
		}
		return n
	}
	// In rpcserver a zero limit takes the default and a negative one disables it; on the command line 0 disables.
	limit := func(name string) int {
		if n := int(count(name)); n > 0 {
			return n
		}
		return -1
	}
	c.Fairness = rpcserver.FairnessLimits{
		TenantMaxInFlight: limit("tenant-max-in-flight"), TenantMaxStreams: limit("tenant-max-streams"),
		PrincipalMaxInFlight: limit("principal-max-in-flight"), PrincipalMaxStreams: limit("principal-max-streams"),
	}
	c.MemoryQuota = memory.Quota{Namespaces: count("memory-max-namespaces"), Records: count("memory-max-records"), Bytes: count("memory-max-bytes")}
	if err := c.LogLevel.UnmarshalText([]byte(get("log-level"))); err != nil {
		errs = append(errs, fmt.Errorf("--log-level: %w", err))
	}
	c.LogFormat = get("log-format")
	if _, err := fmt.Sscan(get("log-rpc-sample"), &c.LogRPCSample); err != nil || !(c.LogRPCSample >= 0 && c.LogRPCSample <= 1) {
		errs = append(errs, fmt.Errorf("--log-rpc-sample: want a number from 0 to 1, got %q", get("log-rpc-sample")))
	}
	c.LogSlow = dur("log-slow")
	c.DebugListen = telemetry.DebugAddr(get("debug-listen"))
	c.MetricsTenantLabels = boolean("metrics-tenant-labels")
	c.OTel = telemetry.Env(getenv)
	c.Auth = get("auth")
	if c.Auth == "local" {
		// Every caller is admin in local mode: only this machine may call unless an address is given, and then no
		// web page of another origin may call on a visitor's behalf unless origins are given too.
		if !set["listen"] {
			c.Listen = "127.0.0.1:8080"
		}
		if !set["cors-origins"] && !isLoopback(c.Listen) {
			c.CORSOrigins = nil
		}
	}
	c.GeminiBaseURL, c.OpenAIBaseURL = get("gemini-base-url"), get("openai-base-url")
	c.PriceTable, c.Prices = get("price-table"), get("prices")
	for _, item := range splitList(get("mcp-stdio-allow")) {
		name, path, ok := strings.Cut(item, "=")
		if !ok || name == "" || path == "" { // the agent's Config.Validate checks the name and that the path is absolute
			errs = append(errs, fmt.Errorf("--mcp-stdio-allow: want name=/absolute/path, got %q", item))
			continue
		}
		if c.MCPStdioAllow == nil {
			c.MCPStdioAllow = map[string]string{}
		}
		c.MCPStdioAllow[name] = path
	}
	c.OIDCIssuer, c.OIDCAudience = get("oidc-issuer"), get("oidc-audience")
	c.OIDCJWKSURL, c.OIDCJWKSFile = get("oidc-jwks-url"), get("oidc-jwks-file")
	c.GatewayTargets = map[string]string{
		"memory": get("gateway-memory"), "agent": get("gateway-agent"),
		"orchestrator": get("gateway-orchestrator"), "admin": get("gateway-admin"),
	}

	for _, s := range secretVars {
		v, err := readSecret(getenv, s.env)
		if err != nil {
			errs = append(errs, err)
		}
		*s.dst(&c.Secrets) = v
	}
	if err := errors.Join(errs...); err != nil {
		return config{}, err
	}
	return c, c.Validate()
}

// Validate checks the configuration as a whole.
func (c config) Validate() error {
	var errs []error
	if len(c.Services) == 0 {
		errs = append(errs, errors.New("--services: at least one service is needed"))
	}
	for _, s := range c.Services {
		if !slices.Contains(allServices, s) && !slices.Contains(optionalServices, s) {
			errs = append(errs, fmt.Errorf("--services: unknown service %q (want %s)", s, strings.Join(append(allServices, optionalServices...), ", ")))
		}
	}
	if c.runs("gateway") && len(c.Services) > 1 {
		errs = append(errs, errors.New("--services: the gateway runs alone"))
	}
	if c.Auth != "local" && c.Auth != "required" {
		errs = append(errs, fmt.Errorf("--auth: want local or required, got %q", c.Auth))
	}
	if c.OIDCIssuer != "" && (c.OIDCAudience == "" || (c.OIDCJWKSURL != "" && c.OIDCJWKSFile != "")) {
		errs = append(errs, errors.New("--oidc-issuer needs --oidc-audience and at most one of --oidc-jwks-url, --oidc-jwks-file (neither: discovered from the issuer)"))
	}
	if (c.TLSCert == "") != (c.TLSKey == "") {
		errs = append(errs, errors.New("--tls-cert and --tls-key go together"))
	}
	if (c.TLSClientCert == "") != (c.TLSClientKey == "") {
		errs = append(errs, errors.New("--tls-client-cert and --tls-client-key go together"))
	}
	if c.TLSClientCA != "" && c.TLSCert == "" {
		errs = append(errs, errors.New("--tls-client-ca needs --tls-cert and --tls-key: client certificates are checked in the TLS handshake"))
	}
	if c.DefaultTimeout > c.MaxTimeout {
		errs = append(errs, errors.New("--default-timeout exceeds --max-timeout"))
	}
	if c.LogFormat != "text" && c.LogFormat != "json" {
		errs = append(errs, fmt.Errorf("--log-format: want text or json, got %q", c.LogFormat))
	}
	if c.DatabaseURL != "" && !sqldb.IsPostgres(c.DatabaseURL) {
		errs = append(errs, errors.New("--database-url: want a postgres:// URL"))
	}
	if c.DatabaseReadURL != "" && (c.DatabaseURL == "" || !sqldb.IsPostgres(c.DatabaseReadURL)) {
		errs = append(errs, errors.New("--database-read-url: want a postgres:// URL of a replica of --database-url, which must be set"))
	}
	return errors.Join(errs...)
}

// runs reports whether service is among those configured.
func (c config) runs(service string) bool { return slices.Contains(c.Services, service) }

// LogValue prints the effective configuration with secrets and database passwords masked.
func (c config) LogValue() slog.Value {
	return slog.GroupValue(
		slog.String("listen", c.Listen),
		slog.String("data_dir", c.DataDir),
		slog.String("services", strings.Join(c.Services, ",")),
		slog.String("database_url", maskURL(c.DatabaseURL)),
		slog.Int("database_max_conns", c.DatabaseMaxConn),
		slog.String("database_read_url", maskURL(c.DatabaseReadURL)),
		slog.Duration("database_read_max_lag", c.ReadMaxLag),
		slog.String("memory_addr", c.MemoryAddr),
		slog.String("agent_addr", c.AgentAddr),
		slog.Bool("tls", c.TLSCert != ""),
		slog.Bool("mtls", c.TLSClientCA != ""),
		slog.Bool("tls_client_cert", c.TLSClientCert != ""),
		slog.String("cors_origins", strings.Join(c.CORSOrigins, ",")),
		slog.Bool("reflection", c.Reflection),
		slog.Bool("mcp", c.MCP),
		slog.Int("max_message_bytes", c.MaxMessageBytes),
		slog.Duration("default_timeout", c.DefaultTimeout),
		slog.Duration("max_timeout", c.MaxTimeout),
		slog.Duration("shutdown_grace", c.ShutdownGrace),
		slog.Duration("rescue_after", c.RescueAfter),
		slog.Duration("orchestrator_lease", c.RunLease),
		slog.Duration("run_event_retention", c.RunEventRetention),
		slog.Int("max_concurrent_streams", c.MaxStreams),
		slog.Int("max_in_flight", c.MaxInFlight),
		slog.Float64("rate_limit", c.RateLimit),
		slog.Int("rate_burst", c.RateBurst),
		slog.Any("fairness", c.Fairness),
		slog.Any("memory_quota", c.MemoryQuota),
		slog.String("log_level", c.LogLevel.String()),
		slog.Float64("log_rpc_sample", c.LogRPCSample),
		slog.Duration("log_slow", c.LogSlow),
		slog.String("debug_listen", c.DebugListen),
		slog.String("auth", c.Auth),
		slog.String("oidc_issuer", c.OIDCIssuer),
		slog.String("gemini_base_url", c.GeminiBaseURL),
		slog.String("price_table", c.PriceTable), slog.String("prices", c.Prices),
		slog.String("openai_base_url", c.OpenAIBaseURL),
		slog.Any("service_token_key", c.Secrets.ServiceTokenKey),
		slog.Any("master_key", c.Secrets.MasterKey),
		slog.Any("gemini_api_key", c.Secrets.GeminiAPIKey),
		slog.Any("openai_api_key", c.Secrets.OpenAIAPIKey),
		slog.Any("elevenlabs_api_key", c.Secrets.ElevenLabsAPIKey),
		slog.Any("tavus_api_key", c.Secrets.TavusAPIKey),
	)
}

// maskURL hides the password of a database URL; a URL it cannot parse is hidden whole.
func maskURL(u string) string {
	if u == "" {
		return ""
	}
	parsed, err := url.Parse(u)
	if err != nil {
		return "(unparseable)"
	}
	return parsed.Redacted()
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// isLoopback reports whether the listen address addr accepts connections from this machine only.
func isLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func lookupEnv(getenv func(string) string, name string) (string, bool) {
	v := getenv(name)
	return v, v != ""
}

// readSecret reads env, or the file named by env_FILE. Errors name the variable, never the value.
func readSecret(getenv func(string) string, env string) (string, error) {
	if v := getenv(env); v != "" {
		return v, nil
	}
	path := getenv(env + "_FILE")
	if path == "" {
		return "", nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("%s_FILE: cannot read the secret file", env)
	}
	return strings.TrimSpace(string(b)), nil
}
