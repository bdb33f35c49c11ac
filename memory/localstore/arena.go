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

// chunkRows is the rows per chunk: 12 MiB of float32 (3 MiB of int8) at 768 dimensions.
const chunkRows = 4096

func newRows[T float32 | int8](dim int) rows[T] { return rows[T]{dim: dim} }

// row returns row i (0 <= i < n), aliased: writes to it change the row.
func (r *rows[T]) row(i int) []T {
	c := r.chunks[i/chunkRows]
	o := (i % chunkRows) * r.dim
	return c[o : o+r.dim : o+r.dim]
}

// push appends a row and returns it (zero-valued for a new chunk, else whatever a popped row left).
func (r *rows[T]) push() []T {
	if r.n == len(r.chunks)*chunkRows {
		r.chunks = append(r.chunks, make([]T, chunkRows*r.dim))
	}
	r.n++
	return r.row(r.n - 1)
}

// pop removes the last row; a chunk left empty is released.
func (r *rows[T]) pop() {
	r.n--
	if r.n%chunkRows == 0 {
		r.chunks[len(r.chunks)-1] = nil
		r.chunks = r.chunks[:len(r.chunks)-1]
	}
}

// heldBytes is the memory the chunks hold.
func (r *rows[T]) heldBytes(elem int) int64 {
	return int64(len(r.chunks)) * chunkRows * int64(r.dim) * int64(elem)
}
