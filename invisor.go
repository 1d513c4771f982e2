// Package invisor is the edge that puts invisor into a chain binary: it reads
// the configuration (app.toml's [invisor] section, environment, flags), builds
// the stager and the relauncher for the node's home, and hooks them into the
// SDK's `start` command. The library packages do the work:
//
//   - hook: watches the upgrade plan from the app's PreBlocker;
//   - staging: fetches, verifies and installs the upgrade binary in the background;
//   - relauncher: boot redirect, clean stop at the halt and syscall.Exec.
//
// A chain wires it in two places:
//
//	// app.go
//	hook.Install(app, app.UpgradeKeeper, appOpts, logger) // sets the PreBlocker and EndBlocker
//
//	// main.go
//	err := invisor.Execute(rootCmd, invisor.Options{DaemonName: "appd", DefaultHome: app.DefaultNodeHome})
//
// Only this package reads viper and the environment.
package invisor

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"

	"github.com/spf13/cobra"

	"cosmossdk.io/log/v2"

	"github.com/cosmos/cosmos-sdk/server"
	svrcmd "github.com/cosmos/cosmos-sdk/server/cmd"

	"github.com/invisor/invisor/hook"
	"github.com/invisor/invisor/relauncher"
	"github.com/invisor/invisor/staging"
)

// Options say how the chain binary is named and where its home is by default.
type Options struct {
	// DaemonName is the file name under cosmovisor/*/bin (cosmovisor's
	// DAEMON_NAME, which overrides it). It never depends on the running file's name.
	DaemonName string
	// DefaultHome is the node home when --home is not given.
	DefaultHome string
	// EnvPrefix is passed to the SDK's Execute for flag binding.
	EnvPrefix string
}

// Execute runs the chain's root command with invisor wrapped around `start`.
// When the node halted for an upgrade whose binary is staged and verified, the
// start command returns after the node stopped cleanly and Execute replaces the
// process with the new binary; it returns only on error.
//
// When this process is such a new binary and the old one left its pre-upgrade
// running, Execute first waits for it, before the SDK reads any configuration
// (pre-upgrade may rewrite it); `start` then refuses to run the node if it failed.
func Execute(rootCmd *cobra.Command, opts Options) error {
	// The environment as the process received it: the SDK's Execute rewrites it
	// (CometBFT's copyEnvVars adds a "<prefix>_" copy of every variable), and the
	// new binary must get exactly what this one got.
	environ := os.Environ()
	awaited := relauncher.AwaitPreUpgrade(environ)
	// Nothing started from here on may take itself for the awaiting binary; the
	// relauncher drops the marker from environ itself.
	_ = os.Unsetenv(relauncher.EnvExecPreUpgrade)
	if opts.DaemonName == "" {
		return errors.New("invisor: Options.DaemonName is required (the binary's name under cosmovisor/*/bin)")
	}
	start, _, err := rootCmd.Find([]string{"start"})
	if err != nil || start == rootCmd {
		return errors.New("invisor: the root command has no `start` subcommand")
	}
	wrapStart(start, opts, environ, awaited)
	wrapFlagMarking(rootCmd)
	return svrcmd.Execute(rootCmd, opts.EnvPrefix, opts.DefaultHome)
}

// node is invisor's per-process state for one `start`.
type node struct {
	log      log.Logger
	stager   *staging.Stager
	rl       *relauncher.Relauncher
	verifier *planVerifier
	// waitCancel stops watching the previous plan's staging (PlanChanged).
	waitMu     sync.Mutex
	waitCancel context.CancelFunc
	runCtx     context.Context
	stageOnly  bool
	home       string // set by startReporting; "" before
	daemon     string
	cancel     context.CancelFunc
	wg         sync.WaitGroup
}

func wrapStart(start *cobra.Command, opts Options, environ []string, awaited *relauncher.PreUpgradeOutcome) {
	var n *node
	AddFlags(start.Flags())
	preRun, run := start.PreRunE, start.RunE
	start.PreRunE = func(cmd *cobra.Command, args []string) error {
		if preRun != nil {
			if err := preRun(cmd, args); err != nil {
				return err
			}
		}
		var err error
		n, err = boot(server.GetServerContextFromCmd(cmd), cmd, opts, environ, awaited)
		if err != nil {
			// The message says what is wrong and what to do; the usage text would bury it.
			cmd.SilenceUsage = true
		}
		return err
	}
	start.RunE = func(cmd *cobra.Command, args []string) error {
		err := run(cmd, args)
		if n == nil {
			return err
		}
		n.stop()
		name, armed := n.rl.Armed()
		if !armed || err != nil {
			return err
		}
		// The node stopped cleanly (CometBFT stopped, stores closed): switch.
		serr := n.rl.Switch(name)
		n.log.Error("invisor: could not switch to the upgrade binary; exiting so the process manager restarts into the boot redirect",
			"upgrade", name, "err", serr)
		return serr
	}
}

