package relauncher

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"github.com/invisor/invisor/internal/home"
	"github.com/invisor/invisor/internal/probe"
)

// Relauncher owns the chain node's process lifecycle: boot redirect, the halt
// coordinator and the switch to a new binary. It is safe for concurrent use.
type Relauncher struct {
	cfg    Config
	layout home.Layout
	v      Verifier
	log    Logger
	os     OS

	// Halt coordinator state; the waiter goroutine is the only writer of armed.
	mu    sync.Mutex
	req   *haltReq
	armed string
	// verified is the binary the halt waiter proved for the armed plan, held open
	// until Switch runs it (or finds it changed and closes it).
	verified *armedBinary
	started  bool
	closed   bool
	wake     chan struct{}
	done     chan struct{}
	exited   chan struct{}
}

// armedBinary is the proof the halt waiter got, for the plan it read.
type armedBinary struct {
	plan home.Plan
	bin  Binary
}

// New checks cfg and the home directory and returns a Relauncher. A nil v means
// the default proof (LayoutVerifier: the completion record, home.Layout.Open).
// log may be nil; zero fields of osys are filled with the real system calls.
func New(cfg Config, v Verifier, log Logger, osys OS) (*Relauncher, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if log == nil {
		log = nopLogger{}
	}
	layout, err := home.New(cfg.Home, cfg.DaemonName, home.Options{DisableRecase: cfg.DisableRecase})
	if err != nil {
		return nil, fmt.Errorf("relauncher: %w", err)
	}
	if v == nil {
		v = LayoutVerifier(layout)
	}
	cfg.Home = layout.Home()
	cfg = cfg.withDefaults()
	if fi, err := os.Stat(cfg.Home); err != nil {
		return nil, fmt.Errorf("relauncher: home: %w", err)
	} else if !fi.IsDir() {
		return nil, fmt.Errorf("relauncher: home %s is not a directory", cfg.Home)
	}
	if cfg.Backup {
		if fi, err := os.Stat(cfg.BackupDir); err != nil {
			return nil, fmt.Errorf("relauncher: backup dir: %w", err)
		} else if !fi.IsDir() {
			return nil, fmt.Errorf("relauncher: backup dir %s is not a directory", cfg.BackupDir)
		}
	}
	return &Relauncher{
		cfg:    cfg,
		layout: layout,
		v:      v,
		log:    log,
		os:     osys.withDefaults(),
		wake:   make(chan struct{}, 1),
		done:   make(chan struct{}),
		exited: make(chan struct{}),
	}, nil
}

// Config returns the effective configuration (defaults filled, Home absolute).
func (r *Relauncher) Config() Config { return r.cfg }

// verify asks the Verifier for the proof of plan p and checks that it is for
// exactly p and the layout's path; a panic in the Verifier becomes an error. Any
// Binary it does not return is closed.
func (r *Relauncher) verify(ctx context.Context, p home.Plan) (b Binary, err error) {
	defer func() {
		if rec := recover(); rec != nil {
			err = fmt.Errorf("relauncher: verifier panicked: %v", rec)
		}
		if err != nil {
			b.Close()
			b = Binary{}
		}
	}()
	b, err = r.v.Verify(ctx, p)
	if err != nil {
		return b, err
	}
	want, err := r.layout.UpgradeBin(p.Name)
	switch {
	case err != nil:
		return b, err
	case b.Verified == nil:
		return b, fmt.Errorf("%w: the verifier returned no proof for upgrade %q", ErrLayout, p.Name)
	case b.Verified.Plan != p:
		return b, fmt.Errorf("%w: the verifier's proof is for plan %q at height %d, not %q at %d",
			ErrLayout, b.Verified.Plan.Name, b.Verified.Plan.Height, p.Name, p.Height)
	case filepath.Clean(b.Verified.Path) != want:
		return b, fmt.Errorf("%w: the verifier's binary %s is not %s", ErrLayout, b.Verified.Path, want)
	}
	return b, nil
}

