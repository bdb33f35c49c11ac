package agentrpc_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"connectrpc.com/connect"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/loom-dev/loom/agent/agentrpc"
	"github.com/loom-dev/loom/agent/model"
	"github.com/loom-dev/loom/agent/sqlstore"
	agentv1 "github.com/loom-dev/loom/gen/loom/agent/v1"
	"github.com/loom-dev/loom/gen/loom/agent/v1/agentv1connect"
	"github.com/loom-dev/loom/internal/audit"
	"github.com/loom-dev/loom/internal/audit/auditsql"
	"github.com/loom-dev/loom/internal/logtest"
	"github.com/loom-dev/loom/internal/rpcserver"
	"github.com/loom-dev/loom/internal/rpcserver/rpcservertest"
	"github.com/loom-dev/loom/internal/secret"
	"github.com/loom-dev/loom/internal/secrets"
	"github.com/loom-dev/loom/internal/sqldb"
	"github.com/loom-dev/loom/internal/sqldb/sqldbtest"
)

// Canary keys: the process's own, and tenant acme's. Random-looking, so that only the echo can produce them.
var canaries = map[string]string{
	"process/openai":     "sk-proj-Pq7Xw2Lm9Tz4Rb8Ny3Vc6Hd1Kf5Gj0As",
	"process/gemini":     "AIzaSyC4nT9vQ2mX7pL1wZ8rK3bY6hD0fJ5gE2s",
	"process/elevenlabs": "sk_5e1f0a9c7d3b2e8f6a4c1d9e7b3f5a2c8d6e4f1a0b9c7d3e",
	"process/tavus":      "c0ffee11d00d4b7a9e3f8c2d6b1a5e9f",
	"acme/openai":        "sk-acme-Hz3Qv8Wn1Mx6Tc4Lp9Rb2Yk7Fd5Gs0Ja",
	"acme/gemini":        "AIzaSyAcmE8kP3wQ6zN1xV9mL4tR7bC2yH5dF0g",
	"acme/elevenlabs":    "sk_acme9d8c7b6a5f4e3d2c1b0a9f8e7d6c5b4a3f2e1d0c9b8a",
	"acme/tavus":         "acme00ff11ee22dd33cc44bb55aa6699",
}

// echo is what a provider that quotes its key says: the key whole, its first 12 bytes with a mask (OpenAI's
// style), an 8-byte run from the middle, its last 9 bytes, and the header it came in.
func echo(header, key string) string {
	return fmt.Sprintf("Incorrect API key provided: %s. Hint: %s****%s; middle %s; %s: %s; Authorization: Bearer %s",
		key, key[:12], key[len(key)-9:], key[10:18], header, key, key)
}

