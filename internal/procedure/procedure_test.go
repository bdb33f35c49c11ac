package procedure_test

import (
	"testing"

	"google.golang.org/protobuf/types/descriptorpb"

	_ "github.com/loom-dev/loom/gen/loom/memory/v1" // registers the memory contract
	"github.com/loom-dev/loom/internal/procedure"
)

func TestSplitAndLookup(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		in              string
		service, method string
		ok              bool
		idempotency     descriptorpb.MethodOptions_IdempotencyLevel
	}{
		{"/loom.memory.v1.MemoryService/Search", "loom.memory.v1.MemoryService", "Search", true, descriptorpb.MethodOptions_NO_SIDE_EFFECTS},
		{"/loom.memory.v1.MemoryService/Upsert", "loom.memory.v1.MemoryService", "Upsert", true, descriptorpb.MethodOptions_IDEMPOTENT},
		{"/loom.memory.v1.MemoryService/CreateNamespace", "loom.memory.v1.MemoryService", "CreateNamespace", true, descriptorpb.MethodOptions_IDEMPOTENCY_UNKNOWN},
		{"/loom.memory.v1.MemoryService/Nope", "loom.memory.v1.MemoryService", "Nope", true, descriptorpb.MethodOptions_IDEMPOTENCY_UNKNOWN},
		{"loom.memory.v1.MemoryService/Search", "", "", false, descriptorpb.MethodOptions_IDEMPOTENCY_UNKNOWN},
		{"/a/b/c", "", "", false, descriptorpb.MethodOptions_IDEMPOTENCY_UNKNOWN},
		{"//x", "", "", false, descriptorpb.MethodOptions_IDEMPOTENCY_UNKNOWN},
	} {
		s, m, ok := procedure.Split(tc.in)
		if s != tc.service || m != tc.method || ok != tc.ok {
			t.Errorf("Split(%q) = %q, %q, %v", tc.in, s, m, ok)
		}
		if got := procedure.Idempotency(tc.in); got != tc.idempotency {
			t.Errorf("Idempotency(%q) = %v, want %v", tc.in, got, tc.idempotency)
		}
	}
}

func FuzzSplit(f *testing.F) {
	for _, s := range []string{"/a.B/C", "", "/", "//", "/a/b/c", "/loom.memory.v1.MemoryService/Search"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		s, m, ok := procedure.Split(in)
		if ok && "/"+s+"/"+m != in {
			t.Errorf("Split(%q) = %q, %q does not rebuild the input", in, s, m)
		}
		_ = procedure.Idempotency(in)
	})
}