func (r *Relauncher) missing(p home.Plan, err error) *MissingBinaryError {
	path, perr := r.layout.UpgradeBin(p.Name)
	if perr != nil {
		path = "(no directory: " + perr.Error() + ")"
	}
	return &MissingBinaryError{
		Name: p.Name, Height: p.Height, Path: path, Daemon: r.cfg.DaemonName,
		DownloadsEnabled: r.cfg.DownloadsEnabled, Err: err,
	}
}

// unmappable logs, when plan name cannot be mapped to a directory, that nothing
// will be staged or run for it and what the operator can do; it reports whether
// it did. Such a name never fails a boot and never arms a switch.
func (r *Relauncher) unmappable(name string, height int64, what string) bool {
	_, err := r.layout.DirName(name)
	if err == nil {
		return false
	}
	reason, advice := err.Error(), ""
	var ue *home.UnmappableNameError
	if errors.As(err, &ue) {
		reason, advice = ue.Reason, ue.Advice()
	}
	r.log.Error("invisor: the upgrade's plan name cannot be mapped to a directory; "+what,
		"upgrade", quoteName(name), "height", height, "reason", reason, "advice", advice)
	return true
}

// quoteName quotes a plan name for a log line, cut to a readable length.
func quoteName(n string) string {
	if len(n) > 200 {
		return strconv.Quote(n[:200]) + fmt.Sprintf("... (%d bytes)", len(n))
	}
	return strconv.Quote(n)
}

// Boot decides, before any database is opened, whether this executable is the one
// the chain's state needs, and execs the right one if not:
//   - this process awaited its pre-upgrade (OS.AwaitedPreUpgrade): logs how it went
//     and, if it failed, returns its *PreUpgradeError (`current` is unchanged);
//   - no (or empty) data/upgrade-info.json: returns nil, run as is;
//   - upgrade-info names a plan whose name no directory can hold: logs the reason
//     and what to do, and returns nil (the old binary halts at the height again;
//     a binary the operator started by hand runs);
//   - the Verifier proves the plan's binary and this executable is that very file,
//     or a copy with the recorded size and SHA-256: returns nil;
//   - otherwise this executable is asked whether it carries the plan's upgrade
//     handler (OS.Handles). If it does, it can run the chain's state (a patch
//     release of the upgrade): it runs as started and becomes the upgrade's binary
//     (adopt: a copy with a home.SourceOperatorStarted record in the upgrade's
//     place, the binary there before kept under home.PreviousDir, `current`
//     pointed at the upgrade after the backup and pre-upgrade a switch takes, if
//     they have not run), whether or not a proven binary existed;
//   - if it lacks the handler (an older release), or cannot tell, and a proven
//     binary for the plan exists: unless `current` already points to it, backs up
//     (first attempt only) and runs pre-upgrade as configured and flips `current`;
//     then execs it with the same argv, env (plus markers and the home lock) and
//     working directory. Returns only on failure. The log says why;
//   - no binary, downloads enabled and OS.Fetch set: fetches it (bounded by
//     BootFetchTimeout), then proceeds as above;
//   - otherwise: returns a *MissingBinaryError saying what to put where.
//
// A second redirect to the same target in a row, or an exec into a binary the
// attempts ledger counts MaxSwitchAttempts times already, is refused with ErrExecLoop.
func (r *Relauncher) Boot() error { return r.BootContext(context.Background()) }

