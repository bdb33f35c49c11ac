// Package localstore is the embedded memory.Store, the default of `loom serve`: every namespace lives in memory
// for exact search, and every acknowledged write is durable in an append-only log under one directory.
//
// Durability: each write (a whole Upsert batch, a Delete, a namespace change) is one checksummed frame appended
// to DIR/memory.log and fsynced before the call returns, so kill -9 or a power cut loses nothing acknowledged. On
// Open the log is replayed; a torn tail frame (a write that was never acknowledged) is detected by its length or
// CRC-32C and truncated away. Corruption before the tail is an error, never silently skipped. When the log grows
// past CompactMinBytes and twice the live data, it is rewritten from the live state (temp file, fsync, rename).
//
// Search. Each namespace keeps its vectors in fixed chunks of contiguous rows (see rows: growing never copies)
// scanned with an AVX2/FMA kernel (a portable unrolled loop elsewhere) into bounded top-k heaps, one per
// contiguous range of slots, split across GOMAXPROCS goroutines for large namespaces and merged at the end;
// expiry, filters and min_score are evaluated only for rows whose score could enter a heap, and the scan
// allocates nothing per row. Vectors are stored as written (Get returns them bit for bit) with a precomputed
// inverse norm, so cosine is a dot product times two scalars. Each vector also has an int8 copy with a
// per-vector scale. From IVFMinRows rows, namespaces of index kind HNSW and unspecified (while IVFByDefault)
// search an IVF index over the int8 copy, built in the background and saved under DIR/index so that a restart
// finds it ready (see index.go); until it is built, and from QuantisedMinRows rows, they scan the whole int8
// copy, a quarter of the bytes, keep top_k x QuantisedRerank candidates and re-rank them exactly;
// INDEX_KIND_EXACT always scans float32 (see QuantisedMinRows for the mapping). Text is indexed in a small
// inverted index scored by BM25 for hybrid search, fused with the vector ranking by reciprocal rank fusion
// (k = 60). Expired records are never returned and are dropped by compaction. Each record's metadata is kept
// in memory in its log encoding (a few bytes, where a Go map costs hundreds): filters decode only the keys they
// test, without allocating for numbers and bools, and only results decode it whole.
//
// Fairness and quotas. Scans over 16k floats wait at a gate that shares the cores among tenants in turn (see
// scanGate), outside the store's lock, so one tenant's flood of searches queues behind itself. WithQuota bounds
// each tenant's namespaces, records and bytes, checked under the writer lock so concurrent writes cannot both
// pass; a refused batch writes nothing. DeleteNamespace of a namespace holding FreeOSMemoryBytes or more returns
// the freed memory to the operating system at once.
//
// Only one process may open a directory at a time (an flock on DIR/LOCK enforces it on Unix).
package localstore

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/loom-dev/loom/memory"
)

// CompactMinBytes is the log size below which the log is never compacted.
const CompactMinBytes = 64 << 20

var _ memory.Store = (*Store)(nil)

// Store is the embedded store. It is safe for concurrent use: writers are serialised (each fsyncs), readers run
// in parallel with each other and with a writer's fsync.
type Store struct {
	dir  string
	now  func() time.Time
	lock *os.File // held while open

	writeMu sync.Mutex // serialises log appends and compaction; taken before mu
	log     *os.File
	logSize int64
	buf     []byte

	mu      sync.RWMutex
	tenants map[string]map[string]*namespace
	closed  bool
	// applied is the log offset after the last frame applied to tenants, and appliedCRC that frame's CRC-32C:
	// the log position a persisted index names (see index.go). Guarded by mu.
	applied    int64
	appliedCRC uint32

	// quota bounds each tenant (see WithQuota); checked under writeMu, so concurrent writes cannot both pass.
	quota memory.Quota
	// observer is told of every search (see WithObserver); nil observes nothing.
	observer memory.SearchObserver
	// freeing is set while a goroutine returns freed memory to the OS after a large DeleteNamespace.
	freeing atomic.Bool
	// gate shares the cores among tenants' scans (see scanGate).
	gate *scanGate
	// builds counts background index builds; buildCtx, cancelled by Close, stops those still waiting.
	builds     sync.WaitGroup
	buildCtx   context.Context
	stopBuilds context.CancelFunc
}

// Option configures a Store.
type Option func(*Store)

// WithQuota bounds what each tenant may keep: namespaces, records and record bytes ([RecordSize]), over
// all its namespaces. A write over a quota fails with a *memory.QuotaError and writes nothing. The default is
// no limit (the zero Quota); `loom serve` passes memory.DefaultQuota unless configured otherwise.
func WithQuota(q memory.Quota) Option { return func(s *Store) { s.quota = q } }

