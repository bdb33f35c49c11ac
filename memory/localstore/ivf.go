package localstore

import (
	"context"
	"math"
	"math/rand/v2"
	"runtime"
	"sync"

	"github.com/loom-dev/loom/memory"
)

// IVF: the embedded store's approximate index, used by namespaces of index kind HNSW from IVFMinRows rows (see
// QuantisedMinRows for the whole mapping). Vectors are partitioned by k-means (trained on a sample) into about
// sqrt(n) lists; a search scores the centroids, scans the int8 codes of the IVFProbes nearest lists, keeps
// top_k x QuantisedRerank candidates and re-ranks them exactly on float32. The index is built in the background
// when a search first needs it (and rebuilt when the namespace has doubled since), taking its tenant's turn at the
// scan gate; until it is ready searches use the int8 scan (or the old index), so no search waits for a build and
// no build holds up another tenant's searches for longer than its turn. Every write then maintains it. When
// a filter leaves fewer than top_k matches in the probed lists, the search falls back to the full int8 scan, so
// it still returns exactly top_k rows when that many match.
const (
	// IVFMinRows is the namespace size from which kind HNSW (and unspecified, while IVFByDefault) uses the IVF
	// index.
	IVFMinRows = 20000
	// IVFByDefault makes namespaces created without an index kind use the IVF index from IVFMinRows rows (the
	// int8 scan answers until it is built).
	IVFByDefault = true
	// IVFProbes is the number of lists a search scans (nprobe); a namespace's ef_search, when set, overrides it
	// as ef_search / 10.
	IVFProbes      = 24
	ivfTrainSample = 16384
	ivfTrainIters  = 8
)

// ivf is an inverted-file index over a namespace's slots. Writers (holding the store's write lock) keep it in
// step with the slots; readers only read it.
type ivf struct {
	nlist     int
	centroids []float32 // nlist x dim, unit length
	lists     [][]int32 // slots per list; a search scans the namespace's int8 codes of these slots
	where     []int32   // slot -> list
	pos       []int32   // slot -> index in lists[where[slot]]
	builtAt   int       // rows when built
	// groups and members are a coarse quantiser over the centroids, from ivfGroupMinLists lists (nil below):
	// about sqrt(nlist) group centres (unit length) and the lists of each, so that filing a vector scores the
	// groups and the members of the ivfGroupProbes best instead of every centroid. Derived from the centroids
	// (deterministically), never saved.
	groups  []float32
	members [][]int32
}

const (
	// ivfGroupMinLists is the list count from which filing a vector goes through the coarse groups.
	ivfGroupMinLists = 128
	// ivfGroupProbes is how many groups filing a vector looks into.
	ivfGroupProbes = 5
	// ivfPrefetch is how many rows ahead the IVF scan prefetches.
	ivfPrefetch = 4
)

// nearest returns the list whose centroid is closest (by inner product) to v: exactly below ivfGroupMinLists
// lists, else among the members of the ivfGroupProbes closest groups (at 1M rows, about 200 dot products
// instead of 1000; a vector filed under its second-best list is still found by searches, which score every
// centroid and probe several lists).
func (x *ivf) nearest(v []float32, dim int) int {
	best, bi := float32(math.Inf(-1)), 0
	try := func(c int) {
		if s := dot(v, x.centroids[c*dim:(c+1)*dim]); s > best {
			best, bi = s, c
		}
	}
	if x.members == nil {
		for c := range x.nlist {
			try(c)
		}
		return bi
	}
	var top [ivfGroupProbes]scored
	n := 0
	for g := range len(x.members) {
		sc := scored{g, dot(v, x.groups[g*dim:(g+1)*dim])}
		if n < len(top) {
			top[n] = sc
			n++
			continue
		}
		worst := 0
		for i := 1; i < n; i++ {
			if better(top[worst], top[i]) {
				worst = i
			}
		}
		if better(sc, top[worst]) {
			top[worst] = sc
		}
	}
	for _, g := range top[:n] {
		for _, c := range x.members[g.slot] {
			try(int(c))
		}
	}
	return bi
}

// group builds the coarse quantiser (groups, members) over the centroids by a few k-means rounds from a fixed
// seed; a no-op below ivfGroupMinLists lists.
func (x *ivf) group(dim int) {
	if x.nlist < ivfGroupMinLists {
		return
	}
	ng := int(math.Sqrt(float64(x.nlist)))
	r := rand.New(rand.NewPCG(uint64(x.nlist), 0x67))
	groups := make([]float32, ng*dim)
	for g, c := range r.Perm(x.nlist)[:ng] {
		copy(groups[g*dim:(g+1)*dim], x.centroids[c*dim:(c+1)*dim])
	}
	assign := make([]int32, x.nlist)
	for range 6 {
		for c := range x.nlist {
			cv := x.centroids[c*dim : (c+1)*dim]
			best := float32(math.Inf(-1))
			for g := range ng {
				if s := dot(cv, groups[g*dim:(g+1)*dim]); s > best {
					best, assign[c] = s, int32(g)
				}
			}
		}
		sums := make([]float32, ng*dim)
		for c, g := range assign {
			row := sums[int(g)*dim : int(g+1)*dim]
			for j, f := range x.centroids[c*dim : (c+1)*dim] {
				row[j] += f
			}
		}
		for g := range ng {
			row := sums[g*dim : (g+1)*dim]
			if inv := invNorm(row); inv != 0 { // an empty group keeps its centre
				for j := range row {
					groups[g*dim+j] = row[j] * inv
				}
			}
		}
	}
	members := make([][]int32, ng)
	for c, g := range assign {
		members[g] = append(members[g], int32(c))
	}
	x.groups, x.members = groups, members
}