// BootContext is Boot with a context bounding the fetch, backup and pre-upgrade.
func (r *Relauncher) BootContext(ctx context.Context) error {
	if err := r.os.AwaitedPreUpgrade.Report(r.log); err != nil {
		return err
	}
	if h := r.reexecedFor(); h != "" {
		r.log.Info("invisor: re-executed at the upgrade halt (CometBFT was catching up, or its state was unknown); switching from this boot, before any store is opened",
			"halt", h, "pid", r.os.Getpid())
	}
	p, ok, err := r.layout.ReadUpgradeInfo()
	if err != nil {
		return fmt.Errorf("relauncher: %w; fix or remove the file only if you know the chain is not at an upgrade height", err)
	}
	if !ok {
		return nil
	}
	if r.unmappable(p.Name, p.Height, "running this binary as it is") {
		return nil
	}
	self, err := r.os.Executable()
	if err != nil {
		return fmt.Errorf("relauncher: executable: %w", err)
	}
	b, verr := r.verify(ctx, p)
	if verr == nil {
		if done, err := r.runsProven(ctx, p, b, self); done || err != nil {
			return err
		}
	}
	// This executable is not the upgrade's proven binary (or there is none):
	// whether it can run the chain's state is its own answer.
	can, why := r.canRun(p)
	if can {
		var staged *home.Verified
		if verr == nil {
			staged = b.Verified
		}
		err := r.adopt(ctx, p, self, staged, verr)
		b.Close()
		return err
	}
	if verr != nil && errors.Is(verr, fs.ErrNotExist) && r.cfg.DownloadsEnabled && r.os.Fetch != nil {
		b, verr = r.fetchAtBoot(ctx, p, verr)
		var me *MissingBinaryError
		if errors.As(verr, &me) {
			r.log.Warn("invisor: this executable cannot run the chain's state, and the upgrade's binary could not be fetched",
				"upgrade", p.Name, "height", p.Height, "self", self, "reason", why)
			return verr
		}
		if verr == nil {
			if done, err := r.runsProven(ctx, p, b, self); done || err != nil {
				return err
			}
		}
	}
	if verr != nil {
		// Running the binary from its cosmovisor place (e.g. via current/bin, or
		// started by hand): it is running already; say that it is unproven.
		if bin, err := r.layout.UpgradeBin(p.Name); err == nil && home.SameFile(self, bin) {
			r.log.Warn("invisor: running the binary at the upgrade's path, which staging has not verified",
				"upgrade", p.Name, "height", p.Height, "path", self, "reason", verr, "handler", why)
			return nil
		}
		r.log.Warn("invisor: this executable cannot run the chain's state, and the upgrade's binary is not staged",
			"upgrade", p.Name, "height", p.Height, "self", self, "reason", why)
		return r.missing(p, verr)
	}
	r.log.Warn("invisor: this executable is not the binary the chain needs; redirecting",
		"upgrade", p.Name, "height", p.Height, "self", self, "target", b.Verified.Path, "reason", why)
	return r.switchTo(ctx, p, b, self, true)
}

// runsProven reports (done) whether this executable self is the proven binary b
// of plan p, or a copy with its recorded size and SHA-256, and then closes b and
// says so: this process is the binary the chain needs. Otherwise b stays open.
// After invisor's own exec this is cheap: the stamp is unchanged, nothing is
// hashed; a copy elsewhere is compared by size first.
func (r *Relauncher) runsProven(ctx context.Context, p home.Plan, b Binary, self string) (done bool, err error) {
	if b.Verified.Is(self) {
		r.log.Info("invisor: running the binary the chain needs", "upgrade", p.Name, "height", p.Height,
			"path", self, "rehashed", b.Verified.Rehashed, "execed_from", r.execedBy())
		return true, closing(b, r.settle(ctx, p, b.Verified))
	}
	same, err := isSameBinary(ctx, self, b.Verified.Record)
	if err != nil {
		b.Close()
		return true, err
	}
	if same {
		r.log.Info("invisor: running a copy of the binary the chain needs", "upgrade", p.Name, "height", p.Height,
			"path", self, "staged", b.Verified.Path, "source", b.Verified.Record.Source)
		return true, closing(b, r.settle(ctx, p, b.Verified))
	}
	return false, nil
}

// closing closes b and returns err, or the close's error when err is nil.
func closing(b Binary, err error) error {
	if cerr := b.Close(); err == nil {
		err = cerr
	}
	return err
}

