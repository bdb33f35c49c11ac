package localstore

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/loom-dev/loom/memory"
)

// testdata/main.memory.log was written by the store as it was at commit d14904f, when the log's namespaces and
// records were proto.Marshal'ed (deterministic) memoryv1 messages: three namespaces in two tenants (every
// Namespace field set in one, an empty embedder in another), records with every kind of metadata value (empty
// string, zero, false, an empty list, a list of every scalar kind), non-ASCII text, extreme floats, expire and
// update times with nanoseconds, an overwrite, a delete by id, and a namespace created and deleted.

// TestGoldenLogOpens checks that a data directory made by that version opens with its contents intact.
func TestGoldenLogOpens(t *testing.T) {
	dir := t.TempDir()
	b, err := os.ReadFile("testdata/main.memory.log")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, LogFile), b, 0o600); err != nil {
		t.Fatal(err)
	}
	s := open(t, dir)
	ctx := context.Background()
	created := time.Date(2026, 11, 30, 12, 34, 56, 789123000, time.UTC)
	upd := time.Date(2026, 11, 30, 12, 0, 0, 123456789, time.UTC)

	nss, err := s.ListNamespaces(ctx, "acme", "", 10)
	if err != nil {
		t.Fatal(err)
	}
	wantNS := []memory.Namespace{
		{Name: "docs", Dimension: 3, Metric: memory.MetricCosine, EmbedderProvider: "gemini", EmbedderModel: "text-embedding-004",
			IndexKind: memory.IndexHNSW, M: 16, EfConstruction: 64, EfSearch: 100, Description: "notes – ünïcode", CreateTime: created},
		{Name: "l2", Dimension: 2, Metric: memory.MetricL2, EmbedderProvider: "local", IndexKind: memory.IndexExact, CreateTime: created},
	}
	if diff := cmp.Diff(wantNS, nss); diff != "" {
		t.Errorf("acme's namespaces (-want +got):\n%s", diff)
	}
	other, err := s.GetNamespace(ctx, "other", "docs", true)
	if err != nil {
		t.Fatal(err)
	}
	if want := (memory.Namespace{Name: "docs", Dimension: 2, Metric: memory.MetricDotProduct, CreateTime: created, Stats: memory.NamespaceStats{RecordCount: 1, SizeBytes: other.Stats.SizeBytes}}); !cmp.Equal(want, other) || other.Stats.SizeBytes <= 0 {
		t.Errorf("other/docs = %+v, want %+v", other, want)
	}
	if _, err := s.GetNamespace(ctx, "acme", "gone", false); !errors.Is(err, memory.ErrNotFound) {
		t.Errorf("deleted namespace: %v, want ErrNotFound", err)
	}

	got, err := s.Get(ctx, "acme", "docs", []string{"a", "b/c:d@e.f-g_h", "no-text", "old"}, true)
	if err != nil {
		t.Fatal(err)
	}
	want := []memory.Record{
		{ID: "a", Text: "the cat sat on the mat, again", Vector: []float32{0.1, -0.2, 0.4}, UpdateTime: upd.Add(time.Second),
			Metadata: map[string]memory.Value{"kind": memory.StringValue("pet"), "v": memory.NumberValue(2)}},
		{ID: "b/c:d@e.f-g_h", Text: "日本語のテキスト", Vector: []float32{-1e-30, 3.4e38, 1}, UpdateTime: upd,
			ExpireTime: time.Date(2030, 1, 2, 3, 4, 5, 6000, time.UTC)},
		{ID: "no-text", Vector: []float32{0, 0, 1}, UpdateTime: time.Unix(1, 0).UTC()},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("acme/docs records (-want +got):\n%s", diff)
	}
	if got, _ := s.Get(ctx, "acme", "l2", []string{"p", "q"}, true); len(got) != 1 || got[0].ID != "p" || !slices.Equal(got[0].Vector, []float32{3, 4}) {
		t.Errorf("acme/l2 = %+v, want p only", got)
	}
	if got, _ := s.Get(ctx, "other", "docs", []string{"a"}, false); len(got) != 1 || got[0].Text != "other tenant" || got[0].Metadata["k"].Str != "v" {
		t.Errorf("other/docs/a = %+v", got)
	}
}

// TestGoldenLogBytes checks that every frame of the golden log decodes and encodes back to the same bytes, so
// logs written now are what that version wrote (and read) too.
func TestGoldenLogBytes(t *testing.T) {
	b, err := os.ReadFile("testdata/main.memory.log")
	if err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReader(bytes.NewReader(b))
	var frames int
	var off int
	for {
		payload, err := readFrame(r, nil)
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("frame %d: %v", frames, err)
		}
		e, err := decodeEntry(payload)
		if err != nil {
			t.Fatalf("frame %d: %v", frames, err)
		}
		again, err := appendFrame(nil, e)
		if err != nil {
			t.Fatalf("frame %d: %v", frames, err)
		}
		orig := b[off : off+frameHeader+len(payload)]
		if !bytes.Equal(again, orig) {
			t.Errorf("frame %d (op %d) re-encodes differently:\n got %x\nwant %x", frames, e.op, again, orig)
		}
		off += len(orig)
		frames++
	}
	if frames != 10 {
		t.Errorf("%d frames, want 10", frames)
	}
}
