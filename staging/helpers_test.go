package staging

import (
	"archive/tar"
	"archive/zip"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/invisor/invisor/internal/home"
)

const daemon = "exampled"

// Test binaries, built once per run from one tiny Go program: "good" prints a version,
// "bad" exits 3, "hang" never returns. Preflight really executes them.
var testBins struct {
	dir              string
	good, bad, hang  []byte
	goodPath, badPth string
}

const helperSrc = `package main

import (
	"fmt"
	"os"
	"path/filepath"
	"time"
)

var mode = "good"

func main() {
	if len(os.Args) > 1 && os.Args[1] == "version" {
		if os.Getenv("STAGING_TEST_REWRITE_SELF") != "" {
			rewriteSelf()
		}
		switch mode {
		case "bad":
			fmt.Fprintln(os.Stderr, "boom: missing libwasmvm.so")
			os.Exit(3)
		case "hang":
			time.Sleep(time.Hour)
		}
		// Like a Cosmos SDK binary: even ` + "`version`" + ` writes a default config
		// under its home, --home or else $HOME/.exampled, and fails if it cannot.
		home := ""
		for i, a := range os.Args {
			if a == "--home" && i+1 < len(os.Args) {
				home = os.Args[i+1]
			}
		}
		if home == "" {
			home = filepath.Join(os.Getenv("HOME"), ".exampled")
		}
		if err := os.MkdirAll(filepath.Join(home, "config"), 0o755); err != nil {
			fmt.Fprintln(os.Stderr, "Error:", err)
			os.Exit(1)
		}
		if err := os.WriteFile(filepath.Join(home, "config", "app.toml"), []byte("minimum-gas-prices = \"\"\n"), 0o644); err != nil {
			fmt.Fprintln(os.Stderr, "Error:", err)
			os.Exit(1)
		}
		if os.Getenv("STAGING_TEST_REPORT_ENV") != "" {
			wd, _ := os.Getwd()
			same := wd == home && os.Getenv("HOME") == wd && os.Getenv("TMPDIR") == filepath.Join(wd, "tmp")
			fmt.Printf("v2.0.0-test same=%v cwd=%s\n", same, wd)
			return
		}
		fmt.Println("v2.0.0-test")
		return
	}
	fmt.Println("usage")
}

// rewriteSelf replaces the running file with a copy that differs in its last byte:
// rename is not blocked by ETXTBSY, so this is how a binary could alter itself.
func rewriteSelf() {
	self := os.Args[0]
	b, err := os.ReadFile(self)
	if err != nil {
		panic(err)
	}
	b[len(b)-1] ^= 0xff
	if err := os.WriteFile(self+".new", b, 0o755); err != nil {
		panic(err)
	}
	if err := os.Rename(self+".new", self); err != nil {
		panic(err)
	}
}
`

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) != "" {
		os.Exit(runChild())
	}
	dir, err := os.MkdirTemp("", "staging-testbins-")
	if err != nil {
		panic(err)
	}
	code := func() int {
		defer os.RemoveAll(dir)
		if err := os.WriteFile(filepath.Join(dir, "main.go"), []byte(helperSrc), 0o644); err != nil {
			panic(err)
		}
		os.WriteFile(filepath.Join(dir, "go.mod"), []byte("module helper\n\ngo 1.22\n"), 0o644)
		for _, mode := range []string{"good", "bad", "hang"} {
			out := filepath.Join(dir, mode)
			cmd := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w -X main.mode="+mode, "-o", out, ".")
			cmd.Dir = dir
			cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=-mod=mod", "GOWORK=off")
			if b, err := cmd.CombinedOutput(); err != nil {
				fmt.Fprintf(os.Stderr, "building test binary %s: %v\n%s", mode, err, b)
				return 1
			}
			b, _ := os.ReadFile(out)
			switch mode {
			case "good":
				testBins.good = b
			case "bad":
				testBins.bad = b
			case "hang":
				testBins.hang = b
			}
		}
		testBins.dir = dir
		return m.Run()
	}()
	os.Exit(code)
}