// WithObserver has o told of every search, with its mode ("exact", "int8", "ivf" or "hybrid"), for traces and
// metrics. The observed span covers the scan, not the wait at the scan gate.
func WithObserver(o memory.SearchObserver) Option { return func(s *Store) { s.observer = o } }

// namespace is one namespace's live state. Slots 0..len(ids)-1 are dense; deleting swaps the last slot in.
type namespace struct {
	meta memory.Namespace
	dim  int
	ids  []string
	vecs rows[float32] // len(ids) rows of dim
	inv  []float32     // inverse norms (cosine)
	// qvecs and qscale are the int8 copy of vecs (len(ids) rows) and each vector's scale, for the quantised scan.
	qvecs  rows[int8]
	qscale []float32
	// ivf is the IVF index (kind HNSW), nil until a search builds it; writers keep it in step.
	ivf      atomic.Pointer[ivf]
	building atomic.Bool // a background build of ivf is running
	recs     []*rec
	slot     map[string]int
	text     *textIndex
	bytes    int64
	// expiring counts records with an expire time; while it is zero, searches skip the expiry check.
	expiring int
}

type rec struct {
	text string
	// meta is the record's metadata encoded (see encodeMetadata): a few bytes where a map costs hundreds, decoded
	// only for a filter (one key at a time, through Lookup) or a result.
	meta   encodedMetadata
	expire time.Time
	update time.Time
	size   int64
}

// Lookup reads key of the record's metadata (a *rec is a memory.MetadataLookup without an allocation).
func (r *rec) Lookup(key string) (memory.Value, bool) { return r.meta.Lookup(key) }

// Open opens (creating it if needed) the store in dir and replays its log.
func Open(dir string, opts ...Option) (*Store, error) {
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("open localstore: %w", err)
	}
	lock, err := lockDir(dir)
	if err != nil {
		return nil, fmt.Errorf("open localstore: %w", err)
	}
	s, err := openUnlocked(dir)
	if err != nil {
		lock.Close()
		return nil, err
	}
	s.lock = lock
	for _, o := range opts {
		o(s)
	}
	return s, nil
}

func openUnlocked(dir string) (*Store, error) {
	s := &Store{dir: dir, now: time.Now, tenants: map[string]map[string]*namespace{}, gate: newScanGate(runtime.GOMAXPROCS(0))}
	s.buildCtx, s.stopBuilds = context.WithCancel(context.Background())
	f, err := os.OpenFile(s.logPath(), os.O_RDWR|os.O_CREATE, 0o640)
	if err != nil {
		return nil, fmt.Errorf("open localstore: %w", err)
	}
	good, err := s.replay(f)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("open localstore: replay %s: %w", s.logPath(), err)
	}
	if err := f.Truncate(good); err != nil {
		f.Close()
		return nil, fmt.Errorf("open localstore: truncate torn tail: %w", err)
	}
	if _, err := f.Seek(good, io.SeekStart); err != nil {
		f.Close()
		return nil, fmt.Errorf("open localstore: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return nil, fmt.Errorf("open localstore: %w", err)
	}
	if err := syncDir(dir); err != nil {
		f.Close()
		return nil, fmt.Errorf("open localstore: %w", err)
	}
	s.log, s.logSize = f, good
	s.applied = good
	if good >= FreeOSMemoryBytes {
		// Replay decoded the whole log into garbage; return it now rather than leave the process at the
		// garbage collector's heap goal (about twice the live data).
		debug.FreeOSMemory()
	}
	s.writeMu.Lock()
	err = s.maybeCompact()
	s.writeMu.Unlock()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("open localstore: %w", err)
	}
	return s, nil
}

func (s *Store) logPath() string { return filepath.Join(s.dir, "memory.log") }

// replay applies every intact frame of f and returns the offset after the last one. A bad frame is accepted as a
// torn tail only when it reaches the end of the file or is followed by zeros only.
func (s *Store) replay(f *os.File) (int64, error) {
	st, err := f.Stat()
	if err != nil {
		return 0, err
	}
	size := st.Size()
	r := bufio.NewReaderSize(f, 1<<20)
	var off int64
	var buf []byte
	pending := s.loadIndexes()
	defer func() {
		for _, sis := range pending { // positions the log never reached: stale files
			for _, si := range sis {
				_ = os.Remove(indexFile(s.indexDir(), si.tenant, si.namespace))
			}
		}
	}()
	for {
		payload, err := readFrame(r, buf)
		if err == io.EOF {
			return off, nil
		}
		if errors.Is(err, errTorn) {
			if tornTail(f, off, size) {
				return off, nil
			}
			return 0, fmt.Errorf("corrupt frame at offset %d: %w", off, err)
		}
		if err != nil {
			return 0, err
		}
		e, err := decodeEntry(payload)
		if err != nil {
			return 0, fmt.Errorf("frame at offset %d: %w", off, err)
		}
		if err := s.apply(e, prepare(e)); err != nil {
			return 0, fmt.Errorf("frame at offset %d: %w", off, err)
		}
		buf = payload
		off += frameHeader + int64(len(payload))
		s.applied, s.appliedCRC = off, 0
		if len(pending[off]) > 0 {
			s.appliedCRC = crc32.Checksum(payload, crcTable)
			s.attachIndexes(pending, off, s.appliedCRC)
		}
	}
}

