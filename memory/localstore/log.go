package localstore

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"

	"google.golang.org/protobuf/encoding/protowire"

	"github.com/loom-dev/loom/memory"
)

// The log is a sequence of frames: a 4-byte little-endian payload length, a 4-byte CRC-32C of the payload, then
// the payload (one entry). One acknowledged write is one frame, appended and fsynced before the write returns,
// so a crash can tear only the last, unacknowledged frame.
//
// A payload is the op byte, the tenant and the namespace name (each a protobuf varint length and the bytes),
// then, by op: a Namespace message (length first); nothing; a count and that many Record messages (each length
// first); a count and that many ids (each length first). See codec.go for the messages.

const (
	frameHeader = 8
	// maxFrame bounds a frame's payload; a batch of 1000 records of 4096 floats and 64 KiB text is ~80 MiB.
	maxFrame = 512 << 20
)

var crcTable = crc32.MakeTable(crc32.Castagnoli)

// errTorn reports a frame that is incomplete or fails its checksum.
var errTorn = errors.New("torn or corrupt frame")

// op is the kind of a log entry.
type op byte

const (
	opCreateNamespace op = 1
	opDeleteNamespace op = 2
	opUpsert          op = 3
	opDelete          op = 4
)

// entry is one logged mutation.
type entry struct {
	op        op
	tenant    string
	namespace string
	// ns is set for opCreateNamespace.
	ns memory.Namespace
	// records is set for opUpsert.
	records []memory.Record
	// ids is set for opDelete.
	ids []string
}

// appendFrame appends e as a frame to buf.
func appendFrame(buf []byte, e *entry) ([]byte, error) {
	start := len(buf)
	buf = append(buf, make([]byte, frameHeader)...)
	buf = append(buf, byte(e.op))
	buf = protowire.AppendBytes(buf, []byte(e.tenant))
	buf = protowire.AppendBytes(buf, []byte(e.namespace))
	var err error
	switch e.op {
	case opCreateNamespace:
		buf, err = appendLengthPrefixed(buf, func(b []byte) ([]byte, error) { return appendNamespace(b, e.ns) })
	case opDeleteNamespace:
	case opUpsert:
		buf = protowire.AppendVarint(buf, uint64(len(e.records)))
		for i := range e.records {
			if buf, err = appendLengthPrefixed(buf, func(b []byte) ([]byte, error) { return appendRecord(b, &e.records[i]) }); err != nil {
				break
			}
		}
	case opDelete:
		buf = protowire.AppendVarint(buf, uint64(len(e.ids)))
		for _, id := range e.ids {
			buf = protowire.AppendBytes(buf, []byte(id))
		}
	default:
		return nil, fmt.Errorf("encode entry: unknown op %d", e.op)
	}
	if err != nil {
		return nil, fmt.Errorf("encode entry: %w", err)
	}
	payload := buf[start+frameHeader:]
	if len(payload) > maxFrame {
		return nil, fmt.Errorf("encode entry: %d bytes exceeds the %d byte frame limit", len(payload), maxFrame)
	}
	binary.LittleEndian.PutUint32(buf[start:], uint32(len(payload)))
	binary.LittleEndian.PutUint32(buf[start+4:], crc32.Checksum(payload, crcTable))
	return buf, nil
}

// appendLengthPrefixed appends what body appends, preceded by its length as a varint. The length is written
// in the one byte reserved for it when it fits, and the body moved along otherwise.
func appendLengthPrefixed(buf []byte, body func([]byte) ([]byte, error)) ([]byte, error) {
	at := len(buf)
	buf, err := body(append(buf, 0))
	if err != nil {
		return nil, err
	}
	n := len(buf) - at - 1
	if n < 0x80 {
		buf[at] = byte(n)
		return buf, nil
	}
	var lenBuf [binary.MaxVarintLen64]byte
	l := protowire.AppendVarint(lenBuf[:0], uint64(n))
	buf = append(buf, l[1:]...) // room for the rest of the length
	copy(buf[at+len(l):], buf[at+1:at+1+n])
	copy(buf[at:], l)
	return buf, nil
}

// readFrame reads one frame's payload from r. It returns io.EOF at a clean end, errTorn (wrapped) for an
// incomplete or corrupt frame, and other errors from r.
func readFrame(r io.Reader, buf []byte) ([]byte, error) {
	var h [frameHeader]byte
	if n, err := io.ReadFull(r, h[:]); err != nil {
		if err == io.EOF && n == 0 {
			return nil, io.EOF
		}
		if err == io.ErrUnexpectedEOF {
			return nil, fmt.Errorf("short header: %w", errTorn)
		}
		return nil, err
	}
	n := binary.LittleEndian.Uint32(h[:])
	if n == 0 || n > maxFrame {
		return nil, fmt.Errorf("frame length %d: %w", n, errTorn)
	}
	if cap(buf) < int(n) {
		buf = make([]byte, n)
	}
	buf = buf[:n]
	if _, err := io.ReadFull(r, buf); err != nil {
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			return nil, fmt.Errorf("short payload: %w", errTorn)
		}
		return nil, err
	}
	if crc32.Checksum(buf, crcTable) != binary.LittleEndian.Uint32(h[4:]) {
		return nil, fmt.Errorf("checksum mismatch: %w", errTorn)
	}
	return buf, nil
}

// decodeEntry parses a frame payload. It never panics on arbitrary input.
func decodeEntry(b []byte) (*entry, error) {
	if len(b) < 1 {
		return nil, errors.New("decode entry: empty")
	}
	e := &entry{op: op(b[0])}
	b = b[1:]
	var s []byte
	var err error
	if s, b, err = consumeBytes(b); err != nil {
		return nil, fmt.Errorf("decode entry tenant: %w", err)
	}
	e.tenant = string(s)
	if s, b, err = consumeBytes(b); err != nil {
		return nil, fmt.Errorf("decode entry namespace: %w", err)
	}
	e.namespace = string(s)
	switch e.op {
	case opCreateNamespace:
		if s, b, err = consumeBytes(b); err != nil {
			return nil, fmt.Errorf("decode namespace: %w", err)
		}
		if e.ns, err = decodeNamespace(s); err != nil {
			return nil, err
		}
	case opDeleteNamespace:
	case opUpsert, opDelete:
		n, l := protowire.ConsumeVarint(b)
		if l < 0 || n > uint64(len(b)) {
			return nil, errors.New("decode entry: bad count")
		}
		b = b[l:]
		for range n {
			if s, b, err = consumeBytes(b); err != nil {
				return nil, fmt.Errorf("decode entry item: %w", err)
			}
			if e.op == opDelete {
				e.ids = append(e.ids, string(s))
				continue
			}
			r, err := decodeRecord(s)
			if err != nil {
				return nil, err
			}
			e.records = append(e.records, r)
		}
	default:
		return nil, fmt.Errorf("decode entry: unknown op %d", e.op)
	}
	if len(b) != 0 {
		return nil, fmt.Errorf("decode entry: %d trailing bytes", len(b))
	}
	return e, nil
}

func consumeBytes(b []byte) (v, rest []byte, err error) {
	v, n := protowire.ConsumeBytes(b)
	if n < 0 {
		return nil, nil, protowire.ParseError(n)
	}
	return v, b[n:], nil
}
