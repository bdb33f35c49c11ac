package blueprint_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	orchestratorv1 "github.com/loom-dev/loom/gen/loom/orchestrator/v1"
	"github.com/loom-dev/loom/orchestrator/blueprint"
)

func format(errs []*orchestratorv1.ValidationError) []string {
	out := make([]string, 0, len(errs))
	for _, e := range errs {
		out = append(out, fmt.Sprintf("%d:%d %s: %s", e.GetLine(), e.GetColumn(), e.GetPath(), e.GetMessage()))
	}
	return out
}

func loadFile(t *testing.T, name string) []*orchestratorv1.ValidationError {
	t.Helper()
	src, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	bp, errs := blueprint.Load(&orchestratorv1.BlueprintSource{Source: &orchestratorv1.BlueprintSource_Yaml{Yaml: string(src)}})
	if bp == nil {
		t.Fatalf("Load(%s) returned no blueprint: %v", name, format(errs))
	}
	return errs
}

func TestFixtures(t *testing.T) {
	t.Parallel()
	tests := []struct {
		file string
		want []string
	}{
		{file: "valid_full.yaml"},
		{file: "valid.json"},
		{file: "invalid_refs.yaml", want: []string{
			`4:18 steps[0].depends_on[0]: unknown step "missing"`,
			`6:9 steps[1].id: duplicate step id "a" (also steps[0])`,
			`9:46 steps[2].branch.then_steps[0]: unknown step "nope"`,
			`11:27 steps[3].parallel.steps[1]: unknown step "ghost"`,
		}},
		{file: "invalid_cycle.yaml", want: []string{
			`3:5 steps[0]: dependency cycle: a -> b -> c -> a`,
			`12:5 steps[3]: dependency cycle: d -> d`,
		}},
		{file: "invalid_cel.yaml", want: []string{
			`2:9 output: invalid expression: column 7: Syntax error: no viable alternative at input '.('`,
			`5:33 steps[0].agent.input: expression has type int, want string`,
			`7:25 steps[1].branch.condition: expression has type string, want bool`,
			`9:44 steps[2].map.input: invalid expression: column 7: Syntax error: mismatched input '<EOF>' expecting {'[', '{', '(', '.', '-', '!', 'true', 'false', 'null', NUM_FLOAT, NUM_INT, NUM_UINT, STRING, BYTES, IDENTIFIER}`,
			`9:18 steps[2].map.items: expression has type int, want list(dyn)`,
			`11:43 steps[3].memory_search.query: invalid expression: column 1: undeclared reference to 'unknown_var' (in container '')`,
		}},
		{file: "invalid_unreachable.yaml", want: []string{
			`9:5 steps[3]: step "both" can never run: it needs both the then and the else side of branch "gate"`,
		}},
		{file: "invalid_steprefs.yaml", want: []string{
			`4:33 steps[0].agent.input: step "b" may not have finished when this step starts: add it to depends_on`,
			`7:33 steps[1].agent.input: unknown step "ghost" in expression`,
		}},
		{file: "invalid_values.yaml", want: []string{
			`1:7 name: does not match regex pattern ` + "`^[a-z][a-z0-9_-]{0,62}$`",
			`2:15 run_deadline: must be greater than 0`,
			`5:47 steps[0].retry.initial_backoff: must not be greater than max_backoff (1m0s > 1s)`,
			`5:27 steps[0].retry.max_attempts: must be greater than or equal to 1 and less than or equal to 20`,
			`6:14 steps[0].timeout: must be greater than 0`,
			`11:33 steps[1].agent.input: must be at least 1 characters`,
			`9:48 steps[1].retry.initial_backoff: must not be negative`,
			`9:27 steps[1].retry.max_attempts: must be greater than or equal to 1 and less than or equal to 20`,
			`10:14 steps[1].timeout: invalid duration "soon": use a Go duration like "30s" or "1h30m"`,
			`13:5 steps[2].colour: unknown key "colour"`,
			`14:27 steps[2].delay.jitter: unknown key "jitter"`,
			`15:5 steps[3].kind: a step needs exactly one kind: agent, memory_search, memory_upsert, branch, parallel, map, approval or delay`,
			`18:12 steps[4].delay: a step has exactly one kind: both "agent" and "delay" are set`,
		}},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			t.Parallel()
			got := format(loadFile(t, tt.file))
			if diff := cmp.Diff(tt.want, got, cmp.Comparer(func(a, b []string) bool { return strings.Join(a, "\n") == strings.Join(b, "\n") })); diff != "" {
				t.Errorf("errors (-want +got):\n%s", diff)
			}
		})
	}
}

func TestParseErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		src  string
		want string // substring of the only error
		line int32
	}{
		{name: "empty", src: "", want: "empty document"},
		{name: "syntax", src: "name: a\nsteps: [\n", want: "yaml: line 2:", line: 2},
		{name: "scalar", src: "just text", want: "blueprint must be a mapping", line: 1},
		{name: "list", src: "- a\n- b", want: "blueprint must be a mapping", line: 1},
		{name: "too large", src: strings.Repeat("#", blueprint.MaxSourceBytes+1), want: "larger than"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			doc, errs := blueprint.Parse([]byte(tt.src))
			if doc != nil {
				t.Fatalf("Parse() document = %v, want nil", doc.Blueprint)
			}
			if len(errs) != 1 || !strings.Contains(errs[0].GetMessage(), tt.want) || errs[0].GetLine() != tt.line {
				t.Fatalf("Parse() errors = %v, want one containing %q at line %d", format(errs), tt.want, tt.line)
			}
		})
	}
}