// tornTail reports whether a bad frame at off is a torn tail: its declared length runs to or past the end of the
// file, or every byte after off is zero (space allocated but never written).
func tornTail(f *os.File, off, size int64) bool {
	var h [frameHeader]byte
	if n, _ := f.ReadAt(h[:], off); n < frameHeader {
		return true
	}
	n := int64(h[0]) | int64(h[1])<<8 | int64(h[2])<<16 | int64(h[3])<<24
	if off+frameHeader+n >= size {
		return true
	}
	sr := bufio.NewReader(io.NewSectionReader(f, off, size-off))
	for {
		b, err := sr.ReadByte()
		if err != nil {
			return true
		}
		if b != 0 {
			return false
		}
	}
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// write appends e to the log, fsyncs, then applies it. The caller holds writeMu. The CPU work of applying an
// upsert (norms and int8 codes) runs while the frame is written and fsynced, so a bulk load keeps the disk busy.
func (s *Store) write(e *entry) error {
	var prep *prepared
	prepDone := make(chan struct{})
	go func() {
		defer close(prepDone)
		prep = prepare(e)
	}()
	buf, err := appendFrame(s.buf[:0], e)
	if err != nil {
		<-prepDone
		return err
	}
	if cap(buf) <= 16<<20 {
		s.buf = buf
	}
	_, werr := s.log.Write(buf)
	var serr error
	if werr == nil {
		serr = s.log.Sync()
	}
	<-prepDone
	if werr != nil {
		// A partial frame may be on disk; cut it so later frames stay readable.
		_ = s.log.Truncate(s.logSize)
		_, _ = s.log.Seek(s.logSize, io.SeekStart)
		return fmt.Errorf("append log: %w", werr)
	}
	if serr != nil {
		return fmt.Errorf("sync log: %w", serr)
	}
	s.logSize += int64(len(buf))
	s.mu.Lock()
	err = s.apply(e, prep)
	s.applied, s.appliedCRC = s.logSize, binary.LittleEndian.Uint32(buf[4:8])
	s.mu.Unlock()
	if err != nil {
		return fmt.Errorf("apply: %w", err)
	}
	// The write is durable whatever happens next; a failed compaction leaves the old log intact and is retried
	// after the next write.
	_ = s.maybeCompact()
	return nil
}

// apply changes the in-memory state, taking an upsert's norms and codes from prep (see prepare). The caller
// holds mu (or is replaying).
func (s *Store) apply(e *entry, prep *prepared) error {
	nss := s.tenants[e.tenant]
	switch e.op {
	case opCreateNamespace:
		if nss == nil {
			nss = map[string]*namespace{}
			s.tenants[e.tenant] = nss
		}
		meta := e.ns
		if meta.Dimension <= 0 || meta.Dimension > 1<<16 {
			return fmt.Errorf("namespace %q: bad dimension %d", meta.Name, meta.Dimension)
		}
		nss[e.namespace] = &namespace{meta: meta, dim: meta.Dimension, vecs: newRows[float32](meta.Dimension), qvecs: newRows[int8](meta.Dimension), slot: map[string]int{}, text: newTextIndex()}
	case opDeleteNamespace:
		delete(nss, e.namespace)
		if len(nss) == 0 {
			delete(s.tenants, e.tenant)
		}
	case opUpsert:
		ns := nss[e.namespace]
		if ns == nil {
			return fmt.Errorf("upsert into unknown namespace %q", e.namespace)
		}
		for _, r := range e.records {
			if len(r.Vector) != ns.dim {
				return fmt.Errorf("record %q: dimension %d, namespace has %d", r.ID, len(r.Vector), ns.dim)
			}
		}
		if prep == nil || prep.dim != ns.dim {
			prep = prepare(e)
		}
		for j, r := range e.records {
			ns.put(r, prep, j)
		}
	case opDelete:
		ns := nss[e.namespace]
		if ns == nil {
			return fmt.Errorf("delete from unknown namespace %q", e.namespace)
		}
		for _, id := range e.ids {
			ns.remove(id)
		}
	default:
		return fmt.Errorf("unknown op %d", e.op)
	}
	return nil
}

// prepared is the per-vector work of an upsert done before it is applied: inverse norms, int8 codes and scales.
type prepared struct {
	dim    int
	inv    []float32
	codes  []int8
	qscale []float32
}

// prepare computes e's inverse norms and int8 codes, split over the cores for large batches; nil when e is not
// an upsert or its vectors differ in length (apply then refuses it).
func prepare(e *entry) *prepared {
	if e.op != opUpsert || len(e.records) == 0 {
		return nil
	}
	dim := len(e.records[0].Vector)
	for _, r := range e.records {
		if len(r.Vector) != dim {
			return nil
		}
	}
	p := &prepared{dim: dim, inv: make([]float32, len(e.records)), codes: make([]int8, len(e.records)*dim), qscale: make([]float32, len(e.records))}
	work := func(lo, hi int) {
		for j := lo; j < hi; j++ {
			v := e.records[j].Vector
			p.inv[j] = invNorm(v)
			p.qscale[j] = quantize(p.codes[j*dim:(j+1)*dim], v)
		}
	}
	if len(e.records)*dim < parallelMinFloats {
		work(0, len(e.records))
	} else {
		parallelRange(len(e.records), work)
	}
	return p
}

// put writes record r, the j-th of the upsert prep was computed for.
func (ns *namespace) put(r memory.Record, prep *prepared, j int) {
	code := prep.codes[j*ns.dim : (j+1)*ns.dim]
	size := RecordSize(r)
	// Times are kept in UTC, as the log gives them back after a restart.
	nr := &rec{text: r.Text, meta: encodeMetadata(r.Metadata), expire: r.ExpireTime.UTC(), update: r.UpdateTime.UTC(), size: size}
	if !r.ExpireTime.IsZero() {
		ns.expiring++
	}
	i, ok := ns.slot[r.ID]
	if ok {
		old := ns.recs[i]
		if !old.expire.IsZero() {
			ns.expiring--
		}
		ns.text.remove(r.ID, old.text)
		ns.bytes -= old.size
		ns.recs[i] = nr
		copy(ns.vecs.row(i), r.Vector)
		ns.inv[i] = prep.inv[j]
		copy(ns.qvecs.row(i), code)
		ns.qscale[i] = prep.qscale[j]
		if x := ns.ivf.Load(); x != nil {
			x.update(ns, i)
		}
	} else {
		ns.slot[r.ID] = len(ns.ids)
		ns.ids = append(ns.ids, r.ID)
		copy(ns.vecs.push(), r.Vector)
		ns.inv = append(ns.inv, prep.inv[j])
		copy(ns.qvecs.push(), code)
		ns.qscale = append(ns.qscale, prep.qscale[j])
		if x := ns.ivf.Load(); x != nil {
			x.add(ns, len(ns.ids)-1)
		}
		ns.recs = append(ns.recs, nr)
	}
	ns.text.add(r.ID, r.Text)
	ns.bytes += size
}

func (ns *namespace) remove(id string) {
	i, ok := ns.slot[id]
	if !ok {
		return
	}
	old := ns.recs[i]
	if !old.expire.IsZero() {
		ns.expiring--
	}
	ns.text.remove(id, old.text)
	ns.bytes -= old.size
	last := len(ns.ids) - 1
	if x := ns.ivf.Load(); x != nil {
		x.unfile(i)
		if i != last {
			x.move(last, i)
		} else {
			x.where, x.pos = x.where[:last], x.pos[:last]
		}
	}
	if i != last {
		ns.ids[i] = ns.ids[last]
		ns.recs[i] = ns.recs[last]
		ns.inv[i] = ns.inv[last]
		copy(ns.vecs.row(i), ns.vecs.row(last))
		ns.qscale[i] = ns.qscale[last]
		copy(ns.qvecs.row(i), ns.qvecs.row(last))
		ns.slot[ns.ids[i]] = i
	}
	ns.ids = ns.ids[:last]
	ns.recs[last] = nil
	ns.recs = ns.recs[:last]
	ns.inv = ns.inv[:last]
	ns.vecs.pop()
	ns.qscale = ns.qscale[:last]
	ns.qvecs.pop()
	delete(ns.slot, id)
}

// record returns slot i as a memory.Record.
func (ns *namespace) record(i int, includeVector bool) memory.Record {
	r := ns.recs[i]
	out := memory.Record{ID: ns.ids[i], Text: r.text, Metadata: decodeMetadata(r.meta), ExpireTime: r.expire, UpdateTime: r.update}
	if includeVector {
		out.Vector = slices.Clone(ns.vecs.row(i))
	}
	return out
}

// maybeCompact rewrites the log from the live state when it has grown past CompactMinBytes and twice the live
// data. The caller holds writeMu.
func (s *Store) maybeCompact() error {
	if s.logSize < CompactMinBytes {
		return nil
	}
	s.mu.RLock()
	var live int64
	for _, nss := range s.tenants {
		for _, ns := range nss {
			live += ns.bytes
		}
	}
	s.mu.RUnlock()
	if s.logSize < 2*live {
		return nil
	}
	return s.compact()
}

// Compact rewrites the log from the live state, dropping overwritten, deleted and expired records.
func (s *Store) Compact() error {
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	return s.compact()
}

func (s *Store) compact() error {
	tmp := s.logPath() + ".tmp"
	f, err := os.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o640)
	if err != nil {
		return fmt.Errorf("compact: %w", err)
	}
	defer os.Remove(tmp) // no-op after the rename
	w := bufio.NewWriterSize(f, 1<<20)
	var size int64
	var lastCRC uint32
	emit := func(e *entry) error {
		buf, err := appendFrame(nil, e)
		if err != nil {
			return err
		}
		size += int64(len(buf))
		lastCRC = binary.LittleEndian.Uint32(buf[4:8])
		_, err = w.Write(buf)
		return err
	}
	now := s.now()
	// skipped names the namespaces that lost expired records in the rewrite: replaying the new log gives them
	// other slots than they have in memory, so their indexes cannot be saved against it.
	skipped := map[*namespace]bool{}
	s.mu.RLock()
	err = func() error {
		for tenant, nss := range s.tenants {
			for name, ns := range nss {
				if err := emit(&entry{op: opCreateNamespace, tenant: tenant, namespace: name, ns: ns.meta}); err != nil {
					return err
				}
				batch := &entry{op: opUpsert, tenant: tenant, namespace: name}
				for i := range ns.ids {
					if ns.recs[i].expire.IsZero() || now.Before(ns.recs[i].expire) {
						batch.records = append(batch.records, ns.record(i, true))
					} else {
						skipped[ns] = true
					}
					if len(batch.records) == 256 || (i == len(ns.ids)-1 && len(batch.records) > 0) {
						if err := emit(batch); err != nil {
							return err
						}
						batch.records = batch.records[:0]
					}
				}
			}
		}
		return nil
	}()
	s.mu.RUnlock()
	if err == nil {
		err = w.Flush()
	}
	if err == nil {
		err = f.Sync()
	}
	if err == nil {
		err = os.Rename(tmp, s.logPath())
	}
	if err == nil {
		err = syncDir(s.dir)
	}
	if err != nil {
		f.Close()
		return fmt.Errorf("compact: %w", err)
	}
	if _, err := f.Seek(size, io.SeekStart); err != nil {
		f.Close()
		return fmt.Errorf("compact: %w", err)
	}
	s.log.Close()
	s.log, s.logSize = f, size
	// The saved indexes name positions in the old log. Those of namespaces rewritten slot for slot are saved
	// again against the end of the new one; the others are rebuilt when next wanted. Under the write lock, so
	// no build saves meanwhile.
	s.mu.Lock()
	s.applied, s.appliedCRC = size, lastCRC
	s.dropIndexFiles()
	for tenant, nss := range s.tenants {
		for name, ns := range nss {
			if x := ns.ivf.Load(); x != nil && !skipped[ns] {
				_ = s.saveIndex(tenant, name, ns, x) // a failed save costs a rebuild after a restart
			}
		}
	}
	s.mu.Unlock()
	return nil
}

