// Package invisor puts an in-process upgrade supervisor (cosmovisor, built in)
// into a Cosmos SDK chain binary. A chain wires it in two lines, the first in
// app.go (in place of its SetPreBlocker and SetEndBlocker calls), the second in
// main.go (in place of the SDK's server/cmd.Execute):
//
//	hook.Install(app, app.UpgradeKeeper, appOpts, logger)
//	err := invisor.Execute(rootCmd, invisor.Options{DaemonName: "appd", DefaultHome: app.DefaultNodeHome})
//
// Execute wraps the SDK's `start` (boot redirect, staging in the background,
// the switch at the upgrade halt), adds the operator command `appd invisor`
// (config, status, stage, prepare, verify, history, export, import), and has
// `init` append invisor's app.toml section, with the documented defaults, to the
// app.toml the chain's own config interceptor creates. The chain keeps its own
// app.toml template and custom config; it embeds no invisor struct.
//
// The work is done by the packages hook (watches the upgrade plan from the
// PreBlocker and EndBlocker), staging (fetches, verifies and installs the
// upgrade binary) and relauncher (boot redirect, clean stop at the halt,
// syscall.Exec). Only this package and its internal configuration read viper
// and the environment.
package invisor

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/invisor/invisor/cli"
	"github.com/invisor/invisor/hook"
	"github.com/invisor/invisor/internal/config"
	"github.com/invisor/invisor/internal/home"
	"github.com/invisor/invisor/internal/notify"
	"github.com/invisor/invisor/internal/probe"
	"github.com/invisor/invisor/relauncher"
	"github.com/invisor/invisor/staging"
)

// config is opts as the configuration and the operator commands take them.
func (opts Options) config() config.Options {
	return config.Options{DaemonName: opts.DaemonName, DefaultHome: opts.DefaultHome, EnvPrefix: opts.EnvPrefix, ServerOf: serverOf}
}

// Execute runs the chain's root command (with the SDK's server/cmd.Execute)
// with invisor wrapped around `start`. When the node halted for an upgrade whose
// binary is staged and verified, the start command returns after the node
// stopped cleanly and Execute replaces the process with the new binary; it
// returns only on error.
//
// It also adds the operator command `invisor` to the root, unless the root has
// a command of that name already, and wraps the root's PersistentPreRunE (where
// the chain calls server.InterceptConfigsPreRunHandler): when that has just
// created config/app.toml, Execute appends invisor's section with the
// documented defaults. An app.toml that existed before is never rewritten.
//
// When this process is such a new binary and the old one left its pre-upgrade
// running, Execute first waits for it, before the SDK reads any configuration
// (pre-upgrade may rewrite it); `start` then refuses to run the node if it failed.
func Execute(rootCmd *cobra.Command, opts Options) error {
	// The environment as the process received it: the SDK's Execute rewrites it
	// (CometBFT's copyEnvVars adds a "<prefix>_" copy of every variable), and the
	// new binary must get exactly what this one got.
	environ := os.Environ()
	// A probe is answered before anything else: nothing is read, opened or waited for.
	if answered, err := answerProbe(environ, opts, os.Stdout); answered {
		return err
	}
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
	copts := opts.config()
	wrapStart(start, copts, environ, awaited, opts.handles)
	if !hasCommand(rootCmd, operatorCommand) {
		rootCmd.AddCommand(cli.Command(copts))
	}
	config.WrapPreRun(rootCmd, copts.ServerOf)
	return executeRoot(rootCmd, opts.EnvPrefix, opts.DefaultHome)
}

// operatorCommand is the name of cli.Command's command.
const operatorCommand = "invisor"

// hasCommand reports whether root has a direct subcommand called name (or
// aliased so): a chain's own command of that name is kept.
func hasCommand(root *cobra.Command, name string) bool {
	for _, c := range root.Commands() {
		if c.Name() == name || c.HasAlias(name) {
			return true
		}
	}
	return false
}