// file appends slot to list c.
func (x *ivf) file(slot, c int) {
	x.where[slot], x.pos[slot] = int32(c), int32(len(x.lists[c]))
	x.lists[c] = append(x.lists[c], int32(slot))
}

// add files slot (which must be new, len(where) == slot) under its nearest list.
func (x *ivf) add(ns *namespace, slot int) {
	x.where, x.pos = append(x.where, 0), append(x.pos, 0)
	x.file(slot, x.nearest(ns.vecs.row(slot), ns.dim))
}

// unfile removes slot from its list (its where and pos entries stay, stale).
func (x *ivf) unfile(slot int) {
	c, p := x.where[slot], x.pos[slot]
	l := x.lists[c]
	n := len(l) - 1
	last := l[n]
	l[p] = last
	x.pos[last] = p
	x.lists[c] = l[:n]
}

// update refiles an existing slot after its vector changed.
func (x *ivf) update(ns *namespace, slot int) {
	x.unfile(slot)
	x.file(slot, x.nearest(ns.vecs.row(slot), ns.dim))
}

// move follows the store's swap-delete: slot from takes the place of slot to, which was unfiled already.
func (x *ivf) move(from, to int) {
	c, p := x.where[from], x.pos[from]
	x.lists[c][p] = int32(to)
	x.where[to], x.pos[to] = c, p
	x.where, x.pos = x.where[:from], x.pos[:from]
}

// trainIVF builds an index over ns by k-means on a sample of its (normalised) vectors.
func trainIVF(ns *namespace) *ivf {
	n, dim := len(ns.ids), ns.dim
	nlist := max(int(math.Sqrt(float64(n))), 1)
	r := rand.New(rand.NewPCG(uint64(n), 0x1f))
	sample := r.Perm(n)[:min(n, max(ivfTrainSample, 8*nlist))]
	unit := func(i int, dst []float32) {
		v := ns.vecs.row(i)
		inv := invNorm(v)
		for j, f := range v {
			dst[j] = f * inv
		}
	}
	x := &ivf{nlist: nlist, centroids: make([]float32, nlist*dim), builtAt: n}
	for c := range nlist {
		unit(sample[c], x.centroids[c*dim:(c+1)*dim])
	}
	assign := make([]int32, len(sample))
	buf := make([]float32, dim)
	for range ivfTrainIters {
		parallelRange(len(sample), func(lo, hi int) {
			tmp := make([]float32, dim)
			for s := lo; s < hi; s++ {
				unit(sample[s], tmp)
				assign[s] = int32(x.nearest(tmp, dim))
			}
		})
		sums := make([]float32, nlist*dim)
		counts := make([]int, nlist)
		for s, c := range assign {
			unit(sample[s], buf)
			row := sums[int(c)*dim : int(c+1)*dim]
			for j, f := range buf {
				row[j] += f
			}
			counts[c]++
		}
		for c := range nlist {
			row := sums[c*dim : (c+1)*dim]
			if counts[c] == 0 { // an empty list restarts at a random sample
				unit(sample[r.IntN(len(sample))], row)
			}
			if inv := invNorm(row); inv != 0 {
				for j := range row {
					row[j] *= inv
				}
			}
			copy(x.centroids[c*dim:(c+1)*dim], row)
		}
	}
	x.group(dim)
	where := make([]int32, n)
	parallelRange(n, func(lo, hi int) {
		for i := lo; i < hi; i++ {
			where[i] = int32(x.nearest(ns.vecs.row(i), dim))
		}
	})
	x.fileAll(where)
	return x
}

// fileAll files every slot i under list where[i] (each < nlist), in slot order.
func (x *ivf) fileAll(where []int32) {
	counts := make([]int32, x.nlist)
	for _, c := range where {
		counts[c]++
	}
	x.lists = make([][]int32, x.nlist)
	for c := range x.lists {
		x.lists[c] = make([]int32, 0, counts[c])
	}
	x.where, x.pos = where, make([]int32, len(where))
	for i, c := range where {
		x.file(i, int(c))
	}
}

// parallelRange splits [0, n) into GOMAXPROCS contiguous chunks run concurrently.
func parallelRange(n int, f func(lo, hi int)) {
	workers := runtime.GOMAXPROCS(0)
	chunk := (n + workers - 1) / workers
	var wg sync.WaitGroup
	for lo := 0; lo < n; lo += chunk {
		wg.Go(func() { f(lo, min(lo+chunk, n)) })
	}
	wg.Wait()
}