// boot builds invisor for the node home, runs the boot redirect (which may exec
// another binary and not return), starts staging and registers the hook's sink.
// awaited is the pre-upgrade Execute waited for (nil if none): a failed one stops
// the node from starting even where invisor then does nothing.
func boot(sctx *server.Context, cmd *cobra.Command, opts Options, environ []string, awaited *relauncher.PreUpgradeOutcome) (*node, error) {
	cfg, err := LoadConfigFlags(sctx.Viper, cmd.Flags(), sctx.Config.RootDir, opts)
	if err != nil {
		return nil, err
	}
	logger := sctx.Logger.With("module", "invisor")
	if !cfg.Enabled {
		logger.Info("invisor: disabled in the configuration; upgrades must be handled by hand or by cosmovisor")
		return nil, awaited.Report(logger)
	}
	verifier := newPlanVerifier(cfg.Staging.Home, cfg.Staging.DaemonName)
	rl, err := relauncher.New(cfg.Relauncher, verifier, logger,
		relauncher.OS{Environ: func() []string { return environ }, AwaitedPreUpgrade: awaited})
	if err != nil {
		return nil, fmt.Errorf("invisor: %w", err)
	}
	n := &node{log: logger, rl: rl, verifier: verifier, stageOnly: relauncher.UnderCosmovisor()}
	if n.stageOnly {
		logger.Info("invisor: running under cosmovisor; staging binaries only and leaving the switch to cosmovisor")
		if err := awaited.Report(logger); err != nil {
			return nil, err
		}
	} else {
		if err := rl.Layout(); err != nil {
			return nil, fmt.Errorf("invisor: laying out %s: %w", rl.Root(), err)
		}
		if err := rl.Boot(); err != nil {
			return nil, err
		}
	}
	n.stager, err = staging.New(cfg.Staging, logger)
	if err != nil {
		return nil, fmt.Errorf("invisor: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	n.cancel, n.runCtx = cancel, ctx
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		if err := n.stager.Run(ctx); err != nil && !errors.Is(err, context.Canceled) {
			logger.Error("invisor: staging stopped", "err", err)
		}
	}()
	n.startReporting(ctx, cfg, sctx.Config.RPC.ListenAddress)
	sctx.Viper.Set(hook.SinkKey, hook.Sink(n))
	logger.Info("invisor: watching upgrade plans", "home", cfg.Staging.Home, "daemon", cfg.Staging.DaemonName,
		"allow_download", cfg.Staging.AllowDownload)
	return n, nil
}

// stop ends staging and releases its lock; the relauncher's state stays readable.
func (n *node) stop() {
	n.cancel()
	n.wg.Wait()
	if err := n.stager.Close(); err != nil {
		n.log.Error("invisor: releasing the staging lock", "err", err)
	}
	if err := n.rl.Close(); err != nil {
		n.log.Error("invisor: stopping the halt coordinator", "err", err)
	}
}

// PlanChanged implements hook.Sink.
func (n *node) PlanChanged(p *hook.Plan, block int64) {
	n.waitMu.Lock()
	defer n.waitMu.Unlock()
	if n.waitCancel != nil {
		n.waitCancel()
		n.waitCancel = nil
	}
	n.verifier.forget()
	if p == nil {
		n.log.Info("invisor: no upgrade plan in force", "block", block)
		n.stager.Offer(nil)
		return
	}
	n.log.Info("invisor: upgrade plan seen", "block", block, "upgrade", p.Name, "height", p.Height)
	plan := staging.Plan{Name: p.Name, Height: p.Height, Info: p.Info}
	n.stager.Offer(&plan)
	ctx, cancel := context.WithCancel(n.runCtx)
	n.waitCancel = cancel
	go n.watchReady(ctx, plan)
}

// Halted implements hook.Sink.
func (n *node) Halted(p hook.Plan, height int64) {
	n.log.Info("invisor: the chain halted for the upgrade as planned; the CONSENSUS FAILURE logged by CometBFT at this height is expected",
		"upgrade", p.Name, "height", height)
	n.recordHalt(p.Name, height)
	// The chain is down from here: finishing the binary beats sparing the disk.
	n.stager.Hurry()
	if n.stageOnly {
		n.log.Info("invisor: cosmovisor will switch the binary", "upgrade", p.Name)
		return
	}
	if !inConsensus() {
		n.switchInPlace(p.Name, height)
		return
	}
	n.rl.OnHalt(p.Name, height)
}
