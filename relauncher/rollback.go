package relauncher

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/invisor/invisor/internal/history"
	"github.com/invisor/invisor/internal/home"
)

// Rollback: undo the last switch
//
// Rollback restores the data backup invisor took at the switch to the upgrade
// data/upgrade-info.json names, points `current` back at the binary that ran
// before (from the backup's manifest), forgets that upgrade's switch attempts and
// records a "rollback" entry in the history. It runs with the node stopped: it
// takes the home lock itself, for the whole operation.
//
// Guarantees:
//   - Nothing is lost. The data directory being replaced is moved aside, as
//     data-rolledback-<time>-<name> in the backup directory (or beside data/ when
//     the backup directory is on another filesystem); the backup is only read,
//     so it stays usable for another rollback (its tables are hard-linked into
//     the restored data, everything else is copied: copyTree, the backup's own
//     copier).
//   - The live data/priv_validator_state.json stays: the restored data gets a copy
//     of the one in the data it replaces, never the backup's older one, with
//     which a validator could sign a height again (double-sign).
//   - It refuses, changing nothing, while the node runs (ErrNodeRunning), when
//     there is no switch to undo (ErrNothingToRollBack), when invisor took no
//     backup (ErrNoBackup), or when the newest backup was taken for another
//     upgrade than the one being undone (ErrBackupMismatch); every refusal says
//     what to do.
//   - On Linux the restored copy and data/ change places in one rename
//     (RENAME_EXCHANGE), so data/ is never missing.
//
// What is on disk after a crash: before the exchange, a partial or complete
// restored copy at data-rolledback-...restoring, and data/ untouched; between the
// exchange and the next rename, the replaced data at that ".restoring" name (a
// later rollback warns about such names, and nothing removes them by itself);
// after it, `current` not yet pointed back (run rollback again: it finds the
// switch still to undo, moves the restored data aside too and restores again).
// Where the exchange is unavailable (other systems, some filesystems), the
// replaced data is renamed aside first and the restored copy into data/ next: a
// crash between the two leaves no data/, and the operator moves the ".restoring"
// copy there by hand.
//
// It does not put a fixed binary in place (`invisor stage NAME --replace`), so the
// node boots into the same upgrade again (upgrade-info.json is part of the
// backup); it does not restore a priv_validator_state.json kept outside data/
// (priv_validator_state_file in config.toml), which it never touches.

// Rollback refusals. Each is wrapped with what was found and what to do.
var (
	// ErrNodeRunning: a node (or another invisor command) holds the home lock.
	ErrNodeRunning = errors.New("relauncher: the node is running")
	// ErrNothingToRollBack: no switch to undo (no upgrade-info.json, or `current`
	// does not point to the upgrade it names).
	ErrNothingToRollBack = errors.New("relauncher: no switch to roll back")
	// ErrNoBackup: invisor took no backup that can be restored.
	ErrNoBackup = errors.New("relauncher: no data backup to restore")
	// ErrBackupMismatch: the newest backup was taken for another upgrade.
	ErrBackupMismatch = errors.New("relauncher: the newest backup is not for the upgrade being undone")
)

const (
	// ValidatorStateFile is CometBFT's signing state under data/, which a rollback
	// keeps from the live data.
	ValidatorStateFile = "priv_validator_state.json"
	rolledBackPrefix   = "data-rolledback-"
	restoringSuffix    = ".restoring"
)

// RollbackOptions tune Rollback.
type RollbackOptions struct {
	// DryRun checks everything and reports what would be done, changing nothing.
	DryRun bool
	// Environ is the process environment, for a home lock handed over by an exec
	// (home.Layout.Acquire); nil means none.
	Environ []string
	// Now names the moved-aside data; zero means time.Now().
	Now time.Time
}

