package relauncher

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
)

// Relauncher owns the chain node's process lifecycle: boot redirect, the halt
// coordinator and the switch to a new binary. It is safe for concurrent use.
type Relauncher struct {
	cfg  Config
	home string
	v    Verifier
	log  Logger
	os   OS

	// Halt coordinator state; the waiter goroutine is the only writer of armed.
	mu    sync.Mutex
	req   *haltReq
	armed string
	// verified is the binary the halt waiter hashed, with the stamp taken before.
	verified *verifiedBinary
	started  bool
	closed   bool
	wake     chan struct{}
	done     chan struct{}
	exited   chan struct{}
}

// verifiedBinary is a binary verified at the halt and the file stamp taken just
// before its hash.
type verifiedBinary struct {
	bin   Binary
	stamp FileStamp
}

// New checks cfg and the home directory and returns a Relauncher. log may be nil;
// zero fields of osys are filled with the real system calls.
func New(cfg Config, v Verifier, log Logger, osys OS) (*Relauncher, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if v == nil {
		return nil, errors.New("relauncher: nil Verifier")
	}
	if log == nil {
		log = nopLogger{}
	}
	home, err := filepath.Abs(cfg.Home)
	if err != nil {
		return nil, fmt.Errorf("relauncher: home: %w", err)
	}
	cfg.Home = home
	cfg = cfg.withDefaults()
	if fi, err := os.Stat(home); err != nil {
		return nil, fmt.Errorf("relauncher: home: %w", err)
	} else if !fi.IsDir() {
		return nil, fmt.Errorf("relauncher: home %s is not a directory", home)
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
		home:   home,
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

// trusted calls the Verifier; a panic in it becomes an error.
func (r *Relauncher) trusted(name string) (b Binary, err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("relauncher: verifier panicked: %v", p)
		}
	}()
	b, err = r.v.Trusted(name)
	if err == nil && b.Path == "" {
		err = errors.New("relauncher: verifier returned an empty path")
	}
	return b, err
}

func (r *Relauncher) missing(name string, height int64, err error) *MissingBinaryError {
	return &MissingBinaryError{
		Name: name, Height: height, Path: r.ExpectedBinary(name), Daemon: r.cfg.DaemonName,
		DownloadsEnabled: r.cfg.DownloadsEnabled, Err: err,
	}
}

// Boot decides, before any database is opened, whether this executable is the one
// the chain's state needs, and execs the right one if not:
//   - this process awaited its pre-upgrade (OS.AwaitedPreUpgrade): logs how it went
//     and, if it failed, returns its *PreUpgradeError (`current` is unchanged);
//   - no (or empty) data/upgrade-info.json: returns nil, run as is;
//   - upgrade-info names N and this executable is the trusted binary for N (same
//     file, or same size and SHA-256): returns nil;
//   - a trusted binary for N exists: unless `current` already points to it, backs
//     up and runs pre-upgrade as configured and flips `current`; then execs it with
//     the same argv, env (plus markers) and working directory. Returns only on failure;
//   - no trusted binary: returns a *MissingBinaryError saying what to put where.
//
// A second redirect to the same target in a row is refused with ErrExecLoop.
func (r *Relauncher) Boot() error { return r.BootContext(context.Background()) }

