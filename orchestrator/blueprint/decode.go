package blueprint

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"strconv"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"gopkg.in/yaml.v3"

	agentv1 "github.com/loom-dev/loom/gen/loom/agent/v1"
	orchestratorv1 "github.com/loom-dev/loom/gen/loom/orchestrator/v1"
)

// maxStructDepth bounds the nesting of schema mappings, so hostile input cannot exhaust the stack.
const maxStructDepth = 64

// Parse decodes a YAML or JSON blueprint. It reports every decoding problem (syntax, unknown keys, wrong types,
// bad durations) with its path and position; Parse does not validate the blueprint (see [Document.Validate]).
// The Document is nil only when the source cannot be read as a YAML mapping at all; otherwise it holds
// everything that could be decoded, even when errors are returned.
func Parse(src []byte) (*Document, []*orchestratorv1.ValidationError) {
	if len(src) > MaxSourceBytes {
		return nil, []*orchestratorv1.ValidationError{{Message: fmt.Sprintf("document is larger than %d bytes", MaxSourceBytes)}}
	}
	dec := yaml.NewDecoder(bytes.NewReader(src))
	var root yaml.Node
	if err := dec.Decode(&root); err != nil {
		msg := "empty document"
		if !errors.Is(err, io.EOF) {
			msg = err.Error()
		}
		line := int32(0)
		var n int
		if _, scanErr := fmt.Sscanf(msg, "yaml: line %d:", &n); scanErr == nil && n > 0 && n < math.MaxInt32 {
			line = int32(n)
		}
		return nil, []*orchestratorv1.ValidationError{{Message: msg, Line: line, Column: boolToCol(line)}}
	}
	var extra yaml.Node
	d := &decoder{pos: make(map[string]Position)}
	if err := dec.Decode(&extra); err == nil {
		d.errorf("", &extra, "only one YAML document is allowed")
	}
	node := &root
	if node.Kind == yaml.DocumentNode && len(node.Content) == 1 {
		node = node.Content[0]
	}
	if node.Kind != yaml.MappingNode {
		return nil, []*orchestratorv1.ValidationError{{Message: "blueprint must be a mapping", Line: int32(node.Line), Column: int32(node.Column)}}
	}
	bp := &orchestratorv1.Blueprint{}
	d.blueprint(node, bp)
	sortErrors(d.errs)
	return &Document{Blueprint: bp, Positions: d.pos}, d.errs
}

func boolToCol(line int32) int32 {
	if line > 0 {
		return 1
	}
	return 0
}

type decoder struct {
	pos  map[string]Position
	errs []*orchestratorv1.ValidationError
}

func (d *decoder) errorf(path string, n *yaml.Node, format string, args ...any) {
	e := &orchestratorv1.ValidationError{Path: path, Message: fmt.Sprintf(format, args...)}
	if n != nil {
		e.Line, e.Column = int32(n.Line), int32(n.Column)
	}
	d.errs = append(d.errs, e)
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

// mapping walks the key/value pairs of n, calling fields[key] for each known key and reporting unknown and
// duplicate keys. It reports false if n is not a mapping.
func (d *decoder) mapping(path string, n *yaml.Node, fields map[string]func(path string, v *yaml.Node)) bool {
	if !d.resolved(path, n) {
		return false
	}
	if n.Kind != yaml.MappingNode {
		d.errorf(path, n, "must be a mapping")
		return false
	}
	seen := make(map[string]bool, len(n.Content)/2)
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if k.Kind != yaml.ScalarNode {
			d.errorf(path, k, "keys must be strings")
			continue
		}
		p := join(path, k.Value)
		if seen[k.Value] {
			d.errorf(p, k, "duplicate key %q", k.Value)
			continue
		}
		seen[k.Value] = true
		f, ok := fields[k.Value]
		if !ok {
			d.errorf(p, k, "unknown key %q", k.Value)
			continue
		}
		d.pos[p] = Position{Line: int32(v.Line), Column: int32(v.Column)}
		f(p, v)
	}
	return true
}

// resolved reports whether n can be decoded: aliases are refused (they allow exponential documents).
func (d *decoder) resolved(path string, n *yaml.Node) bool {
	if n.Kind == yaml.AliasNode {
		d.errorf(path, n, "YAML aliases are not supported")
		return false
	}
	return true
}

func isNull(n *yaml.Node) bool { return n.Kind == yaml.ScalarNode && n.Tag == "!!null" }

