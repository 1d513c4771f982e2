package hook

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"

	abci "github.com/cometbft/cometbft/abci/types"

	storetypes "github.com/cosmos/cosmos-sdk/store/v2/types"
	sdk "github.com/cosmos/cosmos-sdk/types"
	"github.com/cosmos/cosmos-sdk/x/upgrade"
	upgradetypes "github.com/cosmos/cosmos-sdk/x/upgrade/types"
)

// SinkKey is the app-options key under which the process edge (the invisor
// start wiring) registers the Sink that Wrap hands plans to.
const SinkKey = "invisor.sink"

// Plan is the part of an upgrade plan invisor acts on.
type Plan struct {
	Name   string
	Height int64
	Info   string
}

// Sink receives what the watcher sees. Its methods run in the consensus path
// and must return at once, with one exception: Halted may hold the halted block
// when the process could not survive its halt error (block sync), until it
// replaces the process image (syscall.Exec); the block cannot go on anyway.
type Sink interface {
	// PlanChanged is called when the plan in force appears or changes (p != nil)
	// or vanishes (p == nil: cancelled or applied); height is the block in which
	// the watcher noticed it.
	PlanChanged(p *Plan, height int64)
	// Halted is called when x/upgrade stopped the chain at height for plan p
	// because this binary has no handler for it. It may not return (see above);
	// when it returns, the block's result is x/upgrade's error, unchanged.
	Halted(p Plan, height int64)
	// Height is called with the height of every block the watcher observes
	// (from the PreBlocker, and again from the EndBlocker when Install wired
	// both), before the plan is read, so the node knows how near the plan is
	// without asking CometBFT. It must return at once and must not allocate:
	// it runs in every block.
	Height(h int64)
}

// FailureSink is a Sink that also hears of a failed upgrade: the PreBlocker of
// the block at the plan's height returned an error that is not x/upgrade's halt
// (so this binary has the handler, and the handler, or what x/upgrade does
// around it, failed). The watcher type-asserts its Sink once, so a Sink without
// the method keeps working. UpgradeFailed runs in the consensus path, once per
// plan and watcher, and must return at once; the block's result stays err.
type FailureSink interface {
	UpgradeFailed(p Plan, height int64, err error)
}

// PlanSource is the part of the x/upgrade keeper the watcher reads.
type PlanSource interface {
	GetUpgradePlan(ctx context.Context) (upgradetypes.Plan, error)
	IsSkipHeight(height int64) bool
}

// Logger is satisfied by the SDK's logger.
type Logger interface {
	Info(msg string, keyVals ...any)
	Error(msg string, keyVals ...any)
}

// PlanWatcher wraps a PreBlocker and reports the upgrade plan to a Sink.
type PlanWatcher struct {
	src  PlanSource
	sink Sink
	fail FailureSink // sink, when it is one; nil otherwise
	log  Logger

	mu      sync.Mutex
	last    *Plan // plan last reported; nil before the first block or when none
	started bool
	halted  string // haltKey of the plan whose halt was reported
	failed  string // haltKey of the plan whose failure was reported
}

// NewPlanWatcher returns a watcher that reads plans from src and reports to sink.
func NewPlanWatcher(src PlanSource, sink Sink, log Logger) *PlanWatcher {
	fail, _ := sink.(FailureSink)
	return &PlanWatcher{src: src, sink: sink, fail: fail, log: log}
}

// Wrap returns a PreBlocker that runs next and then observes the plan. Its
// result is always exactly next's result.
func (w *PlanWatcher) Wrap(next sdk.PreBlocker) sdk.PreBlocker {
	return func(ctx sdk.Context, req *abci.RequestFinalizeBlock) (*sdk.ResponsePreBlock, error) {
		res, err := next(ctx, req)
		w.Observe(ctx, err)
		return res, err
	}
}

// Observe passes the block's height on and reads the plan after the block's
// PreBlocker ran with result preErr. It never panics and never writes state.
func (w *PlanWatcher) Observe(ctx sdk.Context, preErr error) {
	w.observeHeight(ctx.BlockHeight())
	defer w.recoverPanic()
	// A private gas meter: reading the plan must not change what the block consumed.
	readCtx := ctx.WithGasMeter(storetypes.NewInfiniteGasMeter())
	plan, err := w.src.GetUpgradePlan(readCtx)
	var cur *Plan
	switch {
	case err == nil:
		cur = &Plan{Name: plan.Name, Height: plan.Height, Info: plan.Info}
	case errors.Is(err, upgradetypes.ErrNoUpgradePlanFound):
	default:
		w.log.Error("invisor: cannot read the upgrade plan", "height", ctx.BlockHeight(), "err", err)
		return
	}
	height := ctx.BlockHeight()

	w.mu.Lock()
	changed := !w.started || !samePlan(w.last, cur)
	w.started, w.last = true, cur
	halt, failed := false, false
	if cur != nil && preErr != nil {
		// Only a failing block pays for this: the normal path allocates nothing more.
		isH := isHalt(plan, height, preErr, w.src)
		halt = isH && w.halted != haltKey(cur)
		if halt {
			w.halted = haltKey(cur)
		}
		failed = !isH && w.fail != nil && plan.ShouldExecute(height) && !w.src.IsSkipHeight(height) && w.failed != haltKey(cur)
		if failed {
			w.failed = haltKey(cur)
		}
	}
	w.mu.Unlock()

	if changed {
		w.sink.PlanChanged(cur, height)
	}
	if halt {
		w.sink.Halted(*cur, height)
	}
	if failed {
		w.fail.UpgradeFailed(*cur, height, preErr)
	}
}

