package membench

import (
	"cmp"
	"context"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/loom-dev/loom/internal/sqldb/sqldbtest"
)

func TestRunSmall(t *testing.T) {
	cfg := withChromem(Config{N: 600, Dim: 32, Clusters: 8, Queries: 20, K: 10})
	if os.Getenv(sqldbtest.EnvURL) != "" {
		cfg.PostgresURL = sqldbtest.PostgresURL(t)
	}
	var out strings.Builder
	res, err := Run(context.Background(), &out, cfg)
	if err != nil {
		t.Fatalf("Run: %v\n%s", err, out.String())
	}
	t.Log("\n" + out.String())
	if !strings.Contains(out.String(), "\r[") || !strings.Contains(out.String(), "100% localstore (exact) ingest\n") {
		t.Errorf("no progress bar in the output")
	}
	wantN := 4
	if cfg.PostgresURL != "" {
		wantN = 6
	}
	if len(res) != wantN {
		t.Fatalf("%d results, want %d", len(res), wantN)
	}
	for _, r := range res {
		exact := strings.Contains(r.Backend, "exact")
		if exact && r.Recall != 1 || !exact && r.Recall < 0.8 {
			t.Errorf("%s: recall %.3f", r.Backend, r.Recall)
		}
		if r.IngestRate <= 0 || r.QPS <= 0 || r.P99 < r.P50 {
			t.Errorf("%s: implausible figures %+v", r.Backend, r)
		}
		if !r.FilteredAlwaysK || exact && r.FilteredRecall != 1 || r.FilteredRecall < 0.8 {
			t.Errorf("%s: filtered search: always k %v, recall %.3f", r.Backend, r.FilteredAlwaysK, r.FilteredRecall)
		}
	}
}

// TestRunSized runs the full benchmark when MEMBENCH_N is set, for example:
//
//	MEMBENCH_N=20000 go test -run TestRunSized -v -timeout 30m ./memory/membench/
//
// MEMBENCH_QUERIES sets the query count [100], MEMBENCH_BACKENDS a comma-separated subset of backends, and
// MEMBENCH_CACHE a directory that keeps the dataset and its ground truth between runs.
func TestRunSized(t *testing.T) {
	n, _ := strconv.Atoi(os.Getenv("MEMBENCH_N"))
	if n == 0 {
		t.Skip("MEMBENCH_N is not set")
	}
	q, _ := strconv.Atoi(os.Getenv("MEMBENCH_QUERIES"))
	cfg := withChromem(Config{N: n, Queries: cmp.Or(q, 100), CacheDir: os.Getenv("MEMBENCH_CACHE"), NoProgress: true})
	if b := os.Getenv("MEMBENCH_BACKENDS"); b != "" {
		cfg.Backends = strings.Split(b, ",")
	}
	if os.Getenv(sqldbtest.EnvURL) != "" {
		cfg.PostgresURL = sqldbtest.PostgresURL(t)
	}
	var out strings.Builder
	if _, err := Run(context.Background(), &out, cfg); err != nil {
		t.Fatalf("Run: %v\n%s", err, out.String())
	}
	t.Log("\n" + out.String())
}
