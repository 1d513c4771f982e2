package staging

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"runtime"
	"sync/atomic"
	"testing"
)

// TestPacedWrite checks that a paced write keeps every byte, rests between
// flushes while it is paced, and stops resting once staging is told to hurry or
// its work is cancelled.
func TestPacedWrite(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("pacing measures sync_file_range, which only Linux has")
	}
	data := bytes.Repeat([]byte("invisor pacing "), (6*paceWindow)/15+1)
	write := func(t *testing.T, p *pacer) []byte {
		t.Helper()
		path := filepath.Join(t.TempDir(), "f")
		f, err := os.Create(path)
		if err != nil {
			t.Fatal(err)
		}
		w := &writeBehind{f: f, pace: p}
		for off := 0; off < len(data); off += 300 << 10 {
			if _, err := w.Write(data[off:min(off+300<<10, len(data))]); err != nil {
				t.Fatal(err)
			}
		}
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		return got
	}

	p := newPacer(context.Background(), 0.5, nil)
	if got := write(t, p); !bytes.Equal(got, data) {
		t.Fatalf("paced write: %d bytes back, wrote %d (content differs)", len(got), len(data))
	}
	if p.rested() <= 0 {
		t.Errorf("paced write of %d windows never rested", len(data)/paceWindow)
	}

	var hurry atomic.Bool
	hurry.Store(true)
	h := newPacer(context.Background(), 0.5, &hurry)
	if got := write(t, h); !bytes.Equal(got, data) {
		t.Fatal("hurried write: content differs")
	}
	if h.rested() != 0 {
		t.Errorf("hurried write rested %v", h.rested())
	}

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	c := newPacer(ctx, 0.5, nil)
	write(t, c)
	if c.rested() != 0 {
		t.Errorf("write of cancelled work rested %v", c.rested())
	}
	if (*pacer)(nil).active() || newPacer(context.Background(), 1, nil).active() {
		t.Error("a nil pacer or share 1 must not pace")
	}
}

// TestRemoveTreePaced checks that a paced removal frees a large file in steps
// (it rests) and leaves nothing behind.
func TestRemoveTreePaced(t *testing.T) {
	root := filepath.Join(t.TempDir(), "tmp")
	if err := os.MkdirAll(filepath.Join(root, "root", "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	big := make([]byte, 3*shrinkStep+12345)
	if err := os.WriteFile(filepath.Join(root, "download"), big, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "root", "bin", daemon), []byte("small"), 0o755); err != nil {
		t.Fatal(err)
	}
	p := newPacer(context.Background(), 0.5, nil)
	if err := removeTreePaced(root, p); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(root); !os.IsNotExist(err) {
		t.Fatalf("%s still there: %v", root, err)
	}
	if p.rested() <= 0 {
		t.Error("the 48 MiB file was not freed in paced steps")
	}
}
