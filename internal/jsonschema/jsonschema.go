// Package jsonschema is Loom's one JSON Schema validator: agent tool arguments, workflow run inputs and approval
// payloads are all checked by it. It compiles schemas with github.com/santhosh-tekuri/jsonschema/v6 (draft
// 2020-12 unless a schema's $schema names another draft the library embeds), within limits on the size and depth
// of schemas and instances and on the work of one validation, and never loads anything: a $ref to another document, over the network or on disk,
// makes the schema invalid. Formats are annotations, not assertions, as draft 2020-12 specifies by default.
//
// Errors are short, stable and name a path: a schema that is not valid is a *SchemaError naming the path to the
// bad keyword ("properties.age.minimum"); a value that does not match is a *ValidationError naming the path in
// the value ("arguments.items[1]") with one reason ("want boolean, got string"). When a value breaks several
// rules, the one reported is the first by instance path, then by keyword (type, enum and const first).
package jsonschema

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"

	js "github.com/santhosh-tekuri/jsonschema/v6"
	"github.com/santhosh-tekuri/jsonschema/v6/kind"
	"golang.org/x/text/language"
	"golang.org/x/text/message"
)

// Defaults of Limits.
const (
	// DefaultMaxDepth is the default Limits.MaxDepth: the nesting limit of every JSON value Loom stores
	// (internal/protolimit.MaxDepth), an object or array counting one level.
	DefaultMaxDepth = 64
	// DefaultMaxSchemaBytes is the default Limits.MaxSchemaBytes.
	DefaultMaxSchemaBytes = 256 << 10
	// DefaultMaxInstanceBytes is the default Limits.MaxInstanceBytes: twice the largest request Loom accepts by
	// default, so it bounds the validator's work without refusing any value a request can carry.
	DefaultMaxInstanceBytes = 8 << 20
)

// Limits bound what is compiled and validated. Sizes are measured as the value's compact JSON encoding would be,
// approximately (strings without escapes). The zero value takes every default; a Limits is a value, safe to share.
type Limits struct {
	// MaxDepth is the deepest nesting of a schema or an instance; 0 means DefaultMaxDepth.
	MaxDepth int
	// MaxSchemaBytes is the largest schema; 0 means DefaultMaxSchemaBytes.
	MaxSchemaBytes int
	// MaxInstanceBytes is the largest instance; 0 means DefaultMaxInstanceBytes.
	MaxInstanceBytes int
	// MaxWork bounds how many times validating one instance may apply a subschema to a part of it (see
	// DefaultMaxWork); 0 means DefaultMaxWork. A schema whose references fan out could otherwise take time
	// exponential in the instance's depth.
	MaxWork int
}

func (l Limits) withDefaults() Limits {
	if l.MaxDepth <= 0 {
		l.MaxDepth = DefaultMaxDepth
	}
	if l.MaxSchemaBytes <= 0 {
		l.MaxSchemaBytes = DefaultMaxSchemaBytes
	}
	if l.MaxInstanceBytes <= 0 {
		l.MaxInstanceBytes = DefaultMaxInstanceBytes
	}
	if l.MaxWork <= 0 {
		l.MaxWork = DefaultMaxWork
	}
	return l
}

// baseURL names every compiled schema. The .invalid domain never resolves, and nothing is loaded anyway.
const baseURL = "https://loom.invalid/schema.json"

// ErrInvalidSchema is matched by every *SchemaError.
var ErrInvalidSchema = errors.New("invalid JSON Schema")

// ErrInvalid is matched by every *ValidationError.
var ErrInvalid = errors.New("value does not match its JSON Schema")

// SchemaError is a schema that cannot be compiled. It matches ErrInvalidSchema.
type SchemaError struct {
	// Path is the dotted path in the schema to the bad keyword, "" for the schema itself; for example
	// "properties.age.minimum" or "allOf[1].type".
	Path string
	// Reason says what is wrong.
	Reason string
}

// Error implements error: "path: reason", or the reason alone at the root.
func (e *SchemaError) Error() string { return joinPath(e.Path, e.Reason) }

// Is reports whether target is ErrInvalidSchema.
func (e *SchemaError) Is(target error) bool { return target == ErrInvalidSchema }

// ValidationError is a value that does not match its schema. It matches ErrInvalid.
type ValidationError struct {
	// Path is the path to the offending value: the root name given to Validate, then ".key" per object member
	// and "[i]" per array element; for a missing required property, the path it should have.
	Path string
	// Keyword is the schema keyword the value broke, such as "type", "required" or "additionalProperties"; ""
	// for a limit of this package.
	Keyword string
	// Property is the property a "required" or "additionalProperties" error is about (the first of them).
	Property string
	// Reason says what is wrong, for example "want string, got number".
	Reason string
}