// Close closes the log. The store must not be used afterwards.
func (s *Store) Close() error {
	s.stopBuilds()
	s.builds.Wait() // a build already training finishes (it holds the read lock Close needs anyway)
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	err := s.log.Close()
	s.lock.Close()
	return err
}

// Ping reports an error once the store is closed.
func (s *Store) Ping(ctx context.Context) error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return errors.New("localstore: closed")
	}
	return nil
}

var errClosed = errors.New("localstore: closed")

// lookup returns a namespace; the caller holds mu.
func (s *Store) lookup(tenant, name string) (*namespace, error) {
	if s.closed {
		return nil, errClosed
	}
	ns := s.tenants[tenant][name]
	if ns == nil {
		return nil, fmt.Errorf("namespace %q: %w", name, memory.ErrNotFound)
	}
	return ns, nil
}

// CreateNamespace implements memory.Store.
func (s *Store) CreateNamespace(ctx context.Context, tenant string, ns memory.Namespace) (memory.Namespace, error) {
	if err := memory.CheckNamespace(ns); err != nil {
		return memory.Namespace{}, err
	}
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	s.mu.RLock()
	_, err := s.lookup(tenant, ns.Name)
	s.mu.RUnlock()
	switch {
	case err == nil:
		return memory.Namespace{}, fmt.Errorf("create namespace %q: %w", ns.Name, memory.ErrAlreadyExists)
	case !errors.Is(err, memory.ErrNotFound):
		return memory.Namespace{}, err
	}
	s.mu.RLock()
	used := s.usage(tenant)
	s.mu.RUnlock()
	if err := s.quota.Check(used, memory.Usage{Namespaces: 1}); err != nil {
		return memory.Namespace{}, fmt.Errorf("create namespace %q: %w", ns.Name, err)
	}
	ns.CreateTime = s.now().UTC().Truncate(time.Microsecond)
	ns.Stats = memory.NamespaceStats{}
	if err := s.write(&entry{op: opCreateNamespace, tenant: tenant, namespace: ns.Name, ns: ns}); err != nil {
		return memory.Namespace{}, fmt.Errorf("create namespace %q: %w", ns.Name, err)
	}
	return ns, nil
}