// node is invisor's per-process state for one `start`.
type node struct {
	log    config.Logger
	stager *staging.Stager
	rl     *relauncher.Relauncher
	layout home.Layout
	// switched is the upgrade data/upgrade-info.json named at boot when switch
	// attempts were counted for it (nil otherwise); clearOnce clears them once.
	switched  *home.Plan
	clearOnce sync.Once
	// nameProblem is what status says about a plan name no directory can hold.
	nameMu      sync.Mutex
	nameProblem string
	// waitCancel stops watching the previous plan's staging (PlanChanged).
	waitMu     sync.Mutex
	waitCancel context.CancelFunc
	runCtx     context.Context
	stageOnly  bool
	// rpcLaddr is CometBFT's rpc.laddr: at a halt, its /status says whether the
	// node is catching up, which decides the halt path (nodeState).
	rpcLaddr string
	// halt is the upgrade scheduled at a height whose height this node halts at
	// (the halt-height set at boot), due the one whose binary runs the chain's
	// next block; both set at boot, before the app exists (scheduled.go).
	halt, due          *home.Scheduled
	haltWatch, dueDone atomic.Bool
	home               string // set by startReporting; "" before
	// notifier sends the webhook's events (nil: webhook-url not set); watch is
	// the plan in force as the notifications know it (notify.go).
	notifier  *notify.Notifier
	watch     atomic.Pointer[planWatch]
	haltMu    sync.Mutex
	haltNoted string // the halt the halted event was sent for, "name@height"
	// onHalt is who swaps the binary at an upgrade halt (the on-halt setting);
	// exiting is set once the node leaves a halt with ExitUpgradeHalt for an
	// orchestrator (halt.go); stopSelf and exit are how (SIGTERM to this
	// process, os.Exit), fields so that a test can catch them.
	onHalt   config.OnHalt
	exiting  atomic.Bool
	stopSelf func() error
	exit     func(code int)
	// health is the post-upgrade health gate (health.go); nil when not armed.
	// Set at boot, before the reporter and the hook see the node.
	health *healthGate
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

func wrapStart(start *cobra.Command, opts config.Options, environ []string, awaited *relauncher.PreUpgradeOutcome,
	handles func(string) (bool, bool)) {
	var n *node
	config.AddFlags(start.Flags())
	preRun, run := start.PreRunE, start.RunE
	start.PreRunE = func(cmd *cobra.Command, args []string) error {
		if preRun != nil {
			if err := preRun(cmd, args); err != nil {
				return err
			}
		}
		var err error
		n, err = boot(opts.ServerOf(cmd), cmd, opts, environ, awaited, handles)
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
		if n.exiting.Load() {
			// on-halt = exit: the node stopped cleanly at the halt; the
			// orchestrator swaps the binary (halt.go, exitAtHalt).
			n.log.Info("invisor: the node stopped at the upgrade halt; exiting for the orchestrator", "exit_code", ExitUpgradeHalt, "start_err", err)
			n.exit(ExitUpgradeHalt)
		}
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
//
// The home lock is taken before anything touches the home and held for the life
// of the process; an exec hands it to the next image, so a second process on the
// home refuses at once, naming this one's PID.
func boot(sctx config.Server, cmd *cobra.Command, opts config.Options, environ []string, awaited *relauncher.PreUpgradeOutcome,
	handles func(string) (bool, bool)) (*node, error) {
	cfg, err := config.LoadConfigFlags(sctx.Viper, cmd.Flags(), sctx.Comet.RootDir, opts)
	if err != nil {
		return nil, err
	}
	logger := sctx.Logger
	if !cfg.Enabled {
		logger.Info("invisor: disabled in the configuration; upgrades must be handled by hand or by cosmovisor")
		return nil, awaited.Report(logger)
	}
	// As PID 1 (a container's init, a PID namespace's first process) the node
	// reaps the orphans the kernel hands it, for the life of the process: an
	// exec ends it, and the next image starts its own here.
	if relauncher.IsInit(os.Getpid()) {
		reaper := relauncher.NewReaper(logger, 0)
		go func() { _ = reaper.Run(context.Background()) }()
		logger.Info("invisor: this node is PID 1 of its PID namespace; reaping orphaned child processes", "grace", relauncher.DefaultReapGrace)
	}
	layout, err := cfg.Layout()
	if err != nil {
		return nil, fmt.Errorf("invisor: %w", err)
	}
	if err := staging.CheckImageDir(cfg.Staging); err != nil {
		return nil, fmt.Errorf("invisor: %w", err)
	}
	lock, err := layout.Acquire(environ)
	if err != nil {
		return nil, fmt.Errorf("invisor: %w", err)
	}
	notifier, err := newNotifier(sctx, cfg, layout.Home(), logger)
	if err != nil {
		return nil, err
	}
	scfg := cfg.Staging
	fetch := func(ctx context.Context, p home.Plan) error {
		_, err := staging.Fetch(ctx, scfg, p, logger)
		return err
	}
	ros := relauncher.OS{Environ: func() []string { return environ }, AwaitedPreUpgrade: awaited, Lock: lock, Fetch: fetch, Handles: handles,
		PeersAtHalt: peersAtHalt(sctx.Comet.RPC.ListenAddress)}
	if notifier != nil {
		ros.Exec = execAfterDrain(notifier, logger, syscall.Exec)
	}
	rl, err := relauncher.New(cfg.Relauncher, nil, logger, ros)
	if err != nil {
		return nil, fmt.Errorf("invisor: %w", err)
	}
	n := &node{log: logger, rl: rl, layout: layout, stageOnly: relauncher.UnderCosmovisor(),
		rpcLaddr: sctx.Comet.RPC.ListenAddress, notifier: notifier, onHalt: cfg.OnHalt,
		stopSelf: func() error { return syscall.Kill(os.Getpid(), syscall.SIGTERM) }, exit: os.Exit}
	if ui, ok, err := layout.ReadUpgradeInfo(); err == nil && ok && layout.Attempts(ui).Count > 0 {
		n.switched = &ui
	}
	if cfg.Staging.TrustPlacedBinaries {
		logger.Warn("invisor: unsafe-trust-placed-binaries is on: a binary placed by hand runs even when the plan does not confirm it; turn it off once this upgrade is done")
	}
	n.reportTrust()
	if n.stageOnly {
		logger.Info("invisor: running under cosmovisor; staging binaries only and leaving the switch to cosmovisor")
		if err := awaited.Report(logger); err != nil {
			return nil, err
		}
	} else {
		if err := rl.Layout(); err != nil {
			return nil, fmt.Errorf("invisor: laying out %s: %w", layout.Root(), err)
		}
		if err := n.applySchedule(sctx); err != nil {
			return nil, err
		}
		if cfg.OnHalt == config.OnHaltExitAlways {
			// The orchestrator owns every swap: an older binary is not redirected;
			// it replays to the halt and exits there again (exitAtHalt).
			logger.Info("invisor: on-halt is exit-always: no boot redirect; the orchestrator starts the binary the chain needs")
		} else if err := rl.Boot(); err != nil {
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
	n.armHealth(sctx.Comet, cfg.Health)
	n.startReporting(ctx, cfg.EffectiveSettings())
	if cfg.CheckProposals {
		n.wg.Add(1)
		go func() {
			defer n.wg.Done()
			n.watchProposals(ctx)
		}()
	}
	sctx.Viper.Set(hook.SinkKey, hook.Sink(n))
	logger.Info("invisor: watching upgrade plans", "home", layout.Home(), "daemon", layout.Daemon(),
		"allow_download", cfg.Staging.AllowDownload, "image_dir", cfg.Staging.ImageDir, "on_halt", string(cfg.OnHalt), "lock", lock.Path())
	return n, nil
}

// reportTrust logs, at every boot, each staged binary the plans themselves do not
// confirm (trusted on the operator's word or by the override).
func (n *node) reportTrust() {
	for _, u := range unconfirmedInstalls(n.layout) {
		msg := "invisor: a staged binary is trusted on the operator's word, not on the plan's checksum"
		if u.Source == home.SourceOperatorStarted || u.Source == home.SourceOperatorReplaced {
			msg = "invisor: a staged binary is a patch release the operator started or put in place; the plan's checksum does not confirm it"
		}
		n.log.Warn(msg, "upgrade", u.Plan, "source", string(u.Source), "sha256", u.SHA256, "path", u.File)
	}
}

// stop ends staging and gives the webhook its bounded drain; the relauncher's
// state stays readable. The home lock stays held: a switch that follows hands it
// to the next image.
func (n *node) stop() {
	n.stopHealth()
	n.cancel()
	n.wg.Wait()
	closeNotifier(n.notifier, n.log)
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
	n.upgradeDone(p, block)
	n.healthPlan(p, block)
	n.notePlan(p, block)
	if p == nil {
		n.log.Info("invisor: no upgrade plan in force", "block", block)
		n.setNameProblem("")
		n.stager.Offer(nil)
		return
	}
	n.log.Info("invisor: upgrade plan seen", "block", block, "upgrade", p.Name, "height", p.Height)
	n.scheduleCollides(p)
	plan := staging.Plan{Name: p.Name, Height: p.Height, Info: p.Info}
	if _, err := n.layout.UpgradeDir(p.Name); err != nil {
		// Said loudly on the day the plan passes, while there is time to act.
		advice := ""
		var ue *home.UnmappableNameError
		if errors.As(err, &ue) {
			advice = ue.Advice()
		}
		n.log.Error("invisor: the upgrade plan's name cannot be mapped to a directory; invisor will not stage or switch this upgrade",
			"upgrade", p.Name, "height", p.Height, "err", err, "what_to_do", advice)
		n.setNameProblem(err.Error() + "; " + advice)
	} else {
		n.setNameProblem("")
	}
	n.stager.Offer(&plan)
	ctx, cancel := context.WithCancel(n.runCtx)
	n.waitCancel = cancel
	go n.watchReady(ctx, plan)
}

// upgradeDone forgets the switch attempts of the upgrade that led to this boot
// (n.switched) once a block at or past its height runs without that plan: the
// new binary applied it, so the exec-loop guard has nothing to guard. It runs in
// the block's path, so the file write happens on a goroutine of its own, once.
func (n *node) upgradeDone(p *hook.Plan, block int64) {
	ui := n.switched
	if ui == nil || block < ui.Height || (p != nil && p.Name == ui.Name && p.Height == ui.Height) {
		return
	}
	n.clearOnce.Do(func() {
		go func() {
			if err := n.layout.ClearAttempts(*ui); err != nil {
				n.log.Error("invisor: could not clear the switch attempts of the applied upgrade", "upgrade", ui.Name, "err", err)
				return
			}
			n.log.Info("invisor: upgrade applied; switch attempts cleared", "upgrade", ui.Name, "height", ui.Height, "block", block)
		}()
	})
}

// watchReady scans the plan's binary once staging has it, so the switch at the
// height needs no hashing; a later plan change cancels the wait (PlanChanged).
func (n *node) watchReady(ctx context.Context, plan staging.Plan) {
	if _, err := n.stager.WaitReady(ctx, plan); err != nil {
		return
	}
	// Proved once now, while the chain runs: the stamp it leaves makes the proof
	// at the height a stat, not a hash.
	bin, err := n.layout.Open(ctx, plan)
	if err != nil {
		n.log.Error("invisor: the staged binary does not verify; staging will try again", "upgrade", plan.Name, "err", err)
		return
	}
	defer bin.Close()
	n.noteReady(plan, bin.Record.SHA256)
	ans := bin.Record.Probe
	n.log.Info("invisor: upgrade binary staged and verified; the switch at the upgrade height needs no download and no hashing",
		"upgrade", plan.Name, "height", plan.Height, "answered_probe", ans != nil,
		"awaits_pre_upgrade", ans.Speaks(probe.ProtocolAwaitPreUpgrade))
}

// Height implements hook.Sink: staging keeps the height (Stager.ObserveHeight),
// decides from it how fast to stage, and the status reporter publishes it.
func (n *node) Height(h int64) {
	n.stager.ObserveHeight(h)
	n.scheduledHeight(h)
	n.nearHeight(h)
	n.healthHeight(h)
}

// Halted implements hook.Sink.
func (n *node) Halted(p hook.Plan, height int64) {
	n.log.Info("invisor: the chain halted for the upgrade as planned; the CONSENSUS FAILURE logged by CometBFT at this height is expected",
		"upgrade", p.Name, "height", height)
	n.recordHalt(p.Name, height)
	n.healthHalted(height)
	// The chain is down from here: finishing the binary beats sparing the disk.
	n.stager.Hurry()
	if n.stageOnly {
		n.noteHalted(p, height, haltPath(true, relauncher.NodeStateUnknown), "invisor runs under cosmovisor, which switches the binary")
		n.log.Info("invisor: cosmovisor will switch the binary", "upgrade", p.Name)
		return
	}
	state, why := n.nodeState()
	if n.onHalt.Exits() {
		n.noteHalted(p, height, "exit", why+"; on-halt is "+string(n.onHalt)+": the node exits for an orchestrator to swap the binary")
		n.exitAtHalt(p, height, state, why)
		return
	}
	n.noteHalted(p, height, haltPath(false, state), why)
	// The clean stop returns at once; the re-exec does not return unless it failed.
	n.rl.Halt(n.runCtx, p.Name, height, state, why)
}