// RollbackReport says what Rollback did, or with DryRun would do.
type RollbackReport struct {
	DryRun bool `json:"dry_run"`
	// Upgrade is the upgrade whose switch is undone (data/upgrade-info.json).
	Upgrade home.Plan `json:"upgrade"`
	// Backup is the backup restored.
	Backup BackupManifest `json:"backup"`
	// Data is the data directory restored (symlinks resolved); MovedAside is where
	// the data it held went.
	Data       string `json:"data"`
	MovedAside string `json:"moved_aside"`
	// CurrentBefore and CurrentAfter are the `current` targets; PreviousBin is the
	// binary that runs next through `current` (the one that ran before the switch).
	CurrentBefore string `json:"current_before"`
	CurrentAfter  string `json:"current_after"`
	PreviousBin   string `json:"previous_bin"`
	// ValidatorState is the live priv_validator_state.json kept in the restored
	// data; empty when data/ had none.
	ValidatorState string      `json:"validator_state,omitempty"`
	Stats          BackupStats `json:"stats"`
	// Warnings are what went wrong without stopping the rollback, each with what
	// to do.
	Warnings []string `json:"warnings,omitempty"`
}

// Rollback undoes the switch to the upgrade data/upgrade-info.json names, as
// described above. cfg is the node's relauncher configuration (Home, DaemonName,
// DisableRecase, Backup, BackupDir are used).
func Rollback(ctx context.Context, cfg Config, opts RollbackOptions) (RollbackReport, error) {
	rep := RollbackReport{DryRun: opts.DryRun}
	if err := cfg.Validate(); err != nil {
		return rep, err
	}
	l, err := home.New(cfg.Home, cfg.DaemonName, home.Options{DisableRecase: cfg.DisableRecase})
	if err != nil {
		return rep, fmt.Errorf("relauncher: %w", err)
	}
	cfg.Home = l.Home()
	cfg = cfg.withDefaults()
	now := opts.Now
	if now.IsZero() {
		now = time.Now()
	}

	lock, err := l.Acquire(opts.Environ)
	var locked *home.LockedError
	if errors.As(err, &locked) {
		who := "a process"
		if locked.PID > 0 {
			who = fmt.Sprintf("process %d", locked.PID)
		}
		return rep, fmt.Errorf("%w: %s holds %s; stop the node first (e.g. `systemctl stop <unit>`), then run rollback again",
			ErrNodeRunning, who, locked.Path)
	}
	if err != nil {
		return rep, fmt.Errorf("relauncher: rollback: %w", err)
	}
	defer lock.Release()

	plan, err := rollbackPlan(l, cfg, now, &rep)
	if err != nil || opts.DryRun {
		return rep, err
	}
	if err := restore(ctx, plan, &rep); err != nil {
		return rep, err
	}
	if err := home.Symlink(rep.CurrentAfter, l.Current()); err != nil {
		return rep, fmt.Errorf("relauncher: rollback: the data is restored (the replaced data is at %s), but `current` could not be pointed back: %w; point it by hand: ln -sfn %s %s",
			rep.MovedAside, err, rep.CurrentAfter, l.Current())
	}
	if err := l.ClearAttempts(home.Plan{Name: rep.Upgrade.Name, Height: rep.Upgrade.Height}); err != nil {
		rep.Warnings = append(rep.Warnings, fmt.Sprintf("the switch attempts of %q could not be cleared (%v): remove %s before starting the node, or the exec-loop guard may refuse the switch",
			rep.Upgrade.Name, err, filepath.Join(l.Root(), home.AttemptsFile)))
	}
	from, _ := l.UpgradeBin(rep.Upgrade.Name)
	if err := history.RecordRollback(l.Home(), history.Rollback{Upgrade: rep.Upgrade.Name, Height: rep.Upgrade.Height,
		From: from, To: rep.PreviousBin, Backup: rep.Backup.Path, MovedAside: rep.MovedAside}); err != nil {
		rep.Warnings = append(rep.Warnings, fmt.Sprintf("the rollback could not be recorded in %s (%v); only `invisor history` is affected",
			history.Path(l.Home()), err))
	}
	return rep, nil
}

