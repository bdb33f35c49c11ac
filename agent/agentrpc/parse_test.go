package agentrpc

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/loom-dev/loom/agent"
	agentv1 "github.com/loom-dev/loom/gen/loom/agent/v1"
)

func TestApplyMask(t *testing.T) {
	t.Parallel()
	base := func() *agentv1.Agent {
		return &agentv1.Agent{Name: "a", DisplayName: "A", Instructions: "old", Version: 3,
			Model:   &agentv1.Model{Provider: agentv1.Provider_PROVIDER_GEMINI, Name: "g", MaxOutputTokens: 9},
			Budgets: &agentv1.Budgets{MaxSteps: 4, MaxDuration: durationpb.New(5e9)}}
	}
	src := &agentv1.Agent{Name: "a", Instructions: "new", Model: &agentv1.Model{Name: "h"},
		Budgets: &agentv1.Budgets{MaxDuration: durationpb.New(7e9)},
		Tools:   []*agentv1.Tool{{Kind: &agentv1.Tool_MemorySave{MemorySave: &agentv1.MemorySaveTool{}}}}}
	for _, tc := range []struct {
		name  string
		paths []string
		want  func(a *agentv1.Agent)
		err   string
	}{
		{name: "top-level", paths: []string{"instructions", "tools"}, want: func(a *agentv1.Agent) {
			a.Instructions, a.Tools = "new", src.Tools
		}},
		{name: "nested keeps siblings", paths: []string{"model.name"}, want: func(a *agentv1.Agent) { a.Model.Name = "h" }},
		{name: "unset clears", paths: []string{"display_name", "model.max_output_tokens"}, want: func(a *agentv1.Agent) {
			a.DisplayName, a.Model.MaxOutputTokens = "", 0
		}},
		{name: "whole message", paths: []string{"model"}, want: func(a *agentv1.Agent) { a.Model = &agentv1.Model{Name: "h"} }},
		{name: "duration is a leaf", paths: []string{"budgets.max_duration"}, want: func(a *agentv1.Agent) { a.Budgets.MaxDuration = durationpb.New(7e9) }},
		{name: "clear nested of unset message", paths: []string{"voice.voice_id"}, want: func(*agentv1.Agent) {}},
		{name: "unknown", paths: []string{"instructions", "nope"}, err: `update_mask: path "nope": unknown field`},
		{name: "output only", paths: []string{"version"}, err: `path "version": field is output-only or immutable`},
		{name: "name", paths: []string{"name"}, err: `path "name": field is output-only or immutable`},
		{name: "nested unknown", paths: []string{"model.colour"}, err: `path "model.colour": unknown field`},
		{name: "into scalar", paths: []string{"instructions.x"}, err: `"instructions" is not a message field`},
		{name: "into list", paths: []string{"tools.memory_save"}, err: `"tools" is not a message field`},
		{name: "into duration", paths: []string{"budgets.max_duration.seconds"}, err: `"max_duration" is not a message field`},
		{name: "empty segment", paths: []string{"model."}, err: "unknown field"},
		{name: "empty", paths: []string{""}, err: "empty path"},
		{name: "none", paths: nil, err: "no paths"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got := base()
			err := agent.ApplyMask(got, src, tc.paths)
			if tc.err != "" {
				if !errors.Is(err, agent.ErrInvalidArgument) || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err = %v, want InvalidArgument containing %q", err, tc.err)
				}
				if diff := cmp.Diff(base(), got, protocmp.Transform()); diff != "" {
					t.Errorf("failed ApplyMask changed dst (-want +got):\n%s", diff)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			want := base()
			tc.want(want)
			if diff := cmp.Diff(want, got, protocmp.Transform()); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
	// dst must not alias src.
	dst := base()
	if err := agent.ApplyMask(dst, src, []string{"model"}); err != nil {
		t.Fatal(err)
	}
	dst.Model.Name = "changed"
	if src.Model.Name != "h" {
		t.Error("ApplyMask aliased src's message into dst")
	}
}

func FuzzApplyMask(f *testing.F) {
	for _, s := range []string{"instructions", "model.name,tools", "budgets.max_duration", "voice.voice_id,x", "", "model..name", "memory.min_score"} {
		f.Add(s)
	}
	src := &agentv1.Agent{Name: "a", Instructions: "i", Model: &agentv1.Model{Name: "n", Sim: &agentv1.SimScript{FailureRate: 0.5}},
		Memory: &agentv1.MemoryConfig{Namespace: "ns"}}
	f.Fuzz(func(t *testing.T, joined string) {
		dst := &agentv1.Agent{Name: "a", DisplayName: "d"}
		before := proto.Clone(dst)
		err := agent.ApplyMask(dst, src, strings.Split(joined, ","))
		if err != nil {
			if !errors.Is(err, agent.ErrInvalidArgument) {
				t.Fatalf("error %v is not InvalidArgument", err)
			}
			if !proto.Equal(before, dst) {
				t.Fatalf("failed ApplyMask changed dst")
			}
			return
		}
		if dst.GetName() != "a" {
			t.Fatalf("ApplyMask changed the name")
		}
		if _, err := proto.Marshal(dst); err != nil {
			t.Fatalf("result does not marshal: %v", err)
		}
	})
}

func TestValidateArgs(t *testing.T) {
	t.Parallel()
	search := toolSchema(&agentv1.Tool{Kind: &agentv1.Tool_MemorySearch{MemorySearch: &agentv1.MemorySearchTool{}}})
	for _, tc := range []struct {
		args string
		err  string
	}{
		{args: `{"query":"cats"}`},
		{args: `{"query":"cats","top_k":3}`},
		{args: `{}`, err: "arguments.query: required"},
		{args: `{"query":""}`, err: "arguments.query: shorter than 1 characters"},
		{args: `{"query":7}`, err: "arguments.query: want string, got number"},
		{args: `{"query":"x","top_k":2.5}`, err: "arguments.top_k: want integer, got number"},
		{args: `{"query":"x","top_k":0}`, err: "arguments.top_k: less than 1"},
		{args: `{"query":"x","top_k":51}`, err: "arguments.top_k: greater than 50"},
		{args: `{"query":"x","other":1}`, err: `arguments: unknown argument "other"`},
		{args: `[1]`, err: "arguments: want object, got array"},
	} {
		var v any
		if err := json.Unmarshal([]byte(tc.args), &v); err != nil {
			t.Fatal(err)
		}
		err := agent.ValidateArgs(search, v)
		if (tc.err == "") != (err == nil) || (err != nil && err.Error() != tc.err) {
			t.Errorf("ValidateArgs(%s) = %v, want %q", tc.args, err, tc.err)
		}
	}
	enum := map[string]any{"type": "object", "properties": map[string]any{
		"mode":  map[string]any{"enum": []any{"a", "b"}},
		"items": map[string]any{"type": "array", "maxItems": 2, "items": map[string]any{"type": "boolean"}},
	}}
	for args, want := range map[string]string{
		`{"mode":"a","items":[true]}`: "",
		`{"mode":"c"}`:                `arguments.mode: not one of [a b]`,
		`{"mode":{"x":1}}`:            `arguments.mode: not one of [a b]`,
		`{"items":[true,false,true]}`: "arguments.items: more than 2 items",
		`{"items":[true,"no"]}`:       "arguments.items[1]: want boolean, got string",
	} {
		var v any
		_ = json.Unmarshal([]byte(args), &v)
		err := agent.ValidateArgs(enum, v)
		if (want == "") != (err == nil) || (err != nil && err.Error() != want) {
			t.Errorf("ValidateArgs(%s) = %v, want %q", args, err, want)
		}
	}
}

// FuzzValidateArgs checks that validation never panics and that what it accepts is what the tools assume: the
// tool implementations type-assert their required arguments after validation.
func FuzzValidateArgs(f *testing.F) {
	for _, s := range []string{`{"query":"x"}`, `{"text":"t","id":"i"}`, `{"url":"http://a"}`, `{"input":"go"}`,
		`{"query":"x","top_k":5}`, `{"query":{"a":[1,2]}}`, `[]`, `null`, `{"top_k":1e400}`} {
		f.Add([]byte(s))
	}
	tools := []*agentv1.Tool{
		{Kind: &agentv1.Tool_MemorySearch{MemorySearch: &agentv1.MemorySearchTool{}}},
		{Kind: &agentv1.Tool_MemorySave{MemorySave: &agentv1.MemorySaveTool{}}},
		{Kind: &agentv1.Tool_HttpFetch{HttpFetch: &agentv1.HttpFetchTool{AllowedHosts: []string{"a"}}}},
		{Kind: &agentv1.Tool_Delegate{Delegate: &agentv1.DelegateTool{Agent: "b"}}},
	}
	required := map[string]string{"memory_search": "query", "memory_save": "text", "http_fetch": "url", "delegate_b": "input"}
	f.Fuzz(func(t *testing.T, data []byte) {
		var v any
		if json.Unmarshal(data, &v) != nil {
			return
		}
		for _, tool := range tools {
			if agent.ValidateArgs(toolSchema(tool), v) != nil {
				continue
			}
			m, ok := v.(map[string]any)
			if !ok {
				t.Fatalf("%s accepted a non-object %s", agent.ToolName(tool), data)
			}
			if _, ok := m[required[agent.ToolName(tool)]].(string); !ok {
				t.Fatalf("%s accepted %s without a string %q", agent.ToolName(tool), data, required[agent.ToolName(tool)])
			}
			if k, present := m["top_k"]; present {
				if _, ok := k.(float64); !ok {
					t.Fatalf("accepted a non-number top_k in %s", data)
				}
			}
		}
	})
}
