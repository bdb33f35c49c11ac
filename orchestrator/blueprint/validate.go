package blueprint

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"sync"

	"buf.build/go/protovalidate"
	"cel.dev/cel-go/cel"
	celast "cel.dev/cel-go/common/ast"
	"cel.dev/cel-go/common/types"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"

	orchestratorv1 "github.com/loom-dev/loom/gen/loom/orchestrator/v1"
	"github.com/loom-dev/loom/internal/jsonschema"
)

// maxSteps is the most steps a blueprint may have (the contract's limit).
const maxSteps = 256

// maxExpressionBytes is the longest expression compiled; longer ones are reported by the field rules.
const maxExpressionBytes = 4096

// envs holds the CEL environments expressions are checked in. Built once, read-only afterwards.
type envs struct {
	base *cel.Env // input, steps
	item *cel.Env // input, steps, item (map step inputs)
}

var loadEnvs = sync.OnceValues(func() (*envs, error) {
	base, err := cel.NewEnv(
		cel.Variable("input", cel.MapType(cel.StringType, cel.DynType)),
		cel.Variable("steps", cel.MapType(cel.StringType, cel.DynType)),
	)
	if err != nil {
		return nil, err
	}
	item, err := base.Extend(cel.Variable("item", cel.DynType))
	if err != nil {
		return nil, err
	}
	return &envs{base: base, item: item}, nil
})

var loadValidator = sync.OnceValues(func() (protovalidate.Validator, error) { return protovalidate.New() })

// NewCELEnv returns the CEL environment blueprint expressions are evaluated in; withItem adds `item`, declared
// in map step inputs. The environment is shared and safe for concurrent use.
func NewCELEnv(withItem bool) (*cel.Env, error) {
	e, err := loadEnvs()
	if err != nil {
		return nil, err
	}
	if withItem {
		return e.item, nil
	}
	return e.base, nil
}

type validator struct {
	pos    map[string]Position
	limits Limits
	errs   []*orchestratorv1.ValidationError
}

func (v *validator) errorf(path, format string, args ...any) {
	v.errs = append(v.errs, &orchestratorv1.ValidationError{Path: path, Message: fmt.Sprintf(format, args...)})
}

func validate(bp *orchestratorv1.Blueprint, pos map[string]Position, limits Limits) []*orchestratorv1.ValidationError {
	v := &validator{pos: pos, limits: limits.WithDefaults()}
	if bp == nil {
		v.errorf("", "blueprint is required")
		return v.errs
	}
	v.fieldRules(bp)
	v.durations(bp)
	v.schemas(bp)
	index := v.ids(bp)
	v.references(bp, index)
	v.layout(bp, index)
	// Graph and expression checks grow faster than linearly; past the step limit (already reported by the field
	// rules) they are skipped so hostile documents stay cheap.
	if len(bp.GetSteps()) <= maxSteps {
		acyclic := !v.cycles(bp, index)
		if acyclic {
			v.reachability(bp, index)
		}
		v.expressions(bp, index, acyclic)
	}
	for _, e := range v.errs {
		if e.Line == 0 {
			e.Line, e.Column = v.position(e.Path)
		}
	}
	sortErrors(v.errs)
	return slices.CompactFunc(v.errs, func(a, b *orchestratorv1.ValidationError) bool {
		return a.GetPath() == b.GetPath() && a.GetMessage() == b.GetMessage()
	})
}

// position returns the position of path, or of its nearest ancestor that has one.
func (v *validator) position(path string) (int32, int32) {
	if v.pos == nil {
		return 0, 0
	}
	for {
		if p, ok := v.pos[path]; ok {
			return p.Line, p.Column
		}
		i := strings.LastIndexAny(path, ".[")
		if i <= 0 {
			return 0, 0
		}
		path = path[:i]
	}
}

// fieldRules applies the protovalidate rules of the contract (patterns, lengths, required kinds).
func (v *validator) fieldRules(bp *orchestratorv1.Blueprint) {
	pv, err := loadValidator()
	if err != nil {
		v.errorf("", "field rules unavailable: %v", err)
		return
	}
	err = pv.Validate(bp)
	var verr *protovalidate.ValidationError
	if errors.As(err, &verr) {
		for _, viol := range verr.Violations {
			path := protovalidate.FieldPathString(viol.Proto.GetField())
			msg := viol.Proto.GetMessage()
			if viol.Proto.GetRuleId() == "required" && strings.HasSuffix(viol.Proto.GetMessage(), "oneof") {
				msg = "a step needs exactly one kind: " + kindNames()
			}
			v.errorf(path, "%s", msg)
		}
	} else if err != nil {
		v.errorf("", "field rules: %v", err)
	}
}

