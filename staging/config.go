package staging

import (
	"fmt"
	"path/filepath"
	"time"

	"github.com/invisor/invisor/internal/home"
)

// Defaults used by DefaultConfig. They are exported so the app wiring can print them
// in `--help` text and app.toml templates.
const (
	DefaultAllowDownload         = true
	DefaultRequireChecksum       = true
	DefaultAllowFileURLs         = false
	DefaultResponseHeaderTimeout = 30 * time.Second
	DefaultIdleTimeout           = 60 * time.Second
	DefaultMinThroughput         = 1024 // bytes per second, averaged over IdleTimeout
	DefaultDeadline              = 2 * time.Hour
	DefaultMaxBinaryBytes        = 2 << 30 // 2 GiB
	DefaultMaxArchiveBytes       = 4 << 30 // 4 GiB, compressed download and total unpacked bytes
	DefaultMaxArchiveEntries     = 10_000
	DefaultMaxInfoBytes          = 1 << 20 // 1 MiB
	DefaultPreflightTimeout      = 30 * time.Second
	DefaultProbeTimeout          = 30 * time.Second
	DefaultRetryMin              = 5 * time.Second
	DefaultRetryMax              = 5 * time.Minute
	DefaultPollInterval          = 1 * time.Second
	DefaultProgressInterval      = 5 * time.Second
	DefaultDiskShare             = 0.1 // staging's writes keep the disk busy at most 10% of the time
	DefaultDisableRecase         = false
	DefaultTrustPlacedBinaries   = false
)

// DefaultPreflightArgs are the arguments the staged binary is run with before it is
// trusted. Every Cosmos SDK binary implements `version`.
var defaultPreflightArgs = []string{"version"}

// Config is the typed configuration of staging. The zero value is not usable; start
// from DefaultConfig and set Home and DaemonName.
type Config struct {
	// Home is the node home; the cosmovisor layout lives under Home/cosmovisor.
	Home string
	// DaemonName is the file name under bin/, e.g. "exampled".
	DaemonName string
	// DisableRecase mirrors COSMOVISOR_DISABLE_RECASE: plan names keep their case in
	// directory names (see home.DirName); by default they are lower-cased as
	// cosmovisor does.
	DisableRecase bool
	// AllowDownload mirrors DAEMON_ALLOW_DOWNLOAD_BINARIES. When false only binaries
	// placed by the operator under upgrades/<dir>/bin/ are verified and recorded.
	AllowDownload bool
	// TrustPlacedBinaries (app.toml unsafe-trust-placed-binaries) is the operator's
	// explicit, unsafe override: a binary placed at the install path that the plan
	// does not confirm (its checksum or archive differs, or it cannot be checked
	// now) is trusted after the preflight, recorded as home.SourceOverride and
	// logged as a warning. Off by default.
	TrustPlacedBinaries bool
	// RequireChecksum mirrors DAEMON_DOWNLOAD_MUST_HAVE_CHECKSUM. When true every
	// download (and an info URL) must carry ?checksum=sha256:<hex> or sha512; when
	// false unpinned downloads and md5/sha1 checksums are accepted.
	RequireChecksum bool
	// AllowFileURLs allows file:// sources (tests and air-gapped setups).
	AllowFileURLs bool

	// ResponseHeaderTimeout bounds the wait for response headers of each request.
	ResponseHeaderTimeout time.Duration
	// IdleTimeout is the window over which a body must deliver at least
	// MinThroughput bytes per second; a hung or trickling server fails after it.
	IdleTimeout time.Duration
	// MinThroughput is the minimum average body rate in bytes/s over IdleTimeout.
	// Zero only detects a completely idle connection.
	MinThroughput int64
	// Deadline bounds one whole attempt (info, download, unpack, preflight, probe).
	Deadline time.Duration

	// MaxBinaryBytes caps the installed binary and a plain (non-archive) download.
	MaxBinaryBytes int64
	// MaxArchiveBytes caps a downloaded archive and, separately, the total bytes it unpacks to.
	MaxArchiveBytes int64
	// MaxArchiveEntries caps the number of entries of an archive.
	MaxArchiveEntries int64
	// MaxInfoBytes caps the body of an info URL.
	MaxInfoBytes int64

	// PreflightArgs are passed to the staged binary; it must exit 0. Default {"version"}.
	PreflightArgs []string
	// PreflightTimeout bounds the preflight run; the process group is killed after it.
	PreflightTimeout time.Duration
	// ProbeTimeout bounds the probe run after the preflight (the binary asked, in
	// the same sandbox, which upgrade handlers and protocols it has; see
	// internal/probe); the process group is killed after it. A binary that runs out
	// of it gave no answer: it is accepted as one that does not answer, not refused.
	ProbeTimeout time.Duration
	// NoHandler says the plan is not in the chain's state (an upgrade scheduled at
	// a height without governance): no upgrade handler runs for it, so the probe
	// asks the binary about none.
	NoHandler bool

	// RetryMin and RetryMax bound the exponential backoff (with jitter) between attempts.
	RetryMin, RetryMax time.Duration
	// PollInterval is how often a Stager looks for a binary placed by hand when it
	// cannot download it (downloads disabled or failing).
	PollInterval time.Duration
	// ProgressInterval is the minimum time between two progress log lines.
	ProgressInterval time.Duration
	// DiskShare is the fraction of disk time staging's writes may take while the
	// node runs (0 < DiskShare <= 1; 1 writes at full speed). Each 2 MiB written is
	// flushed and followed by a rest proportional to how long the flush took, so
	// consensus fsyncs never wait behind a long staging queue, on any disk. A
	// Stager told to Hurry (the upgrade is near, or the chain halted and waits for
	// the binary) writes at full speed. Only Linux has the flush control; elsewhere it is ignored.
	DiskShare float64
	// UserAgent is sent with every request.
	UserAgent string
	// CAFile, when set, is a PEM bundle of the root CAs that https servers are
	// verified against instead of the system roots (a private mirror). Empty uses
	// the system roots. Certificates are always verified.
	CAFile string
	// ImageDir, when set, is a read-only directory of binaries baked into the
	// node's container image, laid out as cosmovisor's upgrades/ tree:
	// <ImageDir>/upgrades/<dir>/bin/<DaemonName>, <dir> mapped from the plan
	// name as for the home (home.DirName). When the plan in force has nothing at
	// its install path, a binary there is the source instead of a download:
	// copied into the attempt's temp dir and verified and installed like one
	// (see image.go). Nothing in ImageDir is ever written or executed.
	ImageDir string
}

