package staging

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/invisor/invisor/internal/home"
)

func startStager(t *testing.T, cfg Config) (*Stager, func()) {
	t.Helper()
	s, err := New(cfg, &testLogger{t: t})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	stop := func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}
	t.Cleanup(func() {
		select {
		case <-ctx.Done():
		default:
			stop()
		}
	})
	return s, stop
}

func waitStatus(t *testing.T, s *Stager, what string, ok func(Status) bool) Status {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		if st := s.Status(); ok(st) {
			return st
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("timed out waiting for %s; status %+v", what, s.Status())
	return Status{}
}

// slowBody serves len(body) bytes: the first chunk at once, then blocks until the
// request is cancelled (or release is closed, then the rest).
func slowBody(body []byte, release <-chan struct{}, cancelled *atomic.Int32) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", fmt.Sprint(len(body)))
		w.Write(body[:64<<10])
		w.(http.Flusher).Flush()
		select {
		case <-r.Context().Done():
			cancelled.Add(1)
		case <-release:
			w.Write(body[64<<10:])
		}
	}
}

func TestFault04StagerRetries5xxThenReady(t *testing.T) {
	cfg := testConfig(t)
	srv := newServer(t)
	var n atomic.Int32
	u := srv.handle("/exampled", func(w http.ResponseWriter, r *http.Request) {
		if n.Add(1) <= 2 {
			http.Error(w, "try later", http.StatusBadGateway)
			return
		}
		w.Write(testBins.good)
	})
	s, _ := startStager(t, cfg)
	p := &Plan{Name: "v2", Height: 50, Info: infoJSON(pinned(u, testBins.good))}
	s.Offer(p)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	inst, err := s.WaitReady(ctx, *p)
	if err != nil {
		t.Fatal(err)
	}
	if inst.SHA256 != sha(testBins.good) {
		t.Errorf("sha = %s", inst.SHA256)
	}
	st := s.Status()
	if st.State != StateReady || st.Attempt != 3 || st.Install == nil || st.Err != "" {
		t.Errorf("status = %+v", st)
	}
	// Offering the same plan again is a no-op: no new request.
	for range 100 {
		s.Offer(p)
	}
	time.Sleep(50 * time.Millisecond)
	if got := n.Load(); got != 3 {
		t.Errorf("requests = %d, want 3", got)
	}
	assertNoTemp(t, cfg)
}

func TestFault14StagerCancelMidDownload(t *testing.T) {
	cfg := testConfig(t)
	cfg.IdleTimeout = 10 * time.Second // the server stalls on purpose
	srv := newServer(t)
	var cancelled atomic.Int32
	release := make(chan struct{})
	defer close(release)
	u := srv.handle("/exampled", slowBody(testBins.good, release, &cancelled))
	s, _ := startStager(t, cfg)
	s.Offer(&Plan{Name: "v2", Height: 50, Info: infoJSON(pinned(u, testBins.good))})
	waitStatus(t, s, "downloading with bytes", func(st Status) bool {
		return st.State == StateDownloading && st.BytesDone > 0
	})
	if m, _ := filepath.Glob(filepath.Join(layoutOf(t, cfg).Root(), TempPrefix+"*")); len(m) != 1 {
		t.Fatalf("want one temp dir during the download, got %v", m)
	}
	start := time.Now()
	s.Offer(nil)
	st := waitStatus(t, s, "cancelled", func(st Status) bool { return st.State == StateCancelled })
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("cancel took %v", d)
	}
	if !strings.Contains(st.Err, "cancelled") {
		t.Errorf("status error %q", st.Err)
	}
	assertNothingInstalled(t, cfg, "v2")
	deadline := time.Now().Add(2 * time.Second)
	for cancelled.Load() == 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if cancelled.Load() == 0 {
		t.Error("the server never saw the request cancelled")
	}
}

