package mcpserver

import (
	"encoding/json"
	"testing"
)

func TestMetadata(t *testing.T) {
	md, err := metadata(map[string]any{"s": "x", "n": 2.5, "b": true, "l": []any{"a", 1.0, false}})
	if err != nil {
		t.Fatal(err)
	}
	if md["s"].GetStringValue() != "x" || md["n"].GetNumberValue() != 2.5 || !md["b"].GetBoolValue() || len(md["l"].GetListValue().GetValues()) != 3 {
		t.Errorf("metadata = %v", md)
	}
	for _, bad := range []map[string]any{
		{"o": map[string]any{"nested": 1.0}},
		{"l": []any{[]any{"nested"}}},
		{"null": nil},
	} {
		if _, err := metadata(bad); err == nil {
			t.Errorf("metadata(%v) accepted", bad)
		}
	}
}

// FuzzMetadata feeds decoded JSON of any shape to the metadata conversion: it must never panic, and what it
// accepts holds only scalar values or lists of them.
func FuzzMetadata(f *testing.F) {
	for _, s := range []string{`{"a":"b"}`, `{"a":[1,2,"x"]}`, `{"a":{"b":[[]]}}`, `{"a":null}`, `{}`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if len(s) > 1<<16 {
			return
		}
		var in map[string]any
		if json.Unmarshal([]byte(s), &in) != nil {
			return
		}
		md, err := metadata(in)
		if err != nil {
			return
		}
		for k, v := range md {
			if v.GetKind() == nil {
				t.Errorf("key %q: empty value", k)
			}
		}
	})
}