// restorePlan is what rollbackPlan decided, for restore.
type restorePlan struct {
	restoring string // where the restored copy is built, on data's filesystem
}

// rollbackPlan finds the switch to undo, the backup and the binary to point back
// to, and where the replaced data goes, and fills rep; it refuses what cannot be
// undone. It changes nothing.
func rollbackPlan(l home.Layout, cfg Config, now time.Time, rep *RollbackReport) (restorePlan, error) {
	var none restorePlan
	p, ok, err := l.ReadUpgradeInfo()
	if err != nil {
		return none, fmt.Errorf("relauncher: rollback: %w", err)
	}
	if !ok {
		return none, fmt.Errorf("%w: %s is missing or empty: this node has not halted for an upgrade, so there is no switch to undo",
			ErrNothingToRollBack, l.UpgradeInfo())
	}
	rep.Upgrade = p
	dir, err := l.UpgradeDir(p.Name)
	if err != nil {
		return none, fmt.Errorf("relauncher: rollback: %w", err)
	}
	cur, ok, err := l.CurrentDir()
	if err != nil {
		return none, fmt.Errorf("relauncher: rollback: %w", err)
	}
	if !ok || !home.SameFile(cur, dir) {
		shown := "nowhere (no link)"
		if ok {
			shown = cur
		}
		return none, fmt.Errorf("%w: %s names upgrade %q at height %d, but `current` points to %s, not %s: the switch to %q was not made, or it was rolled back already",
			ErrNothingToRollBack, home.UpgradeInfoFile, p.Name, p.Height, shown, dir, p.Name)
	}
	rep.CurrentBefore = cur

	ms, err := ListBackups(cfg.BackupDir)
	if err != nil {
		return none, err
	}
	if len(ms) == 0 {
		if !cfg.Backup {
			return none, fmt.Errorf("%w: backups are off (unsafe-skip-backup = true in app.toml [invisor], or UNSAFE_SKIP_BACKUP=true), so none was taken at the switch to %q; "+
				"this switch can only be undone from a snapshot of your own. Turn backups on for the next upgrade: unsafe-skip-backup = false, and unset UNSAFE_SKIP_BACKUP",
				ErrNoBackup, p.Name)
		}
		if att := l.Attempts(p); att.Backup != "" {
			return none, fmt.Errorf("%w: the backup taken at the switch to %q, %s (the switch attempts ledger names it), is gone or no longer describes itself (%s); "+
				"undo the switch from a snapshot of your own", ErrNoBackup, p.Name, att.Backup, BackupManifestFile)
		}
		return none, fmt.Errorf("%w: %s holds no backup invisor took (none with its %s manifest): backups were off at the switch (unsafe-skip-backup), went to another backup-dir (DAEMON_DATA_BACKUP_DIR), or were removed; "+
			"undo the switch from a snapshot of your own", ErrNoBackup, cfg.BackupDir, BackupManifestFile)
	}
	m := ms[0]
	if m.Upgrade != p.Name || m.Height != p.Height {
		off := ""
		if !cfg.Backup {
			off = " (backups are off now, unsafe-skip-backup, so none was taken at this switch)"
		}
		return none, fmt.Errorf("%w: the newest backup, %s, was taken at the switch to %q at height %d, but the switch being undone is to %q at height %d (%s and `current`)%s: "+
			"it is not the data as it was before this switch. Nothing was changed; restore by hand only if you know which data you want",
			ErrBackupMismatch, m.Path, m.Upgrade, m.Height, p.Name, p.Height, home.UpgradeInfoFile, off)
	}
	rep.Backup = m

	if err := previousBinary(l, m, dir, rep); err != nil {
		return none, err
	}

	data, err := filepath.EvalSymlinks(l.DataDir())
	if err != nil {
		return none, fmt.Errorf("relauncher: rollback: %w", err)
	}
	rep.Data = data
	// The restored copy is built on data's filesystem (it takes data's place by a
	// rename), in the backup directory when that is the same filesystem.
	aside := cfg.BackupDir
	if same, err := sameFS(aside, data); err != nil || !same {
		aside = filepath.Dir(data)
		if same, err := sameFS(aside, data); err != nil || !same {
			return none, fmt.Errorf("relauncher: rollback: %s is on another filesystem than %s (a mount point?): rollback cannot swap it by a rename; restore by hand: stop here, copy %s into %s keeping %s, and point `current` at %s",
				data, aside, m.Path, data, ValidatorStateFile, m.Previous)
		}
	}
	_, rep.MovedAside = freeName(aside, rolledBackPrefix, p.Name, now, restoringSuffix)
	rep.Warnings = append(rep.Warnings, interrupted(aside)...)

	live := filepath.Join(data, ValidatorStateFile)
	if fi, err := os.Stat(live); err == nil && fi.Mode().IsRegular() {
		rep.ValidatorState = live
	} else if _, err := os.Stat(filepath.Join(m.Path, ValidatorStateFile)); err == nil {
		rep.Warnings = append(rep.Warnings, fmt.Sprintf("%s has no %s, so the backup's (older) copy is restored; if this node signs blocks, check it before starting: "+
			"an older signing state lets a validator sign a height again (double-sign)", data, ValidatorStateFile))
	}

	need, free, err := spaceFor(m.Path, aside)
	if err != nil {
		return none, fmt.Errorf("relauncher: rollback: %w", err)
	}
	if need+backupFreeMargin > free {
		return none, fmt.Errorf("%w: restoring %s needs %d bytes (+%d margin) in %s, %d free; free space there, then run rollback again",
			ErrNoSpace, m.Path, need, backupFreeMargin, aside, free)
	}
	return restorePlan{restoring: rep.MovedAside + restoringSuffix}, nil
}

