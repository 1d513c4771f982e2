package cli

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/invisor/invisor/staging"
)

const testDaemon = "appd"

func hexSHA(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

func goodManifest() BundleManifest {
	return BundleManifest{Format: 1, Daemon: testDaemon, Binaries: []BundleEntry{
		{Name: "genesis", Path: "genesis/bin/appd", SHA256: strings.Repeat("a", 64), Size: 10},
		{Name: "v2", Path: "upgrades/v2/bin/appd", SHA256: strings.Repeat("b", 64), Size: 20, Height: 30},
		{Name: "a/b", Path: "upgrades/a%2Fb/bin/appd", SHA256: strings.Repeat("c", 64), Size: 20},
	}}
}

func TestParseManifest(t *testing.T) {
	enc := func(m BundleManifest) []byte { b, _ := json.Marshal(m); return b }
	if m, err := parseManifest(enc(goodManifest())); err != nil || len(m.Binaries) != 3 {
		t.Fatalf("good manifest: %+v, %v", m, err)
	}
	for _, tc := range []struct {
		name string
		edit func(*BundleManifest)
		raw  string
		want string
	}{
		{name: "not json", raw: "[{", want: "manifest.json"},
		{name: "trailing data", raw: string(enc(goodManifest())) + "{}", want: "trailing"},
		{name: "format", edit: func(m *BundleManifest) { m.Format = 2 }, want: "format 2"},
		{name: "no binaries", edit: func(m *BundleManifest) { m.Binaries = nil }, want: "no binaries"},
		{name: "daemon with slash", edit: func(m *BundleManifest) { m.Daemon = "../appd" }, want: "daemon"},
		{name: "path escapes", edit: func(m *BundleManifest) { m.Binaries[1].Path = "upgrades/../../x/bin/appd" }, want: "want \"upgrades/v2/bin/appd\""},
		{name: "path not canonical", edit: func(m *BundleManifest) { m.Binaries[2].Path = "upgrades/a/b/bin/appd" }, want: "want"},
		{name: "name dotdot", edit: func(m *BundleManifest) { m.Binaries[1].Name = ".."; m.Binaries[1].Path = "upgrades/../bin/appd" }, want: "name"},
		{name: "genesis path for upgrade", edit: func(m *BundleManifest) { m.Binaries[1].Path = "genesis/bin/appd" }, want: "want"},
		{name: "duplicate", edit: func(m *BundleManifest) { m.Binaries = append(m.Binaries, m.Binaries[1]) }, want: "twice"},
		{name: "two genesis", edit: func(m *BundleManifest) { m.Binaries = append(m.Binaries, m.Binaries[0]) }, want: "twice"},
		{name: "short sha", edit: func(m *BundleManifest) { m.Binaries[1].SHA256 = "abc" }, want: "64"},
		{name: "upper sha", edit: func(m *BundleManifest) { m.Binaries[1].SHA256 = strings.Repeat("B", 64) }, want: "lower-case"},
		{name: "non-hex sha", edit: func(m *BundleManifest) { m.Binaries[1].SHA256 = strings.Repeat("z", 64) }, want: "sha256"},
		{name: "zero size", edit: func(m *BundleManifest) { m.Binaries[1].Size = 0 }, want: "size"},
		{name: "negative height", edit: func(m *BundleManifest) { m.Binaries[1].Height = -1 }, want: "height"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			raw := []byte(tc.raw)
			if tc.edit != nil {
				m := goodManifest()
				tc.edit(&m)
				raw = enc(m)
			}
			if _, err := parseManifest(raw); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to contain %q", err, tc.want)
			}
		})
	}
}