// kindNames lists the step kinds of the contract, from the descriptor of Step's oneof: "agent, ... or delay".
func kindNames() string {
	fields := (&orchestratorv1.Step{}).ProtoReflect().Descriptor().Oneofs().ByName("kind").Fields()
	names := make([]string, fields.Len())
	for i := range names {
		names[i] = string(fields.Get(i).Name())
	}
	if len(names) < 2 {
		return strings.Join(names, "")
	}
	return strings.Join(names[:len(names)-1], ", ") + " or " + names[len(names)-1]
}

func (v *validator) durations(bp *orchestratorv1.Blueprint) {
	positive := func(path string, d *durationpb.Duration) {
		if d == nil {
			return
		}
		if err := d.CheckValid(); err != nil {
			v.errorf(path, "invalid duration")
		} else if d.AsDuration() <= 0 {
			v.errorf(path, "must be greater than 0")
		}
	}
	positive("run_deadline", bp.GetRunDeadline())
	for i, s := range bp.GetSteps() {
		p := stepPath(i)
		positive(p+".timeout", s.GetTimeout())
		if r := s.GetRetry(); r != nil {
			ib, mb := r.GetInitialBackoff(), r.GetMaxBackoff()
			for _, b := range []struct {
				name string
				d    *durationpb.Duration
			}{{"initial_backoff", ib}, {"max_backoff", mb}} {
				if b.d == nil {
					continue
				}
				if b.d.CheckValid() != nil {
					v.errorf(p+".retry."+b.name, "invalid duration")
				} else if b.d.AsDuration() < 0 {
					v.errorf(p+".retry."+b.name, "must not be negative")
				}
			}
			if ib != nil && mb != nil && ib.CheckValid() == nil && mb.CheckValid() == nil && ib.AsDuration() > mb.AsDuration() {
				v.errorf(p+".retry.initial_backoff", "must not be greater than max_backoff (%s > %s)", ib.AsDuration(), mb.AsDuration())
			}
		}
		if a := s.GetApproval(); a != nil {
			positive(p+".approval.deadline", a.GetDeadline())
		}
	}
}

// schemas reports an input_schema or approval payload_schema that is not a valid JSON Schema, at the path of the
// bad keyword, so a blueprint whose runs could never start, or whose approvals could never be given, is refused
// when it is saved. Run inputs and payloads are checked against them by the same validator.
func (v *validator) schemas(bp *orchestratorv1.Blueprint) {
	check := func(path string, schema *structpb.Struct) {
		if schema == nil {
			return
		}
		var se *jsonschema.SchemaError
		if errors.As(jsonschema.Check(schema.AsMap(), jsonschema.Limits{}), &se) {
			if se.Path != "" {
				path += "." + se.Path
			}
			v.errorf(path, "not a valid JSON Schema: %s", se.Reason)
		}
	}
	check("input_schema", bp.GetInputSchema())
	for i, s := range bp.GetSteps() {
		check(stepPath(i)+".approval.payload_schema", s.GetApproval().GetPayloadSchema())
	}
}

func stepPath(i int) string { return "steps[" + strconv.Itoa(i) + "]" }

// ids reports duplicate step ids and returns the index of the first step with each id.
func (v *validator) ids(bp *orchestratorv1.Blueprint) map[string]int {
	index := make(map[string]int, len(bp.GetSteps()))
	for i, s := range bp.GetSteps() {
		if s.GetId() == "" {
			continue
		}
		if j, ok := index[s.GetId()]; ok {
			v.errorf(stepPath(i)+".id", "duplicate step id %q (also steps[%d])", s.GetId(), j)
			continue
		}
		index[s.GetId()] = i
	}
	return index
}

// ref is one reference from a step to another: depends_on, branch targets, parallel members.
type ref struct {
	path string
	from int    // referencing step
	to   int    // referenced step
	kind string // "depends_on", "then", "else", "parallel"
}

