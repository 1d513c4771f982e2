package hook

import (
	"errors"

	abci "github.com/cometbft/cometbft/abci/types"

	"github.com/cosmos/cosmos-sdk/baseapp"
	sdk "github.com/cosmos/cosmos-sdk/types"
)

// RuntimeApp is the part of a depinject app built on the SDK's runtime.App
// that Load wires. *runtime.App has it, and so has any app struct embedding
// it: PreBlocker and EndBlocker are runtime.App's own (the module manager's),
// the rest is promoted from BaseApp.
type RuntimeApp interface {
	App
	Load(loadLatest bool) error
	LoadLatestVersion() error
	GetBaseApp() *baseapp.BaseApp
}

// Load is the one line a depinject app (app_di.go) needs, in place of its
// app.Load(loadLatest) call:
//
//	if err := hook.Load(app, app.UpgradeKeeper, appOpts, logger, loadLatest); err != nil {
//		panic(err)
//	}
//
// Install cannot do this job for such an app: runtime.App.Load keeps a
// PreBlocker set before it but sets the EndBlocker unconditionally, so Install
// before Load silently loses the EndBlocker wrap (a plan gov schedules is seen
// one block late), and Install after app.Load(true) panics because
// LoadLatestVersion sealed the BaseApp. Load therefore calls app.Load(false),
// installs the watcher exactly as Install does, and only then loads the
// latest version.
//
// The PreBlocker wrapped is the one app.Load left in BaseApp, so one the app
// set before Load is kept; the EndBlocker wrapped is runtime.App's own, which
// app.Load installs whenever the app config lists end blockers (every chain
// with gov does: gov executes passed proposals there). Without a Sink in
// appOpts, Load is exactly app.Load(loadLatest).
func Load(app RuntimeApp, src PlanSource, appOpts AppOptions, log Logger, loadLatest bool) error {
	if sinkFrom(appOpts) == nil {
		reportSource(appOpts, src) // Install, below, does it otherwise
		return app.Load(loadLatest)
	}
	if err := app.Load(false); err != nil {
		return err
	}
	pre := app.GetBaseApp().PreBlocker()
	if pre == nil {
		return errors.New("invisor: the app has no PreBlocker after runtime.App.Load, so x/upgrade cannot halt the chain at a plan's height and invisor cannot see it: list \"upgrade\" first under pre_blockers in the runtime module's app config")
	}
	Install(loadedApp{RuntimeApp: app, pre: pre}, src, appOpts, log)
	if loadLatest {
		return app.LoadLatestVersion()
	}
	return nil
}

// loadedApp is app with the PreBlocker that runtime.App.Load left in BaseApp
// in place of runtime.App's own, so that Install wraps what the chain runs.
type loadedApp struct {
	RuntimeApp
	pre sdk.PreBlocker
}

func (a loadedApp) PreBlocker(ctx sdk.Context, req *abci.RequestFinalizeBlock) (*sdk.ResponsePreBlock, error) {
	return a.pre(ctx, req)
}
