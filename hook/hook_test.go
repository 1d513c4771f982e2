package hook_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"

	abci "github.com/cometbft/cometbft/abci/types"

	"cosmossdk.io/core/header"

	"github.com/cosmos/cosmos-sdk/runtime"
	storetypes "github.com/cosmos/cosmos-sdk/store/v2/types"
	"github.com/cosmos/cosmos-sdk/testutil"
	sdk "github.com/cosmos/cosmos-sdk/types"
	"github.com/cosmos/cosmos-sdk/types/module"
	moduletestutil "github.com/cosmos/cosmos-sdk/types/module/testutil"
	authtypes "github.com/cosmos/cosmos-sdk/x/auth/types"
	govtypes "github.com/cosmos/cosmos-sdk/x/gov/types"
	"github.com/cosmos/cosmos-sdk/x/upgrade"
	"github.com/cosmos/cosmos-sdk/x/upgrade/keeper"
	upgradetypes "github.com/cosmos/cosmos-sdk/x/upgrade/types"

	"github.com/invisor/invisor/hook"
)

// recorder is a Sink that remembers every call.
type recorder struct {
	mu      sync.Mutex
	plans   []*hook.Plan
	blocks  []int64
	halts   []hook.Plan
	heights []int64
	fails   []failure
}

type failure struct {
	p      hook.Plan
	height int64
	err    error
}

func (r *recorder) UpgradeFailed(p hook.Plan, h int64, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.fails = append(r.fails, failure{p, h, err})
}

func (r *recorder) PlanChanged(p *hook.Plan, h int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.plans = append(r.plans, p)
	r.blocks = append(r.blocks, h)
}

func (r *recorder) Halted(p hook.Plan, _ int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.halts = append(r.halts, p)
}

func (r *recorder) Height(h int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.heights = append(r.heights, h)
}

// nopSink ignores everything: the benchmark measures the watcher alone.
type nopSink struct{}

func (nopSink) PlanChanged(*hook.Plan, int64) {}
func (nopSink) Halted(hook.Plan, int64)       {}
func (nopSink) Height(int64)                  {}

type logger struct{ errs []string }

func (l *logger) Info(string, ...any) {}
func (l *logger) Error(msg string, kv ...any) {
	l.errs = append(l.errs, fmt.Sprint(append([]any{msg}, kv...)...))
}

// chain is a real x/upgrade keeper on an in-memory store, driven block by block
// through the real x/upgrade PreBlocker wrapped by the watcher.
type chain struct {
	t      testing.TB
	ctx    sdk.Context
	k      *keeper.Keeper
	rec    *recorder
	log    *logger
	blocks sdk.PreBlocker
	height int64
}

func newChain(t testing.TB, skip map[int64]bool) *chain {
	key := storetypes.NewKVStoreKey(upgradetypes.StoreKey)
	tctx := testutil.DefaultContextWithDB(t, key, storetypes.NewTransientStoreKey("transient"))
	enc := moduletestutil.MakeTestEncodingConfig(upgrade.AppModuleBasic{})
	k := keeper.NewKeeper(skip, runtime.NewKVStoreService(key), enc.Codec, t.TempDir(), nil,
		authtypes.NewModuleAddress(govtypes.ModuleName).String())
	c := &chain{t: t, ctx: tctx.Ctx, k: k, rec: &recorder{}, log: &logger{}}
	inner := func(ctx sdk.Context, _ *abci.RequestFinalizeBlock) (*sdk.ResponsePreBlock, error) {
		res, err := upgrade.PreBlocker(ctx, k)
		if res == nil {
			return nil, err
		}
		return res.(*sdk.ResponsePreBlock), err
	}
	c.blocks = hook.NewPlanWatcher(k, c.rec, c.log).Wrap(inner)
	return c
}

// block runs the PreBlocker for the next height and returns its result.
func (c *chain) block() (*sdk.ResponsePreBlock, error) {
	c.height++
	ctx := c.ctx.WithBlockHeight(c.height).WithHeaderInfo(headerInfo(c.height)).WithGasMeter(storetypes.NewGasMeter(1_000_000))
	c.ctx = ctx
	return c.blocks(ctx, &abci.RequestFinalizeBlock{Height: c.height})
}