// DefaultConfig returns the documented defaults. Home and DaemonName are left empty.
func DefaultConfig() Config {
	return Config{
		AllowDownload:         DefaultAllowDownload,
		RequireChecksum:       DefaultRequireChecksum,
		AllowFileURLs:         DefaultAllowFileURLs,
		ResponseHeaderTimeout: DefaultResponseHeaderTimeout,
		IdleTimeout:           DefaultIdleTimeout,
		MinThroughput:         DefaultMinThroughput,
		Deadline:              DefaultDeadline,
		MaxBinaryBytes:        DefaultMaxBinaryBytes,
		MaxArchiveBytes:       DefaultMaxArchiveBytes,
		MaxArchiveEntries:     DefaultMaxArchiveEntries,
		MaxInfoBytes:          DefaultMaxInfoBytes,
		PreflightArgs:         append([]string(nil), defaultPreflightArgs...),
		PreflightTimeout:      DefaultPreflightTimeout,
		ProbeTimeout:          DefaultProbeTimeout,
		RetryMin:              DefaultRetryMin,
		RetryMax:              DefaultRetryMax,
		PollInterval:          DefaultPollInterval,
		ProgressInterval:      DefaultProgressInterval,
		DiskShare:             DefaultDiskShare,
		DisableRecase:         DefaultDisableRecase,
		TrustPlacedBinaries:   DefaultTrustPlacedBinaries,
		UserAgent:             "invisor-staging",
	}
}

// Validate reports the first invalid field by name.
func (c Config) Validate() error {
	bad := func(field, why string) error {
		return fmt.Errorf("staging: invalid config: %s %s", field, why)
	}
	switch {
	case c.Home == "":
		return bad("Home", "is empty (set the node home, e.g. DAEMON_HOME)")
	case !filepath.IsAbs(c.Home):
		return bad("Home", fmt.Sprintf("%q must be an absolute path", c.Home))
	case c.DaemonName == "":
		return bad("DaemonName", "is empty (set DAEMON_NAME)")
	}
	if err := home.ValidDaemonName(c.DaemonName); err != nil {
		return bad("DaemonName", err.Error())
	}
	durs := []struct {
		name string
		d    time.Duration
	}{
		{"ResponseHeaderTimeout", c.ResponseHeaderTimeout},
		{"IdleTimeout", c.IdleTimeout},
		{"Deadline", c.Deadline},
		{"PreflightTimeout", c.PreflightTimeout},
		{"ProbeTimeout", c.ProbeTimeout},
		{"RetryMin", c.RetryMin},
		{"RetryMax", c.RetryMax},
		{"PollInterval", c.PollInterval},
		{"ProgressInterval", c.ProgressInterval},
	}
	for _, d := range durs {
		if d.d <= 0 {
			return bad(d.name, fmt.Sprintf("must be > 0, got %v", d.d))
		}
	}
	if c.RetryMax < c.RetryMin {
		return bad("RetryMax", fmt.Sprintf("(%v) must be >= RetryMin (%v)", c.RetryMax, c.RetryMin))
	}
	sizes := []struct {
		name string
		n    int64
	}{
		{"MaxBinaryBytes", c.MaxBinaryBytes},
		{"MaxArchiveBytes", c.MaxArchiveBytes},
		{"MaxArchiveEntries", c.MaxArchiveEntries},
		{"MaxInfoBytes", c.MaxInfoBytes},
	}
	for _, s := range sizes {
		if s.n <= 0 {
			return bad(s.name, fmt.Sprintf("must be > 0, got %d", s.n))
		}
	}
	if c.MinThroughput < 0 {
		return bad("MinThroughput", "must be >= 0")
	}
	if !(c.DiskShare > 0 && c.DiskShare <= 1) {
		return bad("DiskShare", fmt.Sprintf("must be in (0, 1], got %v (1 writes at full speed)", c.DiskShare))
	}
	if c.CAFile != "" && !filepath.IsAbs(c.CAFile) {
		return bad("CAFile", fmt.Sprintf("%q must be an absolute path", c.CAFile))
	}
	if c.ImageDir != "" && !filepath.IsAbs(c.ImageDir) {
		return bad("ImageDir", fmt.Sprintf("%q must be an absolute path", c.ImageDir))
	}
	if len(c.PreflightArgs) == 0 {
		return bad("PreflightArgs", `is empty (default {"version"})`)
	}
	return nil
}

// Layout returns the home layout staging works in: Home, DaemonName and
// DisableRecase as home.New sees them.
func (c Config) Layout() (home.Layout, error) {
	return home.New(c.Home, c.DaemonName, home.Options{DisableRecase: c.DisableRecase})
}