// Error implements error: "path: reason".
func (e *ValidationError) Error() string { return joinPath(e.Path, e.Reason) }

// Is reports whether target is ErrInvalid.
func (e *ValidationError) Is(target error) bool { return target == ErrInvalid }

func joinPath(path, reason string) string {
	if path == "" {
		return reason
	}
	return path + ": " + reason
}

// Schema is a compiled schema. It is safe for concurrent use.
type Schema struct {
	s      *js.Schema
	limits Limits
}

// noLoader refuses every document: schemas are compiled from what they contain and the embedded metaschemas only.
type noLoader struct{}

func (noLoader) Load(string) (any, error) {
	return nil, errors.New("external schemas are not loaded")
}

// Compile compiles doc, a schema decoded from JSON (a map[string]any or a bool; numbers as float64 or
// json.Number), within limits. A schema that is too big or too deep, does not conform to its metaschema, or
// refers to another document, fails with a *SchemaError.
func Compile(doc any, limits Limits) (*Schema, error) {
	limits = limits.withDefaults()
	if e := checkValue(doc, nil, limits.MaxDepth, limits.MaxSchemaBytes); e != nil {
		return nil, &SchemaError{Path: dotted(doc, e.path), Reason: e.reason("schema")}
	}
	c := js.NewCompiler()
	c.DefaultDraft(js.Draft2020)
	c.UseLoader(noLoader{})
	if err := c.AddResource(baseURL, doc); err != nil {
		return nil, &SchemaError{Reason: err.Error()}
	}
	s, err := c.Compile(baseURL)
	if err != nil {
		return nil, schemaError(doc, err)
	}
	// References that fan out in place cost as much for every value: refuse them now (and before the probe).
	if reason := tooMuchWork(s, nil, limits.MaxWork); reason != "" {
		return nil, &SchemaError{Reason: reason}
	}
	// A reference cycle that consumes nothing fails every value, and is only found when validating: try one.
	var ve *js.ValidationError
	if errors.As(s.Validate(nil), &ve) {
		for _, l := range leaves(ve, true, nil) {
			if rc, ok := l.ErrorKind.(*kind.RefCycle); ok {
				return nil, &SchemaError{Path: pointerPath(doc, "#"+rc.KeywordLocation2), Reason: "reference cycle: the schema refers to itself without consuming any of the value"}
			}
		}
	}
	return &Schema{s: s, limits: limits}, nil
}

// Check reports whether doc compiles, as Compile does.
func Check(doc any, limits Limits) error {
	_, err := Compile(doc, limits)
	return err
}

// Validate checks v, a value decoded from JSON (map[string]any, []any, string, float64 or json.Number, bool,
// nil), against s. root names v in the error's path ("arguments", "input"). A value that does not match, or is
// deeper or bigger than s's limits, fails with a *ValidationError.
func (s *Schema) Validate(v any, root string) error {
	if e := checkValue(v, nil, s.limits.MaxDepth, s.limits.MaxInstanceBytes); e != nil {
		return &ValidationError{Path: root + instancePath(v, e.path), Reason: e.reason("value")}
	}
	if reason := tooMuchWork(s.s, v, s.limits.MaxWork); reason != "" {
		return &ValidationError{Path: root, Reason: reason}
	}
	err := s.s.Validate(v)
	if err == nil {
		return nil
	}
	var ve *js.ValidationError
	if !errors.As(err, &ve) {
		return &ValidationError{Path: root, Reason: err.Error()}
	}
	leaf := pick(leaves(ve, false, nil))
	if leaf == nil {
		return &ValidationError{Path: root, Reason: "does not match the schema"}
	}
	out := &ValidationError{Path: root + instancePath(v, leaf.InstanceLocation)}
	out.Keyword, out.Property, out.Reason = describe(leaf, v)
	if out.Keyword == "required" {
		out.Path += "." + out.Property
	}
	return out
}

// limitError is a value over a limit, found by checkValue.
type limitError struct {
	path    []string
	tooDeep bool
	max     int
	invalid string // a value that is not JSON: what it is
}

func (e *limitError) reason(what string) string {
	switch {
	case e.invalid != "":
		return e.invalid
	case e.tooDeep:
		return fmt.Sprintf("nested too deeply: more than %d levels", e.max)
	}
	return fmt.Sprintf("%s larger than %d bytes", what, e.max)
}