// previousBinary checks the binary the backup's manifest says ran before and
// fills rep.CurrentAfter and rep.PreviousBin.
func previousBinary(l home.Layout, m BackupManifest, upgradeDir string, rep *RollbackReport) error {
	prev := m.Previous
	switch {
	case prev == "":
		return fmt.Errorf("%w: the backup's manifest %s does not say which binary ran before the switch (`current` was not a link then); point `current` by hand and restore the data by hand",
			ErrNoBackup, m.ManifestPath())
	case home.SameFile(prev, upgradeDir):
		return fmt.Errorf("%w: the backup %s was taken when `current` already pointed to %s, the upgrade being undone: it does not say which binary ran before",
			ErrBackupMismatch, m.Path, upgradeDir)
	case !home.SameFile(prev, l.GenesisTarget()) && filepath.Dir(filepath.Clean(prev)) != l.UpgradesRoot():
		return fmt.Errorf("%w: the backup's manifest %s names %s as the binary that ran before, which is not under %s",
			ErrBackupMismatch, m.ManifestPath(), prev, l.Root())
	}
	bin := filepath.Join(prev, home.BinDir, l.Daemon())
	if fi, err := os.Stat(bin); err != nil || !fi.Mode().IsRegular() {
		return fmt.Errorf("relauncher: rollback: the binary that ran before the switch, %s, is missing (%v): put it back (for an upgrade, `%s invisor stage NAME --file ...`), then run rollback again",
			bin, err, l.Daemon())
	}
	if m.PreviousSHA256 != "" {
		for _, in := range l.Installs() {
			if home.SameFile(in.Dir, prev) && (in.Err != nil || in.Record.SHA256 != m.PreviousSHA256) {
				rep.Warnings = append(rep.Warnings, fmt.Sprintf("%s is not the binary that ran before the switch (sha256 %s then; its record now: %s): the node runs what is there now",
					bin, m.PreviousSHA256, recordSHA(in)))
			}
		}
	}
	rep.CurrentAfter, rep.PreviousBin = prev, bin
	return nil
}

