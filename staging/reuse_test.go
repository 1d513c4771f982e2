package staging

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha512"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/invisor/invisor/internal/home"
)

// TestDownload drives Download against misbehaving loopback servers: every
// failure names its cause, matches its sentinel and leaves no file behind.
func TestDownload(t *testing.T) {
	body := bytes.Repeat([]byte("bundle bytes "), 1000)
	srv := newServer(t)
	okURL := srv.blob("/b.tar.gz", body)
	srv.handle("/chunked", func(w http.ResponseWriter, r *http.Request) {
		for range 4 { // no Content-Length: the cap trips while reading
			w.Write(body)
			w.(http.Flusher).Flush()
		}
	})
	srv.handle("/truncated", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", fmt.Sprint(len(body)))
		w.Write(body[:len(body)/2])
		w.(http.Flusher).Flush()
		panic(http.ErrAbortHandler)
	})
	srv.handle("/stalled", trickle(body, 1, 50*time.Millisecond))
	srv.handle("/hang", func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() })

	for _, tc := range []struct {
		name    string
		url     string
		archive string // src.Archive
		edit    func(*Config)
		want    error
		substr  string
	}{
		{name: "checksum mismatch", url: okURL + "?checksum=sha256:" + strings.Repeat("0", 64), want: ErrChecksumMismatch},
		{name: "404", url: srv.URL + "/nope", want: ErrDownload, substr: "HTTP 404 Not Found; check the URL"},
		{name: "binary over Content-Length cap", url: okURL, edit: func(c *Config) { c.MaxBinaryBytes = 100 }, want: ErrTooLarge, substr: "MaxBinaryBytes"},
		{name: "archive over Content-Length cap", url: okURL, archive: "tar.gz", edit: func(c *Config) { c.MaxArchiveBytes = 100 }, want: ErrTooLarge, substr: "MaxArchiveBytes"},
		{name: "over the cap while reading", url: srv.URL + "/chunked", edit: func(c *Config) { c.MaxBinaryBytes = int64(2 * len(body)) }, want: ErrTooLarge},
		{name: "truncated", url: srv.URL + "/truncated", want: ErrDownload},
		{name: "stalled", url: srv.URL + "/stalled", edit: func(c *Config) { c.IdleTimeout = 200 * time.Millisecond }, want: ErrDownload, substr: "MinThroughput"},
		{name: "deadline", url: srv.URL + "/hang", edit: func(c *Config) { c.Deadline = 100 * time.Millisecond }, want: ErrDownload, substr: "Config.Deadline"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testConfig(t)
			if tc.edit != nil {
				tc.edit(&cfg)
			}
			src, err := ParseSource(tc.url, Config{})
			if err != nil {
				t.Fatal(err)
			}
			src.Archive = tc.archive
			file := filepath.Join(t.TempDir(), "dl")
			_, err = Download(context.Background(), cfg, src, file)
			if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.substr) {
				t.Fatalf("err = %v, want %v naming %q", err, tc.want, tc.substr)
			}
			if strings.Contains(err.Error(), "plan info") {
				t.Errorf("the error sends the operator to a plan info: %v", err)
			}
			if fileExists(file) {
				t.Error("a failed download left its file")
			}
		})
	}

	t.Run("pinned", func(t *testing.T) {
		cfg := testConfig(t)
		for _, pin := range []string{"sha256:" + sha(body), fmt.Sprintf("sha512:%x", sha512.Sum512(body))} {
			src, err := ParseSource(okURL+"?checksum="+pin, cfg)
			if err != nil {
				t.Fatal(err)
			}
			file := filepath.Join(t.TempDir(), "dl")
			d, err := Download(context.Background(), cfg, src, file)
			got, _ := os.ReadFile(file)
			if err != nil || d.SHA256 != sha(body) || d.Size != int64(len(body)) || !bytes.Equal(got, body) {
				t.Fatalf("%s: %+v, %v; file %d bytes", pin, d, err, len(got))
			}
			// The file must be new: an existing one is never overwritten.
			if _, err := Download(context.Background(), cfg, src, file); !errors.Is(err, fs.ErrExist) {
				t.Fatalf("download over an existing file: %v", err)
			}
		}
	})

	t.Run("untrusted TLS", func(t *testing.T) {
		tlsSrv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write(body) }))
		tlsSrv.Config.ErrorLog = log.New(io.Discard, "", 0) // the refused handshake is expected
		tlsSrv.StartTLS()
		defer tlsSrv.Close()
		src, _ := ParseSource(tlsSrv.URL+"/b", Config{})
		_, err := Download(context.Background(), testConfig(t), src, filepath.Join(t.TempDir(), "dl"))
		if !errors.Is(err, ErrDownload) || !strings.Contains(err.Error(), "TLS verification failed") {
			t.Fatalf("err = %v", err)
		}
	})

	t.Run("invalid config", func(t *testing.T) {
		cfg := testConfig(t)
		cfg.IdleTimeout = 0
		src, _ := ParseSource(okURL, Config{})
		if _, err := Download(context.Background(), cfg, src, filepath.Join(t.TempDir(), "dl")); err == nil || !strings.Contains(err.Error(), "IdleTimeout") {
			t.Fatalf("err = %v", err)
		}
	})
}