// settle prepares upgrade p for a process that already is its binary v (the
// staged file started directly, a copy of it such as a container image's, or a
// patch release just adopted) when no switch prepared it: `current` does not
// point to the upgrade yet because the chain halted for p and something other
// than invisor's switch started the new binary (an orchestrator after on-halt
// = exit, an operator by hand). It takes the preparation a switch takes
// (backup, pre-upgrade, the flip of `current`) and notes the attempt with its
// backup, so that how the new binary was started changes nothing of what
// happens before it runs the chain. After invisor's own switch, `current`
// points to the upgrade already and this does nothing.
func (r *Relauncher) settle(ctx context.Context, p home.Plan, v *home.Verified) error {
	dir, err := r.layout.UpgradeDir(p.Name)
	if err != nil {
		return err
	}
	if r.layout.CurrentIs(dir) {
		return nil
	}
	r.log.Info("invisor: the upgrade's binary was started without a switch (current does not point to it): backup, pre-upgrade and the flip of current run now, as a switch would run them",
		"upgrade", p.Name, "height", p.Height, "binary", v.Path)
	rel, err := r.layout.CurrentTarget(p.Name)
	if err != nil {
		return err
	}
	backup, _, err := r.prepare(ctx, p, v, rel, r.layout.Attempts(p), false)
	if err != nil {
		return err
	}
	if _, err := r.layout.NoteAttempt(p, backup); err != nil {
		r.log.Warn("invisor: could not note the start of the upgrade's binary in the attempts ledger", "upgrade", p.Name, "err", err)
	}
	return nil
}

// canRun asks this executable whether it carries the upgrade handler of plan p,
// which the chain's state needs (OS.Handles: the edge builds the app on an
// in-memory database and asks its upgrade keeper). why says, for the log, what
// the answer was when it is not yes. An image that re-executed itself at p's
// halt is not asked: x/upgrade halted it because it has no handler for p.
func (r *Relauncher) canRun(p home.Plan) (can bool, why string) {
	if r.reexecedFor() == strconv.FormatInt(p.Height, 10)+"/"+p.Name {
		return false, fmt.Sprintf("this executable halted for upgrade %s, so it lacks the upgrade handler %s that the chain's state needs", quoteName(p.Name), quoteName(p.Name))
	}
	has, known := r.handles(p.Name)
	switch {
	case !known:
		return false, fmt.Sprintf("this executable could not tell whether it carries the upgrade handler %s that the chain's state needs (the chain gives invisor no app constructor, Options.NewApp, or building the app failed); it is redirected as an older release would be", quoteName(p.Name))
	case !has:
		return false, fmt.Sprintf("this executable lacks the upgrade handler %s that the chain's state needs (an older release)", quoteName(p.Name))
	}
	return true, ""
}

// handles is OS.Handles; nil, or a panic in it, is "could not tell".
func (r *Relauncher) handles(name string) (has, known bool) {
	if r.os.Handles == nil {
		return false, false
	}
	defer func() {
		if rec := recover(); rec != nil {
			r.log.Warn("invisor: asking this executable for its upgrade handlers panicked; treated as unknown", "upgrade", name, "panic", fmt.Sprint(rec))
			has, known = false, false
		}
	}()
	return r.os.Handles(name)
}