func (c *chain) schedule(name string, h int64, info string) {
	c.t.Helper()
	if err := c.k.ScheduleUpgrade(c.ctx, upgradetypes.Plan{Name: name, Height: h, Info: info}); err != nil {
		c.t.Fatal(err)
	}
}

func TestWatcherReportsNewChangedAndVanishedPlans(t *testing.T) {
	c := newChain(t, nil)
	if _, err := c.block(); err != nil { // height 1: startup, no plan
		t.Fatal(err)
	}
	c.schedule("v2", 10, "info-a")
	c.block() // 2: plan appears
	c.block() // 3: unchanged: no report
	c.schedule("v2", 12, "info-a")
	c.block() // 4: re-scheduled to another height
	if err := c.k.ClearUpgradePlan(c.ctx); err != nil {
		t.Fatal(err)
	}
	c.block() // 5: cancelled

	want := []string{"<nil>@1", "v2/10/info-a@2", "v2/12/info-a@4", "<nil>@5"}
	var got []string
	for i, p := range c.rec.plans {
		s := "<nil>"
		if p != nil {
			s = fmt.Sprintf("%s/%d/%s", p.Name, p.Height, p.Info)
		}
		got = append(got, fmt.Sprintf("%s@%d", s, c.rec.blocks[i]))
	}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("reports %v, want %v", got, want)
	}
	if len(c.rec.halts) != 0 {
		t.Fatalf("unexpected halts %v", c.rec.halts)
	}
}

func TestWatcherReportsHaltOnceAndKeepsTheError(t *testing.T) {
	c := newChain(t, nil)
	c.block()
	c.schedule("v2", 3, "")
	c.block() // 2
	_, err := c.block()
	if err == nil || !strings.Contains(err.Error(), `UPGRADE "v2" NEEDED at height: 3`) {
		t.Fatalf("PreBlocker error %v, want x/upgrade's halt error untouched", err)
	}
	if len(c.rec.halts) != 1 || c.rec.halts[0].Name != "v2" || c.rec.halts[0].Height != 3 {
		t.Fatalf("halts %v, want one for v2 at 3", c.rec.halts)
	}
	c.height-- // CometBFT retries the same height after a restart of consensus
	if _, err := c.block(); err == nil {
		t.Fatal("the retried block must fail again")
	}
	if len(c.rec.halts) != 1 {
		t.Fatalf("halt reported %d times, want once", len(c.rec.halts))
	}
}

func TestWatcherSkipHeightIsNoHalt(t *testing.T) {
	c := newChain(t, map[int64]bool{3: true})
	c.block()
	c.schedule("v2", 3, "")
	c.block()
	if _, err := c.block(); err != nil {
		t.Fatalf("skip height must pass: %v", err)
	}
	if len(c.rec.halts) != 0 {
		t.Fatalf("halt reported at a skip height: %v", c.rec.halts)
	}
	if last := c.rec.plans[len(c.rec.plans)-1]; last != nil {
		t.Fatalf("plan should have vanished after the skip, got %+v", last)
	}
}

// The wrapped PreBlocker's result must be exactly the inner result, with the
// same gas consumed, whatever the watcher does.
func TestWatcherDoesNotChangeTheBlock(t *testing.T) {
	for _, tc := range []struct {
		name  string
		sink  hook.Sink
		inner error
	}{
		{"panicking sink", panicSink{}, nil},
		{"panicking sink and inner error", panicSink{}, errors.New("inner failed")},
		{"recording sink", &recorder{}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newChain(t, nil)
			c.schedule("v2", 100, "")
			want := &sdk.ResponsePreBlock{ConsensusParamsChanged: true}
			inner := func(ctx sdk.Context, _ *abci.RequestFinalizeBlock) (*sdk.ResponsePreBlock, error) {
				ctx.GasMeter().ConsumeGas(7, "inner")
				return want, tc.inner
			}
			log := &logger{}
			wrapped := hook.NewPlanWatcher(c.k, tc.sink, log).Wrap(inner)
			ctx := c.ctx.WithBlockHeight(5).WithGasMeter(storetypes.NewGasMeter(1000))
			res, err := wrapped(ctx, &abci.RequestFinalizeBlock{Height: 5})
			if res != want || !errors.Is(err, tc.inner) {
				t.Fatalf("got (%v, %v), want (%v, %v)", res, err, want, tc.inner)
			}
			if used := ctx.GasMeter().GasConsumed(); used != 7 {
				t.Fatalf("block gas %d, want the inner 7 only", used)
			}
			if _, ok := tc.sink.(panicSink); ok && len(log.errs) == 0 {
				t.Fatal("a recovered panic must be logged")
			}
		})
	}
}