// GetNamespace implements memory.Store.
func (s *Store) GetNamespace(ctx context.Context, tenant, name string, withStats bool) (memory.Namespace, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	ns, err := s.lookup(tenant, name)
	if err != nil {
		return memory.Namespace{}, fmt.Errorf("get namespace: %w", err)
	}
	out := ns.meta
	if !withStats {
		return out, nil
	}
	now := s.now()
	for _, r := range ns.recs {
		if r.expire.IsZero() || now.Before(r.expire) {
			out.Stats.RecordCount++
			out.Stats.SizeBytes += r.size
		}
	}
	return out, nil
}

// ListNamespaces implements memory.Store.
func (s *Store) ListNamespaces(ctx context.Context, tenant, after string, limit int) ([]memory.Namespace, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return nil, errClosed
	}
	var out []memory.Namespace
	for name, ns := range s.tenants[tenant] {
		if name > after {
			out = append(out, ns.meta)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	if len(out) > limit {
		out = out[:limit]
	}
	return out, nil
}

// DeleteNamespace implements memory.Store.
func (s *Store) DeleteNamespace(ctx context.Context, tenant, name string) error {
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	s.mu.RLock()
	ns, err := s.lookup(tenant, name)
	var held int64
	if err == nil {
		held = ns.held()
	}
	s.mu.RUnlock()
	if err != nil {
		return fmt.Errorf("delete namespace: %w", err)
	}
	if err := s.write(&entry{op: opDeleteNamespace, tenant: tenant, namespace: name}); err != nil {
		return fmt.Errorf("delete namespace %q: %w", name, err)
	}
	// Its saved index would only be attached and dropped again by every replay. (A build of it that was
	// running finished before the delete was applied: it holds the read lock.)
	_ = os.Remove(indexFile(s.indexDir(), tenant, name))
	if held >= FreeOSMemoryBytes {
		s.freeOSMemory()
	}
	return nil
}

// FreeOSMemoryBytes is the size of a deleted namespace's arrays from which DeleteNamespace returns the freed
// memory to the operating system at once (debug.FreeOSMemory in the background, one at a time) instead of
// leaving it to the runtime's gradual scavenger, so the process shrinks after a tenant deletes a large namespace.
const FreeOSMemoryBytes = 8 << 20

func (s *Store) freeOSMemory() {
	if !s.freeing.CompareAndSwap(false, true) {
		return // one is running; it frees this namespace's memory too
	}
	go func() {
		defer s.freeing.Store(false)
		debug.FreeOSMemory()
	}()
}

// held approximates the bytes of a namespace's arrays (capacity, not length). The caller holds mu.
func (ns *namespace) held() int64 {
	return ns.vecs.heldBytes(4) + ns.qvecs.heldBytes(1) + int64(4*(cap(ns.inv)+cap(ns.qscale))) + ns.bytes
}

// usage is what tenant holds. The caller holds mu.
func (s *Store) usage(tenant string) memory.Usage {
	nss := s.tenants[tenant]
	u := memory.Usage{Namespaces: int64(len(nss))}
	for _, ns := range nss {
		u.Records += int64(len(ns.ids))
		u.Bytes += ns.bytes
	}
	return u
}

// batchUsage is what writing records (checked, to ns) adds to its tenant's usage: new ids count as records,
// and every record's size less that of the record it replaces. A later record of an id in the batch wins. The
// caller holds mu.
func batchUsage(ns *namespace, records []memory.Record) memory.Usage {
	last := make(map[string]int, len(records))
	for i, r := range records {
		last[r.ID] = i
	}
	var add memory.Usage
	for i, r := range records {
		if last[r.ID] != i {
			continue
		}
		add.Bytes += RecordSize(r)
		if j, ok := ns.slot[r.ID]; ok {
			add.Bytes -= ns.recs[j].size
		} else {
			add.Records++
		}
	}
	return add
}

// checkQuota returns a *memory.QuotaError if writing records to namespace would take tenant over its quota.
// Before refusing, it removes the tenant's expired records (they still count until removed) and checks again.
// The caller holds writeMu, not mu.
func (s *Store) checkQuota(tenant, namespace string, records []memory.Record) error {
	if s.quota == (memory.Quota{}) {
		return nil
	}
	check := func() (expiring bool, err error) {
		s.mu.RLock()
		defer s.mu.RUnlock()
		ns, err := s.lookup(tenant, namespace)
		if err != nil {
			return false, err
		}
		for _, ns := range s.tenants[tenant] {
			expiring = expiring || ns.expiring > 0
		}
		return expiring, s.quota.Check(s.usage(tenant), batchUsage(ns, records))
	}
	expiring, err := check()
	if err == nil || !errors.Is(err, memory.ErrQuotaExceeded) || !expiring {
		return err
	}
	if err := s.purgeExpired(tenant); err != nil {
		return err
	}
	_, err = check()
	return err
}

// purgeExpired deletes every expired record of tenant, one logged delete per namespace. The caller holds
// writeMu, not mu.
func (s *Store) purgeExpired(tenant string) error {
	now := s.now()
	s.mu.RLock()
	dels := map[string][]string{}
	for name, ns := range s.tenants[tenant] {
		if ns.expiring == 0 {
			continue
		}
		for i, id := range ns.ids {
			if ns.expired(i, now) {
				dels[name] = append(dels[name], id)
			}
		}
	}
	s.mu.RUnlock()
	for name, ids := range dels {
		if err := s.write(&entry{op: opDelete, tenant: tenant, namespace: name, ids: ids}); err != nil {
			return fmt.Errorf("remove expired records: %w", err)
		}
	}
	return nil
}

// Upsert implements memory.Store.
func (s *Store) Upsert(ctx context.Context, tenant, namespace string, records []memory.Record) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	s.mu.RLock()
	ns, err := s.lookup(tenant, namespace)
	var meta memory.Namespace
	if err == nil {
		meta = ns.meta
	}
	s.mu.RUnlock()
	if err != nil {
		return fmt.Errorf("upsert: %w", err)
	}
	if err := memory.CheckRecords(meta, records); err != nil {
		return fmt.Errorf("upsert: %w", err)
	}
	if err := s.checkQuota(tenant, namespace, records); err != nil {
		return fmt.Errorf("upsert: %w", err)
	}
	if err := s.write(&entry{op: opUpsert, tenant: tenant, namespace: namespace, records: records}); err != nil {
		return fmt.Errorf("upsert: %w", err)
	}
	return nil
}

