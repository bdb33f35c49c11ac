package membench

import (
	"context"
	"fmt"
	"strconv"

	"github.com/philippgille/chromem-go"
)

// withChromem adds chromem-go, an in-process brute-force library, to cfg's backends as the reference for
// localstore's exact scan ("vs chromem" in the table). It is test code so that `loom bench memory` does not
// compile chromem-go into the loom binary.
func withChromem(cfg Config) Config {
	cfg.extra = map[string]func(Config) (*backend, error){"chromem": chromemBackend}
	return cfg
}

func chromemBackend(cfg Config) (*backend, error) {
	db := chromem.NewDB()
	col, err := db.CreateCollection("bench", nil, func(context.Context, string) ([]float32, error) {
		return nil, fmt.Errorf("membench: no embedding function")
	})
	if err != nil {
		return nil, err
	}
	query := func(where map[string]string) func(ctx context.Context, q []float32, k int) ([]int, error) {
		return func(ctx context.Context, q []float32, k int) ([]int, error) {
			res, err := col.QueryEmbedding(ctx, q, k, where, nil)
			if err != nil {
				return nil, err
			}
			out := make([]int, len(res))
			for i, r := range res {
				out[i], _ = strconv.Atoi(r.ID)
			}
			return out, nil
		}
	}
	return &backend{
		name: "chromem-go (exact)",
		ingest: func(ctx context.Context, d dataset, done func(int)) error {
			docs := make([]chromem.Document, len(d.vecs))
			for i, v := range d.vecs {
				docs[i] = chromem.Document{ID: strconv.Itoa(i), Embedding: v, Content: "x", Metadata: map[string]string{"bucket": strconv.Itoa(i % d.buckets)}}
			}
			return col.AddDocuments(ctx, docs, 2)
		},
		search:   query(nil),
		filtered: query(map[string]string{"bucket": strconv.Itoa(filterBucket)}),
		close:    func() {},
	}, nil
}
