package cli

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/invisor/invisor/internal/home"
	"github.com/invisor/invisor/staging"
)

const testDaemon = "appd"

func hexSHA(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

func fileSHA(t testing.TB, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return hexSHA(b)
}

func goodManifest() BundleManifest {
	return BundleManifest{Format: 1, Daemon: testDaemon, Binaries: []BundleEntry{
		{Name: "genesis", Path: "genesis/bin/appd", SHA256: strings.Repeat("a", 64), Size: 10},
		{Name: "v2", Path: "upgrades/v2/bin/appd", SHA256: strings.Repeat("b", 64), Size: 20, Height: 30},
		{Name: "a/b", Path: "upgrades/a%2Fb/bin/appd", SHA256: strings.Repeat("c", 64), Size: 20},
	}}
}

func encManifest(m BundleManifest) []byte { b, _ := json.Marshal(m); return b }

func TestParseManifest(t *testing.T) {
	if m, err := parseManifest(encManifest(goodManifest())); err != nil || len(m.Binaries) != 3 {
		t.Fatalf("good manifest: %+v, %v", m, err)
	}
	// A name with capitals: the recased directory (the default) and the one a home
	// with COSMOVISOR_DISABLE_RECASE uses are both the bundle format.
	for _, p := range []string{"upgrades/v3-rc%20x/bin/appd", "upgrades/V3-RC%20x/bin/appd"} {
		m := goodManifest()
		m.Binaries[1].Name, m.Binaries[1].Path = "V3-RC x", p
		if _, err := parseManifest(encManifest(m)); err != nil {
			t.Errorf("path %s: %v", p, err)
		}
	}
	for _, tc := range []struct {
		name string
		edit func(*BundleManifest)
		raw  string
		want string
	}{
		{name: "not json", raw: "[{", want: "manifest.json"},
		{name: "trailing data", raw: string(encManifest(goodManifest())) + "{}", want: "trailing"},
		{name: "format", edit: func(m *BundleManifest) { m.Format = 2 }, want: "format 2"},
		{name: "no binaries", edit: func(m *BundleManifest) { m.Binaries = nil }, want: "no binaries"},
		{name: "daemon with slash", edit: func(m *BundleManifest) { m.Daemon = "../appd" }, want: "daemon name"},
		{name: "daemon empty", edit: func(m *BundleManifest) { m.Daemon = "" }, want: "daemon name"},
		{name: "path escapes", edit: func(m *BundleManifest) { m.Binaries[1].Path = "upgrades/../../x/bin/appd" }, want: `want "upgrades/v2/bin/appd"`},
		{name: "path not canonical", edit: func(m *BundleManifest) { m.Binaries[2].Path = "upgrades/a/b/bin/appd" }, want: "want"},
		{name: "path of another case", edit: func(m *BundleManifest) { m.Binaries[1].Path = "upgrades/V2/bin/appd" }, want: `want "upgrades/v2/bin/appd"`},
		{name: "name dotdot", edit: func(m *BundleManifest) { m.Binaries[1].Name = ".."; m.Binaries[1].Path = "upgrades/../bin/appd" }, want: "cannot be mapped"},
		{name: "name dot", edit: func(m *BundleManifest) { m.Binaries[1].Name = "."; m.Binaries[1].Path = "upgrades/./bin/appd" }, want: "cannot be mapped"},
		{name: "name empty", edit: func(m *BundleManifest) { m.Binaries[1].Name = ""; m.Binaries[1].Path = "upgrades//bin/appd" }, want: "empty plan name"},
		{name: "name too long", edit: func(m *BundleManifest) {
			m.Binaries[1].Name = strings.Repeat("x", 300)
			m.Binaries[1].Path = "upgrades/" + strings.Repeat("x", 300) + "/bin/appd"
		}, want: "cannot be mapped"},
		{name: "genesis path for upgrade", edit: func(m *BundleManifest) { m.Binaries[1].Path = "genesis/bin/appd" }, want: "want"},
		{name: "genesis with another daemon", edit: func(m *BundleManifest) { m.Binaries[0].Path = "genesis/bin/other" }, want: `want "genesis/bin/appd"`},
		{name: "duplicate", edit: func(m *BundleManifest) { m.Binaries = append(m.Binaries, m.Binaries[1]) }, want: "twice"},
		{name: "same path, other case", edit: func(m *BundleManifest) {
			m.Binaries = append(m.Binaries, BundleEntry{Name: "V2", Path: "upgrades/v2/bin/appd", SHA256: strings.Repeat("d", 64), Size: 1})
		}, want: "twice"},
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
				raw = encManifest(m)
			}
			if _, err := parseManifest(raw); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to contain %q", err, tc.want)
			}
		})
	}
}

