package relauncher

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/invisor/invisor/internal/home"
)

const daemon = "appd"

// testHome is a home with cosmovisor's layout: genesis and upgrades/v2 binaries
// (shell scripts), current -> genesis, and a data directory. Nothing is staged
// (no record) until stage is called.
type testHome struct {
	t       *testing.T
	home    string
	l       home.Layout
	genesis string
	v2      string
}

func newTestHome(t *testing.T) *testHome {
	t.Helper()
	h := &testHome{t: t, home: t.TempDir()}
	l, err := home.New(h.home, daemon, home.Options{})
	must(t, err)
	h.l = l
	h.genesis = l.GenesisBin()
	h.v2 = h.bin("v2")
	h.writeExec(h.genesis, "#!/bin/sh\necho genesis\n")
	h.writeExec(h.v2, "#!/bin/sh\necho v2\n")
	must(t, os.MkdirAll(l.DataDir(), 0o755))
	must(t, os.Symlink(home.GenesisDir, l.Current()))
	return h
}

func (h *testHome) bin(name string) string {
	h.t.Helper()
	p, err := h.l.UpgradeBin(name)
	must(h.t, err)
	return p
}

func (h *testHome) writeExec(p, content string) {
	h.t.Helper()
	must(h.t, os.MkdirAll(filepath.Dir(p), 0o755))
	must(h.t, os.WriteFile(p, []byte(content), 0o755))
}

func (h *testHome) writeUpgradeInfo(content string) {
	h.t.Helper()
	must(h.t, os.WriteFile(h.l.UpgradeInfo(), []byte(content), 0o644))
}

// halt writes data/upgrade-info.json as x/upgrade does at the halt for p.
func (h *testHome) halt(p home.Plan) home.Plan {
	h.t.Helper()
	b, err := json.Marshal(p)
	must(h.t, err)
	h.writeUpgradeInfo(string(b))
	return p
}

// stage writes the completion record of the file already at p's binary path,
// the way staging does (home.HashFile, then Layout.WriteRecord).
func (h *testHome) stage(p home.Plan) string {
	h.t.Helper()
	return stageRecord(h.t, h.l, p)
}

func stageRecord(t testing.TB, l home.Layout, p home.Plan) string {
	t.Helper()
	bin, err := l.UpgradeBin(p.Name)
	must(t, err)
	f, err := os.Open(bin)
	must(t, err)
	defer f.Close()
	d, err := home.HashFile(context.Background(), f)
	must(t, err)
	must(t, l.WriteRecord(home.Record{Plan: p.Name, Height: p.Height, InfoHash: p.InfoHash(), Source: home.SourceDownload,
		SHA256: d.SHA256, Size: d.Size, Stamp: d.Stamp}))
	return bin
}

// haltAndStage is halt and stage for v2 at height with info.
func (h *testHome) haltAndStage(height int64, info string) home.Plan {
	h.t.Helper()
	p := h.halt(home.Plan{Name: "v2", Height: height, Info: info})
	h.stage(p)
	return p
}