// checkValue walks v depth-first, refusing it at the first container deeper than maxDepth, once its size passes
// maxBytes, or at a value that is not JSON (a non-finite number, a Go type JSON does not decode to).
func checkValue(v any, path []string, maxDepth, maxBytes int) *limitError {
	size := 0
	var walk func(v any, path []string, depth int) *limitError
	walk = func(v any, path []string, depth int) *limitError {
		size += 8
		if size > maxBytes {
			return &limitError{path: path, max: maxBytes}
		}
		switch x := v.(type) {
		case map[string]any:
			if depth >= maxDepth {
				return &limitError{path: path, tooDeep: true, max: maxDepth}
			}
			keys := make([]string, 0, len(x))
			for k := range x {
				keys = append(keys, k)
			}
			slices.Sort(keys) // the same error for the same value
			for _, k := range keys {
				size += len(k) + 4
				if e := walk(x[k], append(path[:len(path):len(path)], k), depth+1); e != nil {
					return e
				}
			}
		case []any:
			if depth >= maxDepth {
				return &limitError{path: path, tooDeep: true, max: maxDepth}
			}
			for i, e := range x {
				if e := walk(e, append(path[:len(path):len(path)], strconv.Itoa(i)), depth+1); e != nil {
					return e
				}
			}
		case string:
			size += len(x)
			if size > maxBytes {
				return &limitError{path: path, max: maxBytes}
			}
		case float64:
			if math.IsNaN(x) || math.IsInf(x, 0) {
				return &limitError{path: path, invalid: "not a finite number"}
			}
		case float32:
			if math.IsNaN(float64(x)) || math.IsInf(float64(x), 0) {
				return &limitError{path: path, invalid: "not a finite number"}
			}
		case nil, bool, int, int8, int16, int32, int64, uint, uint8, uint16, uint32, uint64:
		default:
			if _, ok := v.(interface{ Float64() (float64, error) }); ok { // json.Number
				return nil
			}
			return &limitError{path: path, invalid: fmt.Sprintf("not a JSON value (%T)", v)}
		}
		return nil
	}
	return walk(v, path, 0)
}

// leaves returns the innermost errors under e in the library's order. Unless all is set, the alternatives of an
// anyOf or oneOf that none matched are not descended into: the error is the anyOf or oneOf itself.
func leaves(e *js.ValidationError, all bool, out []*js.ValidationError) []*js.ValidationError {
	if len(e.Causes) == 0 {
		return append(out, e)
	}
	if _, ok := e.ErrorKind.(*kind.PropertyNames); ok {
		return append(out, e) // its causes are about the name, at no location of their own
	}
	if !all {
		switch e.ErrorKind.(type) {
		case *kind.AnyOf, *kind.OneOf:
			return append(out, e)
		}
	}
	for _, c := range e.Causes {
		out = leaves(c, all, out)
	}
	return out
}

// pick returns the error to report: the first by instance path, then by keyword rank.
func pick(errs []*js.ValidationError) *js.ValidationError {
	if len(errs) == 0 {
		return nil
	}
	return slices.MinFunc(errs, func(a, b *js.ValidationError) int {
		if c := slices.Compare(a.InstanceLocation, b.InstanceLocation); c != 0 {
			return c
		}
		return rank(a.ErrorKind) - rank(b.ErrorKind)
	})
}

func rank(k js.ErrorKind) int {
	switch k.(type) {
	case *kind.Type:
		return 0
	case *kind.Enum, *kind.Const:
		return 1
	case *kind.Required:
		return 3
	case *kind.AdditionalProperties:
		return 4
	}
	return 2
}

var printer = message.NewPrinter(language.English)

