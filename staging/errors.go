package staging

import (
	"errors"
	"fmt"
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
	// ErrNotTrusted: there is no completion record, or the binary no longer matches it.
	ErrNotTrusted = errors.New("binary not trusted")
	// ErrLocked: another Stager holds the lock on this home.
	ErrLocked = errors.New("staging home locked by another process")
	// ErrNotFound: there is no binary to stage (no URL for this platform, downloads
	// disabled and nothing placed by hand).
	ErrNotFound = errors.New("binary not found")
	// ErrBadInfo: the plan info is malformed, unpinned or unusable.
	ErrBadInfo = errors.New("bad plan info")
	// ErrBadName: the plan name cannot be mapped to a safe directory name.
	ErrBadName = errors.New("bad plan name")
	// ErrUnsafeArchive: an archive entry escapes the root, is a link or a device.
	ErrUnsafeArchive = errors.New("unsafe archive")
	// ErrNotExecutable: the file is not a regular executable for this GOOS/GOARCH.
	ErrNotExecutable = errors.New("not an executable for this platform")
	// ErrPreflight: the binary did not run `<bin> version` successfully.
	ErrPreflight = errors.New("preflight failed")
	// ErrDownload: the transfer failed (status, reset, truncation, stall, deadline).
	ErrDownload = errors.New("download failed")
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
