package invisor

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/invisor/invisor/staging"
)

// TestMain lets the test binary stand in for a staged chain binary: staging's
// preflight runs `<bin> version`.
func TestMain(m *testing.M) {
	if len(os.Args) == 2 && os.Args[1] == "version" {
		fmt.Println("v-test")
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// stagedHome stages a copy of the test binary, with tail appended, for plan
// under a fresh home.
func stagedHome(t *testing.T, plan staging.Plan, tail ...byte) (home string, planned staging.Plan) {
	t.Helper()
	home = t.TempDir()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	bin := staging.BinPath(home, "appd", plan.Name)
	if err := os.MkdirAll(filepath.Dir(bin), 0o755); err != nil {
		t.Fatal(err)
	}
	in, err := os.Open(self)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.OpenFile(bin, os.O_CREATE|os.O_WRONLY, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if _, err := out.Write(tail); err != nil {
		t.Fatal(err)
	}
	out.Close()
	sum, err := staging.FileSHA256(bin)
	if err != nil {
		t.Fatal(err)
	}
	info, _ := json.Marshal(map[string]any{"binaries": map[string]string{
		runtime.GOOS + "/" + runtime.GOARCH: "http://127.0.0.1:9/appd?checksum=sha256:" + sum}})
	plan.Info = string(info)
	cfg := staging.DefaultConfig()
	cfg.Home, cfg.DaemonName, cfg.AllowDownload = home, "appd", false
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := staging.Fetch(ctx, cfg, plan, nil); err != nil {
		t.Fatal(err)
	}
	return home, plan
}

func writeUpgradeInfo(t *testing.T, home string, p staging.Plan) {
	t.Helper()
	b, _ := json.Marshal(map[string]any{"name": p.Name, "height": p.Height, "info": p.Info})
	if err := os.MkdirAll(filepath.Join(home, "data"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(home, "data", "upgrade-info.json"), b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestPlanVerifier(t *testing.T) {
	home, plan := stagedHome(t, staging.Plan{Name: "v2", Height: 40})
	v := newPlanVerifier(home, "appd")

	if _, err := v.Trusted("v2"); err == nil || !strings.Contains(err.Error(), "has not halted") {
		t.Fatalf("before the halt: %v, want a refusal", err)
	}
	if _, err := v.preverify(plan); err != nil {
		t.Fatal(err)
	}
	writeUpgradeInfo(t, home, plan)
	if _, ok := v.cached(plan); !ok {
		t.Fatal("the preverified binary is not used at the halt")
	}
	if b, err := v.Trusted("v2"); err != nil || b.Path != staging.BinPath(home, "appd", "v2") {
		t.Fatalf("at the halt: %+v, %v", b, err)
	}

	// Another plan of the same name (replaced by governance): not trusted.
	other := plan
	other.Info = strings.Replace(plan.Info, "127.0.0.1:9", "127.0.0.1:10", 1)
	writeUpgradeInfo(t, home, other)
	if _, err := v.Trusted("v2"); err == nil {
		t.Fatal("a binary staged for a replaced plan is trusted")
	}

	// Modified after the preverification: the stamp fails, the full check refuses.
	writeUpgradeInfo(t, home, plan)
	time.Sleep(10 * time.Millisecond)
	f, err := os.OpenFile(staging.BinPath(home, "appd", "v2"), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.Write([]byte("tampered"))
	f.Close()
	if _, ok := v.cached(plan); ok {
		t.Fatal("a modified binary passes the stamp check")
	}
	if _, err := v.Trusted("v2"); err == nil {
		t.Fatal("a modified binary is trusted")
	}
}

// preverify marks the binary able to await its pre-upgrade only if it carries
// the capability token; a full verification at the halt never does.
func TestPlanVerifierAwaitsPreUpgrade(t *testing.T) {
	// Built at run time: a literal would put the token into this test binary,
	// which does not link relauncher.AwaitPreUpgrade (nothing here calls Execute).
	token := strings.Join([]string{"invisor-awaits", "pre-upgrade/1"}, "-")
	for _, tc := range []struct {
		name string
		tail string
		want bool
	}{{"without the token", "", false}, {"with the token", "\x00" + token + "\x00", true}} {
		t.Run(tc.name, func(t *testing.T) {
			home, plan := stagedHome(t, staging.Plan{Name: "v2", Height: 40}, []byte(tc.tail)...)
			v := newPlanVerifier(home, "appd")
			b, err := v.preverify(plan)
			if err != nil || b.AwaitsPreUpgrade != tc.want {
				t.Fatalf("preverify: %+v %v, want AwaitsPreUpgrade %v", b, err, tc.want)
			}
			writeUpgradeInfo(t, home, plan)
			if b, err := v.Trusted("v2"); err != nil || b.AwaitsPreUpgrade != tc.want {
				t.Fatalf("at the halt: %+v %v", b, err)
			}
			v.forget()
			if b, err := v.Trusted("v2"); err != nil || b.AwaitsPreUpgrade {
				t.Fatalf("full verification: %+v %v, want AwaitsPreUpgrade false", b, err)
			}
		})
	}
}
