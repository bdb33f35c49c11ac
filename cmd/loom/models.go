package main

import (
	"github.com/loom-dev/loom/agent/model"
	"github.com/loom-dev/loom/agent/model/gemini"
	"github.com/loom-dev/loom/agent/model/openai"
	"github.com/loom-dev/loom/agent/model/sim"
)

// modelProviders registers the agent's model providers, each with the process's key and base URL for it. A new
// provider is one line here (see docs/architecture.md, "Model providers").
func modelProviders(cfg config) *model.Registry {
	r := model.NewRegistry()
	r.Register("sim", sim.Provider(), model.Endpoint{})
	r.Register("gemini", gemini.Provider(), model.Endpoint{APIKey: cfg.Secrets.GeminiAPIKey, BaseURL: cfg.GeminiBaseURL})
	r.Register("openai", openai.Provider(), model.Endpoint{APIKey: cfg.Secrets.OpenAIAPIKey, BaseURL: cfg.OpenAIBaseURL})
	return r
}
