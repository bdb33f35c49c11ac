package localstore

// rows holds a namespace's vectors (float32 or their int8 codes), dim elements a row, in fixed chunks of
// chunkRows rows. Growing allocates one more chunk and never copies or frees the rows already held, so a
// namespace of 1M x 768 grows without the 1.25x copies (and the garbage) of one appended slice, and the
// process's resident memory stays close to the bytes held. A row is contiguous; rows are not contiguous across
// chunks, so scans go row by row (as they always did).
type rows[T float32 | int8] struct {
	dim    int
	n      int
	chunks [][]T
}

// chunkRows is the rows per chunk: 12 MiB of float32 (3 MiB of int8) at 768 dimensions. The first chunk
// starts at 16 rows and doubles up to this.
const chunkRows = 4096

func newRows[T float32 | int8](dim int) rows[T] { return rows[T]{dim: dim} }

// row returns row i (0 <= i < n), aliased: writes to it change the row.
func (r *rows[T]) row(i int) []T {
	c := r.chunks[i/chunkRows]
	o := (i % chunkRows) * r.dim
	return c[o : o+r.dim : o+r.dim]
}

// push appends a row and returns it (zero-valued for new memory, else whatever a popped row left). The first
// chunk grows like a slice (doubling, up to chunkRows rows), so a small namespace holds little; later chunks
// are allocated whole.
func (r *rows[T]) push() []T {
	c := r.n / chunkRows
	if c == len(r.chunks) {
		size := chunkRows * r.dim
		if c == 0 {
			size = 16 * r.dim
		}
		r.chunks = append(r.chunks, make([]T, 0, size))
	}
	ch := r.chunks[c]
	if len(ch) == cap(ch) { // only the first chunk fills before chunkRows rows
		grown := make([]T, len(ch), min(2*cap(ch), chunkRows*r.dim))
		copy(grown, ch)
		ch = grown
	}
	r.chunks[c] = ch[:len(ch)+r.dim]
	r.n++
	return r.row(r.n - 1)
}

// pop removes the last row; a chunk left empty is released.
func (r *rows[T]) pop() {
	r.n--
	c := r.n / chunkRows
	r.chunks[c] = r.chunks[c][:len(r.chunks[c])-r.dim]
	if len(r.chunks[c]) == 0 {
		r.chunks[c] = nil
		r.chunks = r.chunks[:c]
	}
}

// heldBytes is the memory the chunks hold.
func (r *rows[T]) heldBytes(elem int) int64 {
	var n int64
	for _, c := range r.chunks {
		n += int64(cap(c))
	}
	return n * int64(elem)
}
