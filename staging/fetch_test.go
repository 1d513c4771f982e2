package staging

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/invisor/invisor/internal/home"
	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
)

func xzBytes(t testing.TB, b []byte) []byte {
	return compressWith(t, b, func(w io.Writer) (io.WriteCloser, error) { return xz.NewWriter(w) })
}

func zstBytes(t testing.TB, b []byte) []byte {
	return compressWith(t, b, func(w io.Writer) (io.WriteCloser, error) { return zstd.NewWriter(w) })
}

func compressWith(t testing.TB, b []byte, newWriter func(io.Writer) (io.WriteCloser, error)) []byte {
	var buf bytes.Buffer
	w, err := newWriter(&buf)
	if err != nil {
		t.Fatal(err)
	}
	w.Write(b)
	w.Close()
	return buf.Bytes()
}

func TestFetchInstalls(t *testing.T) {
	good := testBins.good
	lib := []byte("not really a library")
	cases := []struct {
		name    string
		path    string
		body    func(t testing.TB) []byte
		mutate  func(*Config)
		rawURL  func(u string, body []byte) string // default: pinned sha256
		extraOK func(t *testing.T, cfg Config)
	}{
		{name: "plain binary", path: "/exampled", body: func(testing.TB) []byte { return good }},
		{name: "fault09 tar.gz bin/daemon with setuid world-writable lib", path: "/v2.tar.gz", body: func(t testing.TB) []byte {
			return gz(makeTar(t, []tarEntry{{Name: "bin/", Type: tar.TypeDir}, {Name: "bin/exampled", Body: good}, {Name: "lib/libx.so", Body: lib, Mode: 0o6777}}))
		}, extraOK: func(t *testing.T, cfg Config) {
			fi, err := os.Stat(filepath.Join(dirOf(t, cfg, "v2"), "lib", "libx.so"))
			if err != nil {
				t.Fatalf("lib from the archive not installed: %v", err)
			}
			if fi.Mode()&(os.ModeSetuid|os.ModeSetgid) != 0 || fi.Mode().Perm()&0o022 != 0 {
				t.Errorf("setuid/world-writable not stripped: %v", fi.Mode())
			}
		}},
		{name: "fault09 tgz daemon at root, setuid", path: "/v2.tgz", body: func(t testing.TB) []byte {
			return gz(makeTar(t, []tarEntry{{Name: "./exampled", Body: good, Mode: 0o4777}}))
		}},
		{name: "tar.xz", path: "/v2.tar.xz", body: func(t testing.TB) []byte {
			return xzBytes(t, makeTar(t, []tarEntry{{Name: "bin/exampled", Body: good}}))
		}},
		{name: "tar.zst", path: "/v2.tar.zst", body: func(t testing.TB) []byte {
			return zstBytes(t, makeTar(t, []tarEntry{{Name: "bin/exampled", Body: good}}))
		}},
		{name: "fault09 zip setuid", path: "/v2.zip", body: func(t testing.TB) []byte {
			return makeZip(t, []zipEntry{{Name: "bin/exampled", Body: good, Mode: 0o4777}})
		}},
		{name: "single gz", path: "/exampled.gz", body: func(testing.TB) []byte { return gz(good) }},
		{name: "archive= parameter overrides extension", path: "/download", body: func(t testing.TB) []byte {
			return gz(makeTar(t, []tarEntry{{Name: "bin/exampled", Body: good}}))
		}, rawURL: func(u string, b []byte) string { return pinned(u+"?archive=tar.gz", b) }},
		{name: "sha512", path: "/exampled", body: func(testing.TB) []byte { return good },
			rawURL: func(u string, b []byte) string {
				return u + "?checksum=sha512:" + hexSum(b, Checksum{Algo: "sha512"})
			}},
		{name: "fault02 md5 allowed when RequireChecksum is false", path: "/exampled", body: func(testing.TB) []byte { return good },
			mutate: func(c *Config) { c.RequireChecksum = false },
			rawURL: func(u string, b []byte) string { return u + "?checksum=md5:" + hexSum(b, Checksum{Algo: "md5"}) }},
		{name: "fault02 unpinned allowed when RequireChecksum is false", path: "/exampled", body: func(testing.TB) []byte { return good },
			mutate: func(c *Config) { c.RequireChecksum = false },
			rawURL: func(u string, b []byte) string { return u }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			cfg := testConfig(t)
			if tc.mutate != nil {
				tc.mutate(&cfg)
			}
			srv := newServer(t)
			body := tc.body(t)
			u := srv.blob(tc.path, body)
			raw := pinned(u, body)
			if tc.rawURL != nil {
				raw = tc.rawURL(u, body)
			}
			p := Plan{Name: "v2", Height: 100, Info: infoJSON(raw)}
			inst, err := Fetch(context.Background(), cfg, p, &testLogger{t: t})
			if err != nil {
				t.Fatalf("Fetch: %v", err)
			}
			if inst.Path != binOf(t, cfg, "v2") || inst.SHA256 != sha(good) || inst.Size != int64(len(good)) || inst.Plan != p {
				t.Fatalf("install = %+v", inst)
			}
			rec := inst.Record
			if rec.Preflight != "v2.0.0-test" || rec.Height != 100 || rec.Source != home.SourceDownload ||
				rec.InfoHash != home.InfoHash(p.Info) || rec.Format != home.RecordFormat || rec.URL == "" || rec.Checksum == "" && cfg.RequireChecksum {
				t.Errorf("record = %+v", rec)
			}
			// The recorded stamp is the binary's in its final place, so the proof
			// needs no hash (where the platform has stamps).
			if now, err := home.StampOf(inst.Path); err != nil || (now.Valid && !now.Same(rec.Stamp)) {
				t.Errorf("recorded stamp %+v, the installed binary has %+v (%v)", rec.Stamp, now, err)
			}
			fi, err := os.Lstat(inst.Path)
			if err != nil || !fi.Mode().IsRegular() || fi.Mode().Perm() != 0o755 {
				t.Errorf("binary mode = %v, %v; want regular 0755", fi.Mode(), err)
			}
			v, err := layoutOf(t, cfg).Open(context.Background(), p)
			if err != nil {
				t.Fatalf("home.Layout.Open: %v", err)
			}
			if v.Rehashed && v.Stamp().Valid {
				t.Error("the proof had to re-hash a freshly staged binary")
			}
			v.Close()
			assertNoTemp(t, cfg)
			if tc.extraOK != nil {
				tc.extraOK(t, cfg)
			}
			// A second Fetch is a no-op returning the same install, with no request.
			before := srv.count(tc.path)
			again, err := Fetch(context.Background(), cfg, p, nil)
			if err != nil || again.SHA256 != inst.SHA256 || srv.count(tc.path) != before {
				t.Errorf("second Fetch = %v, %v, requests %d->%d", again.SHA256, err, before, srv.count(tc.path))
			}
		})
	}
}

