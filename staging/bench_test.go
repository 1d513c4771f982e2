package staging

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"runtime/metrics"
	"sync"
	"testing"
	"time"
)

// The two benchmarks below are meant to be run together and compared:
//
//	go test -run '^$' -bench 'Stage256MiB|PlainCopySHA256' -benchtime 3x ./staging/
//
// Both fetch the same 256 MiB body from the same kind of loopback server (http.ServeFile
// of a sparse file in the page cache, so the server costs little) into a new file on
// the same filesystem through a buffer of the same size (copyBufSize), hash it with
// sha256 and fsync it. That is the floor any downloader pays, so the ratio of the two
// is what staging adds, not buffer tuning. BenchmarkStage256MiB then does everything Fetch does on top:
// config and plan-info checks, the checksum comparison, the ELF header check, the
// preflight exec of the 256 MiB binary, fsync of the tree, the rename into
// upgrades/<name>, the directory fsyncs and the completion record. Throughput is
// bytes/s of the body; peak-heap-MiB is the largest rise of live heap objects while
// one iteration runs.

const benchSize = 256 << 20

// sparsePayload writes the good test binary followed by zeros up to size bytes as a
// sparse file (no disk blocks for the zeros) and returns its path and sha256.
func sparsePayload(t testing.TB, size int64) (path, sum string) {
	t.Helper()
	path = filepath.Join(t.TempDir(), "payload")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Write(testBins.good); err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	h := sha256.New()
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		t.Fatal(err)
	}
	if _, err := io.CopyBuffer(h, f, make([]byte, 1<<20)); err != nil {
		t.Fatal(err)
	}
	return path, hex.EncodeToString(h.Sum(nil))
}

func fileServer(t testing.TB, path string) *httptest.Server {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.ServeFile(w, r, path)
	}))
	t.Cleanup(srv.Close)
	return srv
}

// peakHeap samples the bytes of live heap objects while fn runs (runtime/metrics, which
// does not stop the world) and returns the peak above the value before fn.
func peakHeap(fn func()) uint64 {
	runtime.GC()
	sample := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
	read := func() uint64 { metrics.Read(sample); return sample[0].Value.Uint64() }
	base := read()
	var peak uint64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(5 * time.Millisecond)
		defer t.Stop()
		for {
			if v := read(); v > base && v-base > peak {
				peak = v - base
			}
			select {
			case <-stop:
				return
			case <-t.C:
			}
		}
	}()
	fn()
	close(stop)
	wg.Wait()
	return peak
}

func BenchmarkStage256MiB(b *testing.B) {
	payload, sum := sparsePayload(b, benchSize)
	srv := fileServer(b, payload)
	cfg := testConfig(b)
	cfg.MaxBinaryBytes = 1 << 30
	info := infoJSON(srv.URL + "/exampled?checksum=sha256:" + sum)
	b.SetBytes(benchSize)
	b.ResetTimer()
	var worst uint64
	for i := 0; i < b.N; i++ {
		cfg.Home = b.TempDir()
		var err error
		p := peakHeap(func() { _, err = Fetch(context.Background(), cfg, Plan{Name: "v2", Info: info}, nil) })
		if err != nil {
			b.Fatal(err)
		}
		worst = max(worst, p)
		b.StopTimer()
		os.RemoveAll(cfg.Home)
		b.StartTimer()
	}
	b.ReportMetric(float64(worst)/(1<<20), "peak-heap-MiB")
}

func BenchmarkPlainCopySHA256(b *testing.B) {
	payload, sum := sparsePayload(b, benchSize)
	srv := fileServer(b, payload)
	b.SetBytes(benchSize)
	b.ResetTimer()
	var worst uint64
	for i := 0; i < b.N; i++ {
		dst := filepath.Join(b.TempDir(), "copy")
		var got string
		p := peakHeap(func() {
			client := &http.Client{Transport: &http.Transport{}}
			defer client.CloseIdleConnections()
			resp, err := client.Get(srv.URL + "/exampled")
			if err != nil {
				b.Fatal(err)
			}
			defer resp.Body.Close()
			out, err := os.Create(dst)
			if err != nil {
				b.Fatal(err)
			}
			h := sha256.New()
			if _, err := io.CopyBuffer(io.MultiWriter(out, h), resp.Body, make([]byte, copyBufSize)); err != nil {
				b.Fatal(err)
			}
			if err := out.Sync(); err != nil {
				b.Fatal(err)
			}
			out.Close()
			got = hex.EncodeToString(h.Sum(nil))
		})
		if got != sum {
			b.Fatalf("sha256 %s, want %s", got, sum)
		}
		worst = max(worst, p)
		b.StopTimer()
		os.Remove(dst)
		b.StartTimer()
	}
	b.ReportMetric(float64(worst)/(1<<20), "peak-heap-MiB")
}
