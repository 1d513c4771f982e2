package relauncher

import (
	"errors"
	"fmt"
	"syscall"
)

// Sentinel errors callers branch on. Typed errors below wrap them (errors.Is works).
var (
	// ErrBinaryNotReady: the upgrade the chain needs has no trusted binary yet.
	ErrBinaryNotReady = errors.New("relauncher: upgrade binary not ready")
	// ErrExecFailed: syscall.Exec returned; the stores are already closed.
	ErrExecFailed = errors.New("relauncher: exec failed")
	// ErrExecLoop: a redirect would exec the same target twice in a row, the exec
	// generation limit is reached, or the attempts ledger counts
	// Config.MaxSwitchAttempts execs into the upgrade's binary already.
	ErrExecLoop = errors.New("relauncher: exec loop")
	// ErrNoUpgradeInfo: Switch was called but data/upgrade-info.json is absent.
	ErrNoUpgradeInfo = errors.New("relauncher: no upgrade-info.json")
	// ErrUpgradeMismatch: upgrade-info.json names another upgrade than Switch was given.
	ErrUpgradeMismatch = errors.New("relauncher: upgrade name mismatch")
	// ErrLayout: the Verifier returned a proof for another plan or another path
	// than the layout's.
	ErrLayout = errors.New("relauncher: unexpected layout")
	// ErrPreUpgrade: `pre-upgrade` failed.
	ErrPreUpgrade = errors.New("relauncher: pre-upgrade failed")
	// ErrMalformedPreUpgradeMarker: EnvExecPreUpgrade cannot be read by this
	// binary (garbage, or another protocol version).
	ErrMalformedPreUpgradeMarker = errors.New("relauncher: malformed " + EnvExecPreUpgrade)
	// ErrNoSpace: not enough free space for the backup.
	ErrNoSpace = errors.New("relauncher: not enough free space")
)

// MissingBinaryError says which upgrade needs which binary and how to provide it.
type MissingBinaryError struct {
	Name   string // upgrade name
	Height int64  // upgrade height, 0 if unknown
	Path   string // where the binary is expected
	Daemon string // daemon name, for the advice
	// DownloadsEnabled changes the advice.
	DownloadsEnabled bool
	Err              error // the Verifier's reason
	// FetchErr is why the fetch at boot failed, nil if none was tried.
	FetchErr error
}

func (e *MissingBinaryError) Error() string {
	at := ""
	if e.Height > 0 {
		at = fmt.Sprintf(" at height %d", e.Height)
	}
	advice := "or enable downloads (DAEMON_ALLOW_DOWNLOAD_BINARIES=true)"
	if e.DownloadsEnabled {
		advice = "or wait for the download to finish"
	}
	fetch := ""
	if e.FetchErr != nil {
		fetch = fmt.Sprintf("; fetching it at boot failed: %v", e.FetchErr)
	}
	return fmt.Sprintf("upgrade %q%s needs %s; place the binary there and run `%s invisor stage %s --file <path>`, %s: %v%s",
		e.Name, at, e.Path, e.Daemon, e.Name, advice, e.Err, fetch)
}

func (e *MissingBinaryError) Unwrap() []error {
	errs := []error{ErrBinaryNotReady, e.Err}
	if e.FetchErr != nil {
		errs = append(errs, e.FetchErr)
	}
	return errs
}

// ExecError is returned when syscall.Exec fails. Errno is the raw reason (ENOENT,
// EACCES, ENOEXEC, ETXTBSY, ...); errors.Is(err, syscall.ENOENT) works.
type ExecError struct {
	Path  string
	Errno syscall.Errno // 0 if the error was not an errno
	Err   error
}

func (e *ExecError) Error() string {
	return fmt.Sprintf("relauncher: exec %s failed (%s): %v", e.Path, e.Reason(), e.Err)
}

// Reason names the failure in operator terms.
func (e *ExecError) Reason() string {
	switch e.Errno {
	case syscall.ENOENT:
		return "ENOENT: binary or its interpreter/loader not found"
	case syscall.EACCES:
		return "EACCES: not executable, or noexec mount"
	case syscall.ENOEXEC:
		return "ENOEXEC: not an executable for this system"
	case syscall.ETXTBSY:
		return "ETXTBSY: binary is open for writing"
	case syscall.E2BIG:
		return "E2BIG: argv/env too large"
	case syscall.ENOMEM:
		return "ENOMEM: out of memory"
	case 0:
		return "unknown"
	}
	return e.Errno.Error()
}

func (e *ExecError) Unwrap() []error { return []error{ErrExecFailed, e.Err} }

func newExecError(path string, err error) *ExecError {
	e := &ExecError{Path: path, Err: err}
	var errno syscall.Errno
	if errors.As(err, &errno) {
		e.Errno = errno
	}
	return e
}

// PreUpgradeError reports a failed `pre-upgrade` run.
type PreUpgradeError struct {
	Path     string
	ExitCode int // -1 if it did not exit normally (did not start, killed, timeout)
	Attempts int
	Output   string // tail of combined output
	Err      error
}

func (e *PreUpgradeError) Error() string {
	return fmt.Sprintf("relauncher: %s pre-upgrade failed after %d attempt(s), exit code %d: %v; output: %q",
		e.Path, e.Attempts, e.ExitCode, e.Err, e.Output)
}

func (e *PreUpgradeError) Unwrap() []error { return []error{ErrPreUpgrade, e.Err} }
