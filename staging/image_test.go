package staging

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/invisor/invisor/internal/home"
)

// imageSnapshot is what a directory holds (paths, modes, contents), to show
// that staging never writes to the image directory.
func imageSnapshot(t *testing.T, dir string) string {
	t.Helper()
	var b strings.Builder
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		b.WriteString(p + " " + fi.Mode().String() + " " + fi.ModTime().String())
		if fi.Mode().IsRegular() {
			body, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			b.WriteString(" " + sha(body))
		}
		b.WriteString("\n")
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// An image directory's binary is a source like a download: copied, verified
// against the plan as a placed binary is, installed, recorded with source
// "image" (or the operator's word), and never written to or run in place.
func TestFetchFromImageDir(t *testing.T) {
	good := testBins.good
	cases := []struct {
		name     string
		image    []byte // nil: the image holds nothing for the plan
		info     func(s *blobServer) string
		download bool
		// want: the source recorded, or "" for a failure matching wantErr.
		want    home.Source
		wantErr error
		hits    int // requests to the server's binary path
	}{
		{name: "plan checksum confirms the image binary, downloads off",
			image: good, info: func(s *blobServer) string { return infoJSON(pinned(s.URL+"/exampled", good)) }, want: home.SourceImage},
		{name: "plan names no binary: the image's word",
			image: good, info: func(*blobServer) string { return "" }, want: home.SourceOperatorWord},
		{name: "plan archive compared byte for byte",
			image: good, download: true, hits: 1, want: home.SourceImage, info: func(s *blobServer) string {
				tgz := gz(makeTar(t, []tarEntry{{Name: "bin/exampled", Body: good}}))
				return infoJSON(pinned(s.blob("/v2.tar.gz", tgz), tgz))
			}},
		{name: "image binary differs, downloads off: refused",
			image: other(), info: func(s *blobServer) string { return infoJSON(pinned(s.URL+"/exampled", good)) }, wantErr: ErrChecksumMismatch},
		{name: "image binary differs, downloads on: the plan's download instead",
			image: other(), download: true, hits: 1, want: home.SourceDownload,
			info: func(s *blobServer) string { return infoJSON(pinned(s.URL+"/exampled", good)) }},
		{name: "image binary fails its preflight",
			image: testBins.bad, info: func(*blobServer) string { return "" }, wantErr: ErrPreflight},
		{name: "image holds nothing for the plan, downloads off",
			info: func(s *blobServer) string { return infoJSON(pinned(s.URL+"/exampled", good)) }, wantErr: ErrNotFound},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := newServer(t)
			s.blob("/exampled", good)
			cfg := testConfig(t)
			cfg.AllowDownload = tc.download
			cfg.ImageDir = t.TempDir()
			src := filepath.Join(cfg.ImageDir, "upgrades", "v2", "bin", daemon)
			if tc.image != nil {
				if err := os.MkdirAll(filepath.Dir(src), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(src, tc.image, 0o555); err != nil {
					t.Fatal(err)
				}
			}
			if err := CheckImageDir(cfg); err != nil {
				t.Fatal(err)
			}
			before := imageSnapshot(t, cfg.ImageDir)
			p := Plan{Name: "v2", Height: 100, Info: tc.info(s)}
			inst, err := Fetch(context.Background(), cfg, p, &testLogger{t: t})
			if after := imageSnapshot(t, cfg.ImageDir); after != before {
				t.Errorf("the image directory changed:\nbefore:\n%safter:\n%s", before, after)
			}
			if got := s.count("/exampled") + s.count("/v2.tar.gz"); got != tc.hits {
				t.Errorf("%d requests to the server, want %d", got, tc.hits)
			}
			assertNoTemp(t, cfg)
			if tc.want == "" {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("err = %v, want %v", err, tc.wantErr)
				}
				var ie *ImageError
				if tc.image != nil && (!errors.As(err, &ie) || ie.Path != src) {
					t.Errorf("err = %v, want an *ImageError naming %s", err, src)
				}
				assertNothingInstalled(t, cfg, "v2")
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got, err := trusted(t, cfg, p)
			if err != nil {
				t.Fatalf("the install is not trusted by the one proof: %v", err)
			}
			if got.Record.Source != tc.want || inst.Record.Source != tc.want {
				t.Errorf("source = %q (returned %q), want %q", got.Record.Source, inst.Record.Source, tc.want)
			}
			if tc.want != home.SourceDownload && got.Record.File != src {
				t.Errorf("record names file %q, want the image's %s", got.Record.File, src)
			}
			body, err := os.ReadFile(got.Path)
			if err != nil || sha(body) != sha(good) {
				t.Errorf("installed %s is not the verified binary (%v)", got.Path, err)
			}
			if got.Path == src || strings.HasPrefix(got.Path, cfg.ImageDir) {
				t.Errorf("installed path %s is in the image directory", got.Path)
			}
		})
	}
}

func TestCheckImageDir(t *testing.T) {
	file := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		dir, want string
	}{
		{dir: "", want: ""},
		{dir: t.TempDir(), want: ""},
		{dir: filepath.Join(t.TempDir(), "missing"), want: "no such file"},
		{dir: file, want: "not a directory"},
	} {
		cfg := testConfig(t)
		cfg.ImageDir = tc.dir
		err := CheckImageDir(cfg)
		if (tc.want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("CheckImageDir(%q) = %v, want %q", tc.dir, err, tc.want)
		}
	}
}
