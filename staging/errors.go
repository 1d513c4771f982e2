package staging

import (
	"errors"
	"fmt"
	"syscall"

	"github.com/invisor/invisor/internal/home"
)

// Sentinel errors callers branch on with errors.Is. Errors returned by this package
// wrap one of them (or a typed error below) and add the cause and what to do.
var (
	// ErrChecksumMismatch: the downloaded bytes do not match the plan checksum.
	ErrChecksumMismatch = errors.New("checksum mismatch")
	// ErrTooLarge: a body, archive, entry count or binary exceeds a configured cap.
	ErrTooLarge = errors.New("too large")
	// ErrNoChecksum: a URL carries no checksum (or a weak one) while RequireChecksum is set.
	ErrNoChecksum = errors.New("no acceptable checksum")
	// ErrPlanSuperseded: the work was cancelled because a different plan was offered.
	ErrPlanSuperseded = errors.New("plan superseded")
	// ErrPlanCancelled: the work was cancelled because no plan is in force any more.
	ErrPlanCancelled = errors.New("plan cancelled")
	// ErrNotTrusted is home.ErrNotTrusted: there is no proof that the file may run
	// for the plan (no record for it, the file changed, or the plan does not confirm
	// a binary the operator placed).
	ErrNotTrusted = home.ErrNotTrusted
	// ErrNotFound: there is no binary to stage (no URL for this platform, downloads
	// disabled and nothing placed by hand).
	ErrNotFound = errors.New("binary not found")
	// ErrBadInfo: the plan info is malformed, unpinned or unusable.
	ErrBadInfo = errors.New("bad plan info")
	// ErrBadName is home.ErrBadName: the plan name cannot be mapped to a directory
	// (an *home.UnmappableNameError, reachable with errors.As) or a daemon name is invalid.
	ErrBadName = home.ErrBadName
	// ErrUnsafeArchive: an archive entry escapes the root, is a link or a device.
	ErrUnsafeArchive = errors.New("unsafe archive")
	// ErrNotExecutable: the file is not a regular executable for this GOOS/GOARCH.
	ErrNotExecutable = errors.New("not an executable for this platform")
	// ErrPreflight: the binary did not run `<bin> version` successfully.
	ErrPreflight = errors.New("preflight failed")
	// ErrDownload: the transfer failed (status, reset, truncation, stall, deadline, TLS).
	ErrDownload = errors.New("download failed")
	// ErrNoSpace: the filesystem of the home has too little free space for the
	// download (checked before the body is read when its length is known), or a write
	// failed with ENOSPC.
	ErrNoSpace = errors.New("not enough disk space")
	// ErrMissingHandler: the binary answered the probe (internal/probe) that it has
	// no upgrade handler for the plan it is staged for, so it would halt the chain
	// again at the height; it is refused (a *MissingHandlerError).
	ErrMissingHandler = errors.New("no upgrade handler for the plan")
)

// ChecksumError describes a checksum mismatch. It matches ErrChecksumMismatch.
type ChecksumError struct {
	URL      string
	Algo     string
	Expected string
	Actual   string
}

func (e *ChecksumError) Error() string {
	return fmt.Sprintf("checksum mismatch for %s: %s expected %s, got %s; the file on the server does not match the plan (wrong upload or tampering); nothing was installed",
		redact(e.URL), e.Algo, e.Expected, e.Actual)
}

// Is makes errors.Is(err, ErrChecksumMismatch) true.
func (e *ChecksumError) Is(target error) bool { return target == ErrChecksumMismatch }

// SizeError describes an exceeded cap. It matches ErrTooLarge.
type SizeError struct {
	What  string // "download", "archive", "archive entries", "binary", "info"
	Limit int64
	Field string // the Config field that sets the cap
}

func (e *SizeError) Error() string {
	return fmt.Sprintf("%s exceeds the limit of %d (Config.%s); raise it if this is expected", e.What, e.Limit, e.Field)
}

// Is makes errors.Is(err, ErrTooLarge) true.
func (e *SizeError) Is(target error) bool { return target == ErrTooLarge }

// ArchiveError names the offending archive entry. It matches ErrUnsafeArchive.
type ArchiveError struct {
	Entry  string
	Reason string
}

func (e *ArchiveError) Error() string {
	return fmt.Sprintf("unsafe archive: entry %q %s; the archive was rejected and nothing was installed", e.Entry, e.Reason)
}

