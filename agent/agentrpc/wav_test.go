package agentrpc_test

import (
	"encoding/binary"
	"testing"

	"github.com/loom-dev/loom/agent/agentrpc"
)

// TestFixWAVSizes: placeholder sizes are replaced, an extra chunk before data is skipped (with its padding), and
// what is not a WAV file is refused.
func TestFixWAVSizes(t *testing.T) {
	t.Parallel()
	wav := func(extra []byte, audio int) []byte {
		b := []byte("RIFF\xf0\xff\xff\x7fWAVEfmt \x10\x00\x00\x00")
		b = append(b, make([]byte, 16)...)
		b = append(b, extra...)
		b = append(b, []byte("data\xf0\xff\xff\x7f")...)
		return append(b, make([]byte, audio)...)
	}
	odd := append([]byte("LIST\x03\x00\x00\x00abc"), 0) // a 3-byte chunk and its pad byte
	for name, b := range map[string][]byte{"plain": wav(nil, 1000), "list": wav(odd, 7), "empty": wav(nil, 0)} {
		if err := agentrpc.FixWAVSizes(b); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if got := binary.LittleEndian.Uint32(b[4:8]); int(got) != len(b)-8 {
			t.Errorf("%s: RIFF %d, want %d", name, got, len(b)-8)
		}
		data := len(b) - 8
		for ; data > 0 && string(b[data:data+4]) != "data"; data-- {
		}
		if got := binary.LittleEndian.Uint32(b[data+4 : data+8]); int(got) != len(b)-data-8 {
			t.Errorf("%s: data %d, want %d", name, got, len(b)-data-8)
		}
	}
	for _, bad := range [][]byte{nil, []byte("RIFF"), []byte("RIFX\x00\x00\x00\x00WAVE"), []byte("RIFF\x00\x00\x00\x00WAVEfmt \xff\xff\x00\x00")} {
		if err := agentrpc.FixWAVSizes(bad); err == nil {
			t.Errorf("FixWAVSizes(%q) = nil, want an error", bad)
		}
	}
}