type panicSink struct{}

func (panicSink) PlanChanged(*hook.Plan, int64) { panic("sink exploded") }
func (panicSink) Halted(hook.Plan, int64)       { panic("sink exploded") }
func (panicSink) Height(int64)                  { panic("sink exploded") }

// heightPanicSink fails in Height only: the plan must still be reported.
type heightPanicSink struct{ *recorder }

func (heightPanicSink) Height(int64) { panic("height exploded") }

// The sink learns the height of every block, with or without a plan, whether
// the block halts or the plan cannot be read, and a failing Height does not
// keep the plan from being read.
func TestWatcherPassesEveryHeight(t *testing.T) {
	c := newChain(t, nil)
	c.block() // 1: no plan
	c.schedule("v2", 3, "")
	c.block() // 2
	if _, err := c.block(); err == nil {
		t.Fatal("no halt at 3")
	}
	if got := fmt.Sprint(c.rec.heights); got != "[1 2 3]" {
		t.Fatalf("heights %s, want [1 2 3]", got)
	}

	rec := &recorder{}
	broken := hook.NewPlanWatcher(failingSource{}, rec, &logger{})
	broken.Observe(sdk.Context{}.WithBlockHeight(9), nil)
	if got := fmt.Sprint(rec.heights); got != "[9]" {
		t.Fatalf("heights with an unreadable plan %s, want [9]", got)
	}

	log := &logger{}
	rec = &recorder{}
	w := hook.NewPlanWatcher(c.k, heightPanicSink{rec}, log)
	w.Observe(c.ctx.WithBlockHeight(2), nil)
	if len(rec.plans) != 1 || rec.plans[0] == nil || rec.plans[0].Name != "v2" || len(log.errs) != 1 {
		t.Fatalf("after a panic in Height: plans %v, logged %v; want the plan v2 and one logged panic", rec.plans, log.errs)
	}
}

type failingSource struct{}

func (failingSource) GetUpgradePlan(context.Context) (upgradetypes.Plan, error) {
	return upgradetypes.Plan{}, errors.New("store closed")
}
func (failingSource) IsSkipHeight(int64) bool { return false }

type opts map[string]any

func (o opts) Get(k string) any { return o[k] }

func TestWrapWithoutSinkReturnsNextUnchanged(t *testing.T) {
	called := false
	next := func(sdk.Context, *abci.RequestFinalizeBlock) (*sdk.ResponsePreBlock, error) {
		called = true
		return nil, nil
	}
	c := newChain(t, nil)
	w := hook.Wrap(next, c.k, opts{}, &logger{})
	_, _ = w(c.ctx, nil)
	if !called {
		t.Fatal("next not called")
	}
	rec := &recorder{}
	w = hook.Wrap(next, c.k, opts{hook.SinkKey: hook.Sink(rec)}, &logger{})
	_, _ = w(c.ctx.WithBlockHeight(1), nil)
	if len(rec.plans) != 1 {
		t.Fatalf("sink registered under SinkKey not used: %v", rec.plans)
	}
}

// BenchmarkWatcherPerBlock is the hook's cost per block with a real keeper and an
// in-memory store, with a plan in force that does not change (the common case).
func BenchmarkWatcherPerBlock(b *testing.B) {
	c := newChain(b, nil)
	c.schedule("v2", 1<<40, `{"binaries":{"linux/amd64":"https://example.com/x?checksum=sha256:00"}}`)
	w := hook.NewPlanWatcher(c.k, nopSink{}, &logger{})
	ctx := c.ctx.WithBlockHeight(10)
	w.Observe(ctx, nil)
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		w.Observe(ctx, nil)
	}
}

func headerInfo(h int64) header.Info { return header.Info{Height: h} }

// fakeApp records what Install sets.
type fakeApp struct {
	pre sdk.PreBlocker
	end sdk.EndBlocker
}