// Is makes errors.Is(err, ErrUnsafeArchive) true.
func (e *ArchiveError) Is(target error) bool { return target == ErrUnsafeArchive }

// PreflightError carries the exit status and the head of the output. It matches ErrPreflight.
type PreflightError struct {
	Path   string
	Args   []string
	Err    error
	Output string
}

func (e *PreflightError) Error() string {
	return fmt.Sprintf("preflight `%s %v` failed: %v; output: %q; the binary cannot run on this host (wrong build, missing shared library, noexec mount?)",
		e.Path, e.Args, e.Err, e.Output)
}

// Is makes errors.Is(err, ErrPreflight) true.
func (e *PreflightError) Is(target error) bool { return target == ErrPreflight }

func (e *PreflightError) Unwrap() error { return e.Err }

// SpaceError reports that a download of known length does not fit. It matches ErrNoSpace.
type SpaceError struct {
	Dir   string
	What  string // what needs the space, e.g. "download of https://..."
	Need  int64  // bytes needed
	Avail int64  // bytes available to this user on Dir's filesystem
}

func (e *SpaceError) Error() string {
	return fmt.Sprintf("not enough disk space for the %s: needs %d bytes, %d available under %s; free space there before the upgrade height",
		e.What, e.Need, e.Avail, e.Dir)
}

// Is makes errors.Is(err, ErrNoSpace) true.
func (e *SpaceError) Is(target error) bool { return target == ErrNoSpace }

// diskFull wraps a write error with ErrNoSpace when the disk is full, so callers and
// the status line see the cause rather than a bare errno.
func diskFull(err error, what, dir string) error {
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		return fmt.Errorf("%w: disk full while writing %s under %s: %w; nothing was installed, free space and it is retried", ErrNoSpace, what, dir, err)
	}
	return err
}

// PlacedMismatchError reports a binary placed at the install path (by hand, or by
// `invisor stage/prepare/import`) whose bytes are not the ones the plan in force
// names. The file is left as it is and not trusted. It matches ErrChecksumMismatch
// and ErrNotTrusted.
type PlacedMismatchError struct {
	Plan     string
	Path     string
	Against  string // "the plan checksum" or "the binary in the plan's archive"
	Algo     string
	Expected string
	Actual   string
}

func (e *PlacedMismatchError) Error() string {
	return fmt.Sprintf("checksum mismatch: the binary placed at %s is not the one plan %q names: %s expected %s (%s), got %s; it is not trusted and was left as it is: remove it or replace it with the binary the plan names",
		e.Path, e.Plan, e.Algo, e.Expected, e.Against, e.Actual)
}

// Is makes errors.Is(err, ErrChecksumMismatch) and errors.Is(err, ErrNotTrusted) true.
func (e *PlacedMismatchError) Is(target error) bool {
	return target == ErrChecksumMismatch || target == ErrNotTrusted
}

// MissingHandlerError reports a binary that answered the probe saying it has no
// upgrade handler for the plan it is staged for: run at the height, it would halt
// the chain again. It is refused days before the height instead; nothing is
// recorded, a download is not installed, an operator's file is left as it is. It
// matches ErrMissingHandler.
type MissingHandlerError struct {
	Plan   string
	Height int64
	// Path is the install path. With Placed the refused binary is the operator's
	// file there, left as it is; otherwise it was downloaded and not installed.
	Path           string
	Placed         bool
	SHA256         string
	InvisorVersion string // the invisor release the binary links, as it answered
}

func (e *MissingHandlerError) Error() string {
	where := fmt.Sprintf("it was downloaded and not installed at %s", e.Path)
	if e.Placed {
		where = fmt.Sprintf("the file at %s is not trusted and was left as it is: remove it", e.Path)
	}
	return fmt.Sprintf("the binary for upgrade %q (sha256 %s, invisor %s) has no upgrade handler named %q, so it would halt again at height %d; %s, and stage the release built for this upgrade (`invisor stage %s --url <its URL>` or `--file <its file>`)",
		e.Plan, e.SHA256, e.InvisorVersion, e.Plan, e.Height, where, e.Plan)
}

// Is makes errors.Is(err, ErrMissingHandler) true.
func (e *MissingHandlerError) Is(target error) bool { return target == ErrMissingHandler }