// BootContext is Boot with a context bounding backup and pre-upgrade.
func (r *Relauncher) BootContext(ctx context.Context) error {
	if err := r.os.AwaitedPreUpgrade.Report(r.log); err != nil {
		return err
	}
	ui, ok, err := ReadUpgradeInfo(r.home)
	if err != nil {
		return fmt.Errorf("%w; fix or remove the file only if you know the chain is not at an upgrade height", err)
	}
	if !ok {
		return nil
	}
	self, err := r.os.Executable()
	if err != nil {
		return fmt.Errorf("relauncher: executable: %w", err)
	}
	// Just exec'd by invisor into the upgrade's binary: Switch verified this very
	// file (and its stamp) right before the exec, and a running executable cannot
	// be written to, so hashing it again would only delay the new binary's start.
	if r.execedBy() != "" && sameFile(self, r.ExpectedBinary(ui.Name)) {
		r.log.Info("invisor: running the binary the chain needs (verified before the exec)",
			"upgrade", ui.Name, "height", ui.Height, "path", self)
		return nil
	}
	bin, verr := r.trusted(ui.Name)
	if verr != nil {
		// Running the binary from its cosmovisor place (e.g. via current/bin, or an
		// operator who migrated from cosmovisor without staging records): run as is.
		if sameFile(self, r.ExpectedBinary(ui.Name)) {
			r.log.Warn("invisor: running the binary at the upgrade's path, which staging has not verified",
				"upgrade", ui.Name, "height", ui.Height, "path", self, "reason", verr)
			return nil
		}
		return r.missing(ui.Name, ui.Height, verr)
	}
	same, err := isSameBinary(self, bin)
	if err != nil {
		return err
	}
	if same {
		r.log.Info("invisor: running the binary the chain needs", "upgrade", ui.Name, "height", ui.Height, "path", self)
		return nil
	}
	r.log.Warn("invisor: this executable is not the binary the chain needs; redirecting",
		"upgrade", ui.Name, "height", ui.Height, "self", self, "target", bin.Path)
	return r.switchTo(ctx, ui, bin, self, true)
}

// Switch is called after the node stopped cleanly at the halt for upgrade name. It
// checks data/upgrade-info.json names the upgrade, re-verifies the binary through
// the Verifier (refusing on any error), backs up data and runs pre-upgrade as
// configured, flips `current` atomically and execs the new binary with the same
// argv, env (plus markers) and working directory. It returns only on failure; an
// exec failure is an *ExecError, and the caller should exit non-zero so a process
// manager restarts into Boot.
//
// When the Verifier marked the binary AwaitsPreUpgrade, pre-upgrade is started but
// not waited for: Switch execs the new binary right away with EnvExecPreUpgrade
// naming the child, so the new binary's start-up overlaps pre-upgrade's; the new
// binary waits for it in AwaitPreUpgrade before reading any configuration and
// flips `current` itself. If the exec fails, Switch waits for (or kills at its
// timeout) the child before returning, and `current` stays unflipped.
func (r *Relauncher) Switch(name string) error {
	return r.SwitchContext(context.Background(), name)
}

// SwitchContext is Switch with a context bounding backup and pre-upgrade (only
// the backup, and a wait after a failed exec, when pre-upgrade overlaps the exec).
func (r *Relauncher) SwitchContext(ctx context.Context, name string) error {
	if err := validUpgradeName(name); err != nil {
		return err
	}
	ui, ok, err := ReadUpgradeInfo(r.home)
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("%w: %s is missing or empty; refusing to switch to %q before x/upgrade halted for it",
			ErrNoUpgradeInfo, filepath.Join(r.home, UpgradeInfoFile), name)
	}
	if ui.Name != name {
		return fmt.Errorf("%w: switch to %q but upgrade-info.json names %q", ErrUpgradeMismatch, name, ui.Name)
	}
	bin, err := r.verifiedAtHalt(name)
	if err != nil {
		if bin, err = r.trusted(name); err != nil {
			return r.missing(name, ui.Height, err)
		}
	}
	self, err := r.os.Executable()
	if err != nil {
		self = ""
	}
	return r.switchTo(ctx, ui, bin, self, false)
}

// verifiedAtHalt returns the binary the halt waiter hashed for name if the file
// is provably unchanged since (same device, inode, size, mode, mtime and ctime
// as stamped before the hash), so the switch does not hash it a second time
// while the chain is down. Any doubt is an error and the caller verifies again.
func (r *Relauncher) verifiedAtHalt(name string) (Binary, error) {
	r.mu.Lock()
	v := r.verified
	r.mu.Unlock()
	if v == nil || v.bin.Name != name {
		return Binary{}, errors.New("relauncher: not verified at the halt")
	}
	if err := v.stamp.Recheck(v.bin.Path); err != nil {
		return Binary{}, err
	}
	return v.bin, nil
}

