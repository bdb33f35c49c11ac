package rpcclient

import (
	"slices"
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
		got, opts, err := resolve(in)
		if err != nil || got != want {
			t.Errorf("resolve(%q) = %q, %v, want %q", in, got, err, want)
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
		_, _, _ = resolve(target)
		if conn, err := Dial(Config{Target: target, Service: "loom.memory.v1.MemoryService"}); err == nil {
			conn.Close()
		}
	})
}

func TestParseTarget(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]Target{
		"dns:///memory:8080":  {DNSHost: "memory", DNSPort: "8080"},
		"memory:8080":         {Addrs: []string{"memory:8080"}},
		" a:1, b:2 ,a:1,":     {Addrs: []string{"a:1", "b:2"}},
		"[::1]:9,127.0.0.1:9": {Addrs: []string{"[::1]:9", "127.0.0.1:9"}},
	} {
		got, err := ParseTarget(in)
		if err != nil || !slices.Equal(got.Addrs, want.Addrs) || got.DNSHost != want.DNSHost || got.DNSPort != want.DNSPort {
			t.Errorf("ParseTarget(%q) = %+v, %v, want %+v", in, got, err, want)
		}
	}
	for _, in := range []string{"", ",,", "dns:///memory", "dns:///:80", "unix:///tmp/s", "http://a:1", "a", "a:1,b", ":80"} {
		if got, err := ParseTarget(in); err == nil {
			t.Errorf("ParseTarget(%q) = %+v, want an error", in, got)
		}
	}
}