// adopt makes this executable self, which carries the upgrade handler of plan p
// (a patch release of the upgrade), the binary of upgrade p, and lets it run as
// started: a copy with a home.SourceOperatorStarted record goes to the upgrade's
// place (home.Layout.InstallBinary, which keeps the binary there before, staged
// or not, under home.PreviousDir), so that a restart of either path runs it (this
// one as a copy of the recorded binary, an older one by the redirect). When
// `current` does not point to the upgrade yet (the chain halted for p and no
// switch prepared it), the new record's proof is run through the preparation a
// switch takes (backup, pre-upgrade, the flip), and the attempt is noted with
// its backup. staged is the proven binary it replaces (nil: none, verr says
// why); it is not closed here.
func (r *Relauncher) adopt(ctx context.Context, p home.Plan, self string, staged *home.Verified, verr error) error {
	rec := home.Record{Plan: p.Name, Height: p.Height, InfoHash: p.InfoHash(), Source: home.SourceOperatorStarted, File: self,
		// What this executable would answer the probe with, since it is the one asking.
		Probe: &probe.Answer{Probe: probe.Version, InvisorVersion: probe.InvisorVersion(), Protocols: probe.Protocols(),
			Handlers: map[string]bool{p.Name: true}}}
	rep, err := r.layout.InstallBinary(ctx, self, rec)
	if err != nil {
		return fmt.Errorf("relauncher: this executable %s carries the upgrade handler %s that the chain's state needs, so it would run as started, but recording it as the upgrade's binary failed: %w; fix the cause and start it again, or stage it with `%s invisor stage %s --replace --file %s`",
			self, quoteName(p.Name), err, r.cfg.DaemonName, p.Name, self)
	}
	was, wasSHA := "none", ""
	switch {
	case staged != nil:
		was, wasSHA = staged.Path, staged.Record.SHA256
	case verr != nil:
		was = "none proven (" + verr.Error() + ")"
	}
	if rep.KeptRecord != nil && wasSHA == "" {
		wasSHA = rep.KeptRecord.SHA256
	}
	r.log.Warn("invisor: this executable carries the upgrade handler the chain's state needs (a patch release of the upgrade): running it as started and recording it as the upgrade's binary",
		"upgrade", p.Name, "height", p.Height, "self", self, "sha256", rep.Record.SHA256,
		"replaced", was, "replaced_sha256", wasSHA, "kept_at", rep.Kept, "installed", rep.Path, "source", rep.Record.Source)
	dir, err := r.layout.UpgradeDir(p.Name)
	if err != nil {
		return err
	}
	if r.layout.CurrentIs(dir) {
		return nil
	}
	b, err := r.verify(ctx, p)
	if err != nil {
		return r.missing(p, fmt.Errorf("recorded at boot, but: %w", err))
	}
	return closing(b, r.settle(ctx, p, b.Verified))
}

// fetchAtBoot runs OS.Fetch for p, bounded by BootFetchTimeout, and verifies
// again. A failure is a *MissingBinaryError.
func (r *Relauncher) fetchAtBoot(ctx context.Context, p home.Plan, verr error) (Binary, error) {
	r.log.Info("invisor: fetching the upgrade binary at boot", "upgrade", p.Name, "height", p.Height,
		"timeout", r.cfg.BootFetchTimeout, "missing", verr)
	fctx, cancel := context.WithTimeoutCause(ctx, r.cfg.BootFetchTimeout,
		fmt.Errorf("relauncher: the fetch at boot took longer than %s (BootFetchTimeout)", r.cfg.BootFetchTimeout))
	defer cancel()
	err := r.fetch(fctx, p)
	if err == nil && fctx.Err() != nil {
		err = context.Cause(fctx)
	}
	if err != nil {
		if c := context.Cause(fctx); c != nil && !errors.Is(err, c) {
			err = fmt.Errorf("%w (%w)", err, c)
		}
		m := r.missing(p, verr)
		m.FetchErr = err
		return Binary{}, m
	}
	b, err := r.verify(ctx, p)
	if err != nil {
		return Binary{}, r.missing(p, fmt.Errorf("fetched at boot, but: %w", err))
	}
	r.log.Info("invisor: upgrade binary fetched at boot", "upgrade", p.Name, "height", p.Height,
		"path", b.Verified.Path, "sha256", b.Verified.Record.SHA256)
	return b, nil
}

func (r *Relauncher) fetch(ctx context.Context, p home.Plan) (err error) {
	defer func() {
		if rec := recover(); rec != nil {
			err = fmt.Errorf("relauncher: fetch panicked: %v", rec)
		}
	}()
	return r.os.Fetch(ctx, p)
}

