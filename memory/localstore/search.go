package localstore

import (
	"math"
	"runtime"
	"slices"
	"strings"
	"sync"
	"unicode"

	"github.com/loom-dev/loom/memory"
)

// dotGo returns the inner product of a and b, which have the same length: the portable kernel, unrolled by eight
// with four independent accumulators so the compiler keeps them in registers and hoists bounds checks.
func dotGo(a, b []float32) float32 {
	n := len(a)
	b = b[:n]
	var s0, s1, s2, s3 float32
	i := 0
	for ; i+8 <= n; i += 8 {
		aa := a[i : i+8 : i+8]
		bb := b[i : i+8 : i+8]
		s0 += aa[0]*bb[0] + aa[4]*bb[4]
		s1 += aa[1]*bb[1] + aa[5]*bb[5]
		s2 += aa[2]*bb[2] + aa[6]*bb[6]
		s3 += aa[3]*bb[3] + aa[7]*bb[7]
	}
	for ; i < n; i++ {
		s0 += a[i] * b[i]
	}
	return (s0 + s1) + (s2 + s3)
}

// l2sqGo returns the squared Euclidean distance between a and b, which have the same length (portable kernel).
func l2sqGo(a, b []float32) float32 {
	n := len(a)
	b = b[:n]
	var s0, s1, s2, s3 float32
	i := 0
	for ; i+8 <= n; i += 8 {
		aa := a[i : i+8 : i+8]
		bb := b[i : i+8 : i+8]
		d0, d1, d2, d3 := aa[0]-bb[0], aa[1]-bb[1], aa[2]-bb[2], aa[3]-bb[3]
		d4, d5, d6, d7 := aa[4]-bb[4], aa[5]-bb[5], aa[6]-bb[6], aa[7]-bb[7]
		s0 += d0*d0 + d4*d4
		s1 += d1*d1 + d5*d5
		s2 += d2*d2 + d6*d6
		s3 += d3*d3 + d7*d7
	}
	for ; i < n; i++ {
		d := a[i] - b[i]
		s0 += d * d
	}
	return (s0 + s1) + (s2 + s3)
}

// dotInt8Go returns the inner product of two int8 vectors of the same length (portable kernel).
func dotInt8Go(a, b []int8) int32 {
	n := len(a)
	b = b[:n]
	var s0, s1, s2, s3 int32
	i := 0
	for ; i+4 <= n; i += 4 {
		aa := a[i : i+4 : i+4]
		bb := b[i : i+4 : i+4]
		s0 += int32(aa[0]) * int32(bb[0])
		s1 += int32(aa[1]) * int32(bb[1])
		s2 += int32(aa[2]) * int32(bb[2])
		s3 += int32(aa[3]) * int32(bb[3])
	}
	for ; i < n; i++ {
		s0 += int32(a[i]) * int32(b[i])
	}
	return (s0 + s1) + (s2 + s3)
}

func invNorm(v []float32) float32 {
	n := dot(v, v)
	if n == 0 {
		return 0
	}
	return float32(1 / math.Sqrt(float64(n)))
}

// quantize writes v scaled to int8 into dst (len(v)) and returns the scale: v[i] ~= dst[i] * scale. The scale is
// per vector (max |v[i]| / 127), so vectors of any norm keep their full int8 resolution.
func quantize(dst []int8, v []float32) float32 {
	dst = dst[:len(v)]
	var m float32
	for _, x := range v {
		m = max(m, x, -x)
	}
	if m == 0 {
		clear(dst)
		return 0
	}
	inv := 127 / m
	for i, x := range v {
		// Round half away from zero (as math.Round), in float32 and without a branch (the signs are random):
		// add 0.5 carrying r's sign, then truncate. |r| <= 127.
		r := x * inv
		half := math.Float32frombits(math.Float32bits(r)&(1<<31) | 0x3f000000)
		dst[i] = int8(r + half)
	}
	return m / 127
}

// scored is a candidate: a slot in a namespace and its score.
type scored struct {
	slot  int
	score float32
}

// better reports whether a ranks before b: higher score, then lower slot.
func better(a, b scored) bool {
	return a.score > b.score || (a.score == b.score && a.slot < b.slot)
}

// topK is a bounded min-heap keeping the k best candidates seen (worst at items[0]). It never allocates after
// newTopK.
type topK struct {
	k     int
	items []scored
}

func newTopK(k int) *topK { return &topK{k: k, items: make([]scored, 0, min(k, 1<<16))} }

// admits reports whether a candidate could enter the heap; the scan checks it before paying for filters.
func (h *topK) admits(s scored) bool {
	return len(h.items) < h.k || better(s, h.items[0])
}

// offer considers a candidate.
func (h *topK) offer(s scored) {
	if len(h.items) < h.k {
		h.items = append(h.items, s)
		h.up(len(h.items) - 1)
		return
	}
	if better(s, h.items[0]) {
		h.items[0] = s
		h.down(0)
	}
}

