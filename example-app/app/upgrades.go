package app

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	sdk "github.com/cosmos/cosmos-sdk/types"
	"github.com/cosmos/cosmos-sdk/types/module"
	banktypes "github.com/cosmos/cosmos-sdk/x/bank/types"
	upgradetypes "github.com/cosmos/cosmos-sdk/x/upgrade/types"
)

// UpgradeLevel says which upgrade handlers this build carries: "1" none, "2" the
// handler "v2", "3" the handlers "v2" and "v3". It is set at link time:
//
//	go build -ldflags "-X github.com/invisor/invisor/example-app/app.UpgradeLevel=2"
var UpgradeLevel = "1"

// FailUpgrade names an upgrade whose handler this build fails with an error
// instead of running it, set at link time like UpgradeLevel: the build of a
// release whose migration goes wrong, for the rollback test.
var FailUpgrade = ""

// TraceDenom is the denom whose metadata each upgrade handler writes, so that a
// test can prove from state (`exampled query bank denom-metadata`) which handlers ran.
const TraceDenom = "uinvisor"

// Upgrades lists the upgrade names in the order they happen on the example chain.
var Upgrades = []string{"v2", "v3"}

// EscapedUpgrade is a second name for the upgrade to level 2, carried by every
// build of level 2 and up: governance accepts any non-empty name, and this one
// needs cosmovisor's case handling and escaping (upper case, "/", a space,
// quotes, non-ASCII), so tests can pass a plan with it and watch the switch.
const EscapedUpgrade = `V2/Ünï "q"`

// level returns UpgradeLevel as a number; a bad link-time value is a build error.
func level() int {
	n, err := strconv.Atoi(UpgradeLevel)
	if err != nil || n < 1 {
		panic(fmt.Sprintf("example-app: bad UpgradeLevel %q set at link time", UpgradeLevel))
	}
	return n
}

func (app *App) registerUpgradeHandlers() {
	for i, name := range Upgrades {
		if level() < i+2 {
			break
		}
		app.UpgradeKeeper.SetUpgradeHandler(name, app.traceHandler(name))
		if name == "v2" {
			app.UpgradeKeeper.SetUpgradeHandler(EscapedUpgrade, app.traceHandler(EscapedUpgrade))
		}
	}
}

// traceHandler runs the module migrations and leaves a trace in state and in the log.
func (app *App) traceHandler(name string) upgradetypes.UpgradeHandler {
	return func(ctx context.Context, plan upgradetypes.Plan, fromVM module.VersionMap) (module.VersionMap, error) {
		sdkCtx := sdk.UnwrapSDKContext(ctx)
		if name == FailUpgrade {
			sdkCtx.Logger().Error("example-app: upgrade handler failing on purpose (built with FailUpgrade)", "upgrade", name, "height", sdkCtx.BlockHeight())
			return nil, fmt.Errorf("example-app: upgrade handler %s fails in this build (FailUpgrade=%s)", name, FailUpgrade)
		}
		app.BankKeeper.SetDenomMetaData(ctx, banktypes.Metadata{
			Base:        TraceDenom,
			Display:     TraceDenom,
			Name:        "invisor upgrade trace",
			Symbol:      "INV",
			Description: fmt.Sprintf("upgrade handler %s ran at height %d", name, sdkCtx.BlockHeight()),
			DenomUnits:  []*banktypes.DenomUnit{{Denom: TraceDenom, Exponent: 0}},
		})
		sdkCtx.Logger().Info("example-app: upgrade handler ran", "upgrade", name, "height", sdkCtx.BlockHeight())
		return app.ModuleManager.RunMigrations(ctx, app.configurator, fromVM)
	}
}

func defaultHome() string {
	home, err := os.UserHomeDir()
	if err != nil {
		return ".exampled"
	}
	return filepath.Join(home, ".exampled")
}
