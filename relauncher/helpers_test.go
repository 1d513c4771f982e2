package relauncher

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
)

const daemon = "appd"

// testHome is a home with cosmovisor's layout: genesis and upgrades/v2 binaries
// (shell scripts), current -> genesis, and a data directory.
type testHome struct {
	t       *testing.T
	home    string
	genesis string
	v2      string
}

func newTestHome(t *testing.T) *testHome {
	t.Helper()
	h := &testHome{t: t, home: t.TempDir()}
	h.genesis = filepath.Join(h.home, RootDir, GenesisDir, BinDir, daemon)
	h.v2 = filepath.Join(h.home, RootDir, UpgradesDir, "v2", BinDir, daemon)
	h.writeExec(h.genesis, "#!/bin/sh\necho genesis\n")
	h.writeExec(h.v2, "#!/bin/sh\necho v2\n")
	must(t, os.MkdirAll(filepath.Join(h.home, "data"), 0o755))
	must(t, os.Symlink(GenesisDir, filepath.Join(h.home, RootDir, CurrentLink)))
	return h
}

func (h *testHome) writeExec(p, content string) {
	h.t.Helper()
	must(h.t, os.MkdirAll(filepath.Dir(p), 0o755))
	must(h.t, os.WriteFile(p, []byte(content), 0o755))
}

func (h *testHome) writeUpgradeInfo(content string) {
	h.t.Helper()
	must(h.t, os.WriteFile(filepath.Join(h.home, UpgradeInfoFile), []byte(content), 0o644))
}

func (h *testHome) current() string {
	h.t.Helper()
	t, err := os.Readlink(filepath.Join(h.home, RootDir, CurrentLink))
	must(h.t, err)
	return t
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func sha(t testing.TB, p string) (string, int64) {
	t.Helper()
	b, err := os.ReadFile(p)
	must(t, err)
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:]), int64(len(b))
}

// hashVerifier trusts the binaries registered with trust, re-hashing them on every
// call like the staging package does.
type hashVerifier struct {
	mu    sync.Mutex
	want  map[string]Binary
	calls int
}

func (v *hashVerifier) trust(t testing.TB, name, path string) Binary {
	s, n := sha(t, path)
	b := Binary{Name: name, Path: path, SHA256: s, Size: n}
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.want == nil {
		v.want = map[string]Binary{}
	}
	v.want[name] = b
	return b
}

func (v *hashVerifier) Trusted(name string) (Binary, error) {
	v.mu.Lock()
	b, ok := v.want[name]
	v.calls++
	v.mu.Unlock()
	if !ok {
		return Binary{}, fmt.Errorf("no completion record for %q", name)
	}
	got, err := fileSHA256(b.Path)
	if err != nil {
		return Binary{}, err
	}
	if got != b.SHA256 {
		return Binary{}, fmt.Errorf("checksum mismatch: expected %s, got %s", b.SHA256, got)
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
}

type execCall struct {
	argv0 string
	argv  []string
	env   []string
}

func (f *fakeOS) OS() OS {
	return OS{
		Exec: func(argv0 string, argv, envv []string) error {
			f.mu.Lock()
			defer f.mu.Unlock()
			f.execs = append(f.execs, execCall{argv0, append([]string(nil), argv...), append([]string(nil), envv...)})
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
	}
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
		for i := 0; i < len(kv); i++ {
			if kv[i] == '=' {
				m[kv[:i]] = kv[i+1:]
				break
			}
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

func testConfig(home string) Config {
	c := DefaultConfig()
	c.Home = home
	c.DaemonName = daemon
	c.Backup = false
	c.RunPreUpgrade = false
	return c
}