// TestReadBundleEntryNames: entry names are matched to the manifest as
// staging's tar reader cleans them ("./" and directory entries are fine), and a
// name that is unsafe, or is not exactly a listed path once cleaned, refuses the
// whole bundle.
func TestReadBundleEntryNames(t *testing.T) {
	bin := []byte("\x7fELF bytes")
	good := entry("v2", bin)
	cfg := testStagingConfig(t.TempDir())
	read := func(t *testing.T, ents ...tarEnt) error {
		t.Helper()
		_, _, err := readBundle(context.Background(), cfg, bytes.NewReader(makeBundle(t, ents)), t.TempDir())
		return err
	}
	for _, ents := range [][]tarEnt{
		{{name: "./" + bundleManifestName, body: manifestEnt(t, good).body}, {name: "./upgrades/v2/bin/appd", body: bin}},
		{manifestEnt(t, good), {name: "upgrades/", typ: tar.TypeDir}, {name: "upgrades/v2/bin/appd", body: bin}},
	} {
		if err := read(t, ents...); err != nil {
			t.Errorf("%s, %s: %v", ents[0].name, ents[1].name, err)
		}
	}
	for _, name := range []string{"", ".", "/etc/passwd", "../x", "a/../../x", "a/./b", "a//b", `a\b`, "upgrades/..", "upgrades/v2/bin/appd/..", "c:/x"} {
		if err := read(t, manifestEnt(t, good), tarEnt{name: name, body: bin}); !errors.Is(err, staging.ErrUnsafeArchive) {
			t.Errorf("%q accepted (err %v)", name, err)
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

func bundleLayout(t testing.TB, h string) home.Layout {
	t.Helper()
	l, err := testStagingConfig(h).Layout()
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func upgradeBin(t testing.TB, h, name string) string {
	t.Helper()
	p, err := bundleLayout(t, h).UpgradeBin(name)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func newImporter(home string, out io.Writer) importer {
	return importer{cfg: testStagingConfig(home), out: out, log: staging.NopLogger{}, app: "appd"}
}

// filePlan is a plan whose info names bin as a file:// URL pinned to its sha256.
func filePlan(t testing.TB, name, bin string, height int64) staging.Plan {
	return staging.Plan{Name: name, Height: height, Info: planInfo("file://" + bin + "?checksum=sha256:" + fileSHA(t, bin))}
}

// pinnedPlan is a plan naming a plain binary for this platform pinned to sha, at
// a URL that is never fetched: a placed binary is verified against the checksum.
func pinnedPlan(name, sha string, height int64) staging.Plan {
	return staging.Plan{Name: name, Height: height, Info: planInfo("https://example.invalid/appd?checksum=sha256:" + sha)}
}

// stageTrusted installs bin as upgrade name in home the way staging does, with a
// completion record for a plan at height.
func stageTrusted(t *testing.T, home, name, bin string, height int64) staging.Install {
	t.Helper()
	cfg := testStagingConfig(home)
	cfg.AllowDownload, cfg.AllowFileURLs = true, true
	inst, err := staging.Fetch(context.Background(), cfg, filePlan(t, name, bin, height), staging.NopLogger{})
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
func assertUntouched(t *testing.T, h string) {
	t.Helper()
	l := bundleLayout(t, h)
	root := l.Root()
	filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		rel, _ := filepath.Rel(root, p)
		switch {
		case d.IsDir() && strings.Contains(d.Name(), home.TempMarker):
			t.Errorf("temp directory left behind: %s", rel)
		case !d.IsDir() && rel != home.LockFile:
			t.Errorf("file written: %s", rel)
		case d.IsDir() && strings.HasPrefix(p, l.UpgradesRoot()+string(filepath.Separator)):
			t.Errorf("upgrade directory created: %s", rel)
		}
		return nil
	})
}

// assertNoRecord checks that upgrade name has no completion record.
func assertNoRecord(t *testing.T, h, name string) {
	t.Helper()
	rp, err := bundleLayout(t, h).RecordPath(name)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(rp); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("%s: a completion record was written (%v)", rp, err)
	}
}

type tarEnt struct {
	name     string
	body     []byte
	typ      byte
	linkname string
}

func makeBundle(t testing.TB, ents []tarEnt) []byte {
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

func manifestEnt(t testing.TB, bins ...BundleEntry) tarEnt {
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

func writeBundle(t *testing.T, raw []byte) string {
	t.Helper()
	file := filepath.Join(t.TempDir(), "bundle.tar.gz")
	if err := os.WriteFile(file, raw, 0o644); err != nil {
		t.Fatal(err)
	}
	return file
}

// TestImportMaliciousBundles feeds bundles that must be refused whole, before
// anything is placed: the home is left untouched every time.
func TestImportMaliciousBundles(t *testing.T) {
	bin := []byte("\x7fELF not really a binary, never reaches preflight")
	other := []byte("another binary")
	good := entry("v2", bin)
	big := bytes.Repeat([]byte("x"), 4096)
	for _, tc := range []struct {
		name  string
		ents  []tarEnt
		raw   []byte
		cfg   func(*staging.Config)
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
		{name: "bad manifest", ents: []tarEnt{{name: bundleManifestName, body: []byte(`{"format":1,"daemon":"appd","binaries":[{"name":"v2","path":"/etc/x","sha256":"` + strings.Repeat("a", 64) + `","size":1}]}`)}}, want: `want "upgrades/v2/bin/appd"`},
		{name: "oversize binary", ents: []tarEnt{manifestEnt(t, entry("v2", big)), {name: "upgrades/v2/bin/appd", body: big}},
			cfg: func(c *staging.Config) { c.MaxBinaryBytes = 1024 }, isErr: staging.ErrTooLarge},
		{name: "oversize total", ents: []tarEnt{manifestEnt(t, entry("v2", big), entry("v3", big)), {name: "upgrades/v2/bin/appd", body: big}, {name: "upgrades/v3/bin/appd", body: big}},
			cfg: func(c *staging.Config) { c.MaxArchiveBytes = 6000 }, isErr: staging.ErrTooLarge},
		{name: "too many entries", ents: []tarEnt{manifestEnt(t, good), {name: "a/", typ: tar.TypeDir}, {name: "b/", typ: tar.TypeDir}, {name: "upgrades/v2/bin/appd", body: bin}},
			cfg: func(c *staging.Config) { c.MaxArchiveEntries = 3 }, isErr: staging.ErrTooLarge},
		{name: "not gzip", raw: []byte("PK\x03\x04 a zip file"), want: "gzip"},
		// Well-formed, but the binary is not an executable for this platform: the
		// header check before placing refuses it.
		{name: "not an executable", ents: []tarEnt{manifestEnt(t, good), {name: "upgrades/v2/bin/appd", body: bin}}, isErr: staging.ErrNotExecutable},
		{name: "a script", ents: []tarEnt{manifestEnt(t, entry("v2", []byte("#!/bin/sh\nexit 0\n"))), {name: "upgrades/v2/bin/appd", body: []byte("#!/bin/sh\nexit 0\n")}}, isErr: staging.ErrNotExecutable},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := t.TempDir()
			raw := tc.raw
			if raw == nil {
				raw = makeBundle(t, tc.ents)
			}
			var out bytes.Buffer
			im := newImporter(h, &out)
			if tc.cfg != nil {
				tc.cfg(&im.cfg)
			}
			err := im.run(context.Background(), writeBundle(t, raw), "", false)
			switch {
			case err == nil:
				t.Fatalf("imported:\n%s", out.String())
			case tc.isErr != nil && !errors.Is(err, tc.isErr):
				t.Fatalf("err = %v, want %v", err, tc.isErr)
			case tc.want != "" && !strings.Contains(err.Error(), tc.want):
				t.Fatalf("err = %v, want it to contain %q", err, tc.want)
			}
			t.Logf("refused: %v", err)
			assertUntouched(t, h)
		})
	}
}

// TestExportImport exports a home with a genesis binary and two recorded
// upgrades and imports the bundle into an empty home, from a file and from a
// URL: the binaries are placed without a record, and the node's staging then
// verifies each against its plan. Then idempotence, conflicts, the lock and the
// refusals of export.
func TestExportImport(t *testing.T) {
	g, v2, v3 := helperBin(t, "v1.0.0"), helperBin(t, "v2.0.0"), helperBin(t, "v3.0.0")
	h1, h2, h3 := fileSHA(t, g), fileSHA(t, v2), fileSHA(t, v3)
	src := t.TempDir()
	copyFile(t, g, bundleLayout(t, src).GenesisBin())
	stageTrusted(t, src, "v2", v2, 30)
	stageTrusted(t, src, "v3/x", v3, 60)
	rec3, err := bundleLayout(t, src).ReadRecord("v3/x")
	if err != nil {
		t.Fatal(err)
	}

	bundle := filepath.Join(t.TempDir(), "bundle.tar.gz")
	m, sum, err := exportBundle(context.Background(), bundleLayout(t, src), bundle, "appd")
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Binaries) != 3 || m.Binaries[0].Path != "genesis/bin/appd" || m.Binaries[0].SHA256 != h1 ||
		m.Binaries[1].Name != "v2" || m.Binaries[1].Height != 30 || m.Binaries[1].SHA256 != h2 ||
		m.Binaries[2].Path != "upgrades/v3%2Fx/bin/appd" || m.Binaries[2].Version != "v3.0.0" || m.Binaries[2].InfoSHA256 != rec3.InfoHash {
		t.Fatalf("manifest = %+v", m)
	}
	raw, _ := os.ReadFile(bundle)
	if hexSHA(raw) != sum {
		t.Fatalf("export returned sha256 %s, the file has %s", sum, hexSHA(raw))
	}
	if ents, _ := filepath.Glob(filepath.Join(filepath.Dir(bundle), ".*")); len(ents) != 0 {
		t.Fatalf("export left %v", ents)
	}

	// check: every binary is placed with the bundle's bytes, 0755, with no
	// completion record, so no plan's proof holds yet; no temp directory is left.
	check := func(t *testing.T, h string) {
		t.Helper()
		l := bundleLayout(t, h)
		for _, u := range []struct {
			name, sha string
			height    int64
		}{{"v2", h2, 30}, {"v3/x", h3, 60}} {
			bin := upgradeBin(t, h, u.name)
			if got := fileSHA(t, bin); got != u.sha {
				t.Errorf("%s: sha256 %s, want %s", bin, got, u.sha)
			}
			if fi, err := os.Stat(bin); err != nil || fi.Mode().Perm() != 0o755 {
				t.Errorf("%s mode: %v, %v", bin, fi, err)
			}
			assertNoRecord(t, h, u.name)
			if v, err := l.Open(context.Background(), pinnedPlan(u.name, u.sha, u.height)); !errors.Is(err, home.ErrNotTrusted) {
				v.Close()
				t.Errorf("%s: Open = %v, want ErrNotTrusted (import writes no proof)", u.name, err)
			}
		}
		if got := fileSHA(t, l.GenesisBin()); got != h1 {
			t.Errorf("genesis: sha256 %s, want %s", got, h1)
		}
		if fi, err := os.Stat(l.GenesisBin()); err != nil || fi.Mode().Perm() != 0o755 {
			t.Errorf("genesis mode: %v, %v", fi, err)
		}
		ents, _ := filepath.Glob(filepath.Join(l.Root(), "*"+home.TempMarker+"*"))
		if len(ents) != 0 {
			t.Errorf("temp directories left: %v", ents)
		}
	}

	t.Run("file", func(t *testing.T) {
		h := t.TempDir()
		var out bytes.Buffer
		im := newImporter(h, &out)
		if err := im.run(context.Background(), bundle, "sha256:"+sum, false); err != nil {
			t.Fatalf("%v\n%s", err, out.String())
		}
		check(t, h)
		if !strings.Contains(out.String(), "not yet trusted") || !strings.Contains(out.String(), "invisor status") {
			t.Errorf("output does not say the binaries are placed, not trusted:\n%s", out.String())
		}
		// Again: everything is already there; nothing is recorded.
		out.Reset()
		if err := im.run(context.Background(), bundle, "", false); err != nil || strings.Count(out.String(), "already in place") != 3 {
			t.Fatalf("second import: %v\n%s", err, out.String())
		}
		assertNoRecord(t, h, "v2")
		// A running node (the home lock) makes import refuse, naming the holder.
		lk, err := bundleLayout(t, h).Acquire(nil)
		if err != nil {
			t.Fatal(err)
		}
		err = im.run(context.Background(), bundle, "", false)
		lk.Release()
		var locked *home.LockedError
		if !errors.Is(err, errNodeRunning) || !errors.As(err, &locked) || locked.PID != os.Getpid() || !strings.Contains(err.Error(), "stop it first") {
			t.Fatalf("import under the lock: %v", err)
		}
	})

	t.Run("the node verifies the placed binaries against the plan in force", func(t *testing.T) {
		h := t.TempDir()
		if err := newImporter(h, io.Discard).run(context.Background(), bundle, "", false); err != nil {
			t.Fatal(err)
		}
		cfg := testStagingConfig(h)
		// The plan in force pins another binary: refused, the file left as it is, no record.
		_, err := staging.Fetch(context.Background(), cfg, pinnedPlan("v3/x", h2, 60), staging.NopLogger{})
		var mis *staging.PlacedMismatchError
		if !errors.As(err, &mis) || !errors.Is(err, staging.ErrNotTrusted) {
			t.Fatalf("mismatching plan: %v", err)
		}
		assertNoRecord(t, h, "v3/x")
		if got := fileSHA(t, upgradeBin(t, h, "v3/x")); got != h3 {
			t.Fatalf("the mismatching file was changed: %s", got)
		}
		// The plan in force pins the bundle's binary: recorded, and Open proves it.
		p := pinnedPlan("v2", h2, 30)
		inst, err := staging.Fetch(context.Background(), cfg, p, staging.NopLogger{})
		if err != nil || inst.Record.Source != home.SourcePlanChecksum || inst.SHA256 != h2 {
			t.Fatalf("plan pinning the bundle's binary: %+v, %v", inst.Record, err)
		}
		v, err := bundleLayout(t, h).Open(context.Background(), p)
		if err != nil {
			t.Fatal(err)
		}
		v.Close()
	})

	t.Run("wrong file checksum", func(t *testing.T) {
		h := t.TempDir()
		for _, pin := range []string{"sha256:" + strings.Repeat("0", 64), "sha512:" + strings.Repeat("0", 128)} {
			err := newImporter(h, io.Discard).run(context.Background(), bundle, pin, false)
			if !errors.Is(err, staging.ErrChecksumMismatch) || !strings.Contains(err.Error(), "--checksum says "+pin) {
				t.Fatalf("%s: err = %v", pin, err)
			}
			assertUntouched(t, h)
		}
		s512 := sha512.Sum512(raw)
		if err := newImporter(h, io.Discard).run(context.Background(), bundle, "sha512:"+hex.EncodeToString(s512[:]), false); err != nil {
			t.Fatalf("pinned with sha512: %v", err)
		}
		check(t, h)
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
			h := t.TempDir()
			err := newImporter(h, io.Discard).run(context.Background(), bad.url, "", false)
			if err == nil || !strings.Contains(err.Error(), bad.want) {
				t.Errorf("%s: err = %v, want %q", bad.url, err, bad.want)
			}
			assertUntouched(t, h)
		}
		h := t.TempDir()
		im := newImporter(h, io.Discard)
		im.cfg.MaxArchiveBytes = int64(len(raw)) - 1
		if err := im.run(context.Background(), u+"?checksum=sha256:"+sum, "", false); !errors.Is(err, staging.ErrTooLarge) {
			t.Errorf("oversize download: %v", err)
		}
		assertUntouched(t, h)

		var out bytes.Buffer
		if err := newImporter(h, &out).run(context.Background(), u+"?checksum=sha256:"+sum, "", false); err != nil {
			t.Fatalf("%v\n%s", err, out.String())
		}
		check(t, h)
		h = t.TempDir()
		out.Reset()
		if err := newImporter(h, &out).run(context.Background(), u, "", true); err != nil || !strings.Contains(out.String(), "not pinned") {
			t.Fatalf("--insecure-no-checksum: %v\n%s", err, out.String())
		}
		check(t, h)

		// Credentials and tokens in the URL stay out of what import prints and returns.
		secret := strings.Replace(u, "http://", "http://op:s3cret@", 1) + "?token=s3cret&checksum=sha256:"
		h = t.TempDir()
		out.Reset()
		if err := newImporter(h, &out).run(context.Background(), secret+sum, "", false); err != nil || strings.Contains(out.String(), "s3cret") ||
			!strings.Contains(out.String(), "from "+u+"?checksum=") {
			t.Fatalf("URL with credentials: %v\n%s", err, out.String())
		}
		check(t, h)
		for _, bad := range []string{secret + strings.Repeat("0", 64), strings.Replace(secret, "/"+filepath.Base(bundle), "/nope", 1) + sum} {
			err := newImporter(t.TempDir(), io.Discard).run(context.Background(), bad, "", false)
			if err == nil || strings.Contains(err.Error(), "s3cret") {
				t.Errorf("URL with credentials: err = %v", err)
			}
		}
	})

	t.Run("conflicts", func(t *testing.T) {
		// A different genesis binary: refused naming both hashes, nothing placed.
		h := t.TempDir()
		gen := bundleLayout(t, h).GenesisBin()
		copyFile(t, v3, gen)
		err := newImporter(h, io.Discard).run(context.Background(), bundle, "", false)
		if err == nil || !strings.Contains(err.Error(), h3) || !strings.Contains(err.Error(), h1) || !strings.Contains(err.Error(), "never overwritten") {
			t.Fatalf("different genesis: %v", err)
		}
		if _, err := os.Lstat(upgradeBin(t, h, "v2")); err == nil {
			t.Fatal("v2 placed despite the genesis conflict")
		}
		if fileSHA(t, gen) != h3 {
			t.Fatal("existing genesis binary changed")
		}

		// A different binary proven for v2: refused naming both hashes, record and file kept.
		h = t.TempDir()
		stageTrusted(t, h, "v2", v3, 30)
		rp, _ := bundleLayout(t, h).RecordPath("v2")
		recBefore, _ := os.ReadFile(rp)
		err = newImporter(h, io.Discard).run(context.Background(), bundle, "", false)
		if err == nil || !strings.Contains(err.Error(), h2) || !strings.Contains(err.Error(), h3) || !strings.Contains(err.Error(), "is recorded for plan") {
			t.Fatalf("different v2: %v", err)
		}
		if recAfter, _ := os.ReadFile(rp); !bytes.Equal(recBefore, recAfter) || fileSHA(t, upgradeBin(t, h, "v2")) != h3 {
			t.Fatal("the recorded v2 install was changed")
		}
		if _, err := os.Lstat(bundleLayout(t, h).GenesisBin()); err == nil {
			t.Fatal("genesis placed despite the v2 conflict")
		}

		// The same binary proven for v2: skipped, its record kept.
		h = t.TempDir()
		stageTrusted(t, h, "v2", v2, 30)
		var out bytes.Buffer
		if err := newImporter(h, &out).run(context.Background(), bundle, "", false); err != nil || !strings.Contains(out.String(), `upgrade "v2" already in place (recorded for plan "v2" at height 30)`) {
			t.Fatalf("same v2: %v\n%s", err, out.String())
		}

		// A different unrecorded file in the way.
		h = t.TempDir()
		copyFile(t, v3, upgradeBin(t, h, "v2"))
		err = newImporter(h, io.Discard).run(context.Background(), bundle, "", false)
		if err == nil || !strings.Contains(err.Error(), "a different file is in the way") || !strings.Contains(err.Error(), h2) || !strings.Contains(err.Error(), h3) {
			t.Fatalf("unrecorded different v2: %v", err)
		}
		if fileSHA(t, upgradeBin(t, h, "v2")) != h3 {
			t.Fatal("the file in the way was changed")
		}

		// The same file, unrecorded (placed by an earlier import): skipped.
		h = t.TempDir()
		copyFile(t, v2, upgradeBin(t, h, "v2"))
		out.Reset()
		if err := newImporter(h, &out).run(context.Background(), bundle, "", false); err != nil || !strings.Contains(out.String(), `upgrade "v2" already in place (placed, not yet trusted)`) {
			t.Fatalf("unrecorded same v2: %v\n%s", err, out.String())
		}
		assertNoRecord(t, h, "v2")

		// A record naming another sha256 without its binary.
		h = t.TempDir()
		stageTrusted(t, h, "v2", v3, 30)
		os.Remove(upgradeBin(t, h, "v2"))
		err = newImporter(h, io.Discard).run(context.Background(), bundle, "", false)
		if err == nil || !strings.Contains(err.Error(), "completion record") || !strings.Contains(err.Error(), h2) || !strings.Contains(err.Error(), h3) {
			t.Fatalf("record of another binary: %v", err)
		}

		// A symlink planted at the upgrade directory.
		h = t.TempDir()
		elsewhere := t.TempDir()
		os.MkdirAll(bundleLayout(t, h).UpgradesRoot(), 0o755)
		dir, _ := bundleLayout(t, h).UpgradeDir("v2")
		os.Symlink(elsewhere, dir)
		err = newImporter(h, io.Discard).run(context.Background(), bundle, "", false)
		if err == nil || !strings.Contains(err.Error(), dir+" is a symlink") {
			t.Fatalf("symlinked upgrade directory: %v", err)
		}
		if ents, _ := os.ReadDir(elsewhere); len(ents) != 0 {
			t.Fatalf("import wrote through the symlink: %v", ents)
		}
	})

	t.Run("disable recase", func(t *testing.T) {
		// The importing home keeps the case: the binary goes where its layout puts
		// the name, whatever the exporting home did.
		s := t.TempDir()
		copyFile(t, g, bundleLayout(t, s).GenesisBin())
		stageTrusted(t, s, "V2", v2, 30) // lower-cased: upgrades/v2
		b := filepath.Join(t.TempDir(), "b.tar.gz")
		if _, _, err := exportBundle(context.Background(), bundleLayout(t, s), b, "appd"); err != nil {
			t.Fatal(err)
		}
		h := t.TempDir()
		im := newImporter(h, io.Discard)
		im.cfg.DisableRecase = true
		if err := im.run(context.Background(), b, "", false); err != nil {
			t.Fatal(err)
		}
		l, _ := im.cfg.Layout()
		bin, _ := l.UpgradeBin("V2")
		if !strings.Contains(bin, string(filepath.Separator)+"V2"+string(filepath.Separator)) || fileSHA(t, bin) != h2 {
			t.Fatalf("%s: not placed", bin)
		}
		if _, err := os.Lstat(upgradeBin(t, h, "V2")); err == nil {
			t.Fatal("placed at the recased directory too")
		}
	})

	t.Run("export refusals", func(t *testing.T) {
		out := filepath.Join(t.TempDir(), "b.tar.gz")
		refused := func(t *testing.T, h string, want ...string) {
			t.Helper()
			_, _, err := exportBundle(context.Background(), bundleLayout(t, h), out, "appd")
			if err == nil {
				t.Fatal("exported")
			}
			for _, w := range want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("err = %v, want it to contain %q", err, w)
				}
			}
			if _, err := os.Stat(out); err == nil {
				t.Error("a refused export wrote the bundle")
			}
			if ents, _ := filepath.Glob(filepath.Join(filepath.Dir(out), ".*")); len(ents) != 0 {
				t.Errorf("refused export left %v", ents)
			}
		}
		t.Run("no genesis", func(t *testing.T) { refused(t, t.TempDir(), "no genesis binary") })

		fresh := func(t *testing.T) string {
			h := t.TempDir()
			copyFile(t, g, bundleLayout(t, h).GenesisBin())
			stageTrusted(t, h, "v2", v2, 30)
			return h
		}
		t.Run("unrecorded", func(t *testing.T) {
			h := fresh(t)
			copyFile(t, v3, upgradeBin(t, h, "v9"))
			dir, _ := bundleLayout(t, h).UpgradeDir("v9")
			refused(t, h, upgradeBin(t, h, "v9"), "refusing to export", "no completion record", "invisor status", "move "+dir)
		})
		t.Run("modified after it was recorded", func(t *testing.T) {
			h := fresh(t)
			bin := upgradeBin(t, h, "v2")
			b, _ := os.ReadFile(bin)
			b[len(b)/2] ^= 0xff
			os.WriteFile(bin, b, 0o755)
			refused(t, h, bin, "not the file its completion record says", h2)
		})
		t.Run("record in another directory", func(t *testing.T) {
			h := fresh(t)
			l := bundleLayout(t, h)
			copyFile(t, v2, filepath.Join(l.UpgradesRoot(), "v2b", "bin", testDaemon))
			rp, _ := l.RecordPath("v2")
			b, _ := os.ReadFile(rp)
			os.WriteFile(filepath.Join(l.UpgradesRoot(), "v2b", "bin", testDaemon+home.RecordSuffix), b, 0o644)
			refused(t, h, "v2b", `record is for plan "v2"`)
		})
		t.Run("earlier record format", func(t *testing.T) {
			h := fresh(t)
			l := bundleLayout(t, h)
			rec, _ := l.ReadRecord("v2")
			rec.Format, rec.Source = 1, "hand-placed"
			if err := l.WriteRecord(rec); err != nil {
				t.Fatal(err)
			}
			refused(t, h, "not a proof", `"hand-placed"`)
		})
	})
}