// observeHeight hands h to the sink, with its own recovery: a failing Height
// must not keep the plan from being read.
func (w *PlanWatcher) observeHeight(h int64) {
	defer w.recoverPanic()
	w.sink.Height(h)
}

func (w *PlanWatcher) recoverPanic() {
	if r := recover(); r != nil {
		w.log.Error("invisor: recovered from a panic in the plan watcher; the block is unaffected", "panic", fmt.Sprint(r))
	}
}

// isHalt reports whether preErr is x/upgrade's halt for plan at height: the plan is
// due (Plan.ShouldExecute), the height is not skipped, and the error carries the
// very message x/upgrade builds for it (upgrade.BuildUpgradeNeededMsg), so every
// name governance can pass is recognised, whatever quotes, escapes or invisible
// characters it holds.
func isHalt(plan upgradetypes.Plan, height int64, preErr error, src PlanSource) bool {
	return plan.ShouldExecute(height) && !src.IsSkipHeight(height) &&
		strings.Contains(preErr.Error(), upgrade.BuildUpgradeNeededMsg(plan))
}

func haltKey(p *Plan) string { return fmt.Sprintf("%d/%s", p.Height, p.Name) }

func samePlan(a, b *Plan) bool {
	if a == nil || b == nil {
		return a == b
	}
	return *a == *b
}

// AppOptions is the SDK's servertypes.AppOptions.
type AppOptions interface{ Get(string) any }

// sinkFrom returns the Sink the process edge registered in appOpts under
// SinkKey, or nil when there is none (unit tests, `export`, a node started
// without invisor).
func sinkFrom(appOpts AppOptions) Sink {
	sink, _ := appOpts.Get(SinkKey).(Sink)
	return sink
}

// Wrap is the one line a chain's app.go needs:
//
//	app.SetPreBlocker(hook.Wrap(app.PreBlocker, app.UpgradeKeeper, appOpts, logger))
//
// It watches the plan for the Sink the process edge registered in appOpts under
// SinkKey; without one (unit tests, `export`, a node started without invisor)
// next is returned unchanged.
func Wrap(next sdk.PreBlocker, src PlanSource, appOpts AppOptions, log Logger) sdk.PreBlocker {
	reportSource(appOpts, src)
	sink := sinkFrom(appOpts)
	if sink == nil {
		return next
	}
	return NewPlanWatcher(src, sink, log).Wrap(next)
}

// WrapEndBlocker returns an EndBlocker that runs next and then observes the
// plan, so that a plan scheduled by this block's EndBlockers (gov executing a
// passed proposal) is noticed in the same block rather than the next one. Its
// result is always exactly next's result.
func (w *PlanWatcher) WrapEndBlocker(next sdk.EndBlocker) sdk.EndBlocker {
	return func(ctx sdk.Context) (sdk.EndBlock, error) {
		res, err := next(ctx)
		if err == nil {
			w.Observe(ctx, nil)
		}
		return res, err
	}
}

// App is the part of an SDK app that Install wires: its own PreBlocker and
// EndBlocker methods, and BaseApp's setters.
type App interface {
	PreBlocker(sdk.Context, *abci.RequestFinalizeBlock) (*sdk.ResponsePreBlock, error)
	EndBlocker(sdk.Context) (sdk.EndBlock, error)
	SetPreBlocker(sdk.PreBlocker)
	SetEndBlocker(sdk.EndBlocker)
}

// Install is the one line a chain's app.go needs, in place of its
// SetPreBlocker and SetEndBlocker calls:
//
//	hook.Install(app, app.UpgradeKeeper, appOpts, logger)
//
// It sets the app's PreBlocker and EndBlocker, wrapped by one PlanWatcher for
// the Sink the process edge registered in appOpts under SinkKey; without one
// (unit tests, `export`, a node started without invisor) they are set unwrapped.
func Install(app App, src PlanSource, appOpts AppOptions, log Logger) {
	reportSource(appOpts, src)
	sink := sinkFrom(appOpts)
	if sink == nil {
		app.SetPreBlocker(app.PreBlocker)
		app.SetEndBlocker(app.EndBlocker)
		return
	}
	w := NewPlanWatcher(src, sink, log)
	app.SetPreBlocker(w.Wrap(app.PreBlocker))
	app.SetEndBlocker(w.WrapEndBlocker(app.EndBlocker))
}
