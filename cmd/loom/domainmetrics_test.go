package main

import (
	"context"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"testing"
	"time"

	agentv1 "github.com/loom-dev/loom/gen/loom/agent/v1"
	memoryv1 "github.com/loom-dev/loom/gen/loom/memory/v1"
)

// metricsText returns addr's /metrics.
func metricsText(t *testing.T, addr string) string {
	t.Helper()
	res, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	mustT(t, err)
	return string(body)
}

// scrape returns the value of every sample on addr's /metrics whose name and labels match re's whole line.
func scrape(t *testing.T, addr string, re *regexp.Regexp) []float64 {
	t.Helper()
	var vals []float64
	for _, m := range re.FindAllStringSubmatch(metricsText(t, addr), -1) {
		v, err := strconv.ParseFloat(m[1], 64)
		mustT(t, err)
		vals = append(vals, v)
	}
	return vals
}

// TestDomainMetrics runs an agent and text searches on loom serve and reads the token, cost, search and embedding
// cache metrics they leave on /metrics, with and without tenant labels.
func TestDomainMetrics(t *testing.T) {
	for _, tenantLabels := range []bool{false, true} {
		p := startLoom(t, "--metrics-tenant-labels="+strconv.FormatBool(tenantLabels), "--prices", "sim/*=1:2")
		c := dialAll(t, p.addr)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if _, err := c.memory.CreateNamespace(ctx, msg(t, &memoryv1.CreateNamespaceRequest{}, `{"namespace":{"name":"notes","dimension":64}}`)); err != nil {
			t.Fatal(err)
		}
		if _, err := c.memory.Upsert(ctx, msg(t, &memoryv1.UpsertRequest{}, `{"namespace":"notes","records":[{"id":"a","text":"the cat sat"},{"id":"b","text":"dogs bark"}]}`)); err != nil {
			t.Fatal(err)
		}
		for range 3 { // the same text three times: one embedding, then two cache hits
			if _, err := c.memory.Search(ctx, msg(t, &memoryv1.SearchRequest{}, `{"namespace":"notes","text":"cats","topK":2}`)); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := c.agent.CreateAgent(ctx, msg(t, &agentv1.CreateAgentRequest{}, `{"agent":{"name":"echo"}}`)); err != nil {
			t.Fatal(err)
		}
		if _, err := c.agent.Run(ctx, msg(t, &agentv1.RunRequest{}, `{"agent":"echo","input":"hello there"}`)); err != nil {
			t.Fatal(err)
		}

		tenant := ""
		if tenantLabels {
			tenant = `,tenant="local"`
		}
		tokens := scrape(t, p.addr, regexp.MustCompile(`(?m)^loom_model_tokens_total\{direction="input",model="sim",provider="sim"`+tenant+`\} (\S+)$`))
		cost := scrape(t, p.addr, regexp.MustCompile(`(?m)^loom_model_cost_total\{currency="USD",model="sim",provider="sim"`+tenant+`\} (\S+)$`))
		if len(cost) != 1 || cost[0] <= 0 || cost[0] > 0.01 {
			t.Errorf("loom_model_cost_total (tenant labels %v) = %v, want one small positive series", tenantLabels, cost)
		}
		searches := scrape(t, p.addr, regexp.MustCompile(`(?m)^loom_memory_search_duration_seconds_count\{mode="exact"\} (\S+)$`))
		hits := scrape(t, p.addr, regexp.MustCompile(`(?m)^loom_memory_embed_cache_hits_total (\S+)$`))
		misses := scrape(t, p.addr, regexp.MustCompile(`(?m)^loom_memory_embed_cache_misses_total (\S+)$`))
		t.Logf("tenant labels %v: input tokens %v, exact searches %v, cache hits %v, misses %v", tenantLabels, tokens, searches, hits, misses)
		if len(tokens) != 1 || tokens[0] <= 0 {
			t.Errorf("loom_model_tokens_total (tenant labels %v) = %v, want one positive series", tenantLabels, tokens)
		}
		if len(searches) != 1 || searches[0] != 3 {
			t.Errorf("loom_memory_search_duration_seconds_count{mode=exact} = %v, want 3", searches)
		}
		if len(hits) != 1 || hits[0] < 2 || len(misses) != 1 || misses[0] < 1 {
			t.Errorf("embedding cache hits %v, misses %v; want at least 2 hits (repeated query) and 1 miss", hits, misses)
		}
	}
}
