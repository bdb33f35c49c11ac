package localstore

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"math"
	"os"
	"path/filepath"
	"strings"
)

// Persisted IVF indexes. A built index is saved to DIR/index/<hash of tenant and namespace>.ivf so that a
// restart finds it ready instead of training again (seconds at 1M vectors). The file holds the centroids and
// each slot's list, and names the log position it matches: the offset after the last frame applied when it was
// built and that frame's CRC-32C. Replay is deterministic, so when the replay reaches that frame the namespace's
// slots are exactly those the index was built over; the index is attached there and the frames after it
// maintain it, as live writes do. A file that does not match (another log after compaction, another
// namespace of the same name, a row count that differs) is ignored and removed, and the index is rebuilt in the
// background by the next search that wants it; a corrupt file is refused the same way, never half-used.
// Compaction rewrites the log, so it removes every index file and saves again, against the end of the new log,
// those of namespaces it rewrote slot for slot (no expired record dropped); DeleteNamespace removes its file.
//
// Layout (little-endian), version 1:
//
//	magic "LOOMIVF1" | u32 version | u32 len + tenant | u32 len + namespace | u64 log offset | u32 frame CRC
//	| u32 rows | u32 dim | u32 nlist | u32 builtAt | nlist*dim f32 centroids | rows u32 list of each slot
//	| u32 CRC-32C of everything before
const (
	indexMagic   = "LOOMIVF1"
	indexVersion = 1
	// maxIndexFile bounds an index file: the where array of 2^28 slots and more centroids than any list count.
	maxIndexFile = 2 << 30
	maxIndexName = 4096
)

// savedIndex is a decoded index file.
type savedIndex struct {
	tenant, namespace string
	offset            int64
	frameCRC          uint32
	rows, dim         int
	x                 *ivf
}

func (s *Store) indexDir() string { return filepath.Join(s.dir, "index") }

func indexFile(dir, tenant, namespace string) string {
	h := sha256.Sum256([]byte(tenant + "\x00" + namespace))
	return filepath.Join(dir, hex.EncodeToString(h[:16])+".ivf")
}

// encodeIndex returns the file contents for x, built over rows slots of dimension dim.
func encodeIndex(si *savedIndex) []byte {
	x := si.x
	b := make([]byte, 0, 64+len(si.tenant)+len(si.namespace)+4*len(x.centroids)+4*len(x.where))
	b = append(b, indexMagic...)
	b = binary.LittleEndian.AppendUint32(b, indexVersion)
	for _, s := range []string{si.tenant, si.namespace} {
		b = binary.LittleEndian.AppendUint32(b, uint32(len(s)))
		b = append(b, s...)
	}
	b = binary.LittleEndian.AppendUint64(b, uint64(si.offset))
	for _, v := range []int{int(si.frameCRC), si.rows, si.dim, x.nlist, x.builtAt} {
		b = binary.LittleEndian.AppendUint32(b, uint32(v))
	}
	for _, f := range x.centroids {
		b = binary.LittleEndian.AppendUint32(b, math.Float32bits(f))
	}
	for _, c := range x.where {
		b = binary.LittleEndian.AppendUint32(b, uint32(c))
	}
	return binary.LittleEndian.AppendUint32(b, crc32.Checksum(b, crcTable))
}

var errBadIndex = errors.New("bad index file")