// ---- fuzzing ----

var fuzzDirRe = regexp.MustCompile(`^[^/\\\x00]+$`)

// FuzzParseManifest: parseManifest never panics, and a manifest it accepts names
// only safe, canonical archive paths: genesis/bin/<daemon> for the one genesis
// binary, else upgrades/<home.DirName(name)>/bin/<daemon>, which a home's layout
// maps inside its upgrades directory.
func FuzzParseManifest(f *testing.F) {
	f.Add(encManifest(goodManifest()))
	m := goodManifest()
	m.Binaries[1].Path = "upgrades/../../x/bin/appd"
	f.Add(encManifest(m))
	f.Add([]byte(`{"format":1,"daemon":"appd","binaries":[{"name":"..","path":"upgrades/../bin/appd","sha256":"` + strings.Repeat("a", 64) + `","size":1}]}`))
	f.Add([]byte(`{"format":1,"daemon":"..","binaries":[]}`))
	f.Add([]byte(`[{`))
	scratch := f.TempDir()
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := parseManifest(data)
		if err != nil {
			return
		}
		if err := home.ValidDaemonName(m.Daemon); err != nil {
			t.Fatalf("accepted daemon %q: %v", m.Daemon, err)
		}
		genesis := 0
		for _, b := range m.Binaries {
			if !filepath.IsLocal(b.Path) || path.Clean(b.Path) != b.Path {
				t.Fatalf("accepted path %q", b.Path)
			}
			if n := readerName(t, b.Path); n != b.Path {
				t.Fatalf("accepted path %q, which the reader calls %q", b.Path, n)
			}
			parts := strings.Split(b.Path, "/")
			if b.genesis() {
				genesis++
				if b.Name != genesisEntryName || b.Path != "genesis/bin/"+m.Daemon {
					t.Fatalf("accepted genesis entry %+v", b)
				}
				continue
			}
			if len(parts) != 4 || parts[0] != "upgrades" || parts[2] != "bin" || parts[3] != m.Daemon ||
				parts[1] == "." || parts[1] == ".." || !fuzzDirRe.MatchString(parts[1]) {
				t.Fatalf("accepted upgrade path %q", b.Path)
			}
			d0, _ := home.DirName(b.Name, false)
			d1, _ := home.DirName(b.Name, true)
			if parts[1] != d0 && parts[1] != d1 {
				t.Fatalf("accepted path %q for name %q (DirName %q / %q)", b.Path, b.Name, d0, d1)
			}
			for _, keep := range []bool{false, true} {
				l, err := home.New(scratch, m.Daemon, home.Options{DisableRecase: keep})
				if err != nil {
					t.Fatal(err)
				}
				bin, err := l.UpgradeBin(b.Name)
				if err != nil {
					continue
				}
				if rel, err := filepath.Rel(l.UpgradesRoot(), bin); err != nil || !filepath.IsLocal(rel) || strings.Count(rel, string(filepath.Separator)) != 2 {
					t.Fatalf("name %q is placed at %s, outside %s", b.Name, bin, l.UpgradesRoot())
				}
			}
		}
		if genesis > 1 {
			t.Fatalf("accepted %d genesis binaries", genesis)
		}
	})
}

