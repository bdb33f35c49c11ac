package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/loom-dev/loom/memory/membench"
)

const benchUsage = `Usage: loom bench memory [flags]

Generates a clustered synthetic dataset from a fixed seed, computes exact ground truth, and reports recall@10,
p50/p99 latency, QPS and ingest rate side by side for the embedded store, pgvector through direct SQL and
pgvector through the memory store, in one run, with ratios to direct SQL. Postgres backends run when
--postgres-url is set. For the embedded store it also prints the memory-bandwidth floor (a streaming read of
the same float32 bytes, measured in the same run) beside the exact scan, and reopens each store to time Open,
the first search after the restart against the warm p50, and the resident memory the reopened store holds.
--cache-dir keeps the dataset and its ground truth between runs (minutes to generate at 1M vectors). (The
chromem-go reference runs from the tests: see docs/benchmarks.md.)
`

// benchCmd runs `loom bench ...`.
func benchCmd(ctx context.Context, args []string, getenv func(string) string, stdout io.Writer, stderr *os.File) error {
	if len(args) > 0 && (args[0] == "-h" || args[0] == "-help" || args[0] == "--help" || args[0] == "help") {
		fmt.Fprint(stdout, benchUsage)
		return flag.ErrHelp
	}
	if len(args) == 0 || args[0] != "memory" {
		fmt.Fprint(stderr, benchUsage)
		return errors.New("bench: want 'loom bench memory'")
	}
	fs := flag.NewFlagSet("loom bench memory", flag.ContinueOnError)
	var cfg membench.Config
	fs.IntVar(&cfg.N, "n", 100000, "vectors")
	fs.IntVar(&cfg.Dim, "dim", 768, "dimension")
	fs.IntVar(&cfg.Clusters, "clusters", 100, "clusters in the synthetic data")
	fs.IntVar(&cfg.Queries, "queries", 200, "queries")
	fs.IntVar(&cfg.K, "k", 10, "results per query")
	seed := fs.Uint64("seed", 1, "dataset seed")
	fs.IntVar(&cfg.EfSearch, "ef-search", 0, "hnsw.ef_search for the pgvector backends; 0 uses the store's default")
	fs.StringVar(&cfg.PostgresURL, "postgres-url", getenv("LOOM_DATABASE_URL"), "Postgres with pgvector (env LOOM_DATABASE_URL); empty skips the Postgres backends")
	fs.StringVar(&cfg.CacheDir, "cache-dir", "", "keep the generated dataset here between runs, and put the stores under test here; empty generates it each run")
	backends := fs.String("backends", "", "comma-separated subset of localstore, localstore-int8, localstore-ivf, pgstore, pgvector-sql")
	if err := parseCmdFlags(fs, benchUsage, args[1:], stdout, stderr); err != nil {
		return err
	}
	// The progress bar redraws one line with \r: on stderr, and only when that is a terminal, so piped or
	// redirected output holds the results alone.
	if isTerminal(stderr) {
		cfg.Progress = stderr
	} else {
		cfg.NoProgress = true
	}
	cfg.Seed = *seed
	cfg.Backends = splitList(*backends)
	_, err := membench.Run(ctx, stdout, cfg)
	return err
}

// isTerminal reports whether f is a character device (a terminal), not a file or a pipe.
func isTerminal(f *os.File) bool {
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}