// walked is what WalkTar handed over: name and body of each file, in order.
func walked(t testing.TB, cfg Config, archive string, data []byte) ([]string, error) {
	var got []string
	err := WalkTar(context.Background(), cfg, archive, bytes.NewReader(data), func(f TarFile) error {
		b, err := io.ReadAll(f.Body)
		if err != nil {
			return err
		}
		if int64(len(b)) != f.Size {
			t.Fatalf("%s: %d bytes, header says %d", f.Name, len(b), f.Size)
		}
		got = append(got, f.Name+"="+string(b))
		return nil
	})
	return got, err
}

func TestWalkTar(t *testing.T) {
	cfg := testConfig(t)
	cfg.MaxArchiveBytes, cfg.MaxArchiveEntries = 1<<20, 5
	ok := makeTar(t, []tarEntry{{Name: "./m", Body: []byte("1")}, {Name: "d/", Type: tar.TypeDir}, {Name: "d//b", Body: []byte("22")}})
	for _, archive := range []string{"tar", "tar.gz"} {
		data := ok
		if archive == "tar.gz" {
			data = gz(ok)
		}
		got, err := walked(t, cfg, archive, data)
		if err != nil || strings.Join(got, ",") != "m=1,d/b=22" {
			t.Fatalf("%s: %v, %v", archive, got, err)
		}
	}

	small := cfg
	small.MaxArchiveBytes = 2000
	for _, tc := range []struct {
		name    string
		archive string
		cfg     *Config // nil: cfg
		data    []byte
		want    error
		substr  string
		handed  int // files fn saw before the refusal
	}{
		{name: "dotdot", data: makeTar(t, []tarEntry{{Name: "a", Body: []byte("1")}, {Name: "../evil", Body: []byte("x")}}), want: ErrUnsafeArchive, handed: 1},
		{name: "absolute", data: makeTar(t, []tarEntry{{Name: "/etc/x", Body: []byte("x")}}), want: ErrUnsafeArchive},
		{name: "drive letter", data: makeTar(t, []tarEntry{{Name: `c:\x`, Body: []byte("x")}}), want: ErrUnsafeArchive},
		{name: "root as a file", data: makeTar(t, []tarEntry{{Name: ".", Body: []byte("x")}}), want: ErrUnsafeArchive},
		{name: "symlink", data: makeTar(t, []tarEntry{{Name: "l", Type: tar.TypeSymlink, Link: "/etc"}}), want: ErrUnsafeArchive},
		{name: "hardlink", data: makeTar(t, []tarEntry{{Name: "l", Type: tar.TypeLink, Link: "a"}}), want: ErrUnsafeArchive},
		{name: "device", data: makeTar(t, []tarEntry{{Name: "c", Type: tar.TypeChar}}), want: ErrUnsafeArchive},
		{name: "too many entries", data: makeTar(t, []tarEntry{{Name: "1/", Type: tar.TypeDir}, {Name: "2/", Type: tar.TypeDir},
			{Name: "3/", Type: tar.TypeDir}, {Name: "4/", Type: tar.TypeDir}, {Name: "5/", Type: tar.TypeDir}, {Name: "6/", Type: tar.TypeDir}}),
			want: ErrTooLarge, substr: "archive entry count exceeds the limit of 5 (Config.MaxArchiveEntries)"},
		// The header's size is charged before fn sees the file.
		{name: "too many bytes", cfg: &small, data: makeTar(t, []tarEntry{{Name: "a", Body: bytes.Repeat([]byte("x"), 3000)}}),
			want: ErrTooLarge, substr: "unpacked archive exceeds the limit of 2000 (Config.MaxArchiveBytes)"},
		{name: "empty", data: makeTar(t, nil), want: ErrNotFound},
		{name: "corrupt gzip", archive: "tar.gz", data: []byte("not gzip"), want: ErrUnsafeArchive},
		{name: "not a tar", archive: "zip", data: ok, want: ErrBadInfo},
	} {
		t.Run(tc.name, func(t *testing.T) {
			archive := tc.archive
			if archive == "" {
				archive = "tar"
			}
			c := cfg
			if tc.cfg != nil {
				c = *tc.cfg
			}
			got, err := walked(t, c, archive, tc.data)
			if !errors.Is(err, tc.want) || !strings.Contains(fmt.Sprint(err), tc.substr) || len(got) != tc.handed {
				t.Fatalf("err = %v (want %v naming %q), handed %v", err, tc.want, tc.substr, got)
			}
			if archive != "tar" {
				return
			}
			// The same walk: Fetch's extraction refuses the archive for the same reason.
			root := t.TempDir()
			x := &extractor{ctx: context.Background(), lim: limitsOf(c), hashed: map[string]*digest{}}
			if xerr := extractTar(x, bytes.NewReader(tc.data), root); !errors.Is(xerr, tc.want) {
				t.Fatalf("extractTar: %v, WalkTar: %v", xerr, err)
			}
		})
	}

	t.Run("an error from fn is returned as it is", func(t *testing.T) {
		stop := errors.New("stop")
		n := 0
		err := WalkTar(context.Background(), cfg, "tar", bytes.NewReader(ok), func(TarFile) error { n++; return stop })
		if err != stop || n != 1 {
			t.Fatalf("err = %v after %d files", err, n)
		}
	})

	t.Run("cancelled", func(t *testing.T) {
		ctx, cancel := context.WithCancelCause(context.Background())
		cause := errors.New("import stopped")
		cancel(cause)
		err := WalkTar(ctx, cfg, "tar", bytes.NewReader(ok), func(TarFile) error { t.Fatal("fn called"); return nil })
		if !errors.Is(err, cause) {
			t.Fatalf("err = %v", err)
		}
	})
}

