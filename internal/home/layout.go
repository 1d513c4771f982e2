package home

import (
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"unicode/utf8"
)

// Names inside <home>/cosmovisor, as cosmovisor lays them out.
const (
	RootDir     = "cosmovisor"
	GenesisDir  = "genesis"
	UpgradesDir = "upgrades"
	CurrentLink = "current"
	BinDir      = "bin"
	// RecordSuffix is appended to a binary's path to name its completion record.
	RecordSuffix = ".invisor.json"
	// UpgradeInfoFile is the file x/upgrade writes at the halt, relative to the home.
	UpgradeInfoFile = "data/upgrade-info.json"
	// LockFile is the home lock under <home>/cosmovisor.
	LockFile = ".invisor.lock"
	// AttemptsFile records switch attempts per upgrade under <home>/cosmovisor.
	AttemptsFile = ".invisor-attempts.json"
	// TempMarker is part of every temp name invisor creates in the home, so that a
	// start after a crash can remove what a dead process left.
	TempMarker = ".invisor-tmp-"
	// MaxDirBytes is the longest directory name (NAME_MAX on common filesystems).
	MaxDirBytes = 255
)

// ErrBadName is wrapped by every error about a plan or daemon name.
var ErrBadName = errors.New("invalid name")

// UnmappableNameError is a plan name x/upgrade accepts but no directory can hold
// safely. Nothing is staged or run for it; the operator has to handle the upgrade
// by hand (see Advice).
type UnmappableNameError struct {
	Name   string // the plan name as governance passed it
	Reason string
}

func (e *UnmappableNameError) Error() string {
	return fmt.Sprintf("plan name %q cannot be mapped to a directory under cosmovisor/upgrades: %s", truncate(e.Name, 80), e.Reason)
}

// Unwrap makes errors.Is(err, ErrBadName) hold.
func (e *UnmappableNameError) Unwrap() error { return ErrBadName }