// decodeIndex parses an index file. It never panics on arbitrary input and returns errBadIndex (wrapped) for
// anything but a well-formed, checksummed file of version 1 within the limits.
func decodeIndex(b []byte) (*savedIndex, error) {
	bad := func(what string) (*savedIndex, error) { return nil, fmt.Errorf("%s: %w", what, errBadIndex) }
	if len(b) > maxIndexFile {
		return bad("too large")
	}
	if len(b) < len(indexMagic)+8 || string(b[:len(indexMagic)]) != indexMagic {
		return bad("no magic")
	}
	body := b[:len(b)-4]
	if crc32.Checksum(body, crcTable) != binary.LittleEndian.Uint32(b[len(b)-4:]) {
		return bad("checksum mismatch")
	}
	r := body[len(indexMagic):]
	u32 := func() (uint32, bool) {
		if len(r) < 4 {
			return 0, false
		}
		v := binary.LittleEndian.Uint32(r)
		r = r[4:]
		return v, true
	}
	if v, ok := u32(); !ok || v != indexVersion {
		return bad("unknown version")
	}
	si := &savedIndex{}
	for _, dst := range []*string{&si.tenant, &si.namespace} {
		n, ok := u32()
		if !ok || n > maxIndexName || int(n) > len(r) {
			return bad("name")
		}
		*dst, r = string(r[:n]), r[n:]
	}
	if len(r) < 8 {
		return bad("short header")
	}
	off := binary.LittleEndian.Uint64(r)
	r = r[8:]
	var h [5]uint32
	for i := range h {
		v, ok := u32()
		if !ok {
			return bad("short header")
		}
		h[i] = v
	}
	si.offset, si.frameCRC = int64(off), h[0]
	rows, dim, nlist, builtAt := int64(h[1]), int64(h[2]), int64(h[3]), int64(h[4])
	switch {
	case off > math.MaxInt64/2:
		return bad("offset")
	case dim <= 0 || dim > 1<<16:
		return bad("dimension")
	case nlist <= 0 || nlist > rows || rows > 1<<28 || builtAt > rows:
		return bad("sizes")
	case int64(len(r)) != 4*nlist*dim+4*rows:
		return bad("length")
	}
	x := &ivf{nlist: int(nlist), centroids: make([]float32, nlist*dim), builtAt: int(builtAt)}
	for i := range x.centroids {
		f := math.Float32frombits(binary.LittleEndian.Uint32(r[4*i:]))
		if math.IsNaN(float64(f)) || math.IsInf(float64(f), 0) {
			return bad("centroid")
		}
		x.centroids[i] = f
	}
	x.group(int(dim))
	r = r[4*len(x.centroids):]
	where := make([]int32, rows)
	for i := range where {
		c := binary.LittleEndian.Uint32(r[4*i:])
		if int64(c) >= nlist {
			return bad("list")
		}
		where[i] = int32(c)
	}
	x.fileAll(where)
	si.rows, si.dim, si.x = int(rows), int(dim), x
	return si, nil
}

// saveIndex writes x for ns (tenant, name) at the applied log position: temp file, fsync, rename. The caller
// holds the read lock, so the position matches the slots x was built over, and compaction (which removes
// index files under the write lock) cannot interleave.
func (s *Store) saveIndex(tenant, name string, ns *namespace, x *ivf) error {
	dir := s.indexDir()
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return err
	}
	b := encodeIndex(&savedIndex{tenant: tenant, namespace: name, offset: s.applied, frameCRC: s.appliedCRC, rows: len(ns.ids), dim: ns.dim, x: x})
	path := indexFile(dir, tenant, name)
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o640)
	if err != nil {
		return err
	}
	defer os.Remove(tmp) // no-op after the rename
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err == nil {
		err = syncDir(dir)
	}
	return err
}

// loadIndexes reads DIR/index and returns the decodable files by log offset. Files that fail to decode are
// removed (an index is derived data: it is rebuilt).
func (s *Store) loadIndexes() map[int64][]*savedIndex {
	entries, err := os.ReadDir(s.indexDir())
	if err != nil {
		return nil
	}
	out := map[int64][]*savedIndex{}
	for _, e := range entries {
		path := filepath.Join(s.indexDir(), e.Name())
		if !strings.HasSuffix(e.Name(), ".ivf") {
			_ = os.Remove(path) // a temp file left by a crash
			continue
		}
		si, err := readIndexFile(path)
		if err != nil || indexFile(s.indexDir(), si.tenant, si.namespace) != path {
			_ = os.Remove(path)
			continue
		}
		out[si.offset] = append(out[si.offset], si)
	}
	return out
}

func readIndexFile(path string) (*savedIndex, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if st.Size() > maxIndexFile {
		return nil, fmt.Errorf("%s: too large: %w", path, errBadIndex)
	}
	b := make([]byte, st.Size())
	if _, err := f.ReadAt(b, 0); err != nil {
		return nil, err
	}
	return decodeIndex(b)
}

// attachIndexes attaches the saved indexes that match the state after the frame ending at off (with CRC-32C
// crc) and removes those that name this offset but do not match. Called during replay.
func (s *Store) attachIndexes(pending map[int64][]*savedIndex, off int64, crc uint32) {
	for _, si := range pending[off] {
		ns := s.tenants[si.tenant][si.namespace]
		if si.frameCRC == crc && ns != nil && len(ns.ids) == si.rows && ns.dim == si.dim && ns.ivf.Load() == nil {
			ns.ivf.Store(si.x)
			continue
		}
		_ = os.Remove(indexFile(s.indexDir(), si.tenant, si.namespace))
	}
	delete(pending, off)
}

// dropIndexFiles removes every index file (at compaction, which changes the log positions they name).
func (s *Store) dropIndexFiles() {
	_ = os.RemoveAll(s.indexDir())
}