func hexSum(b []byte, c Checksum) string {
	h := c.newHash()
	h.Write(b)
	return fmt.Sprintf("%x", h.Sum(nil))
}

func wrongArch(b []byte) []byte {
	out := append([]byte(nil), b...)
	// e_machine at offset 18 (little endian on all hosts we test).
	m := uint16(183) // EM_AARCH64
	if runtime.GOARCH == "arm64" {
		m = 62 // EM_X86_64
	}
	out[18], out[19] = byte(m), byte(m>>8)
	return out
}

func TestFetchRejects(t *testing.T) {
	good := testBins.good
	many := make([]tarEntry, 0, 150)
	for i := range 150 {
		many = append(many, tarEntry{Name: fmt.Sprintf("f%d", i), Body: []byte("x")})
	}
	type tc struct {
		name   string
		setup  func(t *testing.T, srv *blobServer) string // returns Plan.Info
		mutate func(*Config)
		want   error
		substr string
		check  func(t *testing.T, cfg Config, srv *blobServer, err error)
	}
	blob := func(path string, body []byte) func(*testing.T, *blobServer) string {
		return func(t *testing.T, srv *blobServer) string { return infoJSON(pinned(srv.blob(path, body), body)) }
	}
	cases := []tc{
		{name: "fault01 checksum mismatch", want: ErrChecksumMismatch, substr: "expected",
			setup: func(t *testing.T, srv *blobServer) string {
				return infoJSON(pinned(srv.blob("/exampled", good), []byte("something else")))
			},
			check: func(t *testing.T, cfg Config, srv *blobServer, err error) {
				var ce *ChecksumError
				if !errors.As(err, &ce) || ce.Algo != "sha256" || ce.Expected != sha([]byte("something else")) || ce.Actual != sha(good) {
					t.Errorf("ChecksumError = %+v", ce)
				}
			}},
		{name: "fault02 no checksum", want: ErrNoChecksum, substr: "DAEMON_DOWNLOAD_MUST_HAVE_CHECKSUM",
			setup: func(t *testing.T, srv *blobServer) string { return infoJSON(srv.blob("/exampled", good)) },
			check: func(t *testing.T, cfg Config, srv *blobServer, err error) {
				if srv.count("/exampled") != 0 {
					t.Error("an unpinned URL was requested")
				}
			}},
		{name: "fault02 md5 refused by default", want: ErrNoChecksum, substr: "too weak",
			setup: func(t *testing.T, srv *blobServer) string {
				return infoJSON(srv.blob("/exampled", good) + "?checksum=md5:" + hexSum(good, Checksum{Algo: "md5"}))
			}},
		{name: "fault03 truncated body (connection reset)", want: ErrDownload, substr: "after",
			setup: func(t *testing.T, srv *blobServer) string {
				return infoJSON(pinned(srv.handle("/exampled", func(w http.ResponseWriter, r *http.Request) {
					w.Header().Set("Content-Length", fmt.Sprint(len(good)))
					w.Write(good[:len(good)/2])
					w.(http.Flusher).Flush()
					panic(http.ErrAbortHandler)
				}), good))
			}},
		{name: "fault02 sha1 refused by default", want: ErrNoChecksum, substr: "too weak",
			setup: func(t *testing.T, srv *blobServer) string {
				return infoJSON(srv.blob("/exampled", good) + "?checksum=sha1:" + hexSum(good, Checksum{Algo: "sha1"}))
			},
			check: func(t *testing.T, cfg Config, srv *blobServer, err error) {
				if srv.count("/exampled") != 0 {
					t.Error("a weakly pinned URL was requested")
				}
			}},
		{name: "fault04 5xx", want: ErrDownload, substr: "503",
			setup: func(t *testing.T, srv *blobServer) string {
				return infoJSON(pinned(srv.handle("/exampled", func(w http.ResponseWriter, r *http.Request) {
					http.Error(w, "busy", http.StatusServiceUnavailable)
				}), good))
			}},
		{name: "fault05 server hangs before headers", want: ErrDownload, substr: "timeout",
			mutate: func(c *Config) { c.ResponseHeaderTimeout = 200 * time.Millisecond },
			setup: func(t *testing.T, srv *blobServer) string {
				return infoJSON(pinned(srv.handle("/exampled", func(w http.ResponseWriter, r *http.Request) {
					<-r.Context().Done()
				}), good))
			}},
		{name: "fault05 server trickles", want: ErrDownload, substr: "below the minimum",
			setup: func(t *testing.T, srv *blobServer) string {
				return infoJSON(pinned(srv.handle("/exampled", trickle(good, 1, 20*time.Millisecond)), good))
			}},
		{name: "fault05 overall deadline", want: ErrDownload, substr: "Config.Deadline",
			mutate: func(c *Config) { c.Deadline = 300 * time.Millisecond },
			setup: func(t *testing.T, srv *blobServer) string {
				// 200 KB/s: fast enough for the stall watchdog, too slow to finish in time.
				return infoJSON(pinned(srv.handle("/exampled", trickle(good, 4096, 20*time.Millisecond)), good))
			}},
		{name: "fault06 endless body over cap", want: ErrTooLarge, substr: "MaxBinaryBytes",
			mutate: func(c *Config) { c.MaxBinaryBytes = 1 << 20 },
			setup: func(t *testing.T, srv *blobServer) string {
				return infoJSON(pinned(srv.handle("/exampled", func(w http.ResponseWriter, r *http.Request) {
					chunk := make([]byte, 32<<10)
					for {
						if _, err := w.Write(chunk); err != nil {
							return
						}
					}
				}), good))
			}},
		{name: "fault06 content-length over cap", want: ErrTooLarge, substr: "Content-Length",
			mutate: func(c *Config) { c.MaxBinaryBytes = 1 << 10 },
			setup:  blob("/exampled", good)},
		{name: "fault29 redirect to file://", want: ErrDownload, substr: `scheme "file"`,
			setup: func(t *testing.T, srv *blobServer) string {
				return infoJSON(pinned(srv.handle("/exampled", func(w http.ResponseWriter, r *http.Request) {
					http.Redirect(w, r, "file:///etc/passwd", http.StatusFound)
				}), good))
			}},
		{name: "fault07 tar with .. entry", want: ErrUnsafeArchive, substr: `".." component`,
			setup: blob("/a.tar.gz", gz(makeTar(t, []tarEntry{{Name: "bin/exampled", Body: good}, {Name: "../../evil", Body: []byte("x")}})))},
		{name: "fault07 tar with absolute path", want: ErrUnsafeArchive, substr: "absolute",
			setup: blob("/a.tar", makeTar(t, []tarEntry{{Name: "/tmp/evil", Body: []byte("x")}}))},
		{name: "fault08 tar with symlink", want: ErrUnsafeArchive, substr: "symlink",
			setup: blob("/a.tgz", gz(makeTar(t, []tarEntry{{Name: "bin/exampled", Type: tar.TypeSymlink, Link: "/bin/sh"}})))},
		{name: "fault08 tar with hardlink", want: ErrUnsafeArchive, substr: "hardlink",
			setup: blob("/a.tgz", gz(makeTar(t, []tarEntry{{Name: "x", Body: good}, {Name: "bin/exampled", Type: tar.TypeLink, Link: "/etc/passwd"}})))},
		{name: "fault08 tar with device", want: ErrUnsafeArchive, substr: "unsupported type",
			setup: blob("/a.tgz", gz(makeTar(t, []tarEntry{{Name: "dev", Type: tar.TypeChar}})))},
		{name: "fault07 tar with duplicate entry", want: ErrUnsafeArchive, substr: "duplicate",
			setup: blob("/a.tgz", gz(makeTar(t, []tarEntry{{Name: "bin/exampled", Body: good}, {Name: "bin/exampled", Body: []byte("#!/bin/sh")}})))},
		{name: "fault10 too many entries", want: ErrTooLarge, substr: "MaxArchiveEntries",
			setup: blob("/a.tgz", gz(makeTar(t, many)))},
		{name: "fault10 tar bomb", want: ErrTooLarge, substr: "MaxArchiveBytes",
			mutate: func(c *Config) { c.MaxArchiveBytes = 4 << 20 },
			setup:  blob("/a.tgz", gz(makeTar(t, []tarEntry{{Name: "zeros", Body: make([]byte, 8<<20)}})))},
		{name: "fault10 gz bomb single file", want: ErrTooLarge, substr: "MaxBinaryBytes",
			mutate: func(c *Config) { c.MaxBinaryBytes = 2 << 20 },
			setup:  blob("/exampled.gz", gz(make([]byte, 8<<20)))},
		{name: "fault07 zip with ..", want: ErrUnsafeArchive, substr: `".."`,
			setup: blob("/a.zip", makeZip(t, []zipEntry{{Name: "../evil", Body: []byte("x")}}))},
		{name: "fault08 zip with symlink", want: ErrUnsafeArchive, substr: "symlink",
			setup: blob("/a.zip", makeZip(t, []zipEntry{{Name: "bin/exampled", Body: []byte("/bin/sh"), Mode: os.ModeSymlink | 0o777}}))},
		{name: "archive without the daemon", want: ErrNotFound, substr: "neither bin/exampled",
			setup: blob("/a.tgz", gz(makeTar(t, []tarEntry{{Name: "bin/otherd", Body: good}})))},
		{name: "fault11 wrong architecture ELF", want: ErrNotExecutable, substr: "wrong build",
			setup: blob("/exampled", wrongArch(good))},
		{name: "fault12 HTML error page", want: ErrNotExecutable, substr: "HTML",
			setup: blob("/exampled", []byte("<!DOCTYPE html><html><body>404</body></html>"))},
		{name: "fault12 shell script", want: ErrNotExecutable, substr: "script",
			setup: blob("/exampled", []byte("#!/bin/sh\necho v9\n"))},
		{name: "fault12 empty file", want: ErrNotExecutable, substr: "empty",
			setup: blob("/exampled", []byte{})},
		{name: "fault13 preflight exits non-zero (missing shared library)", want: ErrPreflight, substr: "libwasmvm",
			setup: blob("/exampled", testBins.bad)},
		{name: "fault12 preflight hangs", want: ErrPreflight, substr: "timed out",
			mutate: func(c *Config) { c.PreflightTimeout = 300 * time.Millisecond },
			setup:  blob("/exampled", testBins.hang)},
		{name: "fault18 info URL unpinned", want: ErrNoChecksum, substr: "no ?checksum",
			setup: func(t *testing.T, srv *blobServer) string {
				return srv.blob("/info.json", []byte(infoJSON(pinned(srv.blob("/exampled", good), good))))
			}},
		{name: "fault18 info URL oversized", want: ErrTooLarge, substr: "MaxInfoBytes",
			setup: func(t *testing.T, srv *blobServer) string {
				big := []byte(`{"binaries":{},"pad":"` + strings.Repeat("x", 128<<10) + `"}`)
				return pinned(srv.blob("/info.json", big), big)
			}},
		{name: "fault18 info URL malformed JSON", want: ErrBadInfo, substr: "not valid JSON",
			setup: func(t *testing.T, srv *blobServer) string {
				b := []byte(`{"binaries":`)
				return pinned(srv.blob("/info.json", b), b)
			}},
		{name: "fault18 inline info empty map", want: ErrBadInfo, substr: "no \"binaries\"",
			setup: func(*testing.T, *blobServer) string { return `{"binaries":{}}` }},
		{name: "fault18 inline info bad key", want: ErrBadInfo, substr: "neither",
			setup: func(*testing.T, *blobServer) string { return `{"binaries":{"Linux-AMD64":"https://x/y"}}` }},
		{name: "fault11 no binary for this platform", want: ErrNotFound, substr: "no binary for",
			setup: func(*testing.T, *blobServer) string {
				return `{"binaries":{"plan9/mips":"https://x/y?checksum=sha256:` + sha(nil) + `"}}`
			}},
		{name: "fault29 ftp scheme", want: ErrBadInfo, substr: "not allowed",
			setup: func(*testing.T, *blobServer) string {
				return infoJSON("ftp://example.com/x?checksum=sha256:" + sha(nil))
			}},
		{name: "fault29 file scheme refused by default", want: ErrBadInfo, substr: "AllowFileURLs",
			setup: func(*testing.T, *blobServer) string {
				return infoJSON("file:///bin/true?checksum=sha256:" + sha(nil))
			}},
		{name: "downloads disabled", want: ErrNotFound, substr: "DAEMON_ALLOW_DOWNLOAD_BINARIES",
			mutate: func(c *Config) { c.AllowDownload = false },
			setup:  blob("/exampled", good)},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			cfg := testConfig(t)
			if tc.mutate != nil {
				tc.mutate(&cfg)
			}
			srv := newServer(t)
			p := Plan{Name: "v2", Height: 10, Info: tc.setup(t, srv)}
			start := time.Now()
			_, err := Fetch(context.Background(), cfg, p, &testLogger{t: t})
			if err == nil {
				t.Fatal("Fetch succeeded, want an error")
			}
			if !errors.Is(err, tc.want) {
				t.Fatalf("error %q is not %v", err, tc.want)
			}
			if !strings.Contains(err.Error(), tc.substr) {
				t.Errorf("error %q does not name the cause (%q)", err, tc.substr)
			}
			if d := time.Since(start); d > 10*time.Second {
				t.Errorf("took %v", d)
			}
			assertNothingInstalled(t, cfg, p.Name)
			// Nothing escaped the temp root.
			for _, evil := range []string{filepath.Join(layoutOf(t, cfg).Root(), "evil"), filepath.Join(cfg.Home, "evil")} {
				if _, err := os.Lstat(evil); err == nil {
					t.Errorf("%s was written", evil)
				}
			}
			if tc.check != nil {
				tc.check(t, cfg, srv, err)
			}
		})
	}
}