// Switch is called after the node stopped cleanly at the halt for upgrade name
// (the clean-stop path; the re-exec path switches in Boot instead). It
// checks data/upgrade-info.json names the upgrade, takes the proof for the plan
// that file holds (the halt waiter's, if the file is provably unchanged since,
// else a new one from the Verifier, refusing on any error), backs up data (first
// attempt only) and runs pre-upgrade as configured, flips `current` atomically
// and execs the proven descriptor with the same argv, env (plus markers and the
// home lock) and working directory. It returns only on failure; an exec failure
// is an *ExecError, and the caller should exit non-zero so a process manager
// restarts into Boot.
//
// When the Binary is marked AwaitsPreUpgrade, pre-upgrade is started but not
// waited for: Switch execs the new binary right away with EnvExecPreUpgrade
// naming the child, so the new binary's start-up overlaps pre-upgrade's; the new
// binary waits for it in AwaitPreUpgrade before reading any configuration and
// flips `current` itself. If the exec fails, Switch waits for (or kills at its
// timeout) the child before returning, and `current` stays unflipped.
func (r *Relauncher) Switch(name string) error {
	return r.SwitchContext(context.Background(), name)
}

// SwitchContext is Switch with a context bounding verification and backup, and
// pre-upgrade (only a wait after a failed exec when pre-upgrade overlaps the exec).
func (r *Relauncher) SwitchContext(ctx context.Context, name string) error {
	if _, err := r.layout.DirName(name); err != nil {
		return fmt.Errorf("relauncher: %w", err)
	}
	p, ok, err := r.layout.ReadUpgradeInfo()
	if err != nil {
		return fmt.Errorf("relauncher: %w", err)
	}
	if !ok {
		return fmt.Errorf("%w: %s is missing or empty; refusing to switch to %q before x/upgrade halted for it",
			ErrNoUpgradeInfo, r.layout.UpgradeInfo(), name)
	}
	if p.Name != name {
		return fmt.Errorf("%w: switch to %q but upgrade-info.json names %q", ErrUpgradeMismatch, name, p.Name)
	}
	b, ok := r.verifiedAtHalt(p)
	if !ok {
		if b, err = r.verify(ctx, p); err != nil {
			return r.missing(p, err)
		}
	}
	self, err := r.os.Executable()
	if err != nil {
		self = ""
	}
	return r.switchTo(ctx, p, b, self, false)
}

// verifiedAtHalt takes the proof the halt waiter got for p if its descriptor's
// file is provably unchanged since (Recheck), so the switch does not verify a
// second time while the chain is down. Any doubt closes it, and the caller
// verifies again.
func (r *Relauncher) verifiedAtHalt(p home.Plan) (Binary, bool) {
	r.mu.Lock()
	a := r.verified
	r.verified = nil
	r.mu.Unlock()
	if a == nil {
		return Binary{}, false
	}
	if a.plan != p || a.bin.Verified.Recheck() != nil {
		a.bin.Close()
		return Binary{}, false
	}
	return a.bin, true
}