// Advice says what an operator can do about the name.
func (e *UnmappableNameError) Advice() string {
	return "invisor and cosmovisor cannot stage or switch this upgrade; stop the node at the upgrade height " +
		"(halt-height), replace the binary by hand and start it again, or ask governance to replace the plan with a plain name"
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// DirName is the one plan-name rule: the directory under cosmovisor/upgrades that
// holds the binary for plan name, exactly as cosmovisor v1.5.0 maps it: the name as
// data/upgrade-info.json holds it (CanonicalName), lower-cased with strings.ToLower
// unless disableRecase (COSMOVISOR_DISABLE_RECASE), then url.PathEscape. x/upgrade only requires a non-empty name, and escaping makes any
// byte safe ("/" becomes "%2F", NUL "%00"), so only "." and ".." and names longer
// than MaxDirBytes once escaped cannot be mapped.
func DirName(name string, disableRecase bool) (string, error) {
	if name == "" {
		return "", fmt.Errorf("%w: empty plan name (x/upgrade never schedules one)", ErrBadName)
	}
	n := CanonicalName(name)
	if !disableRecase {
		n = strings.ToLower(n)
	}
	d := url.PathEscape(n)
	switch {
	case d == "." || d == "..":
		return "", &UnmappableNameError{Name: name, Reason: "it is a relative directory name"}
	case len(d) > MaxDirBytes:
		return "", &UnmappableNameError{Name: name, Reason: fmt.Sprintf("it is %d bytes once escaped, and a directory name holds at most %d", len(d), MaxDirBytes)}
	}
	return d, nil
}

// CanonicalName is a plan name as JSON carries it: each byte that is not part of
// valid UTF-8 becomes U+FFFD, as encoding/json writes it. x/upgrade writes
// data/upgrade-info.json with encoding/json, so this is the name the chain's own
// halt record, cosmovisor and every completion record hold; the plan read from
// state is compared in this form.
func CanonicalName(name string) string {
	if utf8.ValidString(name) {
		return name
	}
	var b strings.Builder
	for i := 0; i < len(name); {
		r, size := utf8.DecodeRuneInString(name[i:])
		if r == utf8.RuneError && size == 1 {
			b.WriteString("\uFFFD")
		} else {
			b.WriteString(name[i : i+size])
		}
		i += size
	}
	return b.String()
}

// ValidDaemonName checks the binary's file name under bin/ (DAEMON_NAME).
func ValidDaemonName(n string) error {
	switch {
	case n == "":
		return fmt.Errorf("%w: daemon name is empty (set DAEMON_NAME or Options.DaemonName)", ErrBadName)
	case n == "." || n == "..", strings.ContainsAny(n, "/\\\x00"):
		return fmt.Errorf("%w: daemon name %q must be a plain file name", ErrBadName, n)
	case len(n) > MaxDirBytes-len(RecordSuffix):
		return fmt.Errorf("%w: daemon name is %d bytes, at most %d", ErrBadName, len(n), MaxDirBytes-len(RecordSuffix))
	}
	return nil
}

// Options are the layout settings an operator can change.
type Options struct {
	// DisableRecase keeps the plan name's case in directory names
	// (COSMOVISOR_DISABLE_RECASE=true); by default names are lower-cased as
	// cosmovisor does.
	DisableRecase bool
}

// Layout is one node home. The zero value is not usable; use New.
type Layout struct {
	home, daemon string
	opts         Options
}

// New returns the layout of home (made absolute) for binaries named daemon.
func New(home, daemon string, opts Options) (Layout, error) {
	if home == "" {
		return Layout{}, errors.New("home: node home is empty")
	}
	if err := ValidDaemonName(daemon); err != nil {
		return Layout{}, err
	}
	abs, err := filepath.Abs(home)
	if err != nil {
		return Layout{}, fmt.Errorf("home: %w", err)
	}
	return Layout{home: abs, daemon: daemon, opts: opts}, nil
}

// Home is the node home (absolute).
func (l Layout) Home() string { return l.home }

// Daemon is the binary's file name under bin/.
func (l Layout) Daemon() string { return l.daemon }

// Options returns the layout settings.
func (l Layout) Options() Options { return l.opts }

// Root is <home>/cosmovisor.
func (l Layout) Root() string { return filepath.Join(l.home, RootDir) }

// GenesisBin is <home>/cosmovisor/genesis/bin/<daemon>.
func (l Layout) GenesisBin() string { return filepath.Join(l.Root(), GenesisDir, BinDir, l.daemon) }

// UpgradesRoot is <home>/cosmovisor/upgrades.
func (l Layout) UpgradesRoot() string { return filepath.Join(l.Root(), UpgradesDir) }

// Current is the path of the `current` link.
func (l Layout) Current() string { return filepath.Join(l.Root(), CurrentLink) }

// UpgradeInfo is <home>/data/upgrade-info.json.
func (l Layout) UpgradeInfo() string {
	return filepath.Join(l.home, filepath.FromSlash(UpgradeInfoFile))
}

// DataDir is <home>/data.
func (l Layout) DataDir() string { return filepath.Join(l.home, "data") }

// LockPath is <home>/cosmovisor/.invisor.lock.
func (l Layout) LockPath() string { return filepath.Join(l.Root(), LockFile) }

// DirName maps a plan name with this layout's settings (see DirName).
func (l Layout) DirName(plan string) (string, error) { return DirName(plan, l.opts.DisableRecase) }

// UpgradeDir is <home>/cosmovisor/upgrades/<DirName(plan)>.
func (l Layout) UpgradeDir(plan string) (string, error) {
	d, err := l.DirName(plan)
	if err != nil {
		return "", err
	}
	return filepath.Join(l.UpgradesRoot(), d), nil
}

// UpgradeBin is <UpgradeDir(plan)>/bin/<daemon>.
func (l Layout) UpgradeBin(plan string) (string, error) {
	d, err := l.UpgradeDir(plan)
	if err != nil {
		return "", err
	}
	return filepath.Join(d, BinDir, l.daemon), nil
}

// RecordPath is the completion record of plan's binary, next to it.
func (l Layout) RecordPath(plan string) (string, error) {
	b, err := l.UpgradeBin(plan)
	if err != nil {
		return "", err
	}
	return b + RecordSuffix, nil
}

// CurrentTarget is the `current` link target for plan's upgrade: an absolute
// path, as cosmovisor writes it, because cosmovisor v1.5.0 reads the link with
// os.Readlink and uses the text as is (a relative target would resolve against
// its working directory, and it would refuse to start).
func (l Layout) CurrentTarget(plan string) (string, error) { return l.UpgradeDir(plan) }

// GenesisTarget is the `current` link target for the genesis binary (absolute).
func (l Layout) GenesisTarget() string { return filepath.Join(l.Root(), GenesisDir) }

// CurrentRel is CurrentTarget relative to Root ("upgrades/v2"), for display
// and for comparing with what CurrentDir resolves.
func (l Layout) CurrentRel(plan string) (string, error) {
	d, err := l.DirName(plan)
	if err != nil {
		return "", err
	}
	return filepath.Join(UpgradesDir, d), nil
}

// CurrentDir returns the directory `current` points to (a relative link resolved
// against Root, as invisor writes it; an absolute one as cosmovisor writes it).
// ok is false when there is no link.
func (l Layout) CurrentDir() (dir string, ok bool, err error) {
	t, err := os.Readlink(l.Current())
	if errors.Is(err, fs.ErrNotExist) {
		return "", false, nil
	}
	if err != nil {
		return "", false, fmt.Errorf("home: %s is not a symlink: %w", l.Current(), err)
	}
	if !filepath.IsAbs(t) {
		t = filepath.Join(l.Root(), t)
	}
	return filepath.Clean(t), true, nil
}

// CurrentIs reports whether `current` resolves to dir.
func (l Layout) CurrentIs(dir string) bool {
	t, ok, err := l.CurrentDir()
	return err == nil && ok && SameFile(t, dir)
}

// SameFile reports whether a and b name the same file or directory (equal paths,
// or the same device and inode with symlinks followed).
func SameFile(a, b string) bool {
	if filepath.Clean(a) == filepath.Clean(b) {
		return true
	}
	sa, err1 := os.Stat(a)
	sb, err2 := os.Stat(b)
	return err1 == nil && err2 == nil && os.SameFile(sa, sb)
}
