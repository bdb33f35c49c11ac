package localstore

import "testing"

// TestRows pushes and pops rows across chunk boundaries and checks every row keeps its contents, and that a
// small set of rows holds little memory.
func TestRows(t *testing.T) {
	const dim = 3
	r := newRows[float32](dim)
	push := func(i int) {
		copy(r.push(), []float32{float32(i), float32(i) + 0.5, -float32(i)})
	}
	check := func() {
		t.Helper()
		for i := range r.n {
			if got := r.row(i); got[0] != float32(i) || got[1] != float32(i)+0.5 || got[2] != -float32(i) {
				t.Fatalf("row %d of %d = %v", i, r.n, got)
			}
		}
	}
	for i := range 10 {
		push(i)
	}
	check()
	if held := r.heldBytes(4); held > 16*dim*4 {
		t.Fatalf("10 rows hold %d bytes", held)
	}
	for i := 10; i < 2*chunkRows+5; i++ {
		push(i)
	}
	check()
	for r.n > chunkRows-3 {
		r.pop()
	}
	check()
	if len(r.chunks) != 1 {
		t.Fatalf("%d chunks for %d rows", len(r.chunks), r.n)
	}
	for i := r.n; i < chunkRows+2; i++ {
		push(i)
	}
	check()
	for r.n > 0 {
		r.pop()
	}
	if len(r.chunks) != 0 || r.heldBytes(4) != 0 {
		t.Fatalf("empty rows hold %d chunks", len(r.chunks))
	}
}