// useIVF reports whether searches of ns use the IVF index: kind HNSW, and kind unspecified while IVFByDefault.
func (ns *namespace) useIVF() bool {
	if ns.meta.Metric == memory.MetricL2 || len(ns.ids) < IVFMinRows {
		return false
	}
	return ns.meta.IndexKind == memory.IndexHNSW || ns.meta.IndexKind == memory.IndexDefault && IVFByDefault
}

// staleIndex reports whether ns needs an IVF build: it has none, or it has doubled since the last one. The
// caller holds the store's read lock.
func (ns *namespace) staleIndex() bool {
	x := ns.ivf.Load()
	return x == nil || len(ns.ids) >= 2*x.builtAt
}

// buildIndex starts a background build of ns's IVF index unless one is running. The build waits for tenant's
// turn at the gate with every slot (k-means runs on every core), then trains under the store's read lock, so no
// write interleaves and writes after it maintain the new index. The caller holds the read lock.
func (s *Store) buildIndex(tenant, name string, ns *namespace) {
	if !ns.building.CompareAndSwap(false, true) {
		return
	}
	s.builds.Add(1)
	go func() {
		defer s.builds.Done()
		defer ns.building.Store(false)
		release, err := s.gate.acquire(s.buildCtx, tenant, s.gate.size)
		if err != nil {
			return // closing
		}
		defer release()
		s.mu.RLock()
		defer s.mu.RUnlock()
		if s.closed || s.tenants[tenant][name] != ns || !ns.useIVF() || !ns.staleIndex() {
			return
		}
		x := trainIVF(ns)
		ns.ivf.Store(x)
		// A failed save costs a rebuild after the next restart, nothing else.
		_ = s.saveIndex(tenant, name, ns, x)
	}()
}

// BuildIndexes builds now, in the background goroutines searches would start, every index a namespace's next
// search would want (see IVFMinRows), and waits for them or for ctx. Searches meanwhile are answered by the
// full scans. Loaders call it after a bulk load so that the first searches find the index ready.
func (s *Store) BuildIndexes(ctx context.Context) error {
	s.mu.RLock()
	if s.closed {
		s.mu.RUnlock()
		return errClosed
	}
	for tenant, nss := range s.tenants {
		for name, ns := range nss {
			if ns.useIVF() && ns.staleIndex() {
				s.buildIndex(tenant, name, ns)
			}
		}
	}
	s.mu.RUnlock()
	done := make(chan struct{})
	go func() { s.builds.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// waitIndexes waits for the background index builds started so far (tests).
func (s *Store) waitIndexes() { s.builds.Wait() }

// ivfSearch returns the k best live, matching slots from the probed lists, or ok=false when fewer than k
// matched there or the index is not built yet.
func (vq *vectorQuery) ivfSearch(k, rerank int) (top []scored, ok bool) {
	ns := vq.ns
	dim := ns.dim
	x := ns.ivf.Load()
	if x == nil {
		return nil, false
	}
	probes := IVFProbes
	if ns.meta.EfSearch > 0 {
		probes = max(ns.meta.EfSearch/10, 1)
	}
	probes = min(probes, x.nlist)
	lists := newTopK(probes)
	for c := range x.nlist {
		lists.offer(scored{c, dot(vq.q, x.centroids[c*dim:(c+1)*dim])})
	}
	qq := make([]int8, dim)
	qs := quantize(qq, vq.q)
	cosine := ns.meta.Metric == memory.MetricCosine
	mul := qs
	if cosine {
		mul *= vq.qinv
	}
	probed, rows := lists.items, 0
	for _, l := range probed {
		rows += len(x.lists[l.slot])
	}
	// Each probed list's codes are contiguous: a sequential int8 scan, split over goroutines when large.
	// The probed lists' slots are read from the namespace's int8 codes (768 contiguous bytes a row), split over
	// goroutines when large.
	cands := scanChunks(len(probed), rows*dim/max(len(probed), 1), k*rerank, func(lo, hi int, h *topK) {
		for _, l := range probed[lo:hi] {
			list := x.lists[l.slot]
			for j, slot := range list {
				if j+ivfPrefetch < len(list) {
					prefetch(ns.qvecs.row(int(list[j+ivfPrefetch])))
				}
				i := int(slot)
				f := ns.qscale[i] * mul
				if cosine {
					f *= ns.inv[i]
				}
				s := scored{i, float32(dotInt8(qq, ns.qvecs.row(i))) * f}
				if !h.admits(s) || !vq.keep(i) {
					continue
				}
				h.offer(s)
			}
		}
	})
	h := newTopK(k)
	for _, c := range cands {
		s := scored{c.slot, vq.exactScore(c.slot)}
		if vq.minScore == nil || s.score >= *vq.minScore {
			h.offer(s)
		}
	}
	if len(cands) < k {
		return nil, false
	}
	return h.sorted(), true
}