func (a *fakeApp) PreBlocker(sdk.Context, *abci.RequestFinalizeBlock) (*sdk.ResponsePreBlock, error) {
	return &sdk.ResponsePreBlock{}, nil
}
func (a *fakeApp) EndBlocker(sdk.Context) (sdk.EndBlock, error) { return sdk.EndBlock{}, nil }
func (a *fakeApp) SetPreBlocker(f sdk.PreBlocker)               { a.pre = f }
func (a *fakeApp) SetEndBlocker(f sdk.EndBlocker)               { a.end = f }

// A plan scheduled by this block's EndBlockers (gov) is reported in this block.
func TestInstallNoticesPlanInTheBlockThatSchedulesIt(t *testing.T) {
	c := newChain(t, nil)
	rec := &recorder{}
	app := &fakeApp{}
	hook.Install(app, c.k, opts{hook.SinkKey: hook.Sink(rec)}, &logger{})
	ctx := c.ctx.WithBlockHeight(7)
	if _, err := app.pre(ctx, nil); err != nil {
		t.Fatal(err)
	}
	c.schedule("v2", 50, "") // what gov's EndBlocker does when the proposal passes
	if _, err := app.end(ctx); err != nil {
		t.Fatal(err)
	}
	if n := len(rec.plans); n != 2 || rec.plans[1] == nil || rec.plans[1].Name != "v2" || rec.blocks[1] != 7 {
		t.Fatalf("reports %v at %v, want the plan v2 in block 7", rec.plans, rec.blocks)
	}
	if _, err := app.pre(ctx.WithBlockHeight(8), nil); err != nil {
		t.Fatal(err)
	}
	if len(rec.plans) != 2 {
		t.Fatalf("unchanged plan reported again: %v", rec.plans)
	}

	plain := &fakeApp{}
	hook.Install(plain, c.k, opts{}, &logger{})
	if plain.pre == nil || plain.end == nil {
		t.Fatal("without a sink Install must still set the app's own blockers")
	}
}

// TestFault33HaltRecognisedForEveryName drives the real x/upgrade PreBlocker to the
// halt for names that need escaping, quoting or case handling: the halt is
// recognised for each, with the plan exactly as governance passed it.
func TestFault33HaltRecognisedForEveryName(t *testing.T) {
	names := []string{
		"v2", "V2-Upgrade", `say "hi"`, `back\slash`, "a/b/../c", "zero\u200bwidth", "tab\there",
		"nul\x00byte", "\xff\xfe", "%2F", "Ünïcødé", strings.Repeat("long", 100), "%q", `"`, "..",
	}
	for _, name := range names {
		c := newChain(t, nil)
		c.block()
		c.schedule(name, 3, `{"binaries":{"any":"http://127.0.0.1/x?checksum=sha256:00"}}`)
		c.block()
		if _, err := c.block(); err == nil {
			t.Fatalf("%q: no halt error", name)
		}
		if len(c.rec.halts) != 1 || c.rec.halts[0].Name != name || c.rec.halts[0].Height != 3 {
			t.Errorf("%q: halts %+v, want one for the plan as passed", name, c.rec.halts)
		}
	}
}

// An error that is not x/upgrade's halt for the plan in force is no halt, even
// at the plan height.
func TestOtherErrorAtThePlanHeightIsNoHalt(t *testing.T) {
	rec := &recorder{}
	src := fixedPlan{upgradetypes.Plan{Name: "v2", Height: 3}}
	w := hook.NewPlanWatcher(src, rec, &logger{})
	ctx := sdk.Context{}.WithBlockHeight(3)
	w.Observe(ctx, errors.New(`UPGRADE "v3" NEEDED at height: 3: `))
	w.Observe(ctx, errors.New("some other failure"))
	if len(rec.halts) != 0 {
		t.Fatalf("halts %v", rec.halts)
	}
	w.Observe(ctx, errors.New(`UPGRADE "v2" NEEDED at height: 3: `))
	if len(rec.halts) != 1 {
		t.Fatalf("halts %v, want the real one", rec.halts)
	}
}

// plainSink is a Sink that knows nothing of failures: it keeps working.
type plainSink struct{ halts int }

func (*plainSink) PlanChanged(*hook.Plan, int64) {}
func (s *plainSink) Halted(hook.Plan, int64)     { s.halts++ }
func (*plainSink) Height(int64)                  {}

// nopFailSink is nopSink that also hears failures.
type nopFailSink struct{ nopSink }

func (nopFailSink) UpgradeFailed(hook.Plan, int64, error) {}

