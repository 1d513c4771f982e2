package invisor

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	sdk "github.com/cosmos/cosmos-sdk/types"
	"github.com/cosmos/cosmos-sdk/x/upgrade"
	upgradetypes "github.com/cosmos/cosmos-sdk/x/upgrade/types"

	"github.com/invisor/invisor/hook"
	"github.com/invisor/invisor/internal/home"
	"github.com/invisor/invisor/relauncher"
	"github.com/invisor/invisor/staging"
)

// nameRuleAgrees checks, for one plan name, that the name rule (home.DirName),
// staging, the boot redirect and the halt recognition agree: a name the rule maps
// is staged into exactly that directory, exec'd from it by the boot redirect after
// the halt, and its halt is recognised; a name it cannot map is refused by
// staging, never makes the boot fail or exec anything, and its halt is still
// recognised (so the operator is told at the height).
func nameRuleAgrees(t *testing.T, name string, disableRecase bool) {
	t.Helper()
	l, err := home.New(t.TempDir(), "appd", home.Options{DisableRecase: disableRecase})
	if err != nil {
		t.Fatal(err)
	}
	plan := home.Plan{Name: name, Height: 7} // no info: the operator's placement is the source
	dir, mapErr := l.UpgradeDir(name)

	// Halt recognition, with x/upgrade's own message for the plan.
	sink := &haltSink{}
	w := hook.NewPlanWatcher(fixedSource{upgradetypes.Plan{Name: name, Height: 7}}, sink, nopHookLog{})
	w.Observe(sdk.Context{}.WithBlockHeight(7), errors.New(upgrade.BuildUpgradeNeededMsg(upgradetypes.Plan{Name: name, Height: 7})))
	if len(sink.halts) != 1 || sink.halts[0].Name != name {
		t.Fatalf("%q: halt not recognised (%v)", name, sink.halts)
	}

	// Staging: a binary placed where the rule says is staged there, or refused.
	// A small ELF that passes the preflight (`true version --home ...` exits 0).
	self := "/bin/true"
	if _, err := os.Stat(self); err != nil {
		t.Skip("no /bin/true to stand in for a chain binary")
	}
	cfg := staging.DefaultConfig()
	cfg.Home, cfg.DaemonName, cfg.AllowDownload, cfg.DisableRecase = l.Home(), "appd", false, disableRecase
	if mapErr == nil {
		bin, _ := l.UpgradeBin(name)
		os.MkdirAll(filepath.Dir(bin), 0o755)
		if _, err := home.CopyFile(self, bin, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	inst, ferr := staging.Fetch(ctx, cfg, plan, nil)
	switch {
	case mapErr != nil && !errors.Is(ferr, home.ErrBadName):
		t.Fatalf("%q: unmappable (%v), but staging said %v", name, mapErr, ferr)
	case mapErr == nil && (ferr != nil || filepath.Dir(filepath.Dir(inst.Path)) != dir):
		t.Fatalf("%q: the rule maps it to %s, staging gave %+v, %v", name, dir, inst, ferr)
	}

	// The boot redirect after the halt: execs the staged file, or runs as is.
	os.MkdirAll(l.DataDir(), 0o755)
	if err := os.WriteFile(l.UpgradeInfo(), mustJSON(t, plan), 0o644); err != nil {
		t.Fatal(err)
	}
	old := filepath.Join(t.TempDir(), "old-appd")
	os.WriteFile(old, []byte("the binary that halted"), 0o755)
	var execed string
	rcfg := relauncher.DefaultConfig()
	rcfg.Home, rcfg.DaemonName, rcfg.Backup, rcfg.RunPreUpgrade, rcfg.DisableRecase = l.Home(), "appd", false, false, disableRecase
	rl, err := relauncher.New(rcfg, nil, nil, relauncher.OS{
		Exec: func(argv0 string, _, _ []string) error {
			execed, _ = filepath.EvalSymlinks(argv0) // /proc/self/fd/N -> the file
			return nil
		},
		Executable: func() (string, error) { return old, nil },
		Args:       func() []string { return []string{"appd", "start"} },
		Environ:    func() []string { return nil },
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := rl.Boot(); err != nil {
		t.Fatalf("%q: boot failed: %v", name, err)
	}
	if mapErr != nil {
		if execed != "" {
			t.Fatalf("%q: unmappable, but the boot exec'd %s", name, execed)
		}
		return
	}
	if want, _ := filepath.EvalSymlinks(inst.Path); execed != want {
		t.Fatalf("%q: boot exec'd %q, want the staged %s", name, execed, want)
	}
}

// TestFaultNameRuleAgrees runs nameRuleAgrees over the names of FAULTS.md row 33.
func TestFaultNameRuleAgrees(t *testing.T) {
	for _, n := range []string{"v2", "V2-Upgrade", `V2/Ünï "q"`, "a/b", "..", ".", "nul\x00", "zero\u200bwidth",
		"\xff", strings.Repeat("x", 255), strings.Repeat("x", 256), strings.Repeat("/", 86), `back\slash`} {
		for _, dr := range []bool{false, true} {
			nameRuleAgrees(t, n, dr)
		}
	}
}

// FuzzNameRuleAgrees is the same invariant over any name.
func FuzzNameRuleAgrees(f *testing.F) {
	for _, s := range []string{"v2", "V2", "..", "a/b", "\xff", "%41"} {
		f.Add(s, false)
	}
	f.Fuzz(func(t *testing.T, name string, disableRecase bool) {
		if name == "" {
			return // x/upgrade refuses an empty name
		}
		nameRuleAgrees(t, name, disableRecase)
	})
}

// TestFaultMapNamesRealTests keeps docs/faults.md honest: every test or fuzz
// function it names exists in the tree.
func TestFaultMapNamesRealTests(t *testing.T) {
	doc, err := os.ReadFile("docs/faults.md")
	if err != nil {
		t.Fatal(err)
	}
	names := regexp.MustCompile("`((?:Test|Fuzz)[A-Za-z0-9_]+)`").FindAllStringSubmatch(string(doc), -1)
	if len(names) < 20 {
		t.Fatalf("docs/faults.md names only %d tests", len(names))
	}
	var src strings.Builder
	filepath.Walk(".", func(p string, fi os.FileInfo, err error) error {
		if err == nil && strings.HasSuffix(p, "_test.go") {
			b, _ := os.ReadFile(p)
			src.Write(b)
		}
		return nil
	})
	for _, m := range names {
		if !strings.Contains(src.String(), "func "+m[1]+"(") {
			t.Errorf("docs/faults.md names %s, which is no test in the tree", m[1])
		}
	}
}

type haltSink struct{ halts []hook.Plan }

func (*haltSink) PlanChanged(*hook.Plan, int64) {}
func (s *haltSink) Halted(p hook.Plan, _ int64) { s.halts = append(s.halts, p) }
func (*haltSink) Height(int64)                  {}

type fixedSource struct{ p upgradetypes.Plan }

func (f fixedSource) GetUpgradePlan(context.Context) (upgradetypes.Plan, error) { return f.p, nil }
func (fixedSource) IsSkipHeight(int64) bool                                     { return false }

type nopHookLog struct{}

func (nopHookLog) Info(string, ...any)  {}
func (nopHookLog) Error(string, ...any) {}

func mustJSON(t *testing.T, p home.Plan) []byte {
	t.Helper()
	b, err := json.Marshal(map[string]any{"name": p.Name, "height": p.Height, "info": p.Info})
	if err != nil {
		t.Fatal(err)
	}
	return b
}