func TestBundleEntryName(t *testing.T) {
	for in, want := range map[string]string{"manifest.json": "manifest.json", "./genesis/bin/appd": "genesis/bin/appd", "upgrades/": "upgrades"} {
		if got, err := bundleEntryName(in); err != nil || got != want {
			t.Errorf("%q: %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"", ".", "/etc/passwd", "../x", "a/../../x", "a/./b", "a//b", `a\b`, "upgrades/..", "a\x00b"} {
		if _, err := bundleEntryName(in); !errors.Is(err, staging.ErrUnsafeArchive) {
			t.Errorf("%q accepted (err %v)", in, err)
		}
	}
}

// ---- helper binaries that pass staging's header check and preflight ----

var helperBins struct {
	once sync.Once
	dir  string
	err  error
}

// helperBin returns the path of a tiny Go program that prints version on
// `version`; each distinct version is a distinct binary.
func helperBin(t *testing.T, version string) string {
	t.Helper()
	helperBins.once.Do(func() {
		dir, err := os.MkdirTemp("", "cli-bundle-bins-")
		if err != nil {
			helperBins.err = err
			return
		}
		helperBins.dir = dir
		src := "package main\n\nimport (\n\t\"fmt\"\n\t\"os\"\n)\n\nvar version = \"dev\"\n\nfunc main() {\n\tif len(os.Args) > 1 && os.Args[1] == \"version\" {\n\t\tfmt.Println(version)\n\t}\n}\n"
		os.WriteFile(filepath.Join(dir, "main.go"), []byte(src), 0o644)
		os.WriteFile(filepath.Join(dir, "go.mod"), []byte("module helper\n\ngo 1.22\n"), 0o644)
	})
	if helperBins.err != nil {
		t.Fatal(helperBins.err)
	}
	out := filepath.Join(helperBins.dir, "appd-"+version)
	if _, err := os.Stat(out); err == nil {
		return out
	}
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w -X main.version="+version, "-o", out, ".")
	cmd.Dir = helperBins.dir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=-mod=mod", "GOWORK=off")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building a helper binary: %v\n%s", err, b)
	}
	return out
}

func TestMain(m *testing.M) {
	code := m.Run()
	if helperBins.dir != "" {
		os.RemoveAll(helperBins.dir)
	}
	os.Exit(code)
}

func testStagingConfig(home string) staging.Config {
	c := staging.DefaultConfig()
	c.Home, c.DaemonName = home, testDaemon
	c.AllowDownload = false
	c.RetryMin, c.RetryMax = time.Millisecond, time.Millisecond
	return c
}

func newImporter(home string, out io.Writer) importer {
	c := testStagingConfig(home)
	return importer{cfg: c, lim: limitsFrom(c), out: out, log: staging.NopLogger{}, app: "appd"}
}

// stageTrusted installs bin as upgrade name in home the way `stage --file` does.
func stageTrusted(t *testing.T, home, name, bin string, height int64) staging.Install {
	t.Helper()
	sum, _ := staging.FileSHA256(bin)
	cfg := testStagingConfig(home)
	cfg.AllowDownload, cfg.AllowFileURLs = true, true
	inst, err := staging.Fetch(context.Background(), cfg, staging.Plan{Name: name, Height: height,
		Info: planInfo("file://" + bin + "?checksum=sha256:" + sum)}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return inst
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	os.MkdirAll(filepath.Dir(to), 0o755)
	if err := os.WriteFile(to, b, 0o755); err != nil {
		t.Fatal(err)
	}
}

// assertUntouched checks that home has no binary, record or temp directory
// under cosmovisor (the lock file and empty directories may exist).
func assertUntouched(t *testing.T, home string) {
	t.Helper()
	root := staging.CosmovisorRoot(home)
	filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		rel, _ := filepath.Rel(root, p)
		switch {
		case d.IsDir() && strings.HasPrefix(d.Name(), staging.TempPrefix):
			t.Errorf("temp directory left behind: %s", rel)
		case !d.IsDir() && rel != staging.LockName:
			t.Errorf("file written: %s", rel)
		case d.IsDir() && strings.HasPrefix(rel, staging.UpgradesDir+string(filepath.Separator)):
			t.Errorf("upgrade directory created: %s", rel)
		}
		return nil
	})
}

type tarEnt struct {
	name     string
	body     []byte
	typ      byte
	linkname string
	size     int64 // header size when body is nil and size != 0
}