func testConfig(t testing.TB) Config {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Home = t.TempDir()
	cfg.DaemonName = daemon
	cfg.ResponseHeaderTimeout = 2 * time.Second
	cfg.IdleTimeout = 400 * time.Millisecond
	cfg.MinThroughput = 1024
	cfg.Deadline = 30 * time.Second
	cfg.MaxBinaryBytes = 64 << 20
	cfg.MaxArchiveBytes = 64 << 20
	cfg.MaxArchiveEntries = 100
	cfg.MaxInfoBytes = 64 << 10
	cfg.PreflightTimeout = 5 * time.Second
	cfg.RetryMin = 10 * time.Millisecond
	cfg.RetryMax = 100 * time.Millisecond
	cfg.PollInterval = 20 * time.Millisecond
	cfg.ProgressInterval = 100 * time.Millisecond
	return cfg
}

func sha(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

func platform() string { return runtime.GOOS + "/" + runtime.GOARCH }

func infoJSON(u string) string {
	return fmt.Sprintf(`{"binaries":{%q:%q}}`, platform(), u)
}

// pinned returns url?checksum=sha256:<sha of body>, merging with an existing query.
func pinned(u string, body []byte) string {
	sep := "?"
	if strings.Contains(u, "?") {
		sep = "&"
	}
	return u + sep + "checksum=sha256:" + sha(body)
}

// blobServer serves fixed bodies by path and counts requests.
type blobServer struct {
	*httptest.Server
	mu    sync.Mutex
	blobs map[string]http.HandlerFunc
	hits  map[string]int
}

func newServer(t testing.TB) *blobServer {
	s := &blobServer{blobs: map[string]http.HandlerFunc{}, hits: map[string]int{}}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		h := s.blobs[r.URL.Path]
		s.hits[r.URL.Path]++
		s.mu.Unlock()
		if h == nil {
			http.NotFound(w, r)
			return
		}
		h(w, r)
	}))
	t.Cleanup(s.Close)
	return s
}

func (s *blobServer) handle(path string, h http.HandlerFunc) string {
	s.mu.Lock()
	s.blobs[path] = h
	s.mu.Unlock()
	return s.URL + path
}

func (s *blobServer) blob(path string, body []byte) string {
	return s.handle(path, func(w http.ResponseWriter, r *http.Request) {
		http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(body))
	})
}

func (s *blobServer) count(path string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.hits[path]
}

// trickle serves body with its Content-Length, chunk bytes every interval, until done
// or the request is cancelled.
func trickle(body []byte, chunk int, every time.Duration) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", fmt.Sprint(len(body)))
		for i := 0; i < len(body); i += chunk {
			if _, err := w.Write(body[i:min(i+chunk, len(body))]); err != nil {
				return
			}
			w.(http.Flusher).Flush()
			select {
			case <-r.Context().Done():
				return
			case <-time.After(every):
			}
		}
	}
}

// untilFixed serves like broken until fixed is set, then the good test binary.
func untilFixed(broken http.HandlerFunc) (h http.HandlerFunc, fixed *atomic.Bool) {
	fixed = new(atomic.Bool)
	return func(w http.ResponseWriter, r *http.Request) {
		if fixed.Load() {
			w.Write(testBins.good)
			return
		}
		broken(w, r)
	}, fixed
}

type tarEntry struct {
	Name string
	Body []byte
	Mode int64
	Type byte
	Link string
}

func makeTar(t testing.TB, entries []tarEntry) []byte {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		typ := e.Type
		if typ == 0 {
			typ = tar.TypeReg
		}
		mode := e.Mode
		if mode == 0 {
			mode = 0o755
		}
		h := &tar.Header{Name: e.Name, Mode: mode, Typeflag: typ, Linkname: e.Link, Format: tar.FormatPAX}
		if typ == tar.TypeReg {
			h.Size = int64(len(e.Body))
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if typ == tar.TypeReg {
			tw.Write(e.Body)
		}
	}
	tw.Close()
	return buf.Bytes()
}

func gz(b []byte) []byte {
	var buf bytes.Buffer
	w := gzip.NewWriter(&buf)
	w.Write(b)
	w.Close()
	return buf.Bytes()
}