func TestFault15StagerPlanReplaced(t *testing.T) {
	cfg := testConfig(t)
	cfg.IdleTimeout = 10 * time.Second
	srv := newServer(t)
	var cancelled atomic.Int32
	release := make(chan struct{})
	defer close(release)
	slow := srv.handle("/old", slowBody(testBins.bad, release, &cancelled))
	fast := srv.blob("/new", testBins.good)
	s, _ := startStager(t, cfg)
	v2 := Plan{Name: "v2", Height: 50, Info: infoJSON(pinned(slow, testBins.bad))}
	s.Offer(&v2)
	waitStatus(t, s, "downloading", func(st Status) bool { return st.State == StateDownloading && st.BytesDone > 0 })

	v3 := Plan{Name: "v3", Height: 60, Info: infoJSON(pinned(fast, testBins.good))}
	s.Offer(&v3)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	inst, err := s.WaitReady(ctx, v3)
	if err != nil {
		t.Fatal(err)
	}
	if inst.Name != "v3" || inst.SHA256 != sha(testBins.good) {
		t.Errorf("install = %+v", inst)
	}
	if st := s.Status(); st.Plan == nil || st.Plan.Name != "v3" || st.State != StateReady {
		t.Errorf("status = %+v", st)
	}
	assertNothingInstalled(t, cfg, "v2")

	// Same name, new height: the old work is cancelled as well.
	short, cancel2 := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel2()
	if _, err := s.WaitReady(short, v2); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("WaitReady for a superseded plan: %v", err)
	}
}

func TestStagerPlacedLater(t *testing.T) {
	cfg := testConfig(t)
	cfg.AllowDownload = false
	s, _ := startStager(t, cfg)
	p := Plan{Name: "v2", Height: 9}
	s.Offer(&p)
	bin := binOf(t, cfg, "v2")
	st := waitStatus(t, s, "failed", func(st Status) bool { return st.State == StateFailed })
	if !strings.Contains(st.Err, bin) {
		t.Errorf("status error does not say where to put the binary: %q", st.Err)
	}
	// The operator places the binary (written elsewhere, then renamed in, as they should).
	os.MkdirAll(filepath.Dir(bin), 0o755)
	tmp := bin + ".part"
	os.WriteFile(tmp, testBins.good, 0o755)
	os.Rename(tmp, bin)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	inst, err := s.WaitReady(ctx, p)
	if err != nil {
		t.Fatal(err)
	}
	if inst.Record.Source != home.SourceOperatorWord {
		t.Errorf("record = %+v", inst.Record)
	}
}

func TestFault31StagerConcurrentUse(t *testing.T) {
	cfg := testConfig(t)
	srv := newServer(t)
	infos := make([]string, 3)
	for i := range infos {
		infos[i] = infoJSON(pinned(srv.blob(fmt.Sprintf("/b%d", i), testBins.good), testBins.good))
	}
	s, stop := startStager(t, cfg)
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 200 {
				k := (g + i) % 4
				if k == 3 {
					s.Offer(nil)
				} else {
					s.Offer(&Plan{Name: fmt.Sprintf("v%d", k), Height: int64(k), Info: infos[k]})
				}
				_ = s.Status()
			}
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		defer cancel()
		s.WaitReady(ctx, Plan{Name: "v1", Height: 1, Info: infos[1]})
	}()
	wg.Wait()
	final := &Plan{Name: "v1", Height: 1, Info: infos[1]}
	s.Offer(final)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := s.WaitReady(ctx, *final); err != nil {
		t.Fatal(err)
	}
	stop()
	assertNoTemp(t, cfg)
}