// readerName is what staging's tar reader, as import uses it, calls an entry
// named name ("" if it refuses it).
func readerName(t *testing.T, name string) string {
	var tb bytes.Buffer
	tw := tar.NewWriter(&tb)
	if err := tw.WriteHeader(&tar.Header{Name: name, Typeflag: tar.TypeReg, Size: 1, Mode: 0o755, Format: tar.FormatPAX}); err != nil {
		t.Fatalf("%q: %v", name, err)
	}
	tw.Write([]byte{1})
	tw.Close()
	got := ""
	err := staging.WalkTar(context.Background(), staging.DefaultConfig(), "tar", &tb, func(f staging.TarFile) error {
		got = f.Name
		return nil
	})
	if err != nil {
		return ""
	}
	return got
}

// FuzzReadBundle: readBundle never panics and writes nothing but the flat
// bin-<i> files into the directory it is given; a bundle it accepts has every
// listed binary there with its manifest size and sha256.
func FuzzReadBundle(f *testing.F) {
	bin := []byte("\x7fELF some bytes")
	f.Add(makeBundle(f, []tarEnt{manifestEnt(f, entry("v2", bin), entry("genesis", []byte("g"))), {name: "upgrades/v2/bin/appd", body: bin}, {name: "genesis/bin/appd", body: []byte("g")}}))
	f.Add(makeBundle(f, []tarEnt{manifestEnt(f, entry("v2", bin)), {name: "../../evil", body: bin}}))
	f.Add(makeBundle(f, []tarEnt{manifestEnt(f, entry("v2", bin)), {name: "upgrades/v2/bin/appd", typ: tar.TypeSymlink, linkname: "/etc/passwd"}}))
	f.Add(makeBundle(f, []tarEnt{{name: "upgrades/", typ: tar.TypeDir}}))
	f.Add([]byte("not gzip"))
	cfg := staging.DefaultConfig()
	cfg.MaxArchiveBytes, cfg.MaxBinaryBytes, cfg.MaxArchiveEntries = 1<<20, 1<<18, 64
	nameRe := regexp.MustCompile(`^bin-[0-9]+$`)
	f.Fuzz(func(t *testing.T, data []byte) {
		root := t.TempDir()
		dir := filepath.Join(root, "unpacked")
		if err := os.Mkdir(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		m, bins, err := readBundle(context.Background(), cfg, bytes.NewReader(data), dir)
		if ents, _ := os.ReadDir(root); len(ents) != 1 || ents[0].Name() != "unpacked" {
			t.Fatalf("written beside the unpack directory: %v", ents)
		}
		ents, _ := os.ReadDir(dir)
		for _, e := range ents {
			if !e.Type().IsRegular() || !nameRe.MatchString(e.Name()) {
				t.Fatalf("unpacked %s (%v)", e.Name(), e.Type())
			}
		}
		if err != nil {
			return
		}
		if len(bins) != len(m.Binaries) || len(ents) != len(bins) {
			t.Fatalf("accepted a bundle with %d of %d binaries (%d files)", len(bins), len(m.Binaries), len(ents))
		}
		for _, b := range bins {
			if filepath.Dir(b.File) != dir {
				t.Fatalf("unpacked to %s", b.File)
			}
			body, err := os.ReadFile(b.File)
			if err != nil || int64(len(body)) != b.Size || hexSHA(body) != b.SHA256 {
				t.Fatalf("%s: %d bytes, sha256 %s, %v; manifest says %d, %s", b.File, len(body), hexSHA(body), err, b.Size, b.SHA256)
			}
		}
	})
}
