package localstore

import (
	"runtime"
	"sync"
	"unsafe"
)

// StreamRead reads every byte of v once, as 8-byte words summed in 4 independent lanes, one contiguous part per
// GOMAXPROCS goroutine: the memory-bandwidth floor of a scan over the same bytes, which the search benchmarks
// (here and in membench) print beside the exact scan.
func StreamRead(v []float32) uint64 {
	words := unsafe.Slice((*uint64)(unsafe.Pointer(unsafe.SliceData(v))), len(v)/2)
	workers := runtime.GOMAXPROCS(0)
	part := (len(words) + workers - 1) / workers
	sums := make([]uint64, workers)
	var wg sync.WaitGroup
	for w := range workers {
		ws := words[min(w*part, len(words)):min((w+1)*part, len(words))]
		wg.Go(func() {
			var a, b, c, d uint64
			i := 0
			for ; i+4 <= len(ws); i += 4 {
				a += ws[i]
				b += ws[i+1]
				c += ws[i+2]
				d += ws[i+3]
			}
			for ; i < len(ws); i++ {
				a += ws[i]
			}
			sums[w] = a + b + c + d
		})
	}
	wg.Wait()
	var s uint64
	for _, x := range sums {
		s += x
	}
	return s
}
