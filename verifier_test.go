package invisor

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/invisor/invisor/internal/home"
	"github.com/invisor/invisor/staging"
)

// TestMain lets the test binary stand in for a staged chain binary: staging's
// preflight runs `<bin> version`.
func TestMain(m *testing.M) {
	if len(os.Args) >= 2 && os.Args[1] == "version" {
		fmt.Println("v-test")
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// stagedHome stages a copy of the test binary, with tail appended, for plan
// under a fresh home, and returns the layout and the plan with its info.
func stagedHome(t *testing.T, plan staging.Plan, tail ...byte) (home.Layout, staging.Plan) {
	t.Helper()
	l, err := home.New(t.TempDir(), "appd", home.Options{})
	if err != nil {
		t.Fatal(err)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	bin, _ := l.UpgradeBin(plan.Name)
	if err := os.MkdirAll(filepath.Dir(bin), 0o755); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, append(data, tail...), 0o755); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(append(data, tail...))
	info, _ := json.Marshal(map[string]any{"binaries": map[string]string{
		runtime.GOOS + "/" + runtime.GOARCH: "http://127.0.0.1:9/appd?checksum=sha256:" + hex.EncodeToString(sum[:])}})
	plan.Info = string(info)
	cfg := staging.DefaultConfig()
	cfg.Home, cfg.DaemonName, cfg.AllowDownload = l.Home(), "appd", false
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := staging.Fetch(ctx, cfg, plan, nil); err != nil {
		t.Fatal(err)
	}
	return l, plan
}

func TestPlanVerifier(t *testing.T) {
	l, plan := stagedHome(t, staging.Plan{Name: "v2", Height: 40})
	v := newPlanVerifier(l)
	ctx := context.Background()
	b, err := v.Verify(ctx, plan)
	if err != nil {
		t.Fatal(err)
	}
	if want, _ := l.UpgradeBin("v2"); b.Verified.Path != want || b.Verified.Rehashed {
		t.Fatalf("Verify: %s rehashed=%v", b.Verified.Path, b.Verified.Rehashed)
	}
	b.Close()

	// Another plan of the same name (replaced by governance): not trusted.
	other := plan
	other.Info = strings.Replace(plan.Info, "127.0.0.1:9", "127.0.0.1:10", 1)
	if _, err := v.Verify(ctx, other); !errors.Is(err, home.ErrNotTrusted) {
		t.Fatalf("a binary staged for a replaced plan: %v", err)
	}
	// Modified after staging: refused.
	bin, _ := l.UpgradeBin("v2")
	f, err := os.OpenFile(bin, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.Write([]byte("tampered"))
	f.Close()
	if _, err := v.Verify(ctx, plan); !errors.Is(err, home.ErrChanged) {
		t.Fatalf("a modified binary: %v", err)
	}
}

// The scan marks the binary able to await its pre-upgrade only if it carries
// the capability token, and only for the very file version it scanned.
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
			l, plan := stagedHome(t, staging.Plan{Name: "v2", Height: 40}, []byte(tc.tail)...)
			v := newPlanVerifier(l)
			ctx := context.Background()
			awaits, err := v.scan(ctx, plan)
			if err != nil || awaits != tc.want {
				t.Fatalf("scan: %v %v, want AwaitsPreUpgrade %v", awaits, err, tc.want)
			}
			if b, err := v.Verify(ctx, plan); err != nil || b.AwaitsPreUpgrade != tc.want {
				t.Fatalf("at the halt: %+v %v", b, err)
			} else {
				b.Close()
			}
			v.forget()
			if b, err := v.Verify(ctx, plan); err != nil || b.AwaitsPreUpgrade {
				t.Fatalf("without a scan: %+v %v, want AwaitsPreUpgrade false", b, err)
			} else {
				b.Close()
			}
		})
	}
}