// describe returns the keyword, property and reason of a leaf error about v's value at its instance location.
func describe(e *js.ValidationError, v any) (keyword, property, reason string) {
	kw := strings.Join(e.ErrorKind.KeywordPath(), ".")
	switch k := e.ErrorKind.(type) {
	case *kind.Type:
		return kw, "", fmt.Sprintf("want %s, got %s", strings.Join(k.Want, " or "), typeName(valueAt(v, e.InstanceLocation)))
	case *kind.Enum:
		return kw, "", fmt.Sprintf("not one of %v", k.Want)
	case *kind.Const:
		return kw, "", fmt.Sprintf("not %v", k.Want)
	case *kind.Required:
		return kw, k.Missing[0], "required"
	case *kind.AdditionalProperties:
		return kw, k.Properties[0], fmt.Sprintf("unknown property %q", truncate(k.Properties[0]))
	case *kind.MinLength:
		return kw, "", fmt.Sprintf("shorter than %d characters", k.Want)
	case *kind.MaxLength:
		return kw, "", fmt.Sprintf("longer than %d characters", k.Want)
	case *kind.Minimum:
		return kw, "", fmt.Sprintf("less than %v", ratString(k.Want))
	case *kind.Maximum:
		return kw, "", fmt.Sprintf("greater than %v", ratString(k.Want))
	case *kind.ExclusiveMinimum:
		return kw, "", fmt.Sprintf("not greater than %v", ratString(k.Want))
	case *kind.ExclusiveMaximum:
		return kw, "", fmt.Sprintf("not less than %v", ratString(k.Want))
	case *kind.MultipleOf:
		return kw, "", fmt.Sprintf("not a multiple of %v", ratString(k.Want))
	case *kind.MinItems:
		return kw, "", fmt.Sprintf("fewer than %d items", k.Want)
	case *kind.MaxItems:
		return kw, "", fmt.Sprintf("more than %d items", k.Want)
	case *kind.MinProperties:
		return kw, "", fmt.Sprintf("fewer than %d properties", k.Want)
	case *kind.MaxProperties:
		return kw, "", fmt.Sprintf("more than %d properties", k.Want)
	case *kind.Pattern:
		return kw, "", fmt.Sprintf("does not match %q", truncate(k.Want))
	case *kind.AnyOf:
		return kw, "", "matches none of the schemas of anyOf"
	case *kind.OneOf:
		if len(k.Subschemas) > 1 {
			return kw, "", fmt.Sprintf("matches %d schemas of oneOf, want exactly one", len(k.Subschemas))
		}
		return kw, "", "matches none of the schemas of oneOf"
	case *kind.Not:
		return kw, "", "matches the schema of not"
	case *kind.FalseSchema:
		return "false", "", "not allowed"
	case *kind.PropertyNames:
		if ls := leaves(e, true, nil); len(e.Causes) > 0 && len(ls) > 0 {
			inner := ls[0]
			if inner == e {
				inner = e.Causes[0]
			}
			if len(inner.Causes) == 0 || inner != e.Causes[0] {
				_, _, r := describe(inner, k.Property)
				return kw, k.Property, fmt.Sprintf("property name %q: %s", truncate(k.Property), r)
			}
		}
		return kw, k.Property, fmt.Sprintf("property name %q is not allowed", truncate(k.Property))
	case *kind.Format:
		return kw, "", fmt.Sprintf("not a valid %s: %v", k.Want, k.Err)
	case *kind.UniqueItems:
		return kw, "", fmt.Sprintf("items %d and %d are equal", k.Duplicates[0], k.Duplicates[1])
	}
	return kw, "", e.ErrorKind.LocalizedString(printer)
}

func ratString(r interface{ Float64() (float64, bool) }) string {
	f, _ := r.Float64()
	return strconv.FormatFloat(f, 'g', -1, 64)
}

// truncate bounds text quoted from a schema or a value in an error.
func truncate(s string) string {
	const n = 64
	if len(s) <= n {
		return s
	}
	for i := n; i > 0; i-- {
		if s[i]&0xC0 != 0x80 {
			return s[:i] + "..."
		}
	}
	return "..."
}

// valueAt returns the value at path in v, nil when there is none.
func valueAt(v any, path []string) any {
	_, at := locate(v, path)
	return at
}

func typeName(v any) string {
	switch v.(type) {
	case map[string]any:
		return "object"
	case []any:
		return "array"
	case string:
		return "string"
	case bool:
		return "boolean"
	case nil:
		return "null"
	}
	return "number"
}

// instancePath renders path in v as ".key" per object member and "[i]" per array element.
func instancePath(v any, path []string) string {
	p, _ := locate(v, path)
	return p
}

// locate follows path in v: it returns the path rendered as instancePath does, and the value at its end (nil
// when there is none).
func locate(v any, path []string) (string, any) {
	var b strings.Builder
	for _, tok := range path {
		switch x := v.(type) {
		case []any:
			b.WriteString("[" + tok + "]")
			i, err := strconv.Atoi(tok)
			if err != nil || i < 0 || i >= len(x) {
				v = nil
				continue
			}
			v = x[i]
		case map[string]any:
			b.WriteString("." + tok)
			v = x[tok]
		default:
			b.WriteString("." + tok)
			v = nil
		}
	}
	return b.String(), v
}

