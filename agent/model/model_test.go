package model_test

import (
	"context"
	"fmt"
	"iter"
	"slices"
	"strings"
	"testing"

	"github.com/loom-dev/loom/agent/model"
	"github.com/loom-dev/loom/internal/secret"
)

type nopModel struct{}

func (nopModel) Stream(context.Context, model.Request) iter.Seq2[model.Chunk, error] {
	return func(func(model.Chunk, error) bool) {}
}

func TestRegistry(t *testing.T) {
	t.Parallel()
	r := model.NewRegistry()
	newNop := func(model.Options) model.Model { return nopModel{} }
	r.Register("sim", model.Provider{New: newNop, System: "loom.sim", Local: true}, model.Endpoint{})
	r.Register("acme", model.Provider{New: newNop}, model.Endpoint{APIKey: "acme-key", BaseURL: "http://acme"})
	r.Register("keyless", model.Provider{New: newNop}, model.Endpoint{BaseURL: "http://local"})
	if got, want := r.Names(), []string{"acme", "keyless", "sim"}; !slices.Equal(got, want) {
		t.Errorf("Names = %v, want %v", got, want)
	}
	p, ep, ok := r.Lookup("acme")
	if !ok || p.System != "acme" || ep.APIKey.Reveal() != "acme-key" || ep.BaseURL != "http://acme" {
		t.Errorf("Lookup(acme) = %+v, %+v, %v; want System defaulting to the name and the endpoint", p, ep, ok)
	}
	if p, _, ok := r.Lookup("sim"); !ok || p.System != "loom.sim" || !p.Local {
		t.Errorf("Lookup(sim) = %+v, %v", p, ok)
	}
	if _, _, ok := r.Lookup("nope"); ok {
		t.Error("Lookup(nope) found a provider")
	}
	if got := r.Keys(); !slices.Equal(got, []secret.String{"acme-key"}) {
		t.Errorf("Keys = %v", got)
	}
	defer func() {
		if recover() == nil {
			t.Error("Register without New did not panic")
		}
	}()
	r.Register("broken", model.Provider{}, model.Endpoint{})
}

func TestEndpointMasksKey(t *testing.T) {
	t.Parallel()
	o := model.Options{Endpoint: model.Endpoint{APIKey: "sk-super-secret-key", BaseURL: "http://x"}}
	for _, s := range []string{fmt.Sprint(o), fmt.Sprintf("%+v", o), fmt.Sprintf("%#v", o), fmt.Sprintf("%v", o.Endpoint)} {
		if strings.Contains(s, "super-secret") {
			t.Errorf("printed options leak the key: %s", s)
		}
	}
}