// Get implements memory.Store.
func (s *Store) Get(ctx context.Context, tenant, namespace string, ids []string, includeVectors bool) ([]memory.Record, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	ns, err := s.lookup(tenant, namespace)
	if err != nil {
		return nil, fmt.Errorf("get: %w", err)
	}
	now := s.now()
	var out []memory.Record
	for _, id := range ids {
		i, ok := ns.slot[id]
		if !ok || ns.expired(i, now) {
			continue
		}
		out = append(out, ns.record(i, includeVectors))
	}
	return out, nil
}

func (ns *namespace) expired(i int, now time.Time) bool {
	e := ns.recs[i].expire
	return !e.IsZero() && !now.Before(e)
}

// Delete implements memory.Store.
func (s *Store) Delete(ctx context.Context, tenant, namespace string, ids []string, filter *memory.Filter) (int64, error) {
	if len(ids) == 0 {
		if filter == nil {
			return 0, memory.Invalidf("selector", "ids or filter is required")
		}
		if err := memory.ValidateFilter("filter", filter); err != nil {
			return 0, fmt.Errorf("delete: %w", err)
		}
	}
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	s.mu.RLock()
	ns, err := s.lookup(tenant, namespace)
	if err != nil {
		s.mu.RUnlock()
		return 0, fmt.Errorf("delete: %w", err)
	}
	now := s.now()
	var del []string // present records to remove (expired ones too, to free them)
	var live int64
	seen := map[string]bool{}
	if len(ids) > 0 {
		for _, id := range ids {
			if i, ok := ns.slot[id]; ok && !seen[id] {
				seen[id] = true
				del = append(del, id)
				if !ns.expired(i, now) {
					live++
				}
			}
		}
	} else {
		for i, id := range ns.ids {
			if memory.MatchFilterLookup(filter, ns.recs[i]) {
				del = append(del, id)
				if !ns.expired(i, now) {
					live++
				}
			}
		}
	}
	s.mu.RUnlock()
	if len(del) == 0 {
		return 0, nil
	}
	if err := s.write(&entry{op: opDelete, tenant: tenant, namespace: namespace, ids: del}); err != nil {
		return 0, fmt.Errorf("delete: %w", err)
	}
	return live, nil
}