func makeBundle(t *testing.T, ents []tarEnt) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	for _, e := range ents {
		typ := e.typ
		if typ == 0 {
			typ = tar.TypeReg
		}
		size := int64(len(e.body))
		if typ != tar.TypeReg {
			size = 0
		}
		h := &tar.Header{Name: e.name, Typeflag: typ, Linkname: e.linkname, Size: size, Mode: 0o755, ModTime: time.Unix(0, 0)}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if size > 0 {
			tw.Write(e.body)
		}
	}
	tw.Close()
	zw.Close()
	return buf.Bytes()
}

func manifestEnt(t *testing.T, bins ...BundleEntry) tarEnt {
	t.Helper()
	b, err := json.Marshal(BundleManifest{Format: 1, Daemon: testDaemon, Binaries: bins})
	if err != nil {
		t.Fatal(err)
	}
	return tarEnt{name: bundleManifestName, body: b}
}

func entry(name string, body []byte) BundleEntry {
	p := "upgrades/" + name + "/bin/appd"
	if name == "genesis" {
		p = "genesis/bin/appd"
	}
	return BundleEntry{Name: name, Path: p, SHA256: hexSHA(body), Size: int64(len(body))}
}

// TestImportMaliciousBundles feeds bundles that must be refused whole, before
// anything is installed: the home is left untouched every time.
func TestImportMaliciousBundles(t *testing.T) {
	bin := []byte("\x7fELF not really a binary, never reaches preflight")
	other := []byte("another binary")
	good := entry("v2", bin)
	big := bytes.Repeat([]byte("x"), 4096)
	for _, tc := range []struct {
		name  string
		ents  []tarEnt
		raw   []byte
		lim   func(*bundleLimits)
		want  string
		isErr error
	}{
		{name: "dotdot entry", ents: []tarEnt{manifestEnt(t, good), {name: "../../evil", body: bin}}, isErr: staging.ErrUnsafeArchive},
		{name: "absolute entry", ents: []tarEnt{manifestEnt(t, good), {name: "/tmp/evil", body: bin}}, isErr: staging.ErrUnsafeArchive},
		{name: "dotdot inside", ents: []tarEnt{manifestEnt(t, good), {name: "upgrades/v2/../../../x", body: bin}}, isErr: staging.ErrUnsafeArchive},
		{name: "symlink", ents: []tarEnt{manifestEnt(t, good), {name: "upgrades/v2/bin/appd", typ: tar.TypeSymlink, linkname: "/bin/sh"}}, isErr: staging.ErrUnsafeArchive},
		{name: "hard link", ents: []tarEnt{manifestEnt(t, good), {name: "upgrades/v2/bin/appd", typ: tar.TypeLink, linkname: "manifest.json"}}, isErr: staging.ErrUnsafeArchive},
		{name: "device", ents: []tarEnt{manifestEnt(t, good), {name: "upgrades/v2/bin/appd", typ: tar.TypeChar}}, isErr: staging.ErrUnsafeArchive},
		{name: "wrong hash", ents: []tarEnt{manifestEnt(t, good), {name: "upgrades/v2/bin/appd", body: append([]byte{'X'}, bin[1:]...)}}, isErr: staging.ErrChecksumMismatch},
		{name: "wrong hash of genesis after a good upgrade", ents: []tarEnt{manifestEnt(t, good, entry("genesis", other)),
			{name: "upgrades/v2/bin/appd", body: bin}, {name: "genesis/bin/appd", body: []byte("another binarY")}}, isErr: staging.ErrChecksumMismatch},
		{name: "size differs", ents: []tarEnt{manifestEnt(t, good), {name: "upgrades/v2/bin/appd", body: append(bin, 'x')}}, want: "the manifest says"},
		{name: "missing file", ents: []tarEnt{manifestEnt(t, good, entry("v3", other)), {name: "upgrades/v2/bin/appd", body: bin}}, want: "does not contain"},
		{name: "unlisted file", ents: []tarEnt{manifestEnt(t, good), {name: "upgrades/v2/bin/appd", body: bin}, {name: "upgrades/v2/bin/extra", body: bin}}, isErr: staging.ErrUnsafeArchive},
		{name: "duplicate entry", ents: []tarEnt{manifestEnt(t, good), {name: "upgrades/v2/bin/appd", body: bin}, {name: "./upgrades/v2/bin/appd", body: bin}}, isErr: staging.ErrUnsafeArchive},
		{name: "manifest not first", ents: []tarEnt{{name: "upgrades/v2/bin/appd", body: bin}, manifestEnt(t, good)}, want: "first file"},
		{name: "no manifest", ents: []tarEnt{{name: "upgrades/", typ: tar.TypeDir}}, want: "no manifest.json"},
		{name: "bad manifest", ents: []tarEnt{{name: bundleManifestName, body: []byte(`{"format":1,"daemon":"appd","binaries":[{"name":"v2","path":"/etc/x","sha256":"` + strings.Repeat("a", 64) + `","size":1}]}`)}}, want: "want \"upgrades/v2/bin/appd\""},
		{name: "oversize binary", ents: []tarEnt{manifestEnt(t, entry("v2", big)), {name: "upgrades/v2/bin/appd", body: big}},
			lim: func(l *bundleLimits) { l.Binary = 1024 }, isErr: staging.ErrTooLarge},
		{name: "oversize total", ents: []tarEnt{manifestEnt(t, entry("v2", big), entry("v3", big)), {name: "upgrades/v2/bin/appd", body: big}, {name: "upgrades/v3/bin/appd", body: big}},
			lim: func(l *bundleLimits) { l.Total = 6000 }, isErr: staging.ErrTooLarge},
		{name: "too many entries", ents: []tarEnt{manifestEnt(t, good), {name: "a/", typ: tar.TypeDir}, {name: "b/", typ: tar.TypeDir}, {name: "upgrades/v2/bin/appd", body: bin}},
			lim: func(l *bundleLimits) { l.Entries = 3 }, isErr: staging.ErrTooLarge},
		{name: "not gzip", raw: []byte("PK\x03\x04 a zip file"), want: "gzip"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			home := t.TempDir()
			raw := tc.raw
			if raw == nil {
				raw = makeBundle(t, tc.ents)
			}
			file := filepath.Join(t.TempDir(), "bundle.tar.gz")
			os.WriteFile(file, raw, 0o644)
			var out bytes.Buffer
			im := newImporter(home, &out)
			if tc.lim != nil {
				tc.lim(&im.lim)
			}
			err := im.run(context.Background(), file, "", false)
			switch {
			case err == nil:
				t.Fatalf("imported:\n%s", out.String())
			case tc.isErr != nil && !errors.Is(err, tc.isErr):
				t.Fatalf("err = %v, want %v", err, tc.isErr)
			case tc.want != "" && !strings.Contains(err.Error(), tc.want):
				t.Fatalf("err = %v, want it to contain %q", err, tc.want)
			}
			t.Logf("refused: %v", err)
			assertUntouched(t, home)
		})
	}
}

