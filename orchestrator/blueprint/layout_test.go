package blueprint_test

import (
	"strings"
	"testing"

	"github.com/loom-dev/loom/orchestrator/blueprint"
)

// TestLayout decodes the positions an editor saved from YAML and refuses positions of steps that do not exist
// or that are not numbers, with their path and line.
func TestLayout(t *testing.T) {
	t.Parallel()
	doc, errs := blueprint.Parse([]byte("name: flow\nsteps:\n  - id: a\n    delay: {duration: 1s}\nlayout:\n  a: {x: 40, y: 160.5}\n"))
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	if errs := doc.Validate(); len(errs) > 0 {
		t.Fatal(errs)
	}
	if p := doc.Blueprint.GetLayout()["a"]; p.GetX() != 40 || p.GetY() != 160.5 {
		t.Errorf("layout a = %v", p)
	}
	for src, want := range map[string]string{
		"layout:\n  ghost: {x: 1, y: 2}\n": "layout.ghost: no step",
		"layout:\n  a: {x: left, y: 2}\n":  "layout.a.x: must be a number",
		"layout:\n  a: {x: 1e9, y: 2}\n":   "layout.a: position must be within",
		"layout: [1, 2]\n":                 "layout: must map step ids",
		"layout:\n  a: {x: 1, z: 2}\n":     "layout.a.z",
	} {
		doc, errs := blueprint.Parse([]byte("name: flow\nsteps:\n  - id: a\n    delay: {duration: 1s}\n" + src))
		if doc != nil && len(errs) == 0 {
			errs = doc.Validate()
		}
		var got []string
		for _, e := range errs {
			got = append(got, e.GetPath()+": "+e.GetMessage())
		}
		if !strings.Contains(strings.Join(got, "\n"), want) {
			t.Errorf("%q: errors %q, want one containing %q", src, got, want)
		}
	}
}