type zipEntry struct {
	Name string
	Body []byte
	Mode os.FileMode
}

func makeZip(t testing.TB, entries []zipEntry) []byte {
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	for _, e := range entries {
		h := &zip.FileHeader{Name: e.Name, Method: zip.Deflate}
		m := e.Mode
		if m == 0 {
			m = 0o755
		}
		h.SetMode(m)
		w, err := zw.CreateHeader(h)
		if err != nil {
			t.Fatal(err)
		}
		w.Write(e.Body)
	}
	zw.Close()
	return buf.Bytes()
}

// layoutOf is the home layout of cfg.
func layoutOf(t testing.TB, cfg Config) home.Layout {
	t.Helper()
	l, err := cfg.Layout()
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// binOf is the install path of plan name's binary.
func binOf(t testing.TB, cfg Config, name string) string {
	t.Helper()
	b, err := layoutOf(t, cfg).UpgradeBin(name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// dirOf is plan name's upgrade directory.
func dirOf(t testing.TB, cfg Config, name string) string {
	t.Helper()
	d, err := layoutOf(t, cfg).UpgradeDir(name)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// placeBin puts body at plan name's install path, as an operator would, and
// returns the path.
func placeBin(t testing.TB, cfg Config, name string, body []byte) string {
	t.Helper()
	bin := binOf(t, cfg, name)
	if err := os.MkdirAll(filepath.Dir(bin), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, body, 0o755); err != nil {
		t.Fatal(err)
	}
	return bin
}

// trusted is the one proof, for tests: home.Layout.Open for plan p.
func trusted(t testing.TB, cfg Config, p Plan) (Install, error) {
	t.Helper()
	return openInstall(context.Background(), layoutOf(t, cfg), p)
}

// other is a binary that runs like good but has other bytes.
func other() []byte { return append(append([]byte(nil), testBins.good...), "other build"...) }

// assertNothingInstalled checks the fault left no trace: no binary, no record, no
// upgrade dir content, no temp dirs.
func assertNothingInstalled(t testing.TB, cfg Config, name string) {
	t.Helper()
	if bin := binOf(t, cfg, name); fileExists(bin) {
		t.Errorf("binary exists at %s after a failure", bin)
	}
	if dir := dirOf(t, cfg, name); fileExists(dir) {
		t.Errorf("upgrade dir %s exists after a failure", dir)
	}
	assertNoTemp(t, cfg)
}

func fileExists(p string) bool {
	_, err := os.Lstat(p)
	return err == nil
}

func assertNoTemp(t testing.TB, cfg Config) {
	t.Helper()
	root := layoutOf(t, cfg).Root()
	m, _ := filepath.Glob(filepath.Join(root, TempPrefix+"*"))
	l, _ := filepath.Glob(filepath.Join(root, legacyTempPrefix+"*"))
	if len(m)+len(l) > 0 {
		t.Errorf("temp dirs left behind: %v", append(m, l...))
	}
}

type testLogger struct {
	t     testing.TB
	mu    sync.Mutex
	n     int
	lines []string // "LEVEL msg kv..."
}

func (l *testLogger) log(level, msg string, kv ...any) {
	l.mu.Lock()
	l.n++
	l.lines = append(l.lines, fmt.Sprintf("%s %s %v", level, msg, kv))
	l.mu.Unlock()
	if testing.Verbose() {
		l.t.Logf("%s %s %v", level, msg, kv)
	}
}
func (l *testLogger) Info(msg string, kv ...any)  { l.log("INFO", msg, kv...) }
func (l *testLogger) Warn(msg string, kv ...any)  { l.log("WARN", msg, kv...) }
func (l *testLogger) Error(msg string, kv ...any) { l.log("ERROR", msg, kv...) }

// logged returns the lines logged at level that contain substr.
func (l *testLogger) logged(level, substr string) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for _, line := range l.lines {
		if strings.HasPrefix(line, level+" ") && strings.Contains(line, substr) {
			out = append(out, line)
		}
	}
	return out
}

var _ = io.EOF