// FuzzWalkTar: WalkTar never panics, and hands over only files with a clean,
// local name, within the entry and byte caps.
func FuzzWalkTar(f *testing.F) {
	f.Add(makeTar(f, []tarEntry{{Name: "bin/d", Body: []byte("x")}}))
	f.Add(makeTar(f, []tarEntry{{Name: "../evil", Body: []byte("x")}}))
	f.Add(makeTar(f, []tarEntry{{Name: "./a//b", Body: []byte("x")}, {Name: "a/", Type: tar.TypeDir}}))
	f.Add(makeTar(f, []tarEntry{{Name: "l", Type: tar.TypeSymlink, Link: "/etc"}}))
	cfg := DefaultConfig()
	cfg.MaxArchiveBytes, cfg.MaxArchiveEntries = 1<<16, 32
	f.Fuzz(func(t *testing.T, data []byte) {
		var files, total int64
		WalkTar(context.Background(), cfg, "tar", bytes.NewReader(data), func(tf TarFile) error {
			files++
			total += tf.Size
			if !fs.ValidPath(tf.Name) || tf.Name == "." || strings.Contains(tf.Name, `\`) {
				t.Fatalf("handed %q (header %q)", tf.Name, tf.Header)
			}
			n, err := io.Copy(io.Discard, tf.Body)
			if err == nil && n != tf.Size {
				t.Fatalf("%s: %d bytes, header says %d", tf.Name, n, tf.Size)
			}
			return nil
		})
		if files > cfg.MaxArchiveEntries || total > cfg.MaxArchiveBytes {
			t.Fatalf("handed %d files, %d bytes; caps %d, %d", files, total, cfg.MaxArchiveEntries, cfg.MaxArchiveBytes)
		}
	})
}

func TestRedact(t *testing.T) {
	for in, want := range map[string]string{
		"https://op:s3cret@mirror.example/b.tar.gz?token=s3cret&checksum=sha256:ab&archive=tar.gz": "https://mirror.example/b.tar.gz?archive=tar.gz&checksum=sha256%3Aab",
		"https://mirror.example/b.tar.gz": "https://mirror.example/b.tar.gz",
		"http://[::1:bad/x?token=s3cret":  "<unparseable url>",
	} {
		if got := Redact(in); got != want {
			t.Errorf("Redact(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestChecksumNewHash(t *testing.T) {
	data := []byte("bytes")
	for _, algo := range []string{"sha256", "sha512"} {
		h := Checksum{Algo: algo}.NewHash()
		h.Write(data)
		want := sha(data)
		if algo == "sha512" {
			s := sha512.Sum512(data)
			want = hex.EncodeToString(s[:])
		}
		if got := hex.EncodeToString(h.Sum(nil)); got != want {
			t.Errorf("%s: %s, want %s", algo, got, want)
		}
	}
}

func TestCheckInstallDirs(t *testing.T) {
	cfg := testConfig(t)
	l := layoutOf(t, cfg)
	if err := CheckInstallDirs(l, "v2"); err != nil {
		t.Fatalf("nothing there yet: %v", err)
	}
	dir := dirOf(t, cfg, "v2")
	os.MkdirAll(l.UpgradesRoot(), 0o755)
	if err := os.Symlink(t.TempDir(), dir); err != nil {
		t.Fatal(err)
	}
	if err := CheckInstallDirs(l, "v2"); !errors.Is(err, ErrNotTrusted) || !strings.Contains(err.Error(), dir+" is a symlink") {
		t.Fatalf("symlinked upgrade directory: %v", err)
	}
	os.Remove(dir)
	os.MkdirAll(dir, 0o755)
	os.WriteFile(filepath.Join(dir, home.BinDir), nil, 0o644)
	if err := CheckInstallDirs(l, "v2"); !errors.Is(err, ErrNotTrusted) || !strings.Contains(err.Error(), "not a directory") {
		t.Fatalf("a file at bin/: %v", err)
	}
	if err := CheckInstallDirs(l, ".."); !errors.Is(err, ErrBadName) {
		t.Fatalf("unmappable name: %v", err)
	}
}