func recordSHA(in home.Installed) string {
	if in.Err != nil {
		return in.Err.Error()
	}
	return "sha256 " + in.Record.SHA256
}

// interrupted lists what an interrupted rollback left in dir.
func interrupted(dir string) []string {
	ents, _ := os.ReadDir(dir)
	var out []string
	for _, e := range ents {
		if n := e.Name(); strings.HasPrefix(n, rolledBackPrefix) && strings.HasSuffix(n, restoringSuffix) {
			out = append(out, fmt.Sprintf("an interrupted rollback left %s: it holds a copy of a backup, or the data that rollback replaced; check it and remove it by hand",
				filepath.Join(dir, n)))
		}
	}
	return out
}

// restore builds the restored copy (the backup, with the live validator state)
// and puts it in data's place, moving the replaced data aside.
func restore(ctx context.Context, plan restorePlan, rep *RollbackReport) error {
	dfi, err := os.Stat(rep.Data)
	if err != nil {
		return fmt.Errorf("relauncher: rollback: %w", err)
	}
	if err := os.Mkdir(plan.restoring, dfi.Mode().Perm()|0o700); err != nil {
		return fmt.Errorf("relauncher: rollback: %w", err)
	}
	ok := false
	defer func() {
		if !ok {
			_ = os.RemoveAll(plan.restoring)
		}
	}()
	start := time.Now()
	st, err := copyTree(ctx, rep.Backup.Path, plan.restoring)
	if err != nil {
		return fmt.Errorf("relauncher: rollback: copy %s: %w; nothing was changed", rep.Backup.Path, err)
	}
	st.Took = time.Since(start)
	rep.Stats = st
	if rep.ValidatorState != "" {
		fi, err := os.Stat(rep.ValidatorState)
		if err == nil {
			_, err = home.CopyFile(rep.ValidatorState, filepath.Join(plan.restoring, ValidatorStateFile), fi.Mode().Perm())
		}
		if err != nil {
			return fmt.Errorf("relauncher: rollback: keep the live %s: %w; nothing was changed", rep.ValidatorState, err)
		}
	}
	if err := home.SyncDir(filepath.Dir(plan.restoring)); err != nil {
		return fmt.Errorf("relauncher: rollback: %w; nothing was changed", err)
	}
	ok = true
	return swapData(plan.restoring, rep.Data, rep.MovedAside)
}

// swapData puts the directory restored in data's place and moves data to aside.
func swapData(restored, data, aside string) error {
	err := exchange(restored, data)
	switch {
	case err == nil:
		if err := os.Rename(restored, aside); err != nil {
			return fmt.Errorf("relauncher: rollback: the data is restored, but the replaced data stays at %s (rename to %s: %w); `current` was not pointed back: run rollback again",
				restored, aside, err)
		}
	case errors.Is(err, errNoExchange):
		if err := os.Rename(data, aside); err != nil {
			_ = os.RemoveAll(restored)
			return fmt.Errorf("relauncher: rollback: move %s aside: %w; nothing was changed", data, err)
		}
		if err := os.Rename(restored, data); err != nil {
			if berr := os.Rename(aside, data); berr != nil {
				return fmt.Errorf("relauncher: rollback: %s is missing: the replaced data is at %s and the restored copy at %s (%w; moving it back: %v); move one of them to %s by hand",
					data, aside, restored, err, berr, data)
			}
			_ = os.RemoveAll(restored)
			return fmt.Errorf("relauncher: rollback: put the restored copy in place: %w; nothing was changed", err)
		}
	default:
		_ = os.RemoveAll(restored)
		return fmt.Errorf("relauncher: rollback: swap %s and the restored copy: %w; nothing was changed", data, err)
	}
	var errs []error
	for _, d := range []string{filepath.Dir(data), filepath.Dir(aside)} {
		if err := home.SyncDir(d); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// errNoExchange: the system or filesystem cannot exchange two names atomically.
var errNoExchange = errors.New("atomic exchange not supported")