func (h *topK) up(j int) {
	for j > 0 {
		p := (j - 1) / 2
		if !better(h.items[p], h.items[j]) {
			break
		}
		h.items[p], h.items[j] = h.items[j], h.items[p]
		j = p
	}
}

func (h *topK) down(i int) {
	n := len(h.items)
	for {
		l := 2*i + 1
		if l >= n {
			return
		}
		w := l // the worse child
		if r := l + 1; r < n && better(h.items[l], h.items[r]) {
			w = r
		}
		if !better(h.items[i], h.items[w]) {
			return
		}
		h.items[i], h.items[w] = h.items[w], h.items[i]
		i = w
	}
}

// sorted returns the candidates best first.
func (h *topK) sorted() []scored {
	out := slices.Clone(h.items)
	slices.SortFunc(out, func(a, b scored) int {
		if better(a, b) {
			return -1
		}
		if better(b, a) {
			return 1
		}
		return 0
	})
	return out
}

// parallelMinFloats is the namespace size (rows x dimension) from which a scan is split across GOMAXPROCS
// goroutines; below it the goroutine overhead outweighs the gain.
const parallelMinFloats = 1 << 18

// yieldFloats is how much of a parallel scan (rows x dimension) a goroutine does between yields: 2 MiB of float32,
// about 0.1 ms here.
const yieldFloats = 1 << 19

// scanChunks runs work over contiguous chunks of slots [0, n), each chunk filling its own bounded heap of k, and
// merges the heaps into the k best. Scans of at least parallelMinFloats (n x dim) run one chunk per GOMAXPROCS
// goroutine; smaller ones run inline.
func scanChunks(n, dim, k int, work func(lo, hi int, h *topK)) []scored {
	workers := runtime.GOMAXPROCS(0)
	if n*dim < parallelMinFloats || workers < 2 {
		h := newTopK(k)
		work(0, n, h)
		return h.sorted()
	}
	chunk := (n + workers - 1) / workers
	heaps := make([]*topK, workers)
	var wg sync.WaitGroup
	for w := range workers {
		lo, hi := w*chunk, min((w+1)*chunk, n)
		h := newTopK(k)
		heaps[w] = h
		if lo >= hi {
			continue
		}
		wg.Go(func() {
			// Yield between slices of the chunk: a scan holds every core for milliseconds, and other goroutines
			// (another tenant's call, the network) would otherwise wait for the scheduler's 10 ms preemption.
			step := max(1, yieldFloats/dim)
			for a := lo; a < hi; a += step {
				work(a, min(a+step, hi), h)
				runtime.Gosched()
			}
		})
	}
	wg.Wait()
	all := newTopK(k)
	for _, h := range heaps {
		for _, s := range h.items {
			all.offer(s)
		}
	}
	return all.sorted()
}

// vectorQuery is one nearest-neighbour pass over a namespace. keep (expiry and filter) and minScore are
// evaluated only for rows whose score could enter a heap, so the hot loop is the kernel alone.
type vectorQuery struct {
	ns       *namespace
	q        []float32
	qinv     float32
	keep     func(slot int) bool
	minScore *float32 // nil: no cut
}

// exactScore is the metric's exact score of slot i ("higher is closer").
func (vq *vectorQuery) exactScore(i int) float32 {
	ns := vq.ns
	v := ns.vecs.row(i)
	switch ns.meta.Metric {
	case memory.MetricDotProduct:
		return dot(vq.q, v)
	case memory.MetricL2:
		return -float32(sqrt(l2sq(vq.q, v)))
	}
	return dot(vq.q, v) * ns.inv[i] * vq.qinv
}

// exact returns the k best live, matching slots by exact score.
func (vq *vectorQuery) exact(k int) []scored {
	return scanChunks(len(vq.ns.ids), vq.ns.dim, k, func(lo, hi int, h *topK) {
		for i := lo; i < hi; i++ {
			s := scored{i, vq.exactScore(i)}
			if !h.admits(s) || vq.minScore != nil && s.score < *vq.minScore || !vq.keep(i) {
				continue
			}
			h.offer(s)
		}
	})
}

// quantised returns the k best live, matching slots: an int8 scan (a quarter of the bytes of float32) keeps the
// k*rerank best approximate candidates, which are then re-ranked by exact score. It needs a metric without the L2
// norm term (cosine or dot product).
func (vq *vectorQuery) quantised(k, rerank int) []scored {
	ns := vq.ns
	dim := ns.dim
	qq := make([]int8, dim)
	qs := quantize(qq, vq.q)
	cosine := ns.meta.Metric == memory.MetricCosine
	cands := scanChunks(len(ns.ids), dim, k*rerank, func(lo, hi int, h *topK) {
		for i := lo; i < hi; i++ {
			s := float32(dotInt8(qq, ns.qvecs.row(i))) * ns.qscale[i] * qs
			if cosine {
				s *= ns.inv[i] * vq.qinv
			}
			if !h.admits(scored{i, s}) || !vq.keep(i) {
				continue
			}
			h.offer(scored{i, s})
		}
	})
	h := newTopK(k)
	for _, c := range cands {
		s := scored{c.slot, vq.exactScore(c.slot)}
		if vq.minScore == nil || s.score >= *vq.minScore {
			h.offer(s)
		}
	}
	return h.sorted()
}

