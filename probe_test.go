package invisor

import (
	"bytes"
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

	dbm "github.com/cosmos/cosmos-db"

	"cosmossdk.io/log/v2"

	servertypes "github.com/cosmos/cosmos-sdk/server/types"
	upgradetypes "github.com/cosmos/cosmos-sdk/x/upgrade/types"

	"github.com/invisor/invisor/hook"
	"github.com/invisor/invisor/internal/home"
	"github.com/invisor/invisor/internal/probe"
	"github.com/invisor/invisor/relauncher"
	"github.com/invisor/invisor/staging"
)

// envSilent makes the test binary, standing in for a staged chain binary, not
// answer the probe (a binary that does not link invisor).
const envSilent = "INVISOR_TEST_SILENT"

// TestMain lets the test binary stand in for a staged chain binary: staging's
// preflight runs `<bin> version`, and its probe runs it with INVISOR_PROBE=1,
// which this binary answers exactly as Execute does.
func TestMain(m *testing.M) {
	if len(os.Args) >= 2 && os.Args[1] == "version" {
		fmt.Println("v-test")
		os.Exit(0)
	}
	if os.Getenv(probe.Env) != "" { // staging's probe runs the staged copy with no arguments
		if os.Getenv(envSilent) != "" {
			// A binary without invisor: it prints its usage and exits, as a cobra root does.
			fmt.Println("Usage:\n  appd [command]")
			os.Exit(0)
		}
		if _, err := answerProbe(os.Environ(), Options{DaemonName: "appd"}, os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// stageSelf stages a copy of the test binary for plan under a fresh home the
// way a node does (staging.Fetch: checksum, preflight, probe, record).
func stageSelf(t *testing.T, plan staging.Plan) (home.Layout, staging.Plan) {
	t.Helper()
	l, err := home.New(t.TempDir(), "appd", home.Options{})
	if err != nil {
		t.Fatal(err)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	bin, _ := l.UpgradeBin(plan.Name)
	if err := os.MkdirAll(filepath.Dir(bin), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, data, 0o755); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(data)
	info, _ := json.Marshal(map[string]any{"binaries": map[string]string{
		runtime.GOOS + "/" + runtime.GOARCH: "http://127.0.0.1:9/appd?checksum=sha256:" + hex.EncodeToString(sum[:])}})
	plan.Info = string(info)
	cfg := staging.DefaultConfig()
	cfg.Home, cfg.DaemonName, cfg.AllowDownload = l.Home(), "appd", false
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if _, err := staging.Fetch(ctx, cfg, plan, nil); err != nil {
		t.Fatal(err)
	}
	return l, plan
}

// A staged binary that answers the probe gets the overlapped pre-upgrade; one
// that does not gets the sequential order. The answer is the staged file's own,
// kept in its record; nothing is scanned.
func TestStagedBinaryAnswerDecidesTheOverlap(t *testing.T) {
	for _, silent := range []bool{false, true} {
		t.Run(fmt.Sprintf("silent=%v", silent), func(t *testing.T) {
			if silent {
				t.Setenv(envSilent, "1")
			}
			l, plan := stageSelf(t, staging.Plan{Name: "v2", Height: 40})
			rec, err := l.ReadRecord("v2")
			if err != nil {
				t.Fatal(err)
			}
			if (rec.Probe != nil) == silent {
				t.Fatalf("record probe answer %+v for a binary that answers=%v", rec.Probe, !silent)
			}
			b, err := relauncher.LayoutVerifier(l).Verify(context.Background(), plan)
			if err != nil {
				t.Fatal(err)
			}
			defer b.Close()
			if b.AwaitsPreUpgrade == silent {
				t.Fatalf("AwaitsPreUpgrade = %v for a binary that answers=%v", b.AwaitsPreUpgrade, !silent)
			}
			// Another plan of the same name (replaced by governance): not trusted.
			other := plan
			other.Info = strings.Replace(plan.Info, "127.0.0.1:9", "127.0.0.1:10", 1)
			if _, err := relauncher.LayoutVerifier(l).Verify(context.Background(), other); !errors.Is(err, home.ErrNotTrusted) {
				t.Fatalf("a binary staged for a replaced plan: %v", err)
			}
		})
	}
}

// fakeKeeper is the upgrade keeper's HasHandler.
type fakeKeeper map[string]bool

func (k fakeKeeper) GetUpgradePlan(context.Context) (upgradetypes.Plan, error) {
	return upgradetypes.Plan{}, upgradetypes.ErrNoUpgradePlanFound
}
func (k fakeKeeper) IsSkipHeight(int64) bool     { return false }
func (k fakeKeeper) HasHandler(name string) bool { return k[name] }

func TestProbeAnswersHandlersThroughTheAppConstructor(t *testing.T) {
	var gotHome string
	newApp := func(_ log.Logger, _ dbm.DB, o servertypes.AppOptions) servertypes.Application {
		gotHome, _ = o.Get("home").(string)
		// What hook.Install does in app.go during construction.
		if f, ok := o.Get(hook.ProbeKey).(func(hook.PlanSource)); ok {
			f(fakeKeeper{"v2": true})
		}
		return nil
	}
	var out bytes.Buffer
	env := append([]string{"PATH=/bin"}, probe.RequestEnv([]string{"v2", "v3"})...)
	answered, err := answerProbe(env, Options{DaemonName: "appd", NewApp: newApp}, &out)
	if !answered || err != nil {
		t.Fatalf("answered %v, %v", answered, err)
	}
	a, err := probe.Parse(out.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	if has, known := a.HasHandler("v2"); !has || !known {
		t.Errorf("v2: %v %v", has, known)
	}
	if has, known := a.HasHandler("v3"); has || !known {
		t.Errorf("v3: %v %v", has, known)
	}
	if !a.Speaks(probe.ProtocolAwaitPreUpgrade) {
		t.Errorf("protocols %v", a.Protocols)
	}
	if gotHome == "" {
		t.Error("the app was built without a scratch home")
	} else if _, err := os.Stat(gotHome); !os.IsNotExist(err) {
		t.Errorf("scratch home %s left behind (%v)", gotHome, err)
	}

	// A constructor that panics, or a chain that does not hand the keeper over:
	// handlers unknown, never "missing".
	for name, na := range map[string]servertypes.AppCreator{
		"panics":    func(log.Logger, dbm.DB, servertypes.AppOptions) servertypes.Application { panic("needs a real home") },
		"no keeper": func(log.Logger, dbm.DB, servertypes.AppOptions) servertypes.Application { return nil },
	} {
		out.Reset()
		if _, err := answerProbe(env, Options{DaemonName: "appd", NewApp: na}, &out); err != nil {
			t.Fatal(err)
		}
		a, err := probe.Parse(out.Bytes())
		if err != nil {
			t.Fatal(err)
		}
		if _, known := a.HasHandler("v2"); known {
			t.Errorf("%s: handler reported as known", name)
		}
	}
	// Not asked: no answer, Execute goes on.
	if answered, _ := answerProbe([]string{"PATH=/bin"}, Options{}, &out); answered {
		t.Error("answered without a request")
	}
}
