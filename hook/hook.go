package hook

import (
	"context"
	"errors"
	"strings"

	abci "github.com/cometbft/cometbft/abci/types"

	storetypes "github.com/cosmos/cosmos-sdk/store/v2/types"
	sdk "github.com/cosmos/cosmos-sdk/types"
	"github.com/cosmos/cosmos-sdk/x/upgrade"
	upgradetypes "github.com/cosmos/cosmos-sdk/x/upgrade/types"

	"github.com/invisor/invisor/internal/planwatch"
)

// SinkKey is the app-options key under which the process edge (the invisor
// start wiring) registers the Sink that Wrap hands plans to.
const SinkKey = "invisor.sink"

// Plan is the part of an upgrade plan invisor acts on.
type Plan = planwatch.Plan

// Sink receives what the watcher sees (see planwatch.Sink): plan changes,
// x/upgrade's halt, and every block's height, in the consensus path.
type Sink = planwatch.Sink

// FailureSink is a Sink that also hears of a failed upgrade (see
// planwatch.FailureSink): the post-upgrade health gate's input.
type FailureSink = planwatch.FailureSink

// Logger is satisfied by the SDK's logger.
type Logger = planwatch.Logger

// PlanSource is the part of the x/upgrade keeper the watcher reads.
type PlanSource interface {
	GetUpgradePlan(ctx context.Context) (upgradetypes.Plan, error)
	IsSkipHeight(height int64) bool
}

// PlanWatcher wraps a PreBlocker and reports the upgrade plan to a Sink. The
// rules of what is reported and when are planwatch's (the same on every SDK
// line); this type reads the plan from SDK v0.55's x/upgrade and asks x/upgrade
// whether an error is its halt.
type PlanWatcher struct {
	src  PlanSource
	core *planwatch.Watcher
	log  Logger
}

// NewPlanWatcher returns a watcher that reads plans from src and reports to sink.
func NewPlanWatcher(src PlanSource, sink Sink, log Logger) *PlanWatcher {
	return &PlanWatcher{src: src, core: planwatch.New(sink, log), log: log}
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
	height := ctx.BlockHeight()
	w.core.Height(height)
	defer w.core.Recover()
	// A private gas meter: reading the plan must not change what the block consumed.
	readCtx := ctx.WithGasMeter(storetypes.NewInfiniteGasMeter())
	plan, err := w.src.GetUpgradePlan(readCtx)
	var cur *Plan
	switch {
	case err == nil:
		cur = &Plan{Name: plan.Name, Height: plan.Height, Info: plan.Info}
	case errors.Is(err, upgradetypes.ErrNoUpgradePlanFound):
	default:
		w.log.Error("invisor: cannot read the upgrade plan", "height", height, "err", err)
		return
	}
	w.core.Observe(height, cur, preErr, func() planwatch.Verdict { return judge(plan, height, preErr, w.src) })
}

// judge asks x/upgrade about a block at height that failed with preErr while
// plan was in force: whether the plan is due there (Plan.ShouldExecute, and the
// height is not skipped), and whether the error carries the very message
// x/upgrade builds for its halt (upgrade.BuildUpgradeNeededMsg), so every name
// governance can pass is recognised, whatever quotes, escapes or invisible
// characters it holds.
func judge(plan upgradetypes.Plan, height int64, preErr error, src PlanSource) planwatch.Verdict {
	due := plan.ShouldExecute(height) && !src.IsSkipHeight(height)
	return planwatch.Verdict{Due: due, Halt: due && strings.Contains(preErr.Error(), upgrade.BuildUpgradeNeededMsg(plan))}
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