func (d *decoder) str(path string, n *yaml.Node) string {
	if !d.resolved(path, n) || isNull(n) {
		return ""
	}
	if n.Kind != yaml.ScalarNode {
		d.errorf(path, n, "must be a string")
		return ""
	}
	return n.Value
}

func (d *decoder) int32(path string, n *yaml.Node) int32 {
	if !d.resolved(path, n) || isNull(n) {
		return 0
	}
	var v int32
	if n.Kind != yaml.ScalarNode || n.Tag != "!!int" || n.Decode(&v) != nil {
		d.errorf(path, n, "must be an integer")
		return 0
	}
	return v
}

func (d *decoder) int64(path string, n *yaml.Node) int64 {
	if !d.resolved(path, n) || isNull(n) {
		return 0
	}
	var v int64
	if n.Kind != yaml.ScalarNode || n.Tag != "!!int" || n.Decode(&v) != nil {
		d.errorf(path, n, "must be an integer")
		return 0
	}
	return v
}

func (d *decoder) duration(path string, n *yaml.Node) *durationpb.Duration {
	if !d.resolved(path, n) || isNull(n) {
		return nil
	}
	if n.Kind != yaml.ScalarNode {
		d.errorf(path, n, "must be a duration like \"30s\"")
		return nil
	}
	v, err := time.ParseDuration(n.Value)
	if err != nil {
		d.errorf(path, n, "invalid duration %q: use a Go duration like \"30s\" or \"1h30m\"", n.Value)
		return nil
	}
	return durationpb.New(v)
}

func (d *decoder) strings(path string, n *yaml.Node) []string {
	if !d.resolved(path, n) || isNull(n) {
		return nil
	}
	if n.Kind != yaml.SequenceNode {
		d.errorf(path, n, "must be a list of strings")
		return nil
	}
	out := make([]string, 0, len(n.Content))
	for i, e := range n.Content {
		p := path + "[" + strconv.Itoa(i) + "]"
		d.pos[p] = Position{Line: int32(e.Line), Column: int32(e.Column)}
		out = append(out, d.str(p, e))
	}
	return out
}

func (d *decoder) structValue(path string, n *yaml.Node) *structpb.Struct {
	if !d.resolved(path, n) || isNull(n) {
		return nil
	}
	if n.Kind != yaml.MappingNode {
		d.errorf(path, n, "must be a mapping")
		return nil
	}
	v, ok := d.value(path, n, 0)
	if !ok {
		return nil
	}
	return v.GetStructValue()
}

func (d *decoder) value(path string, n *yaml.Node, depth int) (*structpb.Value, bool) {
	if !d.resolved(path, n) {
		return nil, false
	}
	if depth > maxStructDepth {
		d.errorf(path, n, "nested deeper than %d levels", maxStructDepth)
		return nil, false
	}
	switch n.Kind {
	case yaml.ScalarNode:
		switch n.Tag {
		case "!!null":
			return structpb.NewNullValue(), true
		case "!!bool":
			var b bool
			if n.Decode(&b) == nil {
				return structpb.NewBoolValue(b), true
			}
		case "!!int", "!!float":
			var f float64
			if n.Decode(&f) == nil {
				return structpb.NewNumberValue(f), true
			}
		default:
			return structpb.NewStringValue(n.Value), true
		}
		d.errorf(path, n, "invalid value %q", n.Value)
		return nil, false
	case yaml.SequenceNode:
		l := &structpb.ListValue{}
		for i, e := range n.Content {
			v, ok := d.value(path+"["+strconv.Itoa(i)+"]", e, depth+1)
			if !ok {
				return nil, false
			}
			l.Values = append(l.Values, v)
		}
		return structpb.NewListValue(l), true
	case yaml.MappingNode:
		s := &structpb.Struct{Fields: make(map[string]*structpb.Value, len(n.Content)/2)}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k := n.Content[i]
			if k.Kind != yaml.ScalarNode {
				d.errorf(path, k, "keys must be strings")
				return nil, false
			}
			v, ok := d.value(join(path, k.Value), n.Content[i+1], depth+1)
			if !ok {
				return nil, false
			}
			s.Fields[k.Value] = v
		}
		return structpb.NewStructValue(s), true
	}
	d.errorf(path, n, "unsupported value")
	return nil, false
}

