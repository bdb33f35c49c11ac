package localstore

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
)

// LogFile is the name of the store's log in its directory: the one file that holds the store's data. The
// directory's other files hold none: LOCK is the single-process lock, and LogFile+".tmp" is a compaction in
// progress (renamed over the log when complete, removed otherwise).
const LogFile = "memory.log"

// LogCopy describes a copy made by [CopyLog].
type LogCopy struct {
	// Bytes is the length of the copy, made of whole frames only.
	Bytes int64
	// Frames is the number of frames (one per acknowledged write) in the copy.
	Frames int
	// TailBytes is the length of an incomplete last frame that was left out: a write still being appended when
	// the copy began (it was not acknowledged then), or the torn tail of a crash the store has not replayed yet.
	TailBytes int64
}

// CopyLog writes to w a consistent copy of the log of the store in dir: a prefix of whole frames containing every
// write acknowledged before CopyLog was called. It is safe to call while a Store (in this process or another)
// has dir open and keeps writing, and takes no lock:
//
//   - The length is fixed when the log is opened. Every acknowledged write was appended and fsynced before its
//     call returned, so it lies within that length; frames appended afterwards are not copied.
//   - The open file keeps the log's contents even if a compaction renames a new log over it meanwhile: the old
//     log was complete when it was replaced.
//   - Every frame is checked as replay checks it (length, CRC-32C, a decodable entry) before it is written to w,
//     so the copy opens cleanly. A bad frame at the end (one running past the fixed length or followed only by
//     zeros) is an append in progress and is left out, as replay would truncate it; a bad frame anywhere else is
//     corruption, reported as an error.
//
// A missing log is reported with an error wrapping [os.ErrNotExist]. On error, w may hold part of a copy.
func CopyLog(dir string, w io.Writer) (LogCopy, error) {
	f, err := os.Open(filepath.Join(dir, LogFile))
	if err != nil {
		return LogCopy{}, fmt.Errorf("copy log: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return LogCopy{}, fmt.Errorf("copy log: %w", err)
	}
	size := st.Size()
	r := bufio.NewReaderSize(io.NewSectionReader(f, 0, size), 1<<20)
	var c LogCopy
	var buf []byte
	var h [frameHeader]byte
	for {
		payload, err := readFrame(r, buf)
		if err == io.EOF {
			return c, nil
		}
		if errors.Is(err, errTorn) {
			if tornTail(f, c.Bytes, size) {
				c.TailBytes = size - c.Bytes
				return c, nil
			}
			return c, fmt.Errorf("copy log: corrupt frame at offset %d: %w", c.Bytes, err)
		}
		if err != nil {
			return c, fmt.Errorf("copy log: %w", err)
		}
		if _, err := decodeEntry(payload); err != nil {
			return c, fmt.Errorf("copy log: frame at offset %d: %w", c.Bytes, err)
		}
		binary.LittleEndian.PutUint32(h[:], uint32(len(payload)))
		binary.LittleEndian.PutUint32(h[4:], crc32.Checksum(payload, crcTable))
		if _, err := w.Write(h[:]); err != nil {
			return c, fmt.Errorf("copy log: %w", err)
		}
		if _, err := w.Write(payload); err != nil {
			return c, fmt.Errorf("copy log: %w", err)
		}
		buf = payload
		c.Bytes += frameHeader + int64(len(payload))
		c.Frames++
	}
}