// Search implements memory.Store.
func (s *Store) Search(ctx context.Context, tenant, namespace string, q memory.Query) ([]memory.Hit, error) {
	if q.TopK <= 0 {
		return nil, memory.Invalidf("top_k", "must be positive")
	}
	if err := memory.ValidateFilter("filter", q.Filter); err != nil {
		return nil, fmt.Errorf("search: %w", err)
	}
	if q.Hybrid && q.Text == "" {
		return nil, memory.Invalidf("hybrid", "needs a text query")
	}
	// Scans of any size wait their tenant's turn at the gate, outside the lock, so queued searches never hold
	// up writers.
	s.mu.RLock()
	ns, err := s.lookup(tenant, namespace)
	var rows, dim int
	var meta memory.Namespace
	if err == nil {
		rows, dim, meta = len(ns.ids), ns.dim, ns.meta
	}
	s.mu.RUnlock()
	if err != nil {
		return nil, fmt.Errorf("search: %w", err)
	}
	if q.Vector == nil && q.Embed != nil {
		if q.Vector, err = q.Embed(ctx, meta); err != nil {
			return nil, fmt.Errorf("search: %w", err)
		}
	}
	if rows*dim >= gateMinFloats {
		release, err := s.gate.acquire(ctx, tenant, scanWeight(rows, dim))
		if err != nil {
			return nil, fmt.Errorf("search: %w", err)
		}
		defer release()
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	ns, err = s.lookup(tenant, namespace)
	if err != nil {
		return nil, fmt.Errorf("search: %w", err)
	}
	if err := memory.CheckVector("vector", q.Vector, ns.dim, ns.meta.Metric); err != nil {
		return nil, fmt.Errorf("search: %w", err)
	}
	now := s.now()
	checkExpiry := ns.expiring > 0
	keep := func(i int) bool {
		return (!checkExpiry || !ns.expired(i, now)) && (q.Filter == nil || memory.MatchFilterLookup(q.Filter, ns.recs[i]))
	}
	k := q.TopK
	if q.Hybrid {
		k = max(2*q.TopK, 50)
	}
	vq := &vectorQuery{ns: ns, q: q.Vector, qinv: invNorm(q.Vector), keep: keep}
	if !q.Hybrid {
		vq.minScore = q.MinScore
	}
	mode := "exact"
	switch {
	case q.Hybrid:
		mode = "hybrid"
	case ns.useIVF():
		mode = "ivf"
	case ns.useQuantised():
		mode = "int8"
	}
	_, end := memory.StartSearch(ctx, s.observer, namespace, mode, q.TopK)
	var top []scored
	ok := false
	if ns.useIVF() {
		if ns.staleIndex() {
			s.buildIndex(tenant, namespace, ns)
		}
		top, ok = vq.ivfSearch(k, QuantisedRerank)
	}
	if ok {
		// the IVF index answered
	} else if ns.useQuantised() {
		top = vq.quantised(k, QuantisedRerank)
	} else {
		top = vq.exact(k)
	}
	end(len(top), nil)
	if !q.Hybrid {
		hits := make([]memory.Hit, len(top))
		for j, c := range top {
			hits[j] = memory.Hit{Record: ns.record(c.slot, q.IncludeVectors), Score: c.score}
		}
		return hits, nil
	}
	textIDs := ns.text.search(q.Text, k, func(id string) bool { return keep(ns.slot[id]) })
	fused := map[int]float64{}
	for r, c := range top {
		fused[c.slot] += 1 / float64(memory.RRFK+r+1)
	}
	for r, id := range textIDs {
		fused[ns.slot[id]] += 1 / float64(memory.RRFK+r+1)
	}
	h := newTopK(q.TopK)
	for slot, sc := range fused {
		h.offer(scored{slot, float32(sc)})
	}
	best := h.sorted()
	hits := make([]memory.Hit, len(best))
	for j, c := range best {
		hits[j] = memory.Hit{Record: ns.record(c.slot, q.IncludeVectors), Score: c.score}
	}
	return hits, nil
}