// refs returns the resolvable references of bp, reporting unknown ones when report is set.
func (v *validator) refs(bp *orchestratorv1.Blueprint, index map[string]int, report bool) []ref {
	var out []ref
	add := func(path string, from int, id, kind string) {
		to, ok := index[id]
		if !ok {
			if report && id != "" {
				v.errorf(path, "unknown step %q", id)
			}
			return
		}
		out = append(out, ref{path: path, from: from, to: to, kind: kind})
	}
	for i, s := range bp.GetSteps() {
		p := stepPath(i)
		for k, id := range s.GetDependsOn() {
			add(p+".depends_on["+strconv.Itoa(k)+"]", i, id, "depends_on")
		}
		if b := s.GetBranch(); b != nil {
			for k, id := range b.GetThenSteps() {
				add(p+".branch.then_steps["+strconv.Itoa(k)+"]", i, id, "then")
			}
			for k, id := range b.GetElseSteps() {
				add(p+".branch.else_steps["+strconv.Itoa(k)+"]", i, id, "else")
			}
		}
		if par := s.GetParallel(); par != nil {
			for k, id := range par.GetSteps() {
				add(p+".parallel.steps["+strconv.Itoa(k)+"]", i, id, "parallel")
			}
		}
	}
	return out
}

// references reports unknown ids, self references, and steps claimed by two branches or parallel groups.
func (v *validator) references(bp *orchestratorv1.Blueprint, index map[string]int) {
	owner := make(map[int]ref)
	for _, r := range v.refs(bp, index, true) {
		if r.from == r.to {
			if r.kind == "depends_on" {
				continue // reported as a cycle
			}
			v.errorf(r.path, "a step cannot contain itself")
			continue
		}
		if r.kind == "depends_on" {
			continue
		}
		if o, ok := owner[r.to]; ok {
			v.errorf(r.path, "step %q is already a %s target of step %q (%s)", bp.GetSteps()[r.to].GetId(),
				o.kind, bp.GetSteps()[o.from].GetId(), o.path)
			continue
		}
		owner[r.to] = r
	}
}

// edges returns, for each step, the steps that must start after it (deduplicated, in index order).
func edges(refs []ref, n int) [][]int {
	out := make([][]int, n)
	for _, r := range refs {
		from, to := r.from, r.to
		if r.kind == "depends_on" {
			from, to = r.to, r.from
		}
		if !slices.Contains(out[from], to) {
			out[from] = append(out[from], to)
		}
	}
	for _, e := range out {
		slices.Sort(e)
	}
	return out
}

// cycles reports every distinct dependency cycle and reports whether there was one.
func (v *validator) cycles(bp *orchestratorv1.Blueprint, index map[string]int) bool {
	steps := bp.GetSteps()
	next := edges(v.refs(bp, index, false), len(steps))
	const (
		white = iota
		grey
		black
	)
	color := make([]int, len(steps))
	var stack []int
	seen := make(map[string]bool)
	found := false
	var visit func(int)
	visit = func(u int) {
		color[u] = grey
		stack = append(stack, u)
		for _, w := range next[u] {
			switch color[w] {
			case white:
				visit(w)
			case grey:
				start := slices.Index(stack, w)
				cycle := slices.Clone(stack[start:])
				// Rotate so the cycle starts at its first step, which makes reports stable.
				m := slices.Index(cycle, slices.Min(cycle))
				cycle = append(cycle[m:], cycle[:m]...)
				names := make([]string, 0, len(cycle)+1)
				for _, c := range cycle {
					names = append(names, steps[c].GetId())
				}
				names = append(names, steps[cycle[0]].GetId())
				key := strings.Join(names, " -> ")
				if !seen[key] {
					seen[key] = true
					found = true
					v.errorf(stepPath(cycle[0]), "dependency cycle: %s", key)
				}
			}
		}
		stack = stack[:len(stack)-1]
		color[u] = black
	}
	for i := range steps {
		if _, ok := index[steps[i].GetId()]; ok && color[i] == white {
			visit(i)
		}
	}
	return found
}

// guard is a branch side a step needs: the branch's step index and whether it is the then side.
type guard struct {
	branch int
	then   bool
}

