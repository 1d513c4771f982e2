package staging

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/invisor/invisor/internal/home"
)

func FuzzParseInfo(f *testing.F) {
	for _, s := range []string{
		`{"binaries":{"linux/amd64":"https://h/x?checksum=sha256:` + sha(nil) + `"}}`,
		`{"binaries":{"any":"https://h/x.tar.gz?checksum=sha512:` + strings.Repeat("a", 128) + `"},"x":1}`,
		`{"binaries":{}}`, `{"binaries":{"Linux":"x"}}`, `{`, `[]`, `{"binaries":{"any":""}}`,
		`{"binaries":{"any":"file:///etc/passwd"}}`, `{"binaries":{"any":"https://h/x?checksum=md5:` + strings.Repeat("0", 32) + `"}} trailing`,
	} {
		f.Add(s)
	}
	cfg := DefaultConfig()
	cfg.Home, cfg.DaemonName = "/h", "d"
	f.Fuzz(func(t *testing.T, s string) {
		bins, err := ParseInfo(s)
		if err != nil {
			return
		}
		if len(bins) == 0 {
			t.Fatal("ok with no binaries")
		}
		for k, v := range bins {
			if k != "any" && !platformKey.MatchString(k) {
				t.Fatalf("bad key %q accepted", k)
			}
			src, err := ParseSource(v, cfg)
			if err != nil {
				continue
			}
			if src.URL.Scheme != "http" && src.URL.Scheme != "https" {
				t.Fatalf("scheme %q accepted by default", src.URL.Scheme)
			}
			if src.Checksum == nil || !src.Checksum.Strong() {
				t.Fatalf("unpinned or weak URL %q accepted with RequireChecksum", v)
			}
			if src.URL.Query().Has("checksum") {
				t.Fatal("checksum parameter left in the request URL")
			}
		}
	})
}

// FuzzPlanName: whatever name governance passes, staging either installs the binary
// at exactly Layout.UpgradeBin(name), the directory home.DirName maps it to and
// nothing else under upgrades/, or refuses the name as unmappable (wrapping
// ErrBadName, with the operator's advice) and writes nothing under upgrades/.
func FuzzPlanName(f *testing.F) {
	for _, s := range []string{"v2", "V2", "..", ".", "a/../b", "/etc", "a\x00b", strings.Repeat("x", 300),
		"%2e%2e", "\\..\\", "é", "v2\u200b", `"quoted" 'name'`, "line\nbreak", "\xff\xfe", strings.Repeat("/", 90)} {
		f.Add(s, false)
		f.Add(s, true)
	}
	srv := newServer(f)
	u := srv.blob("/exampled", testBins.good)
	info := infoJSON(pinned(u, testBins.good))
	f.Fuzz(func(t *testing.T, name string, disableRecase bool) {
		cfg := testConfig(t)
		cfg.DisableRecase = disableRecase
		l := layoutOf(t, cfg)
		inst, err := Fetch(context.Background(), cfg, Plan{Name: name, Height: 1, Info: info}, nil)
		ents, _ := os.ReadDir(l.UpgradesRoot())
		dir, derr := home.DirName(name, disableRecase)
		if derr != nil {
			if err == nil || !errors.Is(err, ErrBadName) {
				t.Fatalf("name %q refused by home.DirName (%v), but Fetch = %+v, %v", name, derr, inst, err)
			}
			var u *home.UnmappableNameError
			if errors.As(derr, &u) && (!errors.As(err, &u) || !strings.Contains(err.Error(), u.Advice())) {
				t.Fatalf("unmappable name %q: error %v does not carry the advice", name, err)
			}
			if len(ents) != 0 {
				t.Fatalf("refused name %q left %v under upgrades/", name, ents)
			}
			return
		}
		if err != nil {
			t.Fatalf("name %q (dir %q): %v", name, dir, err)
		}
		want, _ := l.UpgradeBin(name)
		if inst.Path != want || filepath.Join(l.UpgradesRoot(), dir, home.BinDir, daemon) != want || inst.Plan.Name != name {
			t.Fatalf("name %q installed at %s (plan %q), want %s", name, inst.Path, inst.Plan.Name, want)
		}
		if len(ents) != 1 || ents[0].Name() != dir {
			t.Fatalf("name %q: upgrades/ holds %v, want only %q", name, ents, dir)
		}
	})
}

func FuzzExtract(f *testing.F) {
	f.Add(makeTar(f, []tarEntry{{Name: "bin/d", Body: []byte("x")}}), false)
	f.Add(makeTar(f, []tarEntry{{Name: "../evil", Body: []byte("x")}}), false)
	f.Add(makeTar(f, []tarEntry{{Name: "l", Type: tar.TypeSymlink, Link: "/etc"}, {Name: "l/x", Body: []byte("x")}}), false)
	f.Add(makeTar(f, []tarEntry{{Name: "a/", Type: tar.TypeDir}, {Name: "a/b", Body: []byte("x"), Mode: 0o7777}}), false)
	f.Add(makeZip(f, []zipEntry{{Name: "bin/d", Body: []byte("x")}}), true)
	f.Add(makeZip(f, []zipEntry{{Name: "/abs", Body: []byte("x")}, {Name: "..\\w", Body: []byte("x")}}), true)
	lim := extractLimits{Bytes: 1 << 16, Entries: 32}
	f.Fuzz(func(t *testing.T, data []byte, isZip bool) {
		outer := t.TempDir()
		root := filepath.Join(outer, "root")
		os.Mkdir(root, 0o755)
		x := &extractor{ctx: context.Background(), lim: lim, hashed: map[string]*digest{"bin/d": nil}}
		var err error
		if isZip {
			zf := filepath.Join(outer, "a.zip")
			os.WriteFile(zf, data, 0o600)
			err = extractZip(x, zf, root)
			os.Remove(zf)
		} else {
			err = extractTar(x, bytes.NewReader(data), root)
		}
		// The digest taken while writing is that of the bytes on disk.
		if d := x.hashed["bin/d"]; err == nil && d != nil {
			b, rerr := os.ReadFile(filepath.Join(root, "bin", "d"))
			if rerr != nil || sha(b) != d.SHA256 || int64(len(b)) != d.Size {
				t.Fatalf("digest %+v does not match bin/d on disk (%d bytes, %v)", d, len(b), rerr)
			}
		}
		ents, _ := os.ReadDir(outer)
		if len(ents) != 1 || ents[0].Name() != "root" {
			t.Fatalf("something was written outside the root: %v", ents)
		}
		var total, count int64
		filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err != nil || p == root {
				return nil
			}
			count++
			fi, _ := d.Info()
			switch {
			case d.Type()&fs.ModeSymlink != 0:
				t.Fatalf("symlink materialised: %s", p)
			case d.IsDir():
			case d.Type().IsRegular():
				total += fi.Size()
				if fi.Mode()&(fs.ModeSetuid|fs.ModeSetgid|fs.ModeSticky) != 0 || fi.Mode().Perm()&0o022 != 0 {
					t.Fatalf("unsafe mode %v on %s", fi.Mode(), p)
				}
			default:
				t.Fatalf("special file materialised: %s (%v)", p, d.Type())
			}
			return nil
		})
		if total > lim.Bytes {
			t.Fatalf("unpacked %d bytes, cap %d", total, lim.Bytes)
		}
		// Directories implied by a file path count against no entry; bound them loosely.
		if count > lim.Entries*64 {
			t.Fatalf("%d paths from at most %d entries", count, lim.Entries)
		}
	})
}