// TestExportImport exports a home with a genesis binary and two trusted
// upgrades and imports the bundle into an empty home, from a file and from a
// URL; then checks idempotence, conflicts, the lock and the refusals of export.
func TestExportImport(t *testing.T) {
	g, v2, v3 := helperBin(t, "v1.0.0"), helperBin(t, "v2.0.0"), helperBin(t, "v3.0.0")
	src := t.TempDir()
	copyFile(t, g, filepath.Join(staging.CosmovisorRoot(src), "genesis", "bin", testDaemon))
	stageTrusted(t, src, "v2", v2, 30)
	stageTrusted(t, src, "v3/x", v3, 60)

	bundle := filepath.Join(t.TempDir(), "bundle.tar.gz")
	m, sum, err := exportBundle(src, testDaemon, bundle)
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Binaries) != 3 || m.Binaries[1].Name != "v2" || m.Binaries[1].Height != 30 || m.Binaries[2].Path != "upgrades/v3%2Fx/bin/appd" || m.Binaries[2].Version != "v3.0.0" {
		t.Fatalf("manifest = %+v", m)
	}
	raw, _ := os.ReadFile(bundle)
	if hexSHA(raw) != sum {
		t.Fatalf("export returned sha256 %s, the file has %s", sum, hexSHA(raw))
	}
	if ents, _ := filepath.Glob(filepath.Join(filepath.Dir(bundle), ".*tmp*")); len(ents) != 0 {
		t.Fatalf("export left %v", ents)
	}

	check := func(t *testing.T, home string) {
		t.Helper()
		for name, bin := range map[string]string{"v2": v2, "v3/x": v3} {
			inst, err := staging.Trusted(home, testDaemon, name)
			want, _ := staging.FileSHA256(bin)
			if err != nil || inst.SHA256 != want {
				t.Errorf("%s: %+v, %v; want sha256 %s", name, inst, err, want)
			}
		}
		gen := filepath.Join(staging.CosmovisorRoot(home), "genesis", "bin", testDaemon)
		have, err := staging.FileSHA256(gen)
		want, _ := staging.FileSHA256(g)
		if err != nil || have != want {
			t.Errorf("genesis %s: %s, %v; want %s", gen, have, err, want)
		}
		if fi, err := os.Stat(gen); err != nil || fi.Mode().Perm() != 0o755 {
			t.Errorf("genesis mode: %v, %v", fi, err)
		}
		ents, _ := filepath.Glob(filepath.Join(staging.CosmovisorRoot(home), staging.TempPrefix+"*"))
		if len(ents) != 0 {
			t.Errorf("temp directories left: %v", ents)
		}
	}

	t.Run("file", func(t *testing.T) {
		home := t.TempDir()
		var out bytes.Buffer
		im := newImporter(home, &out)
		if err := im.run(context.Background(), bundle, "sha256:"+sum, false); err != nil {
			t.Fatalf("%v\n%s", err, out.String())
		}
		check(t, home)
		if inst, _ := staging.Trusted(home, testDaemon, "v2"); inst.Record.Height != 30 || inst.Record.Preflight != "v2.0.0" {
			t.Errorf("record = %+v", inst.Record)
		}
		// Again: everything is already there.
		out.Reset()
		if err := im.run(context.Background(), bundle, "", false); err != nil || strings.Count(out.String(), "already") != 3 {
			t.Fatalf("second import: %v\n%s", err, out.String())
		}
		// A running node (the lock) makes import refuse.
		st, err := staging.New(testStagingConfig(home), nil)
		if err != nil {
			t.Fatal(err)
		}
		err = im.run(context.Background(), bundle, "", false)
		st.Close()
		if !errors.Is(err, errNodeRunning) || !errors.Is(err, staging.ErrLocked) {
			t.Fatalf("import under the lock: %v", err)
		}
	})

	t.Run("wrong file checksum", func(t *testing.T) {
		home := t.TempDir()
		err := newImporter(home, io.Discard).run(context.Background(), bundle, "sha256:"+strings.Repeat("0", 64), false)
		if !errors.Is(err, staging.ErrChecksumMismatch) {
			t.Fatalf("err = %v", err)
		}
		assertUntouched(t, home)
	})

	t.Run("url", func(t *testing.T) {
		srv := httptest.NewServer(http.FileServer(http.Dir(filepath.Dir(bundle))))
		defer srv.Close()
		u := srv.URL + "/" + filepath.Base(bundle)
		for _, bad := range []struct{ url, want string }{
			{u, "checksum"},
			{u + "?checksum=sha256:" + strings.Repeat("0", 64), "checksum mismatch"},
			{u + "?checksum=md5:" + strings.Repeat("0", 32), "weak"},
			{srv.URL + "/nope.tar.gz?checksum=sha256:" + sum, "404"},
			{"ftp://example.com/b.tar.gz", "only http(s)"},
		} {
			home := t.TempDir()
			err := newImporter(home, io.Discard).run(context.Background(), bad.url, "", false)
			if err == nil || !strings.Contains(err.Error(), bad.want) {
				t.Errorf("%s: err = %v, want %q", bad.url, err, bad.want)
			}
			assertUntouched(t, home)
		}
		home := t.TempDir()
		im := newImporter(home, io.Discard)
		im.lim.Download = int64(len(raw)) - 1
		if err := im.run(context.Background(), u+"?checksum=sha256:"+sum, "", false); !errors.Is(err, staging.ErrTooLarge) {
			t.Errorf("oversize download: %v", err)
		}
		assertUntouched(t, home)

		var out bytes.Buffer
		if err := newImporter(home, &out).run(context.Background(), u+"?checksum=sha256:"+sum, "", false); err != nil {
			t.Fatalf("%v\n%s", err, out.String())
		}
		check(t, home)
		home = t.TempDir()
		out.Reset()
		if err := newImporter(home, &out).run(context.Background(), u, "", true); err != nil || !strings.Contains(out.String(), "not pinned") {
			t.Fatalf("--insecure-no-checksum: %v\n%s", err, out.String())
		}
		check(t, home)
	})

	t.Run("conflicts", func(t *testing.T) {
		// A different genesis binary: refused naming both hashes, nothing installed.
		home := t.TempDir()
		gen := filepath.Join(staging.CosmovisorRoot(home), "genesis", "bin", testDaemon)
		copyFile(t, v3, gen)
		err := newImporter(home, io.Discard).run(context.Background(), bundle, "", false)
		h3, _ := staging.FileSHA256(v3)
		h1, _ := staging.FileSHA256(g)
		if err == nil || !strings.Contains(err.Error(), h3) || !strings.Contains(err.Error(), h1) {
			t.Fatalf("different genesis: %v", err)
		}
		if _, err := os.Lstat(staging.BinPath(home, testDaemon, "v2")); err == nil {
			t.Fatal("v2 installed despite the genesis conflict")
		}
		if h, _ := staging.FileSHA256(gen); h != h3 {
			t.Fatal("existing genesis binary changed")
		}
		// A different trusted upgrade binary.
		home = t.TempDir()
		stageTrusted(t, home, "v2", v3, 30)
		err = newImporter(home, io.Discard).run(context.Background(), bundle, "", false)
		h2, _ := staging.FileSHA256(v2)
		if err == nil || !strings.Contains(err.Error(), h2) || !strings.Contains(err.Error(), h3) {
			t.Fatalf("different v2: %v", err)
		}
		// An unrecorded binary in the way.
		home = t.TempDir()
		copyFile(t, v2, staging.BinPath(home, testDaemon, "v2"))
		if err := newImporter(home, io.Discard).run(context.Background(), bundle, "", false); err == nil || !strings.Contains(err.Error(), "without a valid completion record") {
			t.Fatalf("unrecorded v2: %v", err)
		}
	})

	t.Run("export refusals", func(t *testing.T) {
		out := filepath.Join(t.TempDir(), "b.tar.gz")
		if _, _, err := exportBundle(t.TempDir(), testDaemon, out); err == nil || !strings.Contains(err.Error(), "no genesis binary") {
			t.Errorf("export without genesis: %v", err)
		}
		copyFile(t, v2, staging.BinPath(src, testDaemon, "v9"))
		defer os.RemoveAll(staging.UpgradeDir(src, "v9"))
		if _, _, err := exportBundle(src, testDaemon, out); err == nil || !strings.Contains(err.Error(), `"v9" is not trusted`) {
			t.Errorf("export of an untrusted install: %v", err)
		}
		if _, err := os.Stat(out); err == nil {
			t.Error("a refused export wrote the bundle")
		}
		if ents, _ := filepath.Glob(filepath.Join(filepath.Dir(out), ".*")); len(ents) != 0 {
			t.Errorf("refused export left %v", ents)
		}
	})
}
