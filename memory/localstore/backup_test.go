package localstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/loom-dev/loom/memory"
)

// TestCopyLogWhileWriting copies the log while a writer keeps upserting (and compacting): every copy opens, holds
// every write acknowledged before the copy began, and holds a gapless prefix of the writes.
func TestCopyLogWhileWriting(t *testing.T) {
	dir := t.TempDir()
	s := open(t, filepath.Join(dir, "live"))
	ctx := context.Background()
	if _, err := s.CreateNamespace(ctx, "t", memory.Namespace{Name: "ns", Dimension: 8, Metric: memory.MetricCosine}); err != nil {
		t.Fatal(err)
	}
	var acked atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			vec := make([]float32, 8)
			vec[i%8] = 1
			if err := s.Upsert(ctx, "t", "ns", []memory.Record{{ID: fmt.Sprint("r", i), Text: "record", Vector: vec}}); err != nil {
				t.Error(err)
				return
			}
			acked.Store(int64(i + 1))
			if i%150 == 149 {
				if err := s.Compact(); err != nil { // a rename over the log while copies read it
					t.Error(err)
					return
				}
			}
		}
	}()
	for round := range 8 {
		for acked.Load() < int64(50*(round+1)) && !t.Failed() {
			time.Sleep(time.Millisecond) // let the writer get ahead
		}
		before := acked.Load()
		var buf bytes.Buffer
		c, err := CopyLog(filepath.Join(dir, "live"), &buf)
		if err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		if c.Bytes != int64(buf.Len()) || c.Frames == 0 {
			t.Fatalf("round %d: copy %+v, wrote %d bytes", round, c, buf.Len())
		}
		copyDir := filepath.Join(dir, fmt.Sprint("copy", round))
		if err := os.MkdirAll(copyDir, 0o750); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(copyDir, LogFile), buf.Bytes(), 0o640); err != nil {
			t.Fatal(err)
		}
		cp := open(t, copyDir)
		ns, err := cp.GetNamespace(ctx, "t", "ns", true)
		if err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		n := ns.Stats.RecordCount
		if n < before {
			t.Fatalf("round %d: copy holds %d records, %d were acknowledged before it began", round, n, before)
		}
		ids := make([]string, n+1)
		for i := range ids {
			ids[i] = fmt.Sprint("r", i)
		}
		got, err := cp.Get(ctx, "t", "ns", ids, false)
		if err != nil {
			t.Fatal(err)
		}
		if int64(len(got)) != n || got[len(got)-1].ID != fmt.Sprint("r", n-1) {
			t.Fatalf("round %d: the copy's %d records are not the prefix r0..r%d", round, len(got), n-1)
		}
		cp.Close()
	}
	close(stop)
	wg.Wait()
}

func TestCopyLogTornTailAndCorruption(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir)
	ctx := context.Background()
	if _, err := s.CreateNamespace(ctx, "t", memory.Namespace{Name: "ns", Dimension: 2, Metric: memory.MetricCosine}); err != nil {
		t.Fatal(err)
	}
	for i := range 10 {
		if err := s.Upsert(ctx, "t", "ns", []memory.Record{{ID: fmt.Sprint("r", i), Vector: []float32{1, float32(i)}}}); err != nil {
			t.Fatal(err)
		}
	}
	s.Close()
	path := filepath.Join(dir, LogFile)
	whole, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}

	// An append in progress: half of a frame (a copy of the first one) at the end is left out.
	torn := append(bytes.Clone(whole), whole[:20]...)
	if err := os.WriteFile(path, torn, 0o640); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	c, err := CopyLog(dir, &buf)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(buf.Bytes(), whole) || c.Bytes != int64(len(whole)) || c.Frames != 11 || c.TailBytes != 20 {
		t.Errorf("torn tail: copy %+v (%d bytes), want the %d whole bytes of 11 frames and a 20-byte tail", c, buf.Len(), len(whole))
	}

	// A flipped byte in the middle is corruption, not a tail.
	bad := bytes.Clone(whole)
	bad[len(bad)/2] ^= 0xff
	if err := os.WriteFile(path, bad, 0o640); err != nil {
		t.Fatal(err)
	}
	if _, err := CopyLog(dir, &bytes.Buffer{}); err == nil || !strings.Contains(err.Error(), "corrupt frame") {
		t.Errorf("flipped byte: err = %v, want a corrupt frame", err)
	}

	if _, err := CopyLog(t.TempDir(), &bytes.Buffer{}); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing log: err = %v, want os.ErrNotExist", err)
	}
}