// A handler that fails at the plan height (this binary has it: no halt) is
// reported to a FailureSink once, with the plan, the height and the very
// error, and the block's result is that error, unchanged. An error before the
// height, at a skip height, or x/upgrade's halt is no failure; a Sink without
// UpgradeFailed keeps working; the normal path allocates nothing more.
func TestWatcherReportsAFailedUpgradeHandler(t *testing.T) {
	broke := errors.New("example-app: upgrade handler v2 fails in this build")
	c := newChain(t, nil)
	c.k.SetUpgradeHandler("v2", func(context.Context, upgradetypes.Plan, module.VersionMap) (module.VersionMap, error) {
		return nil, broke
	})
	c.block()
	c.schedule("v2", 3, "info")
	c.block() // 2
	_, err := c.block()
	if !errors.Is(err, broke) {
		t.Fatalf("PreBlocker error %v, want the handler's, unchanged", err)
	}
	if len(c.rec.fails) != 1 || c.rec.fails[0].p != (hook.Plan{Name: "v2", Height: 3, Info: "info"}) || c.rec.fails[0].height != 3 || !errors.Is(c.rec.fails[0].err, broke) {
		t.Fatalf("failures %+v, want one for v2 at 3 with the handler's error", c.rec.fails)
	}
	if len(c.rec.halts) != 0 {
		t.Fatalf("a failed handler reported as a halt: %v", c.rec.halts)
	}
	c.height-- // the same block again
	if _, err := c.block(); !errors.Is(err, broke) {
		t.Fatalf("retried block: %v", err)
	}
	if len(c.rec.fails) != 1 {
		t.Fatalf("failure reported %d times, want once", len(c.rec.fails))
	}

	// Not due, skipped, or the halt: no failure.
	rec := &recorder{}
	src := fixedPlan{upgradetypes.Plan{Name: "v2", Height: 3}}
	w := hook.NewPlanWatcher(src, rec, &logger{})
	w.Observe(sdk.Context{}.WithBlockHeight(2), errors.New("BINARY UPDATED BEFORE TRIGGER!"))
	w.Observe(sdk.Context{}.WithBlockHeight(3), errors.New(`UPGRADE "v2" NEEDED at height: 3: `))
	if len(rec.fails) != 0 || len(rec.halts) != 1 {
		t.Fatalf("failures %+v, halts %v; want none and the halt", rec.fails, rec.halts)
	}
	skip := newChain(t, map[int64]bool{3: true})
	skipped := &recorder{}
	hook.NewPlanWatcher(skip.k, skipped, &logger{}).Observe(func() sdk.Context {
		skip.schedule("v2", 3, "")
		return skip.ctx.WithBlockHeight(3)
	}(), errors.New("another module failed"))
	if len(skipped.fails) != 0 {
		t.Fatalf("a failure reported at a skip height: %+v", skipped.fails)
	}

	plain := &plainSink{}
	pw := hook.NewPlanWatcher(src, plain, &logger{})
	pw.Observe(sdk.Context{}.WithBlockHeight(3), broke)
	pw.Observe(sdk.Context{}.WithBlockHeight(3), errors.New(`UPGRADE "v2" NEEDED at height: 3: `))
	if plain.halts != 1 {
		t.Fatalf("a Sink without UpgradeFailed: %d halts, want 1", plain.halts)
	}

	n := newChain(t, nil)
	n.schedule("v2", 1<<40, "")
	ctx := n.ctx.WithBlockHeight(10)
	without, with := hook.NewPlanWatcher(n.k, nopSink{}, &logger{}), hook.NewPlanWatcher(n.k, nopFailSink{}, &logger{})
	without.Observe(ctx, nil)
	with.Observe(ctx, nil)
	a0 := testing.AllocsPerRun(50, func() { without.Observe(ctx, nil) })
	a1 := testing.AllocsPerRun(50, func() { with.Observe(ctx, nil) })
	if a1 > a0 {
		t.Errorf("a FailureSink costs %v allocations per block more (%v, %v)", a1-a0, a1, a0)
	}
}

type fixedPlan struct{ p upgradetypes.Plan }

func (f fixedPlan) GetUpgradePlan(context.Context) (upgradetypes.Plan, error) { return f.p, nil }
func (fixedPlan) IsSkipHeight(int64) bool                                     { return false }