// switchTo prepares (backup, pre-upgrade), flips `current` and execs bin.
// For a boot redirect, preparation is skipped when `current` already points to the
// upgrade: the flip is the last step of a completed preparation. A Switch to a
// binary that awaits its pre-upgrade starts it and leaves it and the flip to that
// binary; a boot redirect always waits.
func (r *Relauncher) switchTo(ctx context.Context, ui UpgradeInfo, bin Binary, self string, redirect bool) error {
	dir, err := r.upgradeDirOf(bin)
	if err != nil {
		return err
	}
	stamp, err := statBinary(bin)
	if err != nil {
		return err
	}
	env, err := r.execEnv(self, bin.Path, redirect)
	if err != nil {
		return err
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
	if !redirect || !r.currentIs(dir) {
		if r.cfg.Backup {
			if _, err := r.backup(ctx, ui.Name); err != nil {
				return err
			}
		}
		rel := filepath.Join(UpgradesDir, filepath.Base(dir))
		link := filepath.Join(r.Root(), CurrentLink)
		switch {
		case r.cfg.RunPreUpgrade && !redirect && bin.AwaitsPreUpgrade:
			if child, err = r.startPreUpgrade(bin.Path, link, rel); err != nil {
				return err
			}
			env = append(env, EnvExecPreUpgrade+"="+encodeMarker(child.marker))
			r.log.Info("invisor: pre-upgrade started; the new binary waits for it before reading its configuration",
				"path", bin.Path, "pid", child.marker.Pid)
		case r.cfg.RunPreUpgrade:
			if err := r.preUpgrade(ctx, bin.Path); err != nil {
				return err
			}
		}
		if child == nil {
			if err := stamp.Recheck(bin.Path); err != nil {
				return err
			}
			if err := atomicSymlink(rel, link); err != nil {
				return err
			}
			r.log.Info("invisor: current link flipped", "target", rel)
		}
	}
	if err := stamp.Recheck(bin.Path); err != nil {
		return fail(err)
	}
	argv := r.os.Args()
	if len(argv) == 0 {
		argv = []string{bin.Path}
	}
	wd, _ := r.os.Getwd()
	r.log.Info("invisor: exec", "upgrade", ui.Name, "height", ui.Height, "path", bin.Path,
		"sha256", bin.SHA256, "pid", r.os.Getpid(), "cwd", wd, "argv", argv)
	err = r.os.Exec(bin.Path, argv, env)
	if err == nil {
		// Only a fake returns nil; the real exec never returns on success.
		return nil
	}
	return fail(newExecError(bin.Path, err))
}

// upgradeDirOf returns <root>/upgrades/<dir> for a binary at .../upgrades/<dir>/bin/<daemon>.
func (r *Relauncher) upgradeDirOf(bin Binary) (string, error) {
	p := filepath.Clean(bin.Path)
	if !filepath.IsAbs(p) || filepath.Base(p) != r.cfg.DaemonName || filepath.Base(filepath.Dir(p)) != BinDir {
		return "", fmt.Errorf("%w: trusted binary %q is not <home>/cosmovisor/upgrades/<name>/bin/%s", ErrLayout, bin.Path, r.cfg.DaemonName)
	}
	dir := filepath.Dir(filepath.Dir(p))
	if !sameFile(filepath.Dir(dir), filepath.Join(r.Root(), UpgradesDir)) {
		return "", fmt.Errorf("%w: trusted binary %q is outside %s", ErrLayout, bin.Path, filepath.Join(r.Root(), UpgradesDir))
	}
	return dir, nil
}

// execedBy returns the executable that exec'd this process (EnvExecedFrom), or "".
func (r *Relauncher) execedBy() string {
	for _, kv := range r.os.Environ() {
		if k, v, _ := strings.Cut(kv, "="); k == EnvExecedFrom {
			return v
		}
	}
	return ""
}

// execEnv is the current environment with the exec markers updated; it enforces
// the loop guard.
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
		case EnvExecedFrom, EnvExecPreUpgrade:
			continue
		}
		out = append(out, kv)
	}
	if gen >= r.cfg.MaxExecGeneration {
		return nil, fmt.Errorf("%w: %s=%d reached the limit %d", ErrExecLoop, EnvExecGeneration, gen, r.cfg.MaxExecGeneration)
	}
	if redirect && prevTarget != "" && (prevTarget == target || sameFile(prevTarget, target)) {
		return nil, fmt.Errorf("%w: already redirected to %s, which did not recognise itself as the binary for the upgrade; check %s and the staged binary",
			ErrExecLoop, target, UpgradeInfoFile)
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

// isSameBinary reports whether the running executable self is bin: the same file,
// or a file with the same size and SHA-256.
func isSameBinary(self string, bin Binary) (bool, error) {
	if sameFile(self, bin.Path) {
		return true, nil
	}
	if rs, err := filepath.EvalSymlinks(self); err == nil {
		if rb, err := filepath.EvalSymlinks(bin.Path); err == nil && rs == rb {
			return true, nil
		}
	}
	if bin.SHA256 == "" {
		return false, nil
	}
	fi, err := os.Stat(self)
	if err != nil {
		return false, fmt.Errorf("relauncher: stat executable: %w", err)
	}
	if bin.Size > 0 && fi.Size() != bin.Size {
		return false, nil
	}
	sum, err := fileSHA256(self)
	if err != nil {
		return false, err
	}
	return strings.EqualFold(sum, bin.SHA256), nil
}

func fileSHA256(p string) (string, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", fmt.Errorf("relauncher: %w", err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("relauncher: hash %s: %w", p, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// FileStamp identifies a file's content cheaply: a rename, rewrite, truncate or
// chmod after verification changes it (device, inode, size, mode, mtime, ctime).
// Take it before hashing a file; Recheck later proves the hash still holds.
type FileStamp struct {
	dev, ino     uint64
	size         int64
	mtime, ctime int64 // ns
	mode         os.FileMode
}

// StampOf returns the stamp of the file at p (not following a final symlink).
func StampOf(p string) (FileStamp, error) {
	fi, err := os.Lstat(p)
	if err != nil {
		return FileStamp{}, fmt.Errorf("relauncher: %w", err)
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return FileStamp{}, fmt.Errorf("relauncher: no stat for %s", p)
	}
	return FileStamp{
		dev: uint64(st.Dev), ino: st.Ino, size: fi.Size(), mode: fi.Mode(),
		mtime: st.Mtim.Nano(), ctime: st.Ctim.Nano(),
	}, nil
}

// statBinary checks the verified binary is a regular executable file of the
// verified size and returns its stamp.
func statBinary(bin Binary) (FileStamp, error) {
	s, err := StampOf(bin.Path)
	if err != nil {
		return FileStamp{}, err
	}
	if !s.mode.IsRegular() {
		return FileStamp{}, fmt.Errorf("%w: %s is not a regular file (%s)", ErrLayout, bin.Path, s.mode.Type())
	}
	if s.mode.Perm()&0o111 == 0 {
		return FileStamp{}, fmt.Errorf("%w: %s is not executable (%s)", ErrLayout, bin.Path, s.mode.Perm())
	}
	if bin.Size > 0 && s.size != bin.Size {
		return FileStamp{}, fmt.Errorf("%w: %s has %d bytes, verified %d", ErrBinaryChanged, bin.Path, s.size, bin.Size)
	}
	return s, nil
}

// Recheck reports ErrBinaryChanged unless the file at p still has stamp s.
func (s FileStamp) Recheck(p string) error {
	n, err := StampOf(p)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrBinaryChanged, err)
	}
	if n != s {
		return fmt.Errorf("%w: %s was replaced or modified after verification", ErrBinaryChanged, p)
	}
	return nil
}