func (d *decoder) blueprint(n *yaml.Node, bp *orchestratorv1.Blueprint) {
	d.mapping("", n, map[string]func(string, *yaml.Node){
		"name":         func(p string, v *yaml.Node) { bp.Name = d.str(p, v) },
		"description":  func(p string, v *yaml.Node) { bp.Description = d.str(p, v) },
		"input_schema": func(p string, v *yaml.Node) { bp.InputSchema = d.structValue(p, v) },
		"run_deadline": func(p string, v *yaml.Node) { bp.RunDeadline = d.duration(p, v) },
		"output":       func(p string, v *yaml.Node) { bp.Output = d.str(p, v) },
		"layout":       func(p string, v *yaml.Node) { bp.Layout = d.layout(p, v) },
		"steps": func(p string, v *yaml.Node) {
			if !d.resolved(p, v) || isNull(v) {
				return
			}
			if v.Kind != yaml.SequenceNode {
				d.errorf(p, v, "must be a list of steps")
				return
			}
			for i, e := range v.Content {
				sp := p + "[" + strconv.Itoa(i) + "]"
				d.pos[sp] = Position{Line: int32(e.Line), Column: int32(e.Column)}
				bp.Steps = append(bp.Steps, d.step(sp, e))
			}
		},
	})
}

// layout decodes "layout: {step_id: {x: 40, y: 160}, ...}", the positions an editor saved.
func (d *decoder) layout(path string, n *yaml.Node) map[string]*orchestratorv1.Point {
	if !d.resolved(path, n) || isNull(n) {
		return nil
	}
	if n.Kind != yaml.MappingNode {
		d.errorf(path, n, "must map step ids to positions {x, y}")
		return nil
	}
	out := map[string]*orchestratorv1.Point{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		p := join(path, k.Value)
		pt := &orchestratorv1.Point{}
		d.mapping(p, v, map[string]func(string, *yaml.Node){
			"x": func(p string, v *yaml.Node) { pt.X = d.float(p, v) },
			"y": func(p string, v *yaml.Node) { pt.Y = d.float(p, v) },
		})
		out[k.Value] = pt
	}
	return out
}

// chaos decodes an agent step's chaos, whose fields are the agent contract's Chaos message, by name:
// "chaos: {seed: 7, fail_attempts: 2, code: CHAOS_CODE_UNAVAILABLE, latency_min: 10ms}".
func (d *decoder) chaos(path string, n *yaml.Node) *agentv1.Chaos {
	st := d.structValue(path, n)
	if st == nil {
		return nil
	}
	data, err := protojson.Marshal(st)
	if err == nil {
		c := &agentv1.Chaos{}
		if err = protojson.Unmarshal(data, c); err == nil {
			return c
		}
	}
	d.errorf(path, n, "not a chaos setting: %v", err)
	return nil
}

// float decodes a finite number.
func (d *decoder) float(path string, n *yaml.Node) float64 {
	if !d.resolved(path, n) || isNull(n) {
		return 0
	}
	var v float64
	if n.Kind != yaml.ScalarNode || (n.Tag != "!!int" && n.Tag != "!!float") || n.Decode(&v) != nil || math.IsNaN(v) || math.IsInf(v, 0) {
		d.errorf(path, n, "must be a number")
		return 0
	}
	return v
}

