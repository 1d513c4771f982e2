package staging

import (
	"archive/tar"
	"bytes"
	"context"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
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

func FuzzSafeName(f *testing.F) {
	for _, s := range []string{"v2", "..", ".", "a/../b", "/etc", "a\x00b", strings.Repeat("x", 300), "%2e%2e", "\\..\\", "é"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		safe, err := SafeName(name)
		dir := UpgradeDir("/h", name)
		if filepath.Dir(dir) != "/h/cosmovisor/upgrades" {
			t.Fatalf("UpgradeDir(%q) = %q escapes upgrades/", name, dir)
		}
		if err != nil {
			return
		}
		if safe == "" || safe == "." || safe == ".." || len(safe) > MaxNameBytes ||
			strings.ContainsAny(safe, "/\\\x00") {
			t.Fatalf("SafeName(%q) = %q is unsafe", name, safe)
		}
		if filepath.Base(dir) != safe {
			t.Fatalf("UpgradeDir(%q) = %q, want base %q", name, dir, safe)
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
