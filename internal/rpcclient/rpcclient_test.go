package rpcclient

import (
	"strings"
	"testing"

	_ "github.com/loom-dev/loom/gen/loom/memory/v1" // registers the memory contract for Idempotent
)

func TestIdempotentFollowsTheContract(t *testing.T) {
	t.Parallel()
	for method, want := range map[string]bool{
		"/loom.memory.v1.MemoryService/Search":          true,  // NO_SIDE_EFFECTS
		"/loom.memory.v1.MemoryService/Upsert":          true,  // IDEMPOTENT
		"/loom.memory.v1.MemoryService/CreateNamespace": false, // not marked
		"/loom.memory.v1.MemoryService/Nope":            false,
		"garbage":                                       false,
	} {
		if got := Idempotent(method); got != want {
			t.Errorf("Idempotent(%q) = %v, want %v", method, got, want)
		}
	}
}

func TestResolve(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"dns:///memory:8080": "dns:///memory:8080",
		"memory:8080":        "dns:///memory:8080",
		"a:1,b:2":            "loom-static:///a:1,b:2",
	} {
		got, opts := resolve(in)
		if got != want {
			t.Errorf("resolve(%q) = %q, want %q", in, got, want)
		}
		if strings.HasPrefix(want, "loom-static") != (len(opts) == 1) {
			t.Errorf("resolve(%q): a static list needs its own resolver", in)
		}
	}
}

// FuzzResolve checks that no target string makes resolve or Dial panic.
func FuzzResolve(f *testing.F) {
	for _, s := range []string{"dns:///x:1", "a:1,b:2", ",,,", "", ":///", "unix:///tmp/s"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, target string) {
		_, _ = resolve(target)
		if conn, err := Dial(Config{Target: target, Service: "loom.memory.v1.MemoryService"}); err == nil {
			conn.Close()
		}
	})
}