// switchTo prepares (backup, pre-upgrade), flips `current` and execs b, which it
// always closes when the exec returns. For a boot redirect, preparation is
// skipped when `current` already points to the upgrade: the flip is the last step
// of a completed preparation. A Switch to a binary that awaits its pre-upgrade
// starts it and leaves it and the flip to that binary; a boot redirect always
// waits. Every run of the file (pre-upgrade, exec) goes through the proven
// descriptor right after a Recheck, and the flip follows a Recheck.
func (r *Relauncher) switchTo(ctx context.Context, p home.Plan, b Binary, self string, redirect bool) error {
	v := b.Verified
	defer v.Close()
	dir, err := r.layout.UpgradeDir(p.Name)
	if err != nil {
		return err
	}
	rel, err := r.layout.CurrentTarget(p.Name)
	if err != nil {
		return err
	}
	env, err := r.execEnv(self, v.Path, redirect)
	if err != nil {
		return err
	}
	att := r.layout.Attempts(p)
	if att.Count >= r.cfg.MaxSwitchAttempts {
		return fmt.Errorf("%w: the binary for upgrade %q at height %d was started %d times and did not get past the upgrade "+
			"(most likely it halts again because it lacks the upgrade handler %q): put the right binary in place (stage it again) and then remove %s",
			ErrExecLoop, p.Name, p.Height, att.Count, p.Name, filepath.Join(r.layout.Root(), home.AttemptsFile))
	}
	// child is the pre-upgrade left for the new binary to wait for; until the exec,
	// a failure must wait for it (reap) so none runs on mid-write unobserved.
	var child *preUpgradeChild
	fail := func(err error) error {
		if child != nil {
			r.reap(ctx, child)
		}
		return err
	}
	backup := ""
	if !redirect || !r.layout.CurrentIs(dir) {
		if backup, child, err = r.prepare(ctx, p, v, rel, att, !redirect && b.AwaitsPreUpgrade); err != nil {
			return err
		}
		if child != nil {
			env = append(env, EnvExecPreUpgrade+"="+encodeMarker(child.marker))
			r.log.Info("invisor: pre-upgrade started; the new binary waits for it before reading its configuration",
				"path", v.Path, "pid", child.marker.Pid)
		}
	}
	argv := r.os.Args()
	if len(argv) == 0 {
		argv = []string{v.Path}
	}
	// A file already changed is refused before it counts as an attempt.
	if err := v.Recheck(); err != nil {
		return fail(err)
	}
	a, err := r.layout.NoteAttempt(p, backup)
	if err != nil {
		return fail(fmt.Errorf("relauncher: record the switch attempt (the exec-loop guard): %w", err))
	}
	wd, _ := r.os.Getwd()
	r.log.Info("invisor: exec", "upgrade", p.Name, "height", p.Height, "path", v.Path,
		"sha256", v.Record.SHA256, "attempt", a.Count, "max_attempts", r.cfg.MaxSwitchAttempts,
		"pid", r.os.Getpid(), "cwd", wd, "argv", argv)
	if err := v.Recheck(); err != nil {
		return fail(err)
	}
	// After every child was started: what is inheritable now goes to the new image only.
	env, undo, err := r.inherit(v, env)
	if err != nil {
		return fail(err)
	}
	err = r.os.Exec(v.ExecPath(), argv, env)
	undo()
	if err == nil {
		// Only a fake returns nil; the real exec never returns on success.
		return nil
	}
	return fail(newExecError(v.Path, err))
}

// prepare takes the steps before upgrade p's proven binary v first runs: a data
// backup (first attempt only: att is the ledger's entry for p), pre-upgrade as
// configured, then the flip of `current` to rel, each run of the file and the
// flip right after a Recheck. With overlap (a Switch into a binary that awaits
// its pre-upgrade) pre-upgrade is started, not waited for: the child is
// returned and the flip left to the new binary. backup is the backup taken now
// ("" if none).
func (r *Relauncher) prepare(ctx context.Context, p home.Plan, v *home.Verified, rel string, att home.Attempt, overlap bool) (backup string, child *preUpgradeChild, err error) {
	if r.cfg.Backup {
		if att.Backup != "" {
			r.log.Info("invisor: no new data backup: the first attempt's backup stands",
				"upgrade", p.Name, "attempt", att.Count+1, "backup", att.Backup)
			if _, err := os.Stat(att.Backup); err != nil {
				r.log.Warn("invisor: the first attempt's data backup is gone", "backup", att.Backup, "err", err)
			}
		} else if backup, err = r.backup(ctx, p.Name); err != nil {
			return "", nil, err
		}
	}
	link := r.layout.Current()
	switch {
	case r.cfg.RunPreUpgrade && overlap:
		if err := v.Recheck(); err != nil {
			return "", nil, err
		}
		if child, err = r.startPreUpgrade(v, link, rel); err != nil {
			return "", nil, err
		}
		return backup, child, nil
	case r.cfg.RunPreUpgrade:
		if err := r.preUpgrade(ctx, v); err != nil {
			return "", nil, err
		}
	}
	if err := v.Recheck(); err != nil {
		return "", nil, err
	}
	if err := home.Symlink(rel, link); err != nil {
		return "", nil, fmt.Errorf("relauncher: flip %s: %w", link, err)
	}
	r.log.Info("invisor: current link flipped", "target", rel)
	return backup, nil, nil
}