// current is where `current` points, relative to the cosmovisor root
// ("genesis", "upgrades/v2"), however the link spells it.
func (h *testHome) current() string {
	h.t.Helper()
	d, ok, err := h.l.CurrentDir()
	must(h.t, err)
	if !ok {
		h.t.Fatal("no current link")
	}
	rel, err := filepath.Rel(h.l.Root(), d)
	must(h.t, err)
	return rel
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// countingVerifier is the default proof (Layout.Open), counting calls; before,
// if set, runs after the proof and before the Binary is handed over (a seam to
// change the file between proof and run).
type countingVerifier struct {
	l        home.Layout
	calls    atomic.Int64
	rehashed atomic.Int64
	awaits   bool
	after    func(Binary)
}

func (v *countingVerifier) Verify(ctx context.Context, p home.Plan) (Binary, error) {
	v.calls.Add(1)
	vf, err := v.l.Open(ctx, p)
	if err != nil {
		return Binary{}, err
	}
	if vf.Rehashed {
		v.rehashed.Add(1)
	}
	b := Binary{Verified: vf, AwaitsPreUpgrade: v.awaits}
	if v.after != nil {
		v.after(b)
	}
	return b, nil
}

// fakeOS records exec calls instead of replacing the process.
type fakeOS struct {
	mu      sync.Mutex
	self    string
	args    []string
	env     []string
	execErr error
	execs   []execCall
	stops   int
	lock    *home.Lock
	fetch   func(ctx context.Context, p home.Plan) error
	// tick, when set, is the halt wait loop's tick: the test steps the loop.
	tick chan time.Time
	// sigs, when set, delivers stop requests to the re-exec path's wait.
	sigs  chan os.Signal
	exits []int
}

type execCall struct {
	argv0   string
	target  string // what argv0 resolves to at the exec (the descriptor's file)
	content string // what argv0 reads at the exec
	argv    []string
	env     []string
}

func (f *fakeOS) OS() OS {
	return OS{
		Exec: func(argv0 string, argv, envv []string) error {
			f.mu.Lock()
			defer f.mu.Unlock()
			target := argv0
			if strings.HasPrefix(argv0, "/proc/self/fd/") {
				target, _ = os.Readlink(argv0)
			}
			b, _ := os.ReadFile(argv0)
			f.execs = append(f.execs, execCall{argv0, target, string(b), append([]string(nil), argv...), append([]string(nil), envv...)})
			if f.execErr != nil {
				return f.execErr
			}
			return nil
		},
		Executable: func() (string, error) {
			if f.self == "" {
				return "", errors.New("no executable")
			}
			return f.self, nil
		},
		Args:    func() []string { return append([]string(nil), f.args...) },
		Environ: func() []string { return append([]string(nil), f.env...) },
		Getwd:   func() (string, error) { return "/wd", nil },
		Getpid:  func() int { return 4242 },
		Stop: func() error {
			f.mu.Lock()
			defer f.mu.Unlock()
			f.stops++
			return nil
		},
		Lock:  f.lock,
		Fetch: f.fetch,
		After: func(d time.Duration) <-chan time.Time {
			if f.tick != nil {
				return f.tick
			}
			return time.After(d)
		},
		StopSignals: func() (<-chan os.Signal, func()) {
			if f.sigs != nil {
				return f.sigs, func() {}
			}
			return make(chan os.Signal), func() {}
		},
		Exit: func(code int) {
			f.mu.Lock()
			defer f.mu.Unlock()
			f.exits = append(f.exits, code)
		},
	}
}

func (f *fakeOS) exitCodes() []int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]int(nil), f.exits...)
}

func (f *fakeOS) calls() []execCall {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]execCall(nil), f.execs...)
}

func (f *fakeOS) stopCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.stops
}

func envMap(env []string) map[string]string {
	m := map[string]string{}
	for _, kv := range env {
		if k, v, ok := strings.Cut(kv, "="); ok {
			m[k] = v
		}
	}
	return m
}

// testLogger collects messages.
type testLogger struct {
	mu   sync.Mutex
	msgs []string
}

func (l *testLogger) add(level, msg string, kv ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.msgs = append(l.msgs, level+" "+msg+" "+fmt.Sprint(kv...))
}
func (l *testLogger) Info(msg string, kv ...any)  { l.add("INFO", msg, kv...) }
func (l *testLogger) Warn(msg string, kv ...any)  { l.add("WARN", msg, kv...) }
func (l *testLogger) Error(msg string, kv ...any) { l.add("ERROR", msg, kv...) }
func (l *testLogger) all() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.msgs...)
}
func (l *testLogger) text() string { return strings.Join(l.all(), "\n") }

func testConfig(home string) Config {
	c := DefaultConfig()
	c.Home = home
	c.DaemonName = daemon
	c.Backup = false
	c.RunPreUpgrade = false
	return c
}

// noVerifier refuses everything.
var noVerifier = VerifierFunc(func(context.Context, home.Plan) (Binary, error) {
	return Binary{}, errors.New("not staged")
})
