package localstore

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/loom-dev/loom/memory"
)

func seedEntries() []*entry {
	return []*entry{
		{op: opCreateNamespace, tenant: "t", namespace: "ns", ns: memory.Namespace{Name: "ns", Dimension: 2, Metric: memory.MetricCosine}},
		{op: opUpsert, tenant: "t", namespace: "ns", records: []memory.Record{{ID: "a", Text: "x", Vector: []float32{1, 2},
			Metadata: map[string]memory.Value{"k": memory.ListValue(memory.String("s"), memory.Number(1), memory.Bool(true)), "n": memory.NumberValue(2)}}}},
		{op: opDelete, tenant: "t", namespace: "ns", ids: []string{"a", "b"}},
		{op: opDeleteNamespace, tenant: "t", namespace: "ns"},
	}
}

// checkEncodedMetadata checks the store's in-memory form of md gives md back, whole and key by key.
func checkEncodedMetadata(t *testing.T, md map[string]memory.Value) {
	t.Helper()
	m := encodedMetadata(encodeMetadata(md))
	if diff := cmp.Diff(md, decodeMetadata(m), cmpNaN); diff != "" {
		t.Fatalf("encoded metadata decodes differently (-want +got):\n%s", diff)
	}
	for k, want := range md {
		got, ok := m.Lookup(k)
		if diff := cmp.Diff(want, got, cmpNaN); !ok || diff != "" {
			t.Fatalf("Lookup(%q) = %v, %v (-want +got):\n%s", k, got, ok, diff)
		}
		if _, ok := m.Lookup(k + "\x00"); ok != hasKey(md, k+"\x00") {
			t.Fatalf("Lookup(%q) found a key that is not set", k+"\x00")
		}
	}
}

func hasKey(md map[string]memory.Value, k string) bool {
	_, ok := md[k]
	return ok
}

// FuzzDecodeEntry checks the log entry decoder never panics on arbitrary payloads and that what it accepts
// re-encodes to an entry that decodes the same.
func FuzzDecodeEntry(f *testing.F) {
	for _, e := range seedEntries() {
		b, err := appendFrame(nil, e)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b[frameHeader:])
	}
	f.Fuzz(func(t *testing.T, payload []byte) {
		e, err := decodeEntry(payload)
		if err != nil {
			return
		}
		b, err := appendFrame(nil, e)
		if err != nil {
			return // e.g. an unknown op cannot be produced by decodeEntry, but stay safe
		}
		e2, err := decodeEntry(b[frameHeader:])
		if err != nil {
			t.Fatalf("re-encoded entry does not decode: %v", err)
		}
		if e.op != e2.op || e.tenant != e2.tenant || e.namespace != e2.namespace || len(e.records) != len(e2.records) || len(e.ids) != len(e2.ids) {
			t.Fatalf("round trip changed the entry: %+v vs %+v", e, e2)
		}
		if diff := cmp.Diff(e.ns, e2.ns); diff != "" {
			t.Fatalf("namespace changed (-first +second):\n%s", diff)
		}
		for i := range e.records {
			if diff := cmp.Diff(e.records[i], e2.records[i], cmpNaN); diff != "" {
				t.Fatalf("record %d changed (-first +second):\n%s", i, diff)
			}
			checkEncodedMetadata(t, e.records[i].Metadata)
		}
	})
}

// FuzzOpen writes arbitrary bytes after a valid log prefix and opens it: Open must never panic, and when it
// succeeds the namespace from the valid prefix is there.
func FuzzOpen(f *testing.F) {
	var prefix []byte
	for _, e := range seedEntries()[:3] {
		prefix, _ = appendFrame(prefix, e)
	}
	f.Add([]byte{})
	f.Add([]byte{1, 2, 3})
	f.Add(prefix[:20])
	f.Add(bytes.Repeat([]byte{0}, 40))
	f.Fuzz(func(t *testing.T, tail []byte) {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, "memory.log"), append(bytes.Clone(prefix), tail...), 0o600); err != nil {
			t.Fatal(err)
		}
		s, err := Open(dir)
		if err != nil {
			return
		}
		defer s.Close()
		if _, err := s.GetNamespace(t.Context(), "t", "ns", true); err != nil {
			t.Fatalf("valid prefix lost: %v", err)
		}
	})
}
