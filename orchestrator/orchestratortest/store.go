// Package orchestratortest holds what tests of the orchestrator share: the Store contract suite every backend
// runs, and hand-written fakes of the agent and memory clients.
package orchestratortest

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/durationpb"

	orchestratorv1 "github.com/loom-dev/loom/gen/loom/orchestrator/v1"
	"github.com/loom-dev/loom/orchestrator"
)

// Blueprint returns a small valid blueprint named name whose agent step sends input.
func Blueprint(name, input string) *orchestratorv1.Blueprint {
	return &orchestratorv1.Blueprint{
		Name:        name,
		Description: "test blueprint",
		RunDeadline: durationpb.New(time.Hour),
		Steps: []*orchestratorv1.Step{
			{Id: "ask", Kind: &orchestratorv1.Step_Agent{Agent: &orchestratorv1.AgentStep{Agent: "echo", Input: input}}},
			{Id: "wait", DependsOn: []string{"ask"}, Kind: &orchestratorv1.Step_Delay{Delay: &orchestratorv1.DelayStep{Duration: durationpb.New(time.Second)}}},
		},
	}
}

// RunStore runs the Store contract against stores made by newStore, one named subtest per behaviour; each call
// must return an empty store.
func RunStore(t *testing.T, newStore func(t *testing.T) orchestrator.Store) {
	tests := []struct {
		name string
		fn   func(t *testing.T, s orchestrator.Store)
	}{
		{"CreateGet", testCreateGet},
		{"TenantIsolation", testTenantIsolation},
		{"Versions", testVersions},
		{"ConcurrentUpdates", testConcurrentUpdates},
		{"ListPages", testListPages},
		{"Delete", testDelete},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.fn(t, newStore(t))
		})
	}
}

var ctx = context.Background()

// ignoreOutputOnly leaves out the fields a store sets.
var ignoreOutputOnly = protocmp.IgnoreFields(&orchestratorv1.Blueprint{}, "version", "create_time")

func testCreateGet(t *testing.T, s orchestrator.Store) {
	in := Blueprint("alpha", "input.q")
	got, err := s.CreateBlueprint(ctx, "t1", in)
	if err != nil {
		t.Fatalf("CreateBlueprint() error = %v", err)
	}
	if got.GetVersion() != 1 || got.GetCreateTime() == nil {
		t.Errorf("CreateBlueprint() version = %d, create_time = %v; want 1 and set", got.GetVersion(), got.GetCreateTime())
	}
	if in.GetVersion() != 0 {
		t.Error("CreateBlueprint() modified its argument")
	}
	read, err := s.GetBlueprint(ctx, "t1", "alpha", 0)
	if err != nil {
		t.Fatalf("GetBlueprint() error = %v", err)
	}
	if diff := cmp.Diff(got, read, protocmp.Transform()); diff != "" {
		t.Errorf("GetBlueprint() (-created +read):\n%s", diff)
	}
	if diff := cmp.Diff(in, read, protocmp.Transform(), ignoreOutputOnly); diff != "" {
		t.Errorf("GetBlueprint() (-want +got):\n%s", diff)
	}
	if _, err := s.CreateBlueprint(ctx, "t1", in); !errors.Is(err, orchestrator.ErrAlreadyExists) {
		t.Errorf("second CreateBlueprint() error = %v, want ErrAlreadyExists", err)
	}
	if _, err := s.CreateBlueprint(ctx, "t2", in); err != nil {
		t.Errorf("CreateBlueprint() in another tenant error = %v", err)
	}
}

func testTenantIsolation(t *testing.T, s orchestrator.Store) {
	if _, err := s.CreateBlueprint(ctx, "t1", Blueprint("alpha", "input.q")); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GetBlueprint(ctx, "t2", "alpha", 0); !errors.Is(err, orchestrator.ErrNotFound) {
		t.Errorf("GetBlueprint() other tenant error = %v, want ErrNotFound", err)
	}
	if _, err := s.UpdateBlueprint(ctx, "t2", Blueprint("alpha", "input.x"), 0); !errors.Is(err, orchestrator.ErrNotFound) {
		t.Errorf("UpdateBlueprint() other tenant error = %v, want ErrNotFound", err)
	}
	if err := s.DeleteBlueprint(ctx, "t2", "alpha"); !errors.Is(err, orchestrator.ErrNotFound) {
		t.Errorf("DeleteBlueprint() other tenant error = %v, want ErrNotFound", err)
	}
	list, _, err := s.ListBlueprints(ctx, "t2", 10, "")
	if err != nil || len(list) != 0 {
		t.Errorf("ListBlueprints() other tenant = %v, %v; want empty", list, err)
	}
	if _, err := s.GetBlueprint(ctx, "t1", "alpha", 0); err != nil {
		t.Errorf("GetBlueprint() owner error = %v", err)
	}
}