// inherit makes what the new image needs survive the exec: the home lock (its
// EnvLock entry is appended to env) and, for a script, the verified descriptor
// its interpreter reads. undo restores close-on-exec after a failed exec.
func (r *Relauncher) inherit(v *home.Verified, env []string) ([]string, func(), error) {
	var undos []func()
	undo := func() {
		for _, u := range undos {
			u()
		}
	}
	if v != nil && isScript(v) && v.ExecPath() != v.Path {
		fd := int(v.File().Fd())
		if err := home.ClearCloseOnExec(fd); err != nil {
			return nil, undo, fmt.Errorf("relauncher: keep %s open for its interpreter: %w", v.Path, err)
		}
		undos = append(undos, func() { setCloseOnExec(fd) })
	}
	if lk := r.os.Lock; lk != nil {
		kv, err := lk.InheritEnv()
		if err != nil {
			undo()
			return nil, func() {}, fmt.Errorf("relauncher: hand the home lock to the new binary: %w", err)
		}
		env = append(env, kv)
		undos = append(undos, lk.Keep)
	}
	return env, undo, nil
}

// execedBy returns the executable that exec'd this process (EnvExecedFrom), or "".
func (r *Relauncher) execedBy() string { return r.getenv(EnvExecedFrom) }

// getenv is key's value in the process environment (OS.Environ), "" if unset.
func (r *Relauncher) getenv(key string) string {
	for _, kv := range r.os.Environ() {
		if k, v, _ := strings.Cut(kv, "="); k == key {
			return v
		}
	}
	return ""
}

// execEnv is the current environment with the exec markers updated (an inherited
// home lock entry dropped: inherit adds the live one); it enforces the per-PID
// loop guard.
func (r *Relauncher) execEnv(self, target string, redirect bool) ([]string, error) {
	in := r.os.Environ()
	out := make([]string, 0, len(in)+4)
	gen := 0
	prevTarget := ""
	for _, kv := range in {
		k, v, _ := strings.Cut(kv, "=")
		switch k {
		case EnvExecGeneration:
			gen, _ = strconv.Atoi(v)
			continue
		case EnvRedirectTarget:
			prevTarget = v
			continue
		case EnvExecedFrom, EnvExecPreUpgrade, EnvReexecHalt, home.EnvLock:
			continue
		}
		out = append(out, kv)
	}
	if gen >= r.cfg.MaxExecGeneration {
		return nil, fmt.Errorf("%w: %s=%d reached the limit %d", ErrExecLoop, EnvExecGeneration, gen, r.cfg.MaxExecGeneration)
	}
	if redirect && prevTarget != "" && (prevTarget == target || home.SameFile(prevTarget, target)) {
		return nil, fmt.Errorf("%w: already redirected to %s, which did not recognise itself as the binary for the upgrade; check %s and the staged binary",
			ErrExecLoop, target, home.UpgradeInfoFile)
	}
	out = append(out, EnvExecGeneration+"="+strconv.Itoa(gen+1))
	if self != "" {
		out = append(out, EnvExecedFrom+"="+self)
	}
	if redirect {
		out = append(out, EnvRedirectTarget+"="+target)
	}
	return out, nil
}

// isSameBinary reports whether the running executable self (a file other than the
// staged one, such as the operator's ExecStart path) has the recorded size and
// SHA-256.
func isSameBinary(ctx context.Context, self string, rec home.Record) (bool, error) {
	f, err := os.Open(self)
	if err != nil {
		return false, fmt.Errorf("relauncher: executable: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return false, fmt.Errorf("relauncher: stat executable: %w", err)
	}
	if fi.Size() != rec.Size {
		return false, nil
	}
	d, err := home.HashFile(ctx, f)
	if err != nil {
		return false, fmt.Errorf("relauncher: hash executable: %w", err)
	}
	return strings.EqualFold(d.SHA256, rec.SHA256), nil
}