func TestFetchFileURL(t *testing.T) {
	cfg := testConfig(t)
	cfg.AllowFileURLs = true
	src := filepath.Join(t.TempDir(), "exampled")
	os.WriteFile(src, testBins.good, 0o644)
	inst, err := Fetch(context.Background(), cfg, Plan{Name: "v2", Info: infoJSON(pinned("file://"+src, testBins.good))}, nil)
	if err != nil || inst.SHA256 != sha(testBins.good) {
		t.Fatalf("Fetch file:// = %+v, %v", inst, err)
	}
}

func TestFetchInfoURL(t *testing.T) {
	cfg := testConfig(t)
	srv := newServer(t)
	info := []byte(`{"binaries":{"` + platform() + `":"` + pinned(srv.blob("/exampled", testBins.good), testBins.good) + `"},"extra":1}`)
	p := Plan{Name: "v2", Height: 5, Info: pinned(srv.blob("/info.json", info), info)}
	if _, err := Fetch(context.Background(), cfg, p, nil); err != nil {
		t.Fatal(err)
	}
}

func TestFault08PlantedSymlinkRefused(t *testing.T) {
	cfg := testConfig(t)
	srv := newServer(t)
	elsewhere := t.TempDir()
	os.MkdirAll(layoutOf(t, cfg).UpgradesRoot(), 0o755)
	if err := os.Symlink(elsewhere, dirOf(t, cfg, "v2")); err != nil {
		t.Fatal(err)
	}
	p := Plan{Name: "v2", Info: infoJSON(pinned(srv.blob("/exampled", testBins.good), testBins.good))}
	_, err := Fetch(context.Background(), cfg, p, nil)
	if !errors.Is(err, ErrNotTrusted) || !strings.Contains(err.Error(), "symlink") {
		t.Fatalf("err = %v", err)
	}
	if ents, _ := os.ReadDir(elsewhere); len(ents) != 0 {
		t.Errorf("wrote through the planted symlink: %v", ents)
	}
	if srv.count("/exampled") != 0 {
		t.Error("downloaded despite the planted symlink")
	}
}