func (d *decoder) step(path string, n *yaml.Node) *orchestratorv1.Step {
	s := &orchestratorv1.Step{}
	kindKey := ""
	kind := func(key string, f func(p string, v *yaml.Node)) func(string, *yaml.Node) {
		return func(p string, v *yaml.Node) {
			if kindKey != "" {
				d.errorf(p, v, "a step has exactly one kind: both %q and %q are set", kindKey, key)
				return
			}
			kindKey = key
			f(p, v)
		}
	}
	d.mapping(path, n, map[string]func(string, *yaml.Node){
		"id":         func(p string, v *yaml.Node) { s.Id = d.str(p, v) },
		"depends_on": func(p string, v *yaml.Node) { s.DependsOn = d.strings(p, v) },
		"timeout":    func(p string, v *yaml.Node) { s.Timeout = d.duration(p, v) },
		"retry": func(p string, v *yaml.Node) {
			r := &orchestratorv1.RetryPolicy{}
			if d.mapping(p, v, map[string]func(string, *yaml.Node){
				"max_attempts":    func(p string, v *yaml.Node) { r.MaxAttempts = d.int32(p, v) },
				"initial_backoff": func(p string, v *yaml.Node) { r.InitialBackoff = d.duration(p, v) },
				"max_backoff":     func(p string, v *yaml.Node) { r.MaxBackoff = d.duration(p, v) },
			}) {
				s.Retry = r
			}
		},
		"agent": kind("agent", func(p string, v *yaml.Node) {
			k := &orchestratorv1.AgentStep{}
			d.mapping(p, v, map[string]func(string, *yaml.Node){
				"agent":         func(p string, v *yaml.Node) { k.Agent = d.str(p, v) },
				"agent_version": func(p string, v *yaml.Node) { k.AgentVersion = d.int64(p, v) },
				"input":         func(p string, v *yaml.Node) { k.Input = d.str(p, v) },
				"chaos":         func(p string, v *yaml.Node) { k.Chaos = d.chaos(p, v) },
			})
			s.Kind = &orchestratorv1.Step_Agent{Agent: k}
		}),
		"memory_search": kind("memory_search", func(p string, v *yaml.Node) {
			k := &orchestratorv1.MemorySearchStep{}
			d.mapping(p, v, map[string]func(string, *yaml.Node){
				"namespace": func(p string, v *yaml.Node) { k.Namespace = d.str(p, v) },
				"query":     func(p string, v *yaml.Node) { k.Query = d.str(p, v) },
				"top_k":     func(p string, v *yaml.Node) { k.TopK = d.int32(p, v) },
			})
			s.Kind = &orchestratorv1.Step_MemorySearch{MemorySearch: k}
		}),
		"memory_upsert": kind("memory_upsert", func(p string, v *yaml.Node) {
			k := &orchestratorv1.MemoryUpsertStep{}
			d.mapping(p, v, map[string]func(string, *yaml.Node){
				"namespace": func(p string, v *yaml.Node) { k.Namespace = d.str(p, v) },
				"text":      func(p string, v *yaml.Node) { k.Text = d.str(p, v) },
			})
			s.Kind = &orchestratorv1.Step_MemoryUpsert{MemoryUpsert: k}
		}),
		"branch": kind("branch", func(p string, v *yaml.Node) {
			k := &orchestratorv1.BranchStep{}
			d.mapping(p, v, map[string]func(string, *yaml.Node){
				"condition":  func(p string, v *yaml.Node) { k.Condition = d.str(p, v) },
				"then_steps": func(p string, v *yaml.Node) { k.ThenSteps = d.strings(p, v) },
				"else_steps": func(p string, v *yaml.Node) { k.ElseSteps = d.strings(p, v) },
			})
			s.Kind = &orchestratorv1.Step_Branch{Branch: k}
		}),
		"parallel": kind("parallel", func(p string, v *yaml.Node) {
			k := &orchestratorv1.ParallelStep{}
			d.mapping(p, v, map[string]func(string, *yaml.Node){
				"steps": func(p string, v *yaml.Node) { k.Steps = d.strings(p, v) },
			})
			s.Kind = &orchestratorv1.Step_Parallel{Parallel: k}
		}),
		"map": kind("map", func(p string, v *yaml.Node) {
			k := &orchestratorv1.MapStep{}
			d.mapping(p, v, map[string]func(string, *yaml.Node){
				"items":         func(p string, v *yaml.Node) { k.Items = d.str(p, v) },
				"agent":         func(p string, v *yaml.Node) { k.Agent = d.str(p, v) },
				"input":         func(p string, v *yaml.Node) { k.Input = d.str(p, v) },
				"concurrency":   func(p string, v *yaml.Node) { k.Concurrency = d.int32(p, v) },
				"agent_version": func(p string, v *yaml.Node) { k.AgentVersion = d.int64(p, v) },
			})
			s.Kind = &orchestratorv1.Step_Map{Map: k}
		}),
		"approval": kind("approval", func(p string, v *yaml.Node) {
			k := &orchestratorv1.ApprovalStep{}
			d.mapping(p, v, map[string]func(string, *yaml.Node){
				"prompt":         func(p string, v *yaml.Node) { k.Prompt = d.str(p, v) },
				"payload_schema": func(p string, v *yaml.Node) { k.PayloadSchema = d.structValue(p, v) },
				"deadline":       func(p string, v *yaml.Node) { k.Deadline = d.duration(p, v) },
			})
			s.Kind = &orchestratorv1.Step_Approval{Approval: k}
		}),
		"delay": kind("delay", func(p string, v *yaml.Node) {
			k := &orchestratorv1.DelayStep{}
			d.mapping(p, v, map[string]func(string, *yaml.Node){
				"duration": func(p string, v *yaml.Node) { k.Duration = d.duration(p, v) },
			})
			s.Kind = &orchestratorv1.Step_Delay{Delay: k}
		}),
	})
	return s
}

func cloneBlueprint(bp *orchestratorv1.Blueprint) *orchestratorv1.Blueprint {
	return proto.Clone(bp).(*orchestratorv1.Blueprint)
}