// reachability reports steps that can never run because they need both sides of one branch. It requires an
// acyclic graph.
func (v *validator) reachability(bp *orchestratorv1.Blueprint, index map[string]int) {
	steps := bp.GetSteps()
	refs := v.refs(bp, index, false)
	next := edges(refs, len(steps))
	// Kahn's algorithm, lowest index first, for a deterministic order.
	indeg := make([]int, len(steps))
	for _, ns := range next {
		for _, w := range ns {
			indeg[w]++
		}
	}
	var ready, order []int
	for i := range steps {
		if indeg[i] == 0 {
			ready = append(ready, i)
		}
	}
	for len(ready) > 0 {
		slices.Sort(ready)
		u := ready[0]
		ready = ready[1:]
		order = append(order, u)
		for _, w := range next[u] {
			if indeg[w]--; indeg[w] == 0 {
				ready = append(ready, w)
			}
		}
	}
	guards := make([]map[guard]bool, len(steps))
	for i := range guards {
		guards[i] = make(map[guard]bool)
	}
	for _, r := range refs {
		if r.kind == "then" || r.kind == "else" {
			guards[r.to][guard{branch: r.from, then: r.kind == "then"}] = true
		}
	}
	reported := make(map[int]bool)
	inherited := make(map[int]bool) // a predecessor is already reported: do not repeat the report
	for _, u := range order {
		for g := range guards[u] {
			if g.then && guards[u][guard{branch: g.branch, then: false}] && !reported[u] && !inherited[u] {
				reported[u] = true
				v.errorf(stepPath(u), "step %q can never run: it needs both the then and the else side of branch %q",
					steps[u].GetId(), steps[g.branch].GetId())
			}
		}
		for _, w := range next[u] {
			for g := range guards[u] {
				guards[w][g] = true
			}
			if reported[u] || inherited[u] {
				inherited[w] = true
			}
		}
	}
}

// expressions compiles every CEL expression and checks its type and the steps it names: a step expression may
// only read steps that are sure to have finished before it starts.
func (v *validator) expressions(bp *orchestratorv1.Blueprint, index map[string]int, acyclic bool) {
	e, err := loadEnvs()
	if err != nil {
		v.errorf("", "expressions unavailable: %v", err)
		return
	}
	steps := bp.GetSteps()
	preds := predecessors(v.refs(bp, index, false), bp, len(steps))
	check := func(env *cel.Env, path, expr string, want *types.Type, step int) {
		ast := v.expression(env, path, expr, want)
		if ast == nil {
			return
		}
		v.cost(env, ast, path, step, steps)
		var before map[int]bool
		if step >= 0 && acyclic {
			before = ancestors(preds, step)
		}
		for _, id := range stepRefs(ast) {
			j, ok := index[id]
			switch {
			case !ok:
				v.errorf(path, "unknown step %q in expression", id)
			case before != nil && !before[j]:
				v.errorf(path, "step %q may not have finished when this step starts: add it to depends_on", id)
			}
		}
	}
	if bp.GetOutput() != "" {
		check(e.base, "output", bp.GetOutput(), nil, -1)
	}
	for i, s := range steps {
		p := stepPath(i)
		switch k := s.GetKind().(type) {
		case *orchestratorv1.Step_Agent:
			check(e.base, p+".agent.input", k.Agent.GetInput(), types.StringType, i)
		case *orchestratorv1.Step_MemorySearch:
			check(e.base, p+".memory_search.query", k.MemorySearch.GetQuery(), types.StringType, i)
		case *orchestratorv1.Step_MemoryUpsert:
			check(e.base, p+".memory_upsert.text", k.MemoryUpsert.GetText(), types.StringType, i)
		case *orchestratorv1.Step_Branch:
			check(e.base, p+".branch.condition", k.Branch.GetCondition(), types.BoolType, i)
		case *orchestratorv1.Step_Map:
			check(e.base, p+".map.items", k.Map.GetItems(), types.NewListType(types.DynType), i)
			check(e.item, p+".map.input", k.Map.GetInput(), types.StringType, i)
		case *orchestratorv1.Step_Parallel, *orchestratorv1.Step_Approval, *orchestratorv1.Step_Delay, nil:
			// No expressions (a missing kind is reported by the field rules).
		default:
			// A kind added to the contract and not here (TestEveryStepKind catches it).
			v.errorf(p, "step kind %T is not validated", k)
		}
	}
}

// predecessors returns, for each step, the steps that finish before it starts: its dependencies, the branch or
// parallel step that contains it, and, for a parallel step, its members.
func predecessors(refs []ref, bp *orchestratorv1.Blueprint, n int) [][]int {
	out := make([][]int, n)
	for _, r := range refs {
		switch r.kind {
		case "depends_on":
			out[r.from] = append(out[r.from], r.to)
		case "then", "else":
			out[r.to] = append(out[r.to], r.from)
		case "parallel":
			// A member starts when the parallel step starts; the parallel step finishes after its members.
			out[r.from] = append(out[r.from], r.to)
			out[r.to] = append(out[r.to], ancestorsMarker(r.from))
		}
	}
	_ = bp
	return out
}

// ancestorsMarker encodes "the predecessors of parallel step i, but not i itself" as a negative index.
func ancestorsMarker(i int) int { return -1 - i }

