package membench

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"runtime/metrics"
	"slices"
	"sort"
	"sync"
	"time"
	"unsafe"

	"github.com/loom-dev/loom/internal/procstat"
	"github.com/loom-dev/loom/memory/localstore"
)

// dataset is vectors around random centroids, L2-normalised, and queries drawn the same way. The vectors share
// one contiguous backing array (flat), so the bandwidth floor reads exactly the bytes a scan reads.
type dataset struct {
	flat          []float32 // N x Dim
	vecs, queries [][]float32
	truth         [][]int // exact top K per query
	buckets       int     // record i has bucket i % buckets; the filter selects bucket 3
	ftruth        [][]int // exact top K per query among bucket 3
}

const filterBucket = 3

// loadDataset returns the dataset of c: read from c.CacheDir when a cached copy of the same parameters is
// there, else generated (and written there when CacheDir is set). Generation at 1M x 768 takes minutes (the
// ground truth is a brute-force float64 scan per query); the cache makes repeated runs start in seconds.
func loadDataset(c Config) (dataset, error) {
	if c.CacheDir == "" {
		return makeDataset(c), nil
	}
	path := filepath.Join(c.CacheDir, fmt.Sprintf("membench-n%d-d%d-c%d-q%d-k%d-s%d-b%d.bin", c.N, c.Dim, c.Clusters, c.Queries, c.K, c.Seed, buckets(c)))
	if d, err := readDataset(path, c); err == nil {
		return d, nil
	}
	d := makeDataset(c)
	if err := writeDataset(path, c, d); err != nil {
		return d, fmt.Errorf("cache dataset: %w", err)
	}
	return d, nil
}

func buckets(c Config) int { return max(int(math.Round(1/c.Selectivity)), filterBucket+1) }

func makeDataset(c Config) dataset {
	r := rand.New(rand.NewPCG(c.Seed, 0x6d656d))
	centroids := make([][]float32, c.Clusters)
	for i := range centroids {
		centroids[i] = gauss(r, c.Dim, nil, 1, make([]float32, c.Dim))
	}
	draw := func(dst []float32) []float32 {
		return normalise(gauss(r, c.Dim, centroids[r.IntN(c.Clusters)], 0.35, dst))
	}
	d := newDataset(c)
	for i := range d.vecs {
		draw(d.vecs[i])
	}
	for i := range d.queries {
		draw(d.queries[i])
	}
	// Exact ground truth in float64, queries split over the cores.
	var wg sync.WaitGroup
	workers := runtime.GOMAXPROCS(0)
	for w := range workers {
		wg.Go(func() {
			type sc struct {
				i int
				s float64
			}
			all := make([]sc, c.N)
			for qi := w; qi < c.Queries; qi += workers {
				q := d.queries[qi]
				for i, v := range d.vecs {
					var s float64
					for j := range v {
						s += float64(v[j]) * float64(q[j])
					}
					all[i] = sc{i, s}
				}
				sort.Slice(all, func(a, b int) bool { return all[a].s > all[b].s || all[a].s == all[b].s && all[a].i < all[b].i })
				for _, x := range all[:min(c.K, c.N)] {
					d.truth[qi] = append(d.truth[qi], x.i)
				}
				for _, x := range all {
					if len(d.ftruth[qi]) == c.K {
						break
					}
					if x.i%d.buckets == filterBucket {
						d.ftruth[qi] = append(d.ftruth[qi], x.i)
					}
				}
			}
		})
	}
	wg.Wait()
	return d
}

// newDataset allocates c's dataset with empty ground truth.
func newDataset(c Config) dataset {
	d := dataset{flat: make([]float32, c.N*c.Dim), vecs: make([][]float32, c.N), queries: make([][]float32, c.Queries), buckets: buckets(c)}
	for i := range d.vecs {
		d.vecs[i] = d.flat[i*c.Dim : (i+1)*c.Dim : (i+1)*c.Dim]
	}
	qflat := make([]float32, c.Queries*c.Dim)
	for i := range d.queries {
		d.queries[i] = qflat[i*c.Dim : (i+1)*c.Dim : (i+1)*c.Dim]
	}
	d.truth, d.ftruth = make([][]int, c.Queries), make([][]int, c.Queries)
	return d
}

func gauss(r *rand.Rand, dim int, center []float32, sd float64, v []float32) []float32 {
	for i := range v {
		v[i] = float32(r.NormFloat64() * sd)
		if center != nil {
			v[i] += center[i]
		}
	}
	return v
}

func normalise(v []float32) []float32 {
	var n float64
	for _, x := range v {
		n += float64(x) * float64(x)
	}
	inv := float32(1 / math.Sqrt(n))
	for i := range v {
		v[i] *= inv
	}
	return v
}