func TestOfferUnchangedIsCheap(t *testing.T) {
	cfg := testConfig(t)
	s, err := New(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	p := &Plan{Name: "v2", Height: 3, Info: "{}"}
	s.Offer(p)
	if a := testing.AllocsPerRun(1000, func() { s.Offer(p) }); a != 0 {
		t.Errorf("Offer of an unchanged plan allocates %v times", a)
	}
	// Offer never blocks, even without a running worker.
	done := make(chan struct{})
	go func() {
		for i := range 1000 {
			s.Offer(&Plan{Name: fmt.Sprint(i)})
		}
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(2 * time.Second):
		t.Fatal("Offer blocked")
	}
}

func TestNew(t *testing.T) {
	t.Run("takes no lock of its own", func(t *testing.T) {
		cfg := testConfig(t)
		// The home lock belongs to the process edge (home.Layout.Acquire), held from
		// boot to exec; a Stager created under it must not lock again.
		lk, err := layoutOf(t, cfg).Acquire(nil)
		if err != nil {
			t.Fatal(err)
		}
		defer lk.Release()
		if _, err := New(cfg, nil); err != nil {
			t.Fatalf("New under the home lock: %v", err)
		}
		if _, err := New(cfg, nil); err != nil {
			t.Fatalf("second New: %v", err)
		}
		ents, _ := os.ReadDir(layoutOf(t, cfg).Root())
		for _, e := range ents {
			if e.Name() != home.LockFile && e.Name() != home.UpgradesDir {
				t.Errorf("New left %s in %s", e.Name(), layoutOf(t, cfg).Root())
			}
		}
	})
	t.Run("invalid config names the field", func(t *testing.T) {
		cfg := testConfig(t)
		cfg.RetryMax = time.Millisecond
		if _, err := New(cfg, nil); err == nil || !strings.Contains(err.Error(), "RetryMax") {
			t.Fatalf("New: %v", err)
		}
	})
}

func TestConfigValidate(t *testing.T) {
	cases := []struct {
		field  string
		mutate func(*Config)
	}{
		{"Home", func(c *Config) { c.Home = "" }},
		{"Home", func(c *Config) { c.Home = "relative/home" }},
		{"DaemonName", func(c *Config) { c.DaemonName = "" }},
		{"DaemonName", func(c *Config) { c.DaemonName = "../x" }},
		{"DaemonName", func(c *Config) { c.DaemonName = ".." }},
		{"IdleTimeout", func(c *Config) { c.IdleTimeout = 0 }},
		{"Deadline", func(c *Config) { c.Deadline = -1 }},
		{"MaxBinaryBytes", func(c *Config) { c.MaxBinaryBytes = 0 }},
		{"MaxArchiveEntries", func(c *Config) { c.MaxArchiveEntries = -1 }},
		{"PreflightArgs", func(c *Config) { c.PreflightArgs = nil }},
		{"RetryMax", func(c *Config) { c.RetryMin, c.RetryMax = time.Minute, time.Second }},
		{"MinThroughput", func(c *Config) { c.MinThroughput = -1 }},
		{"DiskShare", func(c *Config) { c.DiskShare = 0 }},
		{"DiskShare", func(c *Config) { c.DiskShare = 1.5 }},
	}
	base := DefaultConfig()
	base.Home, base.DaemonName = "/home/node", "exampled"
	if err := base.Validate(); err != nil {
		t.Fatalf("defaults: %v", err)
	}
	for _, tc := range cases {
		c := base
		tc.mutate(&c)
		err := c.Validate()
		if err == nil || !strings.Contains(err.Error(), tc.field) {
			t.Errorf("%s: err = %v", tc.field, err)
		}
	}
}

// A plan withdrawn after its binary was downloaded leaves nothing behind; a
// binary placed by hand, or one the chain's state names, stays.
func TestFault14StagerWithdrawnPlanInstallRemoved(t *testing.T) {
	for _, tc := range []struct {
		name     string
		prepare  func(t *testing.T, cfg Config)
		wantKept bool
	}{
		{"downloaded", func(*testing.T, Config) {}, false},
		{"named by upgrade-info.json", func(t *testing.T, cfg Config) {
			if err := os.MkdirAll(filepath.Join(cfg.Home, "data"), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(cfg.Home, "data", "upgrade-info.json"), []byte(`{"name":"v2","height":50}`), 0o644); err != nil {
				t.Fatal(err)
			}
		}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testConfig(t)
			srv := newServer(t)
			u := srv.handle("/exampled", func(w http.ResponseWriter, r *http.Request) { w.Write(testBins.good) })
			s, _ := startStager(t, cfg)
			p := Plan{Name: "v2", Height: 50, Info: infoJSON(pinned(u, testBins.good))}
			s.Offer(&p)
			ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
			defer cancel()
			if _, err := s.WaitReady(ctx, p); err != nil {
				t.Fatal(err)
			}
			tc.prepare(t, cfg)
			s.Offer(nil)
			waitStatus(t, s, "cancelled", func(st Status) bool { return st.State == StateCancelled })
			_, err := os.Stat(dirOf(t, cfg, "v2"))
			if kept := err == nil; kept != tc.wantKept {
				t.Fatalf("install kept = %v, want %v", kept, tc.wantKept)
			}
			assertNoTemp(t, cfg)
		})
	}
}