// fakeProviders is one httptest server speaking the documented wire formats of OpenAI (chat completions), Gemini
// (streamGenerateContent), ElevenLabs (text-to-speech stream) and Tavus (videos), each failing with its key
// echoed into the error body. Model names choose the failure: "e401", "e500" or "mid" (an error event after the
// stream began).
func fakeProviders(t *testing.T) (*httptest.Server, *int) {
	var mu sync.Mutex
	calls := 0
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		calls++
		mu.Unlock()
		body, _ := io.ReadAll(r.Body)
		jsonErr := func(code int, v string) {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(code)
			io.WriteString(w, v)
		}
		q := func(s string) string { b, _ := json.Marshal(s); return string(b) }
		switch {
		case strings.HasPrefix(r.URL.Path, "/v1/chat/completions"):
			key := strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")
			msg := echo("Authorization", key)
			switch {
			case bytes.Contains(body, []byte(`"model":"e500"`)):
				jsonErr(500, `{"error":{"message":`+q(msg)+`,"type":"server_error","code":"internal"}}`)
			case bytes.Contains(body, []byte(`"model":"mid"`)):
				w.Header().Set("Content-Type", "text/event-stream")
				fmt.Fprintf(w, "data: %s\n\n", `{"id":"1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"partial "}}]}`)
				fmt.Fprintf(w, "data: %s\n\n", `{"error":{"message":`+q(msg)+`,"type":"server_error"}}`)
			default:
				jsonErr(401, `{"error":{"message":`+q(msg)+`,"type":"invalid_request_error","code":"invalid_api_key"}}`)
			}
		case strings.Contains(r.URL.Path, ":streamGenerateContent"), strings.Contains(r.URL.Path, ":generateContent"):
			key := r.Header.Get("x-goog-api-key")
			if key == "" {
				key = r.URL.Query().Get("key")
			}
			code, status := 400, "INVALID_ARGUMENT"
			if strings.Contains(r.URL.Path, "e500") {
				code, status = 500, "INTERNAL"
			}
			jsonErr(code, fmt.Sprintf(`{"error":{"code":%d,"message":%s,"status":%q}}`, code, q(echo("x-goog-api-key", key)), status))
		case strings.HasPrefix(r.URL.Path, "/v1/text-to-speech/"):
			key := r.Header.Get("xi-api-key")
			code := 422
			if strings.Contains(r.URL.Path, "E500") {
				code = 500
			}
			jsonErr(code, `{"detail":{"status":"invalid","message":`+q(echo("xi-api-key", key))+`}}`)
		case strings.HasPrefix(r.URL.Path, "/v2/videos"):
			jsonErr(400, `{"message":`+q(echo("x-api-key", r.Header.Get("x-api-key")))+`}`)
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(srv.Close)
	return srv, &calls
}

// acmeKeys holds the acme canaries for every tenant whose name starts with "acme".
type acmeKeys struct{}

func (acmeKeys) Get(_ context.Context, tenant, provider string) (string, error) {
	if k, ok := canaries["acme/"+provider]; ok && strings.HasPrefix(tenant, "acme") {
		return k, nil
	}
	return "", fmt.Errorf("get provider key: %w", secrets.ErrNotFound)
}

// leakHarness is the agent service on the real server with its logs (agent and server) captured at debug level,
// the audit trail and the agent store in one database, and /metrics reachable.
type leakHarness struct {
	clients map[string]agentv1.AgentServiceClient
	url     string
	logs    *logtest.Buffer
	db      *sqldb.DB
	path    string // the SQLite file, "" on Postgres
}

func newLeakHarness(t *testing.T, dialect sqldb.Dialect, cfg agentrpc.Config) *leakHarness {
	t.Helper()
	ctx := context.Background()
	url, path := "", ""
	if dialect == sqldb.Postgres {
		url = sqldbtest.PostgresURL(t)
	} else {
		path = sqldbtest.SQLitePath(t)
		url = "sqlite:" + path
	}
	db, err := sqldb.Open(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	logs := &logtest.Buffer{}
	logger := slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	store, err := sqlstore.New(ctx, db, sqlstore.WithLogger(logger))
	if err != nil {
		t.Fatal(err)
	}
	trail, err := auditsql.Open(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := agentrpc.New(logger, store, nil, cfg)
	if err != nil {
		t.Fatal(err)
	}
	rs, err := rpcserver.New(logger, rpcserver.Config{Audit: trail}, defaultTenantAuth, srv.Service())
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	sctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- rs.Serve(sctx, ln) }()
	t.Cleanup(func() { cancel(); <-done })
	ts := &rpcservertest.Server{Server: rs, Addr: ln.Addr().String(), URL: "http://" + ln.Addr().String()}
	cc := agentv1connect.NewAgentServiceClient(rpcservertest.HTTPClient(), ts.URL)
	return &leakHarness{clients: map[string]agentv1.AgentServiceClient{
		"connect": connectClient{cc}, "grpc": agentv1.NewAgentServiceClient(ts.GRPCConn(t)),
	}, url: ts.URL, logs: logs, db: db, path: path}
}

// leaked returns, for each canary, the 8-byte runs of it found in text.
func leaked(text string) []string {
	var out []string
	for name, key := range canaries {
		for i := 0; i+8 <= len(key); i++ {
			if strings.Contains(text, key[i:i+8]) {
				out = append(out, fmt.Sprintf("%s[%d:%d]", name, i, i+8))
				break
			}
		}
	}
	return out
}

// TestProviderErrorsScrubbed: providers that echo their key into every error body (HTTP 401, 500, an error
// event mid-stream; OpenAI, Gemini, ElevenLabs, Tavus; the process's keys and a tenant's own) leave no 8-byte
// run of any key in unary and streamed responses, stored runs (GetRun, ListRuns), the server's and the agent's
// logs, the database (file bytes on SQLite, every row on Postgres), the audit trail and /metrics.
func TestProviderErrorsScrubbed(t *testing.T) {
	sqldbtest.EachDialect(t, func(t *testing.T, d sqldb.Dialect) {
		t.Parallel()
		fake, calls := fakeProviders(t)
		h := newLeakHarness(t, d, agentrpc.Config{
			Models: testModels(model.Endpoint{APIKey: secret.String(canaries["process/gemini"]), BaseURL: fake.URL},
				model.Endpoint{APIKey: secret.String(canaries["process/openai"]), BaseURL: fake.URL + "/v1"}),
			ElevenLabsAPIKey: secret.String(canaries["process/elevenlabs"]), ElevenLabsBaseURL: fake.URL,
			TavusAPIKey: secret.String(canaries["process/tavus"]), TavusBaseURL: fake.URL,
			TenantKeys: acmeKeys{},
		})
		var surfaces []string // every text a caller, an operator or an attacker with the disk could read
		see := func(what string, m proto.Message, err error) {
			if m != nil {
				surfaces = append(surfaces, what+": "+protojson.Format(m))
			}
			if err != nil {
				surfaces = append(surfaces, what+" error: "+status.Convert(err).Message())
			}
		}
		tried := 0
		runTenants := map[string][]string{} // by client
		for _, tenant := range []string{"acme", "globex"} {
			for cname, c := range h.clients {
				for _, m := range []struct {
					provider agentv1.Provider
					name     string
				}{{agentv1.Provider_PROVIDER_OPENAI, "e401"}, {agentv1.Provider_PROVIDER_OPENAI, "e500"},
					{agentv1.Provider_PROVIDER_OPENAI, "mid"}, {agentv1.Provider_PROVIDER_GEMINI, "e400"},
					{agentv1.Provider_PROVIDER_GEMINI, "e500"}} {
					name := fmt.Sprintf("%s-%s-%s", strings.ToLower(strings.TrimPrefix(m.provider.String(), "PROVIDER_")), m.name, cname)
					// A tenant per agent: each makes 2 failing calls, under its provider breaker's threshold.
					ctx := asTenant(testCtx(t), tenant+"-"+name)
					runTenants[cname] = append(runTenants[cname], tenant+"-"+name)
					create(t, ctx, c, &agentv1.Agent{Name: name, Model: &agentv1.Model{Provider: m.provider, Name: m.name}})
					resp, err := c.Run(ctx, &agentv1.RunRequest{Agent: name, Input: "hi"})
					tried++
					if err == nil {
						t.Errorf("%s: Run succeeded against a failing provider", name)
					} else if msg := status.Convert(err).Message(); !strings.Contains(msg, "HTTP") && !strings.Contains(msg, "error while streaming") {
						t.Errorf("%s: Run error %q no longer says what happened", name, msg)
					}
					see(name+" Run", resp, err)
					evs, err := recvAll(c.RunStream(ctx, &agentv1.RunStreamRequest{Agent: name, Input: "hi"}))
					tried++
					for _, ev := range evs {
						see(name+" RunStream", ev, nil)
					}
					see(name+" RunStream", nil, err)
				}
				ctx := asTenant(testCtx(t), tenant+"-"+cname)
				for _, rt := range runTenants[cname] {
					rctx := asTenant(ctx, rt)
					runs, err := c.ListRuns(rctx, &agentv1.ListRunsRequest{PageSize: 100})
					see("ListRuns", runs, err)
					for _, r := range runs.GetRuns() {
						got, err := c.GetRun(rctx, &agentv1.GetRunRequest{Id: r.GetId()})
						see("GetRun", got, err)
						if e := got.GetRun().GetError(); !strings.Contains(e, "HTTP") && !strings.Contains(e, "error while streaming") {
							t.Errorf("stored run error %q no longer says what happened", got.GetRun().GetError())
						}
					}
				}
				for _, voice := range []string{"voice1", "voiceE500"} {
					_, err := recvAll(c.SynthesizeSpeech(ctx, &agentv1.SynthesizeSpeechRequest{Text: "hi",
						Voice: &agentv1.Voice{Provider: agentv1.VoiceProvider_VOICE_PROVIDER_ELEVENLABS, VoiceId: voice}}))
					tried++
					see("SynthesizeSpeech", nil, err)
				}
				v, err := c.CreateVideo(ctx, &agentv1.CreateVideoRequest{ReplicaId: "r1", Script: "hi", Name: "v"})
				tried++
				see("CreateVideo", v, err)
				g, err := c.GetVideo(ctx, &agentv1.GetVideoRequest{Id: "v1"})
				tried++
				see("GetVideo", g, err)
			}
		}
		// The database: the raw file (and its WAL) on SQLite, every column of every row on Postgres.
		if h.path != "" {
			files, _ := filepath.Glob(h.path + "*")
			for _, f := range files {
				b, err := os.ReadFile(f)
				if err != nil {
					t.Fatal(err)
				}
				surfaces = append(surfaces, "file "+filepath.Base(f)+": "+string(b))
			}
		}
		for _, table := range []string{"runs", "agent_versions"} {
			cdb := h.db.Component(sqldb.AgentComponent)
			rows, err := cdb.QueryContext(context.Background(), cdb.Rebind("SELECT * FROM loom."+table))
			if err != nil {
				t.Fatal(err)
			}
			cols, _ := rows.Columns()
			for rows.Next() {
				vals := make([]any, len(cols))
				ptrs := make([]any, len(cols))
				for i := range vals {
					ptrs[i] = &vals[i]
				}
				if err := rows.Scan(ptrs...); err != nil {
					t.Fatal(err)
				}
				surfaces = append(surfaces, fmt.Sprintf("row %s: %s", table, fmt.Sprint(vals...)))
				for _, v := range vals {
					if b, ok := v.([]byte); ok {
						surfaces = append(surfaces, "row bytes: "+string(b))
					}
				}
			}
			rows.Close()
		}
		events, _, err := mustTrail(t, h.db)
		if err != nil {
			t.Fatal(err)
		}
		surfaces = append(surfaces, "audit: "+fmt.Sprint(events))
		if resp, err := http.Get(h.url + "/metrics"); err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			surfaces = append(surfaces, "metrics: "+string(b))
		} else {
			t.Errorf("GET /metrics: %v", err)
		}
		surfaces = append(surfaces, "logs: "+h.logs.String())

		leaks := 0
		for _, s := range surfaces {
			if l := leaked(s); len(l) > 0 {
				leaks += len(l)
				t.Errorf("leak of %v in %.400s", l, s)
			}
		}
		if !strings.Contains(h.logs.String(), "AgentService/Run") {
			t.Errorf("server log does not record the runs; the check would prove nothing")
		}
		t.Logf("%s: provider calls tried %d (%d requests reached the fake), surfaces checked %d, canaries %d, leaked %d",
			d, tried, *calls, len(surfaces), len(canaries), leaks)
	})
}

func mustTrail(t *testing.T, db *sqldb.DB) ([]audit.Event, string, error) {
	t.Helper()
	trail, err := auditsql.Open(context.Background(), db)
	if err != nil {
		return nil, "", err
	}
	var all []audit.Event
	for _, tenant := range []string{"acme-connect", "globex-connect", "acme-grpc", "globex-grpc"} {
		ev, _, err := trail.List(context.Background(), tenant, 1000, "")
		if err != nil {
			return nil, "", err
		}
		all = append(all, ev...)
	}
	if len(all) == 0 {
		return nil, "", connect.NewError(connect.CodeInternal, fmt.Errorf("audit trail is empty"))
	}
	return all, "", nil
}
