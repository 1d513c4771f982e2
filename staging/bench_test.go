package staging

import (
	"context"
	"crypto/sha256"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

const benchSize = 256 << 20

// benchPayload writes a 256 MiB executable (the test binary padded with zeros, which
// still runs) to a file so the server does not hold it in the heap.
func benchPayload(b *testing.B) (path, sum string) {
	b.Helper()
	path = filepath.Join(b.TempDir(), "payload")
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	h := sha256.New()
	w := io.MultiWriter(f, h)
	w.Write(testBins.good)
	pad := make([]byte, 1<<20)
	for left := benchSize - len(testBins.good); left > 0; left -= len(pad) {
		w.Write(pad[:min(left, len(pad))])
	}
	f.Close()
	return path, string(h.Sum(nil))
}

// peakHeap samples HeapInuse while fn runs and returns the peak above the baseline.
func peakHeap(fn func()) uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	base := ms.HeapInuse
	var peak atomic.Uint64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(5 * time.Millisecond)
		defer t.Stop()
		for {
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			if ms.HeapInuse > base && ms.HeapInuse-base > peak.Load() {
				peak.Store(ms.HeapInuse - base)
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
	return peak.Load()
}

func BenchmarkStage256MiB(b *testing.B) {
	payload, sumRaw := benchPayload(b)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.ServeFile(w, r, payload)
	}))
	defer srv.Close()
	cfg := testConfig(b)
	cfg.MaxBinaryBytes = 1 << 30
	info := infoJSON(srv.URL + "/exampled?checksum=sha256:" + hexOf(sumRaw))
	b.SetBytes(benchSize)
	b.ResetTimer()
	var worst uint64
	for i := 0; i < b.N; i++ {
		cfg.Home = filepath.Join(b.TempDir(), "home")
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
	payload, _ := benchPayload(b)
	b.SetBytes(benchSize)
	b.ResetTimer()
	var worst uint64
	for i := 0; i < b.N; i++ {
		dst := filepath.Join(b.TempDir(), "copy")
		p := peakHeap(func() {
			in, _ := os.Open(payload)
			out, _ := os.Create(dst)
			h := sha256.New()
			io.Copy(io.MultiWriter(out, h), in)
			out.Sync()
			out.Close()
			in.Close()
		})
		worst = max(worst, p)
		b.StopTimer()
		os.Remove(dst)
		b.StartTimer()
	}
	b.ReportMetric(float64(worst)/(1<<20), "peak-heap-MiB")
}

func hexOf(raw string) string {
	const digits = "0123456789abcdef"
	out := make([]byte, 0, 2*len(raw))
	for i := 0; i < len(raw); i++ {
		out = append(out, digits[raw[i]>>4], digits[raw[i]&15])
	}
	return string(out)
}