func TestFault28ModifiedAfterVerification(t *testing.T) {
	cfg := testConfig(t)
	srv := newServer(t)
	p := Plan{Name: "v2", Height: 4, Info: infoJSON(pinned(srv.blob("/exampled", testBins.good), testBins.good))}
	inst, err := Fetch(context.Background(), cfg, p, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := trusted(t, cfg, Plan{Name: "v3"}); !errors.Is(err, ErrNotTrusted) || !strings.Contains(err.Error(), "no completion record") {
		t.Errorf("unstaged plan: %v", err)
	}
	// Modify one byte after verification.
	b, _ := os.ReadFile(inst.Path)
	b[len(b)-1] ^= 0xff
	os.WriteFile(inst.Path, b, 0o755)
	if _, err := trusted(t, cfg, p); !errors.Is(err, ErrNotTrusted) || !errors.Is(err, home.ErrChanged) {
		t.Errorf("modified binary: %v", err)
	}
	// Fetch must not silently replace or accept it either.
	if _, err := Fetch(context.Background(), cfg, p, nil); !errors.Is(err, ErrNotTrusted) {
		t.Errorf("Fetch over a modified binary: %v", err)
	}
	if got, _ := os.ReadFile(inst.Path); !bytes.Equal(got, b) {
		t.Error("Fetch replaced the modified binary")
	}
	// Swap for a symlink to the original bytes.
	orig := filepath.Join(t.TempDir(), "orig")
	os.WriteFile(orig, testBins.good, 0o755)
	os.Remove(inst.Path)
	os.Symlink(orig, inst.Path)
	if _, err := trusted(t, cfg, p); !errors.Is(err, ErrNotTrusted) || !strings.Contains(err.Error(), "symlink") {
		t.Errorf("symlinked binary: %v", err)
	}
	if _, err := Fetch(context.Background(), cfg, p, nil); !errors.Is(err, ErrNotTrusted) || !strings.Contains(err.Error(), "symlink") {
		t.Errorf("Fetch over a symlinked binary: %v", err)
	}
	// A corrupt record is no proof; Fetch verifies the file again against the plan.
	os.Remove(inst.Path)
	os.WriteFile(inst.Path, testBins.good, 0o755)
	os.WriteFile(inst.Path+home.RecordSuffix, []byte("{"), 0o644)
	if _, err := trusted(t, cfg, p); !errors.Is(err, ErrNotTrusted) || !strings.Contains(err.Error(), "corrupt") {
		t.Errorf("corrupt record: %v", err)
	}
	again, err := Fetch(context.Background(), cfg, p, nil)
	if err != nil || again.Record.Source != home.SourcePlanChecksum {
		t.Errorf("Fetch after a corrupt record: %+v, %v", again.Record, err)
	}
	if srv.count("/exampled") != 1 {
		t.Errorf("requests = %d, want only the first download", srv.count("/exampled"))
	}
}
