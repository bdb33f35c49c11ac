package localstore

import "golang.org/x/sys/cpu"

// useAVX2 selects the assembly kernels (AVX2 + FMA); without them the portable Go loops run.
var useAVX2 = cpu.X86.HasAVX2 && cpu.X86.HasFMA

//go:noescape
func dotAVX2(a, b *float32, n int) float32

//go:noescape
func l2sqAVX2(a, b *float32, n int) float32

//go:noescape
func dotInt8AVX2(a, b *int8, n int) int32

//go:noescape
func prefetchRow(p *int8, n int)

// prefetch hints row into the cache ahead of its use: the IVF scan reads rows scattered over the namespace,
// which the hardware prefetcher does not follow.
func prefetch(row []int8) {
	if len(row) > 0 {
		prefetchRow(&row[0], len(row))
	}
}

// dot returns the inner product of a and b, which have the same length.
func dot(a, b []float32) float32 {
	n := len(a)
	if !useAVX2 || n < 8 {
		return dotGo(a, b)
	}
	b = b[:n]
	m := n &^ 7
	s := dotAVX2(&a[0], &b[0], m)
	if m < n {
		s += dotGo(a[m:], b[m:])
	}
	return s
}

// l2sq returns the squared Euclidean distance between a and b, which have the same length.
func l2sq(a, b []float32) float32 {
	n := len(a)
	if !useAVX2 || n < 8 {
		return l2sqGo(a, b)
	}
	b = b[:n]
	m := n &^ 7
	s := l2sqAVX2(&a[0], &b[0], m)
	if m < n {
		s += l2sqGo(a[m:], b[m:])
	}
	return s
}

// dotInt8 returns the inner product of a and b, which have the same length, in int32 (exact for dimensions up
// to 2^17).
func dotInt8(a, b []int8) int32 {
	n := len(a)
	if !useAVX2 || n < 16 {
		return dotInt8Go(a, b)
	}
	b = b[:n]
	m := n &^ 15
	s := dotInt8AVX2(&a[0], &b[0], m)
	if m < n {
		s += dotInt8Go(a[m:], b[m:])
	}
	return s
}