// tokenize splits text into lowercase runs of letters and digits.
func tokenize(text string) []string {
	return strings.FieldsFunc(strings.ToLower(text), func(r rune) bool {
		return !unicode.IsLetter(r) && !unicode.IsDigit(r)
	})
}

// textIndex is an inverted index (token -> id -> term frequency) scored with BM25 (k1 = 1.2, b = 0.75).
// It is not safe for concurrent use; the namespace's lock guards it.
type textIndex struct {
	postings map[string]map[string]int32
	docLen   map[string]int32
	total    int64
}

func newTextIndex() *textIndex {
	return &textIndex{postings: map[string]map[string]int32{}, docLen: map[string]int32{}}
}

func (x *textIndex) add(id, text string) {
	toks := tokenize(text)
	if len(toks) == 0 {
		return
	}
	for _, t := range toks {
		p := x.postings[t]
		if p == nil {
			p = map[string]int32{}
			x.postings[t] = p
		}
		p[id]++
	}
	x.docLen[id] = int32(len(toks))
	x.total += int64(len(toks))
}

func (x *textIndex) remove(id, text string) {
	l, ok := x.docLen[id]
	if !ok {
		return
	}
	for _, t := range tokenize(text) {
		if p := x.postings[t]; p != nil {
			delete(p, id)
			if len(p) == 0 {
				delete(x.postings, t)
			}
		}
	}
	delete(x.docLen, id)
	x.total -= int64(l)
}

// search scores every document containing a query token and returns the ids accepted by keep, best first, at
// most limit.
func (x *textIndex) search(query string, limit int, keep func(id string) bool) []string {
	n := len(x.docLen)
	if n == 0 {
		return nil
	}
	const k1, b = 1.2, 0.75
	avg := float64(x.total) / float64(n)
	scores := map[string]float64{}
	seen := map[string]bool{}
	for _, t := range tokenize(query) {
		if seen[t] {
			continue
		}
		seen[t] = true
		p := x.postings[t]
		if len(p) == 0 {
			continue
		}
		idf := math.Log(1 + (float64(n)-float64(len(p))+0.5)/(float64(len(p))+0.5))
		for id, tf := range p {
			f := float64(tf)
			scores[id] += idf * f * (k1 + 1) / (f + k1*(1-b+b*float64(x.docLen[id])/avg))
		}
	}
	type cand struct {
		id    string
		score float64
	}
	cands := make([]cand, 0, len(scores))
	for id, s := range scores {
		if keep(id) {
			cands = append(cands, cand{id, s})
		}
	}
	slices.SortFunc(cands, func(a, b cand) int {
		if a.score != b.score {
			if a.score > b.score {
				return -1
			}
			return 1
		}
		return strings.Compare(a.id, b.id)
	})
	out := make([]string, 0, min(limit, len(cands)))
	for _, c := range cands[:min(limit, len(cands))] {
		out = append(out, c.id)
	}
	return out
}

func sqrt(x float32) float64 { return math.Sqrt(float64(x)) }

// Quantised search. IndexConfig maps onto the embedded store as follows:
//
//   - INDEX_KIND_EXACT: always an exact float32 scan.
//   - unspecified (the default): from IVFMinRows rows (while IVFByDefault), the IVF index over the int8 codes,
//     as kind HNSW; until the index is built, and from QuantisedMinRows rows, the int8 quantised scan of every
//     row with exact re-ranking of top_k x QuantisedRerank candidates (while QuantisedByDefault; measured
//     recall@10 1.000 on membench's clustered data at 20k and 100k x 768); below that, exact.
//   - INDEX_KIND_HNSW: the embedded store has no graph index; HNSW asks for approximate search, served by the IVF
//     index over the int8 codes (see IVFMinRows) from IVFMinRows rows, and by the int8 scan from
//     QuantisedMinRows rows. ef_search sets the IVF probe count (ef_search / 10); m and ef_construction are
//     ignored.
//
// The cosine and dot-product metrics are quantised; L2 is always scanned exactly.
const (
	// QuantisedMinRows is the namespace size from which the quantised scan is used; below it the exact scan is
	// cheap and results are exact.
	QuantisedMinRows = 10000
	// QuantisedRerank is R: the int8 scan keeps top_k x R candidates for exact re-ranking.
	QuantisedRerank = 10
	// QuantisedByDefault makes namespaces created without an index kind use the quantised scan.
	QuantisedByDefault = true
)

// useQuantised reports whether searches of ns use the int8 scan.
func (ns *namespace) useQuantised() bool {
	if ns.meta.Metric == memory.MetricL2 || len(ns.ids) < QuantisedMinRows {
		return false
	}
	switch ns.meta.IndexKind {
	case memory.IndexHNSW:
		return true
	case memory.IndexDefault:
		return QuantisedByDefault
	}
	return false
}
