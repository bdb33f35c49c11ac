package agentrpc_test

import (
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	"github.com/loom-dev/loom/agent/agentrpc"
	agentv1 "github.com/loom-dev/loom/gen/loom/agent/v1"
)

// TestQuestionableInputs: agents that allow every host, delegate to themselves, use memory tools without a
// namespace, sleep for hours, or carry options in a voice id are refused by CreateAgent and UpdateAgent with
// InvalidArgument naming the field; their sane neighbours are accepted. Both clients.
func TestQuestionableInputs(t *testing.T) {
	t.Parallel()
	h := newHarness(t, agentrpc.Config{})
	fetch := func(hosts ...string) *agentv1.Tool {
		return &agentv1.Tool{Kind: &agentv1.Tool_HttpFetch{HttpFetch: &agentv1.HttpFetchTool{AllowedHosts: hosts}}}
	}
	delegate := func(to string) *agentv1.Tool {
		return &agentv1.Tool{Kind: &agentv1.Tool_Delegate{Delegate: &agentv1.DelegateTool{Agent: to}}}
	}
	save := &agentv1.Tool{Kind: &agentv1.Tool_MemorySave{MemorySave: &agentv1.MemorySaveTool{}}}
	latency := func(d time.Duration) func(*agentv1.Agent) {
		return func(a *agentv1.Agent) { a.Model = &agentv1.Model{Sim: &agentv1.SimScript{Latency: durationpb.New(d)}} }
	}
	voice := func(p agentv1.VoiceProvider, id string) func(*agentv1.Agent) {
		return func(a *agentv1.Agent) { a.Voice = &agentv1.Voice{Provider: p, VoiceId: id} }
	}
	tools := func(ts ...*agentv1.Tool) func(*agentv1.Agent) { return func(a *agentv1.Agent) { a.Tools = ts } }
	espeak, eleven := agentv1.VoiceProvider_VOICE_PROVIDER_ESPEAK, agentv1.VoiceProvider_VOICE_PROVIDER_ELEVENLABS
	const hostField = "agent.tools[0].http_fetch.allowed_hosts[0]"
	refused := []struct {
		name  string
		edit  func(*agentv1.Agent)
		field string
	}{
		{"star", tools(fetch("*")), hostField},
		{"star-dot", tools(fetch("*.")), hostField},
		{"star-tld", tools(fetch("*.com")), hostField},
		{"star-tld-dot", tools(fetch("*.COM.")), hostField},
		{"double-star", tools(fetch("**")), hostField},
		{"star-star-domain", tools(fetch("*.*.example.com")), hostField},
		{"inner-star", tools(fetch("api.*.example.com")), hostField},
		{"partial-star", tools(fetch("api*.example.com")), hostField},
		{"trailing-star", tools(fetch("example.*")), hostField},
		{"second-entry", tools(fetch("example.com", "*")), "agent.tools[0].http_fetch.allowed_hosts[1]"},
		{"userinfo", tools(fetch("user@example.com")), hostField},
		{"self-delegate", tools(delegate("subject")), "agent.tools[0].delegate.agent"},
		{"self-delegate-later", tools(delegate("other"), delegate("subject")), "agent.tools[1].delegate.agent"},
		{"search-no-namespace", tools(searchTool), "agent.tools[0]"},
		{"save-no-namespace", tools(save), "agent.tools[0]"},
		{"latency-1000h", latency(1000 * time.Hour), "agent.model.sim.latency"},
		{"latency-over-cap", latency(10*time.Minute + time.Second), "agent.model.sim.latency"},
		{"latency-negative", latency(-time.Second), "agent.model.sim.latency"},
		{"espeak-option", voice(espeak, "-a200"), "agent.voice.voice_id"},
		{"espeak-space-option", voice(espeak, "en-us --stdout"), "agent.voice.voice_id"},
		{"espeak-plus-first", voice(espeak, "+f3"), "agent.voice.voice_id"},
		{"espeak-path", voice(espeak, "../../etc/passwd"), "agent.voice.voice_id"},
		{"espeak-shell", voice(espeak, "en;id"), "agent.voice.voice_id"},
		{"eleven-query", voice(eleven, "21m00Tcm4TlvDq8ikWAM?output_format=pcm_16000"), "agent.voice.voice_id"},
		{"eleven-path", voice(eleven, "a/../../v1/user"), "agent.voice.voice_id"},
		{"eleven-option", voice(eleven, "-x"), "agent.voice.voice_id"},
		{"eleven-plus", voice(eleven, "a+b"), "agent.voice.voice_id"},
	}
	accepted := []struct {
		name string
		edit func(*agentv1.Agent)
	}{
		{"host", tools(fetch("example.com", "*.example.com", "127.0.0.1", "Example.ORG."))},
		{"delegate-other", tools(delegate("other"))},
		{"memory-with-namespace", func(a *agentv1.Agent) {
			a.Tools = []*agentv1.Tool{searchTool, save}
			a.Memory = &agentv1.MemoryConfig{Namespace: "notes"}
		}},
		{"latency-cap", latency(10 * time.Minute)},
		{"espeak-variant", voice(espeak, "en+f3")},
		{"espeak-plain", voice(agentv1.VoiceProvider_VOICE_PROVIDER_UNSPECIFIED, "en-us")},
		{"eleven-id", voice(eleven, "21m00Tcm4TlvDq8ikWAM")},
	}
	var tried, refusedN, acceptedN atomic.Int64
	h.eachClient(t, func(t *testing.T, c agentv1.AgentServiceClient) {
		client := t.Name()[strings.LastIndex(t.Name(), "/")+1:]
		base := func(name string) *agentv1.Agent { return &agentv1.Agent{Name: name, Instructions: "x"} }
		uctx := asTenant(testCtx(t), "update-"+client) // UpdateAgent edits agent "subject" here
		create(t, uctx, c, base("subject"))
		for i, tc := range refused {
			cctx := asTenant(testCtx(t), fmt.Sprintf("create-%s-%d", client, i)) // a fresh tenant per CreateAgent
			a := base("subject")
			tc.edit(a)
			_, cerr := c.CreateAgent(cctx, &agentv1.CreateAgentRequest{Agent: a})
			_, uerr := c.UpdateAgent(uctx, &agentv1.UpdateAgentRequest{Agent: a,
				UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"tools", "model", "voice", "memory"}}})
			for op, err := range map[string]error{"CreateAgent": cerr, "UpdateAgent": uerr} {
				tried.Add(1)
				if status.Code(err) == codes.InvalidArgument && strings.HasPrefix(status.Convert(err).Message(), tc.field+":") {
					refusedN.Add(1)
					continue
				}
				t.Errorf("%s %s = %v, want InvalidArgument naming %s", op, tc.name, err, tc.field)
			}
		}
		ctx := asTenant(testCtx(t), "accept-"+client)
		for _, tc := range accepted {
			a := base("ok-" + tc.name)
			tc.edit(a)
			tried.Add(1)
			if _, err := c.CreateAgent(ctx, &agentv1.CreateAgentRequest{Agent: a}); err != nil {
				t.Errorf("CreateAgent %s = %v, want it accepted", tc.name, err)
				continue
			}
			acceptedN.Add(1)
		}
		// A voice given to SynthesizeSpeech directly is held to the same rule, before any provider runs.
		for _, id := range []string{"-a200", "en-us --stdout"} {
			tried.Add(1)
			_, err := recvAll(c.SynthesizeSpeech(ctx, &agentv1.SynthesizeSpeechRequest{Text: "hi", Voice: &agentv1.Voice{VoiceId: id}}))
			if status.Code(err) != codes.InvalidArgument || !strings.HasPrefix(status.Convert(err).Message(), "voice.voice_id:") {
				t.Errorf("SynthesizeSpeech(voice %q) = %v, want InvalidArgument naming voice.voice_id", id, err)
				continue
			}
			refusedN.Add(1)
		}
	})
	t.Cleanup(func() {
		t.Logf("questionable inputs: tried %d, refused %d (want %d), sane accepted %d (want %d)", tried.Load(),
			refusedN.Load(), 2*(2*len(refused)+2), acceptedN.Load(), 2*len(accepted))
	})
}