func testVersions(t *testing.T, s orchestrator.Store) {
	if _, err := s.CreateBlueprint(ctx, "t1", Blueprint("alpha", "'v1'")); err != nil {
		t.Fatal(err)
	}
	v2, err := s.UpdateBlueprint(ctx, "t1", Blueprint("alpha", "'v2'"), 1)
	if err != nil || v2.GetVersion() != 2 {
		t.Fatalf("UpdateBlueprint(expected 1) = %v, %v; want version 2", v2.GetVersion(), err)
	}
	if _, err := s.UpdateBlueprint(ctx, "t1", Blueprint("alpha", "'stale'"), 1); !errors.Is(err, orchestrator.ErrConflict) {
		t.Errorf("UpdateBlueprint(stale) error = %v, want ErrConflict", err)
	}
	v3, err := s.UpdateBlueprint(ctx, "t1", Blueprint("alpha", "'v3'"), 0)
	if err != nil || v3.GetVersion() != 3 {
		t.Fatalf("UpdateBlueprint(any) = %v, %v; want version 3", v3.GetVersion(), err)
	}
	for v, want := range map[int64]string{0: "'v3'", 1: "'v1'", 2: "'v2'", 3: "'v3'"} {
		got, err := s.GetBlueprint(ctx, "t1", "alpha", v)
		if err != nil {
			t.Fatalf("GetBlueprint(version %d) error = %v", v, err)
		}
		if in := got.GetSteps()[0].GetAgent().GetInput(); in != want {
			t.Errorf("GetBlueprint(version %d) input = %q, want %q", v, in, want)
		}
	}
	if _, err := s.GetBlueprint(ctx, "t1", "alpha", 4); !errors.Is(err, orchestrator.ErrNotFound) {
		t.Errorf("GetBlueprint(version 4) error = %v, want ErrNotFound", err)
	}
	if _, err := s.UpdateBlueprint(ctx, "t1", Blueprint("missing", "'x'"), 0); !errors.Is(err, orchestrator.ErrNotFound) {
		t.Errorf("UpdateBlueprint(missing) error = %v, want ErrNotFound", err)
	}
}

func testConcurrentUpdates(t *testing.T, s orchestrator.Store) {
	if _, err := s.CreateBlueprint(ctx, "t1", Blueprint("alpha", "'v1'")); err != nil {
		t.Fatal(err)
	}
	const n = 8
	errs := make(chan error, n)
	for i := range n {
		go func() {
			_, err := s.UpdateBlueprint(ctx, "t1", Blueprint("alpha", fmt.Sprintf("'%d'", i)), 0)
			errs <- err
		}()
	}
	for range n {
		if err := <-errs; err != nil {
			t.Errorf("UpdateBlueprint() error = %v", err)
		}
	}
	latest, err := s.GetBlueprint(ctx, "t1", "alpha", 0)
	if err != nil || latest.GetVersion() != n+1 {
		t.Errorf("latest version = %d, %v; want %d", latest.GetVersion(), err, n+1)
	}
}

func testListPages(t *testing.T, s orchestrator.Store) {
	names := []string{"delta", "alpha", "echo", "charlie", "bravo"}
	for _, n := range names {
		if _, err := s.CreateBlueprint(ctx, "t1", Blueprint(n, "'x'")); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.UpdateBlueprint(ctx, "t1", Blueprint("charlie", "'newer'"), 0); err != nil {
		t.Fatal(err)
	}
	if _, err := s.CreateBlueprint(ctx, "t2", Blueprint("aardvark", "'x'")); err != nil {
		t.Fatal(err)
	}
	var got []string
	token := ""
	pages := 0
	for {
		page, next, err := s.ListBlueprints(ctx, "t1", 2, token)
		if err != nil {
			t.Fatalf("ListBlueprints() error = %v", err)
		}
		pages++
		for _, bp := range page {
			got = append(got, bp.GetName())
			if bp.GetName() == "charlie" && (bp.GetVersion() != 2 || bp.GetSteps()[0].GetAgent().GetInput() != "'newer'") {
				t.Errorf("ListBlueprints() charlie = version %d, want the latest (2)", bp.GetVersion())
			}
		}
		if next == "" {
			break
		}
		if pages > 10 {
			t.Fatal("ListBlueprints() does not terminate")
		}
		token = next
	}
	want := []string{"alpha", "bravo", "charlie", "delta", "echo"}
	if diff := cmp.Diff(want, got); diff != "" || pages != 3 {
		t.Errorf("ListBlueprints() pages = %d (-want +got):\n%s", pages, diff)
	}
	if _, _, err := s.ListBlueprints(ctx, "t1", 2, "not-a-token"); !errors.Is(err, orchestrator.ErrInvalidPageToken) {
		t.Errorf("ListBlueprints(bad token) error = %v, want ErrInvalidPageToken", err)
	}
}

func testDelete(t *testing.T, s orchestrator.Store) {
	if _, err := s.CreateBlueprint(ctx, "t1", Blueprint("alpha", "'v1'")); err != nil {
		t.Fatal(err)
	}
	if _, err := s.UpdateBlueprint(ctx, "t1", Blueprint("alpha", "'v2'"), 0); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteBlueprint(ctx, "t1", "alpha"); err != nil {
		t.Fatalf("DeleteBlueprint() error = %v", err)
	}
	for _, v := range []int64{0, 1, 2} {
		if _, err := s.GetBlueprint(ctx, "t1", "alpha", v); !errors.Is(err, orchestrator.ErrNotFound) {
			t.Errorf("GetBlueprint(version %d) after delete error = %v, want ErrNotFound", v, err)
		}
	}
	if err := s.DeleteBlueprint(ctx, "t1", "alpha"); !errors.Is(err, orchestrator.ErrNotFound) {
		t.Errorf("second DeleteBlueprint() error = %v, want ErrNotFound", err)
	}
	again, err := s.CreateBlueprint(ctx, "t1", Blueprint("alpha", "'again'"))
	if err != nil || again.GetVersion() != 1 {
		t.Errorf("CreateBlueprint() after delete = %d, %v; want version 1", again.GetVersion(), err)
	}
}