// ancestors returns the steps sure to have finished before step i starts.
func ancestors(preds [][]int, i int) map[int]bool {
	seen := make(map[int]bool)
	expanded := make(map[int]bool)
	var walk func(int)
	walk = func(u int) {
		if expanded[u] {
			return
		}
		expanded[u] = true
		for _, p := range preds[u] {
			if p < 0 { // a parallel owner: its own predecessors have finished, it has not
				walkOwner := -1 - p
				for _, q := range preds[walkOwner] {
					if q >= 0 && !isMemberOf(preds, q, walkOwner) {
						seen[q] = true
						walk(q)
					}
				}
				continue
			}
			seen[p] = true
			walk(p)
		}
	}
	walk(i)
	return seen
}

// isMemberOf reports whether q is a member of parallel step owner.
func isMemberOf(preds [][]int, q, owner int) bool {
	return slices.Contains(preds[q], ancestorsMarker(owner))
}

// stepRefs returns the step ids an expression reads as steps.id or steps["id"], sorted and unique.
func stepRefs(a *cel.Ast) []string {
	var ids []string
	celast.PreOrderVisit(a.NativeRep().Expr(), celast.NewExprVisitor(func(e celast.Expr) {
		switch e.Kind() {
		case celast.SelectKind:
			sel := e.AsSelect()
			if op := sel.Operand(); op.Kind() == celast.IdentKind && op.AsIdent() == "steps" {
				ids = append(ids, sel.FieldName())
			}
		case celast.CallKind:
			call := e.AsCall()
			if call.FunctionName() == "_[_]" && len(call.Args()) == 2 {
				op, key := call.Args()[0], call.Args()[1]
				if op.Kind() == celast.IdentKind && op.AsIdent() == "steps" && key.Kind() == celast.LiteralKind {
					if s, ok := key.AsLiteral().Value().(string); ok {
						ids = append(ids, s)
					}
				}
			}
		}
	}))
	slices.Sort(ids)
	return slices.Compact(ids)
}

// expression compiles expr in env and, when want is set, checks that its type is want (or dyn). It returns the
// checked expression, or nil after reporting an error.
func (v *validator) expression(env *cel.Env, path, expr string, want *types.Type) *cel.Ast {
	if expr == "" || len(expr) > maxExpressionBytes {
		return nil // reported by the field rules
	}
	ast, iss := env.Compile(expr)
	if iss != nil && iss.Err() != nil {
		var msgs []string
		for _, e := range iss.Errors() {
			msgs = append(msgs, fmt.Sprintf("column %d: %s", e.Location.Column()+1, e.Message))
		}
		v.errorf(path, "invalid expression: %s", strings.Join(msgs, "; "))
		return nil
	}
	if want == nil {
		return ast
	}
	got := ast.OutputType()
	if got.Kind() == types.DynKind || got.Kind() == types.AnyKind || want.IsAssignableType(got) ||
		(want.Kind() == types.ListKind && got.Kind() == types.ListKind) {
		return ast
	}
	v.errorf(path, "expression has type %s, want %s", got, want)
	return nil
}

// cost refuses an expression whose estimated worst case exceeds the cost limit.
func (v *validator) cost(env *cel.Env, ast *cel.Ast, path string, step int, steps []*orchestratorv1.Step) {
	where := "the output expression"
	if step >= 0 {
		where = fmt.Sprintf("step %q", steps[step].GetId())
	}
	est, err := v.limits.EstimateCost(env, ast)
	if err != nil {
		v.errorf(path, "%s: cannot estimate the expression's cost: %v", where, err)
		return
	}
	if est > v.limits.Cost {
		v.errorf(path, "%s: the expression may cost up to %s units, over the limit of %d (lists, maps and strings "+
			"from input and steps counted as %d long): nest fewer comprehensions or iterate over less", where,
			costString(est), v.limits.Cost, v.limits.AssumedSize)
	}
}

func costString(c uint64) string {
	if c == math.MaxUint64 {
		return "an unbounded number of"
	}
	return strconv.FormatUint(c, 10)
}

// layout checks that every saved position belongs to a step, and is within the canvas's bounds.
func (v *validator) layout(bp *orchestratorv1.Blueprint, index map[string]int) {
	for id, p := range bp.GetLayout() {
		path := "layout." + id
		if _, ok := index[id]; !ok {
			v.errorf(path, "no step %q: a position needs its step", id)
		}
		for _, c := range []float64{p.GetX(), p.GetY()} {
			if math.IsNaN(c) || math.Abs(c) > 1e6 {
				v.errorf(path, "position must be within +-1e6")
			}
		}
	}
}