// dotted is instancePath without the leading dot, for paths in a schema.
func dotted(doc any, path []string) string {
	return strings.TrimPrefix(instancePath(doc, path), ".")
}

// schemaError turns a compile error into a *SchemaError with the path of the bad keyword when it can be told.
func schemaError(doc any, err error) *SchemaError {
	var sve *js.SchemaValidationError
	if errors.As(err, &sve) {
		var ve *js.ValidationError
		if errors.As(sve.Err, &ve) {
			if leaf := firstLeaf(ve); leaf != nil {
				_, _, reason := describe(leaf, doc)
				return &SchemaError{Path: dotted(doc, leaf.InstanceLocation), Reason: reason}
			}
		}
	}
	var load *js.LoadURLError
	if errors.As(err, &load) {
		path, ref := findRef(doc, func(s string) bool {
			u, _, _ := strings.Cut(load.URL, "#")
			return !strings.HasPrefix(s, "#") && (s == load.URL || strings.HasSuffix(u, strings.SplitN(s, "#", 2)[0]))
		}, nil)
		if path == nil {
			ref = load.URL
		}
		return &SchemaError{Path: dotted(doc, path),
			Reason: fmt.Sprintf("%q is another document: only references inside the schema are resolved", truncate(ref))}
	}
	var re *js.InvalidRegexError
	if errors.As(err, &re) {
		return &SchemaError{Path: pointerPath(doc, re.URL), Reason: fmt.Sprintf("invalid regular expression %q", truncate(re.Regex))}
	}
	msg := strings.ReplaceAll(err.Error(), baseURL, "")
	if ptr := firstPointer(msg); ptr != "" {
		// A reference that does not resolve: name the reference, not what it points at.
		if path, _ := findRef(doc, func(s string) bool { return s == ptr }, nil); path != nil {
			return &SchemaError{Path: dotted(doc, path), Reason: fmt.Sprintf("%q does not resolve inside the schema", truncate(ptr))}
		}
		return &SchemaError{Path: pointerPath(doc, ptr), Reason: truncateMsg(msg)}
	}
	return &SchemaError{Reason: truncateMsg(msg)}
}

// firstLeaf is the first innermost error, across every alternative: for a schema, the first rule of the
// metaschema it breaks at the deepest path.
func firstLeaf(ve *js.ValidationError) *js.ValidationError {
	ls := leaves(ve, true, nil)
	if len(ls) == 0 {
		return nil
	}
	deepest := ls[0]
	for _, l := range ls[1:] {
		if len(l.InstanceLocation) > len(deepest.InstanceLocation) {
			deepest = l
		}
	}
	return deepest
}

// findRef returns the path of the first $schema, $ref or $dynamicRef in doc whose value match accepts (keys
// sorted at each level), and that value; nil when there is none.
func findRef(doc any, match func(string) bool, path []string) ([]string, string) {
	switch x := doc.(type) {
	case map[string]any:
		for _, kw := range []string{"$schema", "$ref", "$dynamicRef"} {
			if s, ok := x[kw].(string); ok && match(s) {
				return append(path, kw), s
			}
		}
		keys := make([]string, 0, len(x))
		for k := range x {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for _, k := range keys {
			if p, s := findRef(x[k], match, append(path[:len(path):len(path)], k)); p != nil {
				return p, s
			}
		}
	case []any:
		for i, e := range x {
			if p, s := findRef(e, match, append(path[:len(path):len(path)], strconv.Itoa(i))); p != nil {
				return p, s
			}
		}
	}
	return nil, ""
}

// firstPointer returns the first "#/..." JSON pointer quoted in msg, "" when there is none.
func firstPointer(msg string) string {
	i := strings.Index(msg, "#/")
	if i < 0 {
		return ""
	}
	end := strings.IndexAny(msg[i:], "\" ,;)")
	if end < 0 {
		return msg[i:]
	}
	return msg[i : i+end]
}

// pointerPath renders the JSON pointer fragment of url as a dotted path in doc.
func pointerPath(doc any, url string) string {
	_, frag, ok := strings.Cut(url, "#")
	if !ok || frag == "" {
		return ""
	}
	var toks []string
	for _, t := range strings.Split(strings.TrimPrefix(frag, "/"), "/") {
		toks = append(toks, strings.ReplaceAll(strings.ReplaceAll(t, "~1", "/"), "~0", "~"))
	}
	return dotted(doc, toks)
}

func truncateMsg(s string) string {
	if len(s) > 300 {
		return s[:300] + "..."
	}
	return s
}