// The cache file: "membench1", then the vectors and queries as little-endian float32, then per query K truth
// and K filtered-truth indices as int32 (-1 pads a short list), then a CRC-32C of everything before it. It is
// the benchmark's own file, never user input; a file of the wrong size or checksum is regenerated.
const cacheMagic = "membench1"

func floatBytes(f []float32) []byte {
	return unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(f))), 4*len(f))
}

func writeDataset(path string, c Config, d dataset) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return err
	}
	tmp := path + ".tmp"
	f, err := os.Create(tmp)
	if err != nil {
		return err
	}
	defer os.Remove(tmp)
	h := crc32.New(crc32.MakeTable(crc32.Castagnoli))
	w := io.MultiWriter(f, h)
	parts := [][]byte{[]byte(cacheMagic), floatBytes(d.flat)}
	for _, q := range d.queries {
		parts = append(parts, floatBytes(q))
	}
	idx := make([]byte, 0, 8*c.K*c.Queries)
	for qi := range d.queries {
		for _, t := range [][]int{d.truth[qi], d.ftruth[qi]} {
			for j := range c.K {
				v := int32(-1)
				if j < len(t) {
					v = int32(t[j])
				}
				idx = binary.LittleEndian.AppendUint32(idx, uint32(v))
			}
		}
	}
	parts = append(parts, idx)
	for _, p := range parts {
		if _, err := w.Write(p); err != nil {
			f.Close()
			return err
		}
	}
	if _, err := f.Write(binary.LittleEndian.AppendUint32(nil, h.Sum32())); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

func readDataset(path string, c Config) (dataset, error) {
	f, err := os.Open(path)
	if err != nil {
		return dataset{}, err
	}
	defer f.Close()
	want := int64(len(cacheMagic)) + 4*int64(c.N+c.Queries)*int64(c.Dim) + 8*int64(c.K*c.Queries) + 4
	if st, err := f.Stat(); err != nil || st.Size() != want {
		return dataset{}, fmt.Errorf("cache %s: wrong size", path)
	}
	d := newDataset(c)
	h := crc32.New(crc32.MakeTable(crc32.Castagnoli))
	r := io.TeeReader(f, h)
	magic := make([]byte, len(cacheMagic))
	if _, err := io.ReadFull(r, magic); err != nil || string(magic) != cacheMagic {
		return dataset{}, fmt.Errorf("cache %s: bad magic", path)
	}
	if _, err := io.ReadFull(r, floatBytes(d.flat)); err != nil {
		return dataset{}, err
	}
	for _, q := range d.queries {
		if _, err := io.ReadFull(r, floatBytes(q)); err != nil {
			return dataset{}, err
		}
	}
	idx := make([]byte, 8*c.K*c.Queries)
	if _, err := io.ReadFull(r, idx); err != nil {
		return dataset{}, err
	}
	var sum [4]byte
	if _, err := io.ReadFull(f, sum[:]); err != nil || binary.LittleEndian.Uint32(sum[:]) != h.Sum32() {
		return dataset{}, fmt.Errorf("cache %s: bad checksum", path)
	}
	for qi := range d.queries {
		for t, dst := range []*[]int{&d.truth[qi], &d.ftruth[qi]} {
			for j := range c.K {
				if v := int32(binary.LittleEndian.Uint32(idx[4*(2*qi*c.K+t*c.K+j):])); v >= 0 {
					*dst = append(*dst, int(v))
				}
			}
		}
	}
	if slices.ContainsFunc(d.truth, func(t []int) bool { return len(t) != min(c.K, c.N) }) {
		return dataset{}, fmt.Errorf("cache %s: short ground truth", path)
	}
	return d, nil
}

// residentBytes is the process's resident set: VmRSS on Linux (procstat), else the memory the Go runtime has
// mapped and not released.
func residentBytes() int64 {
	if mib := procstat.RSSMiB(os.Getpid()); mib > 0 {
		return int64(mib * (1 << 20)) // exact: VmRSS is whole kB
	}
	s := []metrics.Sample{{Name: "/memory/classes/total:bytes"}, {Name: "/memory/classes/heap/released:bytes"}}
	metrics.Read(s)
	return int64(s[0].Value.Uint64() - s[1].Value.Uint64())
}

// floor measures localstore.StreamRead over v: the median of runs.
func floor(v []float32, runs int) time.Duration {
	lat := make([]time.Duration, runs)
	for i := range lat {
		t0 := time.Now()
		localstore.StreamRead(v)
		lat[i] = time.Since(t0)
	}
	slices.Sort(lat)
	return lat[runs/2]
}