func TestParseDecodingProblems(t *testing.T) {
	t.Parallel()
	src := `
name: x
steps: &s
  - id: a
    depends_on: {a: b}
    retry: {max_attempts: many}
    agent: {agent: [x], input: "'a'"}
  - id: b
    approval: {payload_schema: *s}
---
name: second
`
	doc, errs := blueprint.Parse([]byte(src))
	if doc == nil {
		t.Fatal("Parse() document = nil")
	}
	want := []string{
		`10:1 : only one YAML document is allowed`,
		`7:20 steps[0].agent.agent: must be a string`,
		`5:17 steps[0].depends_on: must be a list of strings`,
		`6:27 steps[0].retry.max_attempts: must be an integer`,
		`9:32 steps[1].approval.payload_schema: YAML aliases are not supported`,
	}
	if diff := cmp.Diff(want, format(errs)); diff != "" {
		t.Errorf("errors (-want +got):\n%s", diff)
	}
}

func TestLoadMessage(t *testing.T) {
	t.Parallel()
	bp := &orchestratorv1.Blueprint{
		Name:       "msg",
		Version:    7,
		CreateTime: timestamppb.Now(),
		Steps: []*orchestratorv1.Step{
			{Id: "a", Kind: &orchestratorv1.Step_Delay{Delay: &orchestratorv1.DelayStep{Duration: durationpb.New(0)}}},
		},
	}
	got, errs := blueprint.Load(&orchestratorv1.BlueprintSource{Source: &orchestratorv1.BlueprintSource_Blueprint{Blueprint: bp}})
	if len(errs) != 0 {
		t.Fatalf("Load() errors = %v", format(errs))
	}
	want := &orchestratorv1.Blueprint{Name: "msg", Steps: bp.Steps}
	if diff := cmp.Diff(want, got, protocmp.Transform()); diff != "" {
		t.Errorf("Load() (-want +got):\n%s", diff)
	}
	if bp.GetVersion() != 7 {
		t.Error("Load() modified its argument")
	}
}

func TestValidateMessageSortsPathsNumerically(t *testing.T) {
	t.Parallel()
	bp := &orchestratorv1.Blueprint{Name: "many"}
	for i := range 12 {
		bp.Steps = append(bp.Steps, &orchestratorv1.Step{
			Id:   fmt.Sprintf("s%d", i),
			Kind: &orchestratorv1.Step_Agent{Agent: &orchestratorv1.AgentStep{Agent: "echo", Input: "1"}},
		})
	}
	var paths []string
	for _, e := range blueprint.Validate(bp) {
		if e.GetLine() != 0 {
			t.Errorf("error %v has a position, want none", e)
		}
		paths = append(paths, e.GetPath())
	}
	if len(paths) != 12 || paths[1] != "steps[1].agent.input" || paths[11] != "steps[11].agent.input" {
		t.Errorf("paths = %v, want steps[0..11].agent.input in numeric order", paths)
	}
}

func TestValidateParallelMembers(t *testing.T) {
	t.Parallel()
	src := `
name: par
steps:
  - id: p
    parallel: {steps: [a, b]}
  - id: q
    parallel: {steps: [b, p]}
  - id: a
    agent: {agent: echo, input: "'a'"}
  - id: b
    agent: {agent: echo, input: "string(steps.a)"}
  - id: c
    depends_on: [p]
    agent: {agent: echo, input: "string(steps.a) + string(steps.b)"}
`
	want := []string{
		`7:24 steps[1].parallel.steps[0]: step "b" is already a parallel target of step "p" (steps[0].parallel.steps[1])`,
		`11:33 steps[3].agent.input: step "a" may not have finished when this step starts: add it to depends_on`,
	}
	_, errs := blueprint.Load(&orchestratorv1.BlueprintSource{Source: &orchestratorv1.BlueprintSource_Yaml{Yaml: src}})
	if diff := cmp.Diff(want, format(errs)); diff != "" {
		t.Errorf("errors (-want +got):\n%s", diff)
	}
}

func FuzzParse(f *testing.F) {
	files, _ := filepath.Glob("testdata/*.yaml")
	for _, name := range files {
		src, err := os.ReadFile(name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(string(src))
	}
	f.Add(`{"name": "j", "steps": [{"id": "a", "delay": {"duration": "1s"}}]}`)
	f.Fuzz(func(t *testing.T, src string) {
		doc, errs := blueprint.Parse([]byte(src))
		if doc == nil {
			if len(errs) == 0 {
				t.Fatal("Parse() returned neither a document nor errors")
			}
			return
		}
		for _, e := range doc.Validate() {
			if e.GetMessage() == "" {
				t.Fatalf("error without message at %q", e.GetPath())
			}
		}
	})
}
