package jsonschema

import (
	"strconv"

	js "github.com/santhosh-tekuri/jsonschema/v6"
)

// DefaultMaxWork is the default Limits.MaxWork. Measured here, the library spends 0.1 to 3 µs per application
// (failures, which build errors, cost the most), so a validation stays under about 3 s of CPU in the worst case
// and well under 0.5 s for a value that matches.
const DefaultMaxWork = 1_000_000

// work counts, before validating, how many times the library could apply a subschema to a part of the value: a
// schema whose references fan out (an anyOf of two branches that each refer back to the root, applied to
// nested arrays) makes that number, and the validation time, exponential in the value's depth. It follows the
// compiled schema's applicators over the value: in-place ones ($ref, allOf, anyOf, oneOf, not, if/then/else,
// dependentSchemas) at the same location, the others on the members and items they apply to. It is an upper
// bound: the library may stop earlier.
type work struct {
	n, max int
}

// apply counts applying s to v and everything it applies below; it reports false once the count passes max.
// onStack holds the schemas applied at v's location on the way here: a schema met again in place is a reference
// cycle, which the library stops on its own.
func (w *work) apply(s *js.Schema, v any, onStack map[*js.Schema]bool) bool {
	if s == nil || onStack[s] {
		return true
	}
	w.n++
	if w.n > w.max {
		return false
	}
	onStack[s] = true
	defer delete(onStack, s)
	inPlace := []*js.Schema{s.Ref, s.RecursiveRef, s.Not, s.If, s.Then, s.Else}
	if s.DynamicRef != nil {
		inPlace = append(inPlace, s.DynamicRef.Ref)
	}
	inPlace = append(inPlace, s.AllOf...)
	inPlace = append(inPlace, s.AnyOf...)
	inPlace = append(inPlace, s.OneOf...)
	for _, d := range s.DependentSchemas {
		inPlace = append(inPlace, d)
	}
	for _, d := range s.Dependencies {
		if d, ok := d.(*js.Schema); ok {
			inPlace = append(inPlace, d)
		}
	}
	for _, c := range inPlace {
		if !w.apply(c, v, onStack) {
			return false
		}
	}
	below := func(c *js.Schema, child any) bool { return w.apply(c, child, map[*js.Schema]bool{}) }
	switch x := v.(type) {
	case map[string]any:
		for k, child := range x {
			if !below(s.PropertyNames, k) {
				return false
			}
			matched := false
			if p, ok := s.Properties[k]; ok {
				matched = true
				if !below(p, child) {
					return false
				}
			}
			for re, p := range s.PatternProperties {
				if re.MatchString(k) {
					matched = true
					if !below(p, child) {
						return false
					}
				}
			}
			if ap, ok := s.AdditionalProperties.(*js.Schema); ok && !matched && !below(ap, child) {
				return false
			}
			if !below(s.UnevaluatedProperties, child) {
				return false
			}
		}
	case []any:
		for i, child := range x {
			var cs []*js.Schema
			switch {
			case i < len(s.PrefixItems):
				cs = append(cs, s.PrefixItems[i])
			default:
				cs = append(cs, s.Items2020)
			}
			switch items := s.Items.(type) {
			case *js.Schema:
				cs = append(cs, items)
			case []*js.Schema:
				if i < len(items) {
					cs = append(cs, items[i])
				} else if ai, ok := s.AdditionalItems.(*js.Schema); ok {
					cs = append(cs, ai)
				}
			}
			cs = append(cs, s.Contains, s.UnevaluatedItems)
			for _, c := range cs {
				if !below(c, child) {
					return false
				}
			}
		}
	}
	return true
}

// tooMuchWork reports the reason a value is refused for the work it would take, or "" when it is within max.
func tooMuchWork(s *js.Schema, v any, max int) string {
	w := &work{max: max}
	if w.apply(s, v, map[*js.Schema]bool{}) {
		return ""
	}
	return "too costly to check against its schema: more than " + strconv.Itoa(max) + " subschema applications"
}
