// Package blueprint parses and validates workflow blueprints.
//
// A blueprint is written in YAML or JSON (JSON is read as YAML) with the field names of the
// loom.orchestrator.v1.Blueprint message:
//
//	name: research                   # ^[a-z][a-z0-9_-]{0,62}$
//	description: Research a topic.
//	input_schema: {type: object}     # JSON Schema of the run input, any mapping
//	run_deadline: 1h                 # Go duration string; unset means 24h
//	output: steps.summarise          # CEL over input and steps; unset means the final steps' outputs
//	steps:
//	  - id: research                 # ^[a-z][a-z0-9_]{0,62}$, unique
//	    depends_on: [other]          # ids of steps that must finish first
//	    retry: {max_attempts: 3, initial_backoff: 1s, max_backoff: 30s}
//	    timeout: 5m                  # one attempt; unset means 10m
//	    agent: {agent: researcher, input: "input.topic"}
//
// Each step has exactly one kind:
//
//	agent:         {agent, input, chaos, agent_version}  # agent_version: 0 or unset pins the latest at start
//	memory_search: {namespace, query, top_k}
//	memory_upsert: {namespace, text}
//	branch:        {condition, then_steps: [ids], else_steps: [ids]}
//	parallel:      {steps: [ids]}
//	map:           {items, agent, input, concurrency, agent_version}
//	approval:      {prompt, payload_schema, deadline}
//	delay:         {duration}
//
// Expressions are CEL over `input` (map(string, dyn), the run input) and `steps` (map(string, dyn), the outputs of
// earlier steps), plus `item` in a map step's input. Branch conditions must be bool; text expressions must be
// strings (or dyn).
//
// Graph semantics, which validation enforces: a step runs after its depends_on steps; the targets of a branch
// run after the branch, only on the side it takes; the members of a parallel step run after it starts and the
// parallel step finishes when they all have. A step whose dependency was skipped (a branch side not taken) is
// skipped too, so a step that needs both sides of one branch can never run and is reported as unreachable.
//
// Validation reports every error at once, each with its path (for example "steps[2].agent.input") and, for a
// YAML source, its line and column, sorted by path. This package does not import connect.
package blueprint

import (
	"cmp"
	"slices"
	"strconv"
	"strings"

	orchestratorv1 "github.com/loom-dev/loom/gen/loom/orchestrator/v1"
)

// MaxSourceBytes is the largest YAML or JSON source Parse accepts.
const MaxSourceBytes = 1 << 20

// Position is a place in a YAML source. Line and Column count from 1.
type Position struct {
	Line   int32
	Column int32
}

// Document is a blueprint parsed from YAML or JSON, with the position of every element it set.
type Document struct {
	// Blueprint is the decoded message. It is never nil in a Document returned by Parse.
	Blueprint *orchestratorv1.Blueprint
	// Positions maps element paths ("steps[1].agent.input") to where their values start in the source.
	Positions map[string]Position
}

// Validate validates the document's blueprint under the default expression limits and attaches source positions
// to the errors.
func (d *Document) Validate() []*orchestratorv1.ValidationError {
	return d.ValidateWith(Limits{})
}

// ValidateWith is Validate with expressions checked against limits.
func (d *Document) ValidateWith(limits Limits) []*orchestratorv1.ValidationError {
	return validate(d.Blueprint, d.Positions, limits)
}

// Load turns a source (a message or a YAML/JSON document) into a blueprint and validates it. It returns the
// blueprint (nil only when the document could not be read at all) and every error, sorted by path; the blueprint
// is valid if and only if the error list is empty. Output-only fields (version, create_time) are cleared.
// Expressions are checked against the default limits.
func Load(src *orchestratorv1.BlueprintSource) (*orchestratorv1.Blueprint, []*orchestratorv1.ValidationError) {
	return LoadWith(src, Limits{})
}

// LoadWith is Load with expressions checked against limits.
func LoadWith(src *orchestratorv1.BlueprintSource, limits Limits) (*orchestratorv1.Blueprint, []*orchestratorv1.ValidationError) {
	var (
		bp   *orchestratorv1.Blueprint
		errs []*orchestratorv1.ValidationError
	)
	switch s := src.GetSource().(type) {
	case *orchestratorv1.BlueprintSource_Blueprint:
		if s.Blueprint == nil {
			return nil, []*orchestratorv1.ValidationError{{Path: "blueprint", Message: "blueprint is required"}}
		}
		bp = cloneBlueprint(s.Blueprint)
		errs = ValidateWith(bp, limits)
	case *orchestratorv1.BlueprintSource_Yaml:
		doc, perrs := Parse([]byte(s.Yaml))
		if doc == nil {
			return nil, perrs
		}
		bp = doc.Blueprint
		errs = mergeErrors(perrs, doc.ValidateWith(limits))
	default:
		return nil, []*orchestratorv1.ValidationError{{Path: "source", Message: "a blueprint or a yaml document is required"}}
	}
	bp.Version = 0
	bp.CreateTime = nil
	return bp, errs
}

// Validate validates a blueprint message and returns every error, sorted by path, without positions.
// Expressions are checked against the default limits.
func Validate(bp *orchestratorv1.Blueprint) []*orchestratorv1.ValidationError {
	return ValidateWith(bp, Limits{})
}

// ValidateWith is Validate with expressions checked against limits.
func ValidateWith(bp *orchestratorv1.Blueprint, limits Limits) []*orchestratorv1.ValidationError {
	return validate(bp, nil, limits)
}

// mergeErrors joins two sorted error lists, dropping exact duplicates, and sorts the result.
func mergeErrors(a, b []*orchestratorv1.ValidationError) []*orchestratorv1.ValidationError {
	all := append(slices.Clip(a), b...)
	sortErrors(all)
	return slices.CompactFunc(all, func(x, y *orchestratorv1.ValidationError) bool {
		return x.GetPath() == y.GetPath() && x.GetMessage() == y.GetMessage()
	})
}

// sortErrors sorts errors by path (indexes compared as numbers), then line, column and message.
func sortErrors(errs []*orchestratorv1.ValidationError) {
	slices.SortStableFunc(errs, func(a, b *orchestratorv1.ValidationError) int {
		if c := comparePaths(a.GetPath(), b.GetPath()); c != 0 {
			return c
		}
		if c := cmp.Compare(a.GetLine(), b.GetLine()); c != 0 {
			return c
		}
		if c := cmp.Compare(a.GetColumn(), b.GetColumn()); c != 0 {
			return c
		}
		return strings.Compare(a.GetMessage(), b.GetMessage())
	})
}

// comparePaths compares paths so that "steps[2]" sorts before "steps[10]".
func comparePaths(a, b string) int {
	for a != "" && b != "" {
		da, db := digitPrefix(a), digitPrefix(b)
		if da > 0 && db > 0 {
			na, _ := strconv.ParseUint(strings.TrimLeft(a[:da], "0")+"0", 10, 64)
			nb, _ := strconv.ParseUint(strings.TrimLeft(b[:db], "0")+"0", 10, 64)
			if c := cmp.Compare(na, nb); c != 0 {
				return c
			}
			a, b = a[da:], b[db:]
			continue
		}
		if c := cmp.Compare(a[0], b[0]); c != 0 {
			return c
		}
		a, b = a[1:], b[1:]
	}
	return cmp.Compare(len(a), len(b))
}

func digitPrefix(s string) int {
	n := 0
	for n < len(s) && n < 18 && s[n] >= '0' && s[n] <= '9' {
		n++
	}
	return n
}
