package localstore

import (
	"container/heap"
	"math"
	"runtime"
	"slices"
	"strings"
	"sync"
	"unicode"
)

// dot returns the inner product of a and b, which have the same length. The loop is unrolled by eight with four
// accumulators so the compiler keeps them in registers and bounds checks are hoisted.
func dot(a, b []float32) float32 {
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

// l2sq returns the squared Euclidean distance between a and b, which have the same length.
func l2sq(a, b []float32) float32 {
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

func invNorm(v []float32) float32 {
	n := dot(v, v)
	if n == 0 {
		return 0
	}
	return float32(1 / math.Sqrt(float64(n)))
}

// scored is a candidate: a slot in a namespace and its score.
type scored struct {
	slot  int
	score float32
}

// topK is a bounded min-heap keeping the k best candidates seen.
type topK struct {
	k     int
	items []scored
}

func newTopK(k int) *topK { return &topK{k: k, items: make([]scored, 0, min(k, 1024))} }

func (h *topK) Len() int { return len(h.items) }
func (h *topK) Less(i, j int) bool {
	if h.items[i].score != h.items[j].score {
		return h.items[i].score < h.items[j].score
	}
	return h.items[i].slot > h.items[j].slot
}
func (h *topK) Swap(i, j int) { h.items[i], h.items[j] = h.items[j], h.items[i] }
func (h *topK) Push(x any)    { h.items = append(h.items, x.(scored)) }
func (h *topK) Pop() any {
	x := h.items[len(h.items)-1]
	h.items = h.items[:len(h.items)-1]
	return x
}

// offer considers a candidate.
func (h *topK) offer(s scored) {
	if len(h.items) < h.k {
		heap.Push(h, s)
		return
	}
	if s.score > h.items[0].score || (s.score == h.items[0].score && s.slot < h.items[0].slot) {
		h.items[0] = s
		heap.Fix(h, 0)
	}
}

// sorted returns the candidates best first.
func (h *topK) sorted() []scored {
	out := slices.Clone(h.items)
	slices.SortFunc(out, func(a, b scored) int {
		if a.score != b.score {
			if a.score > b.score {
				return -1
			}
			return 1
		}
		return a.slot - b.slot
	})
	return out
}

// parallelMinFloats is the namespace size (rows x dimension) from which a scan is split across GOMAXPROCS
// goroutines; below it the goroutine overhead outweighs the gain.
const parallelMinFloats = 1 << 18

// scan scores slots [0, n) with score (which returns ok=false to skip a slot) and keeps the k best. Large scans
// are split into GOMAXPROCS contiguous chunks, each with its own heap, merged at the end.
func scan(n, dim, k int, score func(slot int) (float32, bool)) []scored {
	workers := runtime.GOMAXPROCS(0)
	if n*dim < parallelMinFloats || workers < 2 {
		h := newTopK(k)
		for i := range n {
			if s, ok := score(i); ok {
				h.offer(scored{i, s})
			}
		}
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
			for i := lo; i < hi; i++ {
				if s, ok := score(i); ok {
					h.offer(scored{i, s})
				}
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
