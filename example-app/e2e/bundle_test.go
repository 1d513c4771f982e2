package e2e

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/invisor/invisor/example-app/localnet"
)

// TestBundleExportImport builds a home with v1 as its genesis binary and v2, v3
// staged by `invisor stage --file` (node never started), exports it with
// `invisor export`, and imports the bundle into fresh `exampled init` homes, from
// the file and over HTTP with ?checksum=: the upgrades must be trusted with the
// right hashes and the genesis binary must be v1. No chain runs.
func TestBundleExportImport(t *testing.T) {
	t.Parallel() // a one-node chain that mostly waits for blocks: runs beside another (make test-e2e: -parallel 2)
	dir := builds(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	v1, v2, v3 := filepath.Join(dir, "exampled-v1"), filepath.Join(dir, "exampled-v2"), filepath.Join(dir, "exampled-v3")
	sums := map[string]string{}
	for name, bin := range map[string]string{"v1": v1, "v2": v2, "v3": v3} {
		s, err := localnet.SHA256File(bin)
		if err != nil {
			t.Fatal(err)
		}
		sums[name] = s
	}
	work := t.TempDir()
	invisor := func(t *testing.T, args ...string) (string, error) {
		t.Helper()
		out, errOut, err := run(ctx, v1, nil, append([]string{"invisor"}, args...)...)
		return out + errOut, err
	}

	// The source home: initialised, never started; the genesis binary is what the
	// first start would copy there.
	src := filepath.Join(work, "src")
	if _, err := localnet.NewSingle(ctx, v1, src, localnet.Settings{ChainID: "invisor-bundle-1"}); err != nil {
		t.Fatal(err)
	}
	gen := filepath.Join(src, "cosmovisor", "genesis", "bin", "exampled")
	b, err := os.ReadFile(v1)
	if err != nil {
		t.Fatal(err)
	}
	os.MkdirAll(filepath.Dir(gen), 0o755)
	if err := os.WriteFile(gen, b, 0o755); err != nil {
		t.Fatal(err)
	}
	// A home that went through both upgrades: at each halt x/upgrade wrote the
	// plan into data/upgrade-info.json, and the binary staged then was recorded
	// for that plan (only the plan in force can confirm a binary).
	for _, up := range []struct {
		name, bin string
		height    int64
	}{{"v2", v2, 20}, {"v3", v3, 40}} {
		info := localnet.PlanInfo(runtime.GOOS, runtime.GOARCH, "http://127.0.0.1:9/"+up.name, sums[up.name])
		ui, _ := json.Marshal(map[string]any{"name": up.name, "height": up.height, "info": info})
		if err := os.WriteFile(filepath.Join(src, "data", "upgrade-info.json"), ui, 0o644); err != nil {
			t.Fatal(err)
		}
		if out, err := invisor(t, "stage", up.name, "--file", up.bin, "--home", src); err != nil || !strings.Contains(out, "operator-file-checksum") {
			t.Fatalf("stage %s at its halt: %v\n%s", up.name, err, out)
		}
	}
	os.Remove(filepath.Join(src, "data", "upgrade-info.json"))

	www := filepath.Join(work, "www")
	os.MkdirAll(www, 0o755)
	bundle := filepath.Join(www, "bundle.tar.gz")
	out, err := invisor(t, "export", bundle, "--home", src)
	if err != nil {
		t.Fatalf("export: %v\n%s", err, out)
	}
	t.Logf("export:\n%s", out)
	bsum, err := localnet.SHA256File(bundle)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "?checksum=sha256:"+bsum) {
		t.Errorf("export does not print the checksum to pin the bundle with:\n%s", out)
	}

	fresh := func(t *testing.T, name string) string {
		t.Helper()
		home := filepath.Join(work, name)
		if _, errOut, err := run(ctx, v1, nil, "init", name, "--chain-id", "invisor-bundle-1", "--home", home); err != nil {
			t.Fatalf("init: %v\n%s", err, errOut)
		}
		return home
	}
	check := func(t *testing.T, home string) {
		t.Helper()
		// Placed, not recorded: a bundle is unauthenticated, so each binary is
		// verified against its plan when the node has that plan in force.
		for _, name := range []string{"v2", "v3"} {
			got, err := localnet.SHA256File(localnet.StagedBin(home, name))
			if err != nil || got != sums[name] {
				t.Errorf("%s after import: sha256 %s, %v; want %s", name, got, err, sums[name])
			}
			if _, _, ok := localnet.Staged(home, name); ok {
				t.Errorf("%s: import wrote a completion record; only the plan in force may", name)
			}
		}
		got, err := localnet.SHA256File(filepath.Join(home, "cosmovisor", "genesis", "bin", "exampled"))
		if err != nil || got != sums["v1"] {
			t.Errorf("genesis binary: sha256 %s, %v; want v1's %s", got, err, sums["v1"])
		}
		if out, err := invisor(t, "verify", "--home", home); err != nil || strings.Count(out, "not verified against a plan yet") != 2 {
			t.Errorf("verify after import: %v\n%s", err, out)
		}
	}

	t.Run("file", func(t *testing.T) {
		home := fresh(t, "dst-file")
		out, err := invisor(t, "import", bundle, "--home", home)
		if err != nil {
			t.Fatalf("import: %v\n%s", err, out)
		}
		t.Logf("import:\n%s", out)
		check(t, home)
		// Running it again changes nothing.
		if out, err := invisor(t, "import", bundle, "--home", home); err != nil || strings.Count(out, "already") != 3 {
			t.Errorf("second import: %v\n%s", err, out)
		}
	})

	t.Run("url", func(t *testing.T) {
		srv, err := localnet.ServeDir(www)
		if err != nil {
			t.Fatal(err)
		}
		defer srv.Close()
		u := srv.URL + "/bundle.tar.gz"
		home := fresh(t, "dst-url")
		// Unpinned and wrongly pinned URLs are refused and leave nothing behind.
		for _, bad := range []string{u, u + "?checksum=sha256:" + strings.Repeat("0", 64)} {
			if out, err := invisor(t, "import", bad, "--home", home); err == nil || !strings.Contains(out, "checksum") {
				t.Errorf("import %s: %v\n%s", bad, err, out)
			}
		}
		if _, err := os.Lstat(filepath.Join(home, "cosmovisor", "genesis", "bin", "exampled")); err == nil {
			t.Fatal("a refused import placed the genesis binary")
		}
		out, err := invisor(t, "import", u+"?checksum=sha256:"+bsum, "--home", home)
		if err != nil {
			t.Fatalf("import over http: %v\n%s", err, out)
		}
		check(t, home)
	})
}
