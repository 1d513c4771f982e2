package invisor

import (
	serverconfig "github.com/cosmos/cosmos-sdk/server/config"
)

// AppConfig is the typed [invisor] section of app.toml as `init` writes it. The
// node reads the section back with LoadConfig (through the app options the SDK
// server loads with viper); this struct only feeds the template at `init`.
type AppConfig struct {
	Enabled              bool    `mapstructure:"enabled"`
	DaemonName           string  `mapstructure:"daemon-name"`
	AllowDownload        bool    `mapstructure:"allow-download"`
	RequireChecksum      bool    `mapstructure:"require-checksum"`
	AllowFileURLs        bool    `mapstructure:"allow-file-urls"`
	CAFile               string  `mapstructure:"ca-file"`
	DownloadDeadline     string  `mapstructure:"download-deadline"`
	RetryMin             string  `mapstructure:"retry-min"`
	RetryMax             string  `mapstructure:"retry-max"`
	StagingDiskShare     float64 `mapstructure:"staging-disk-share"`
	UnsafeSkipBackup     bool    `mapstructure:"unsafe-skip-backup"`
	BackupDir            string  `mapstructure:"backup-dir"`
	PreUpgrade           bool    `mapstructure:"pre-upgrade"`
	PreUpgradeMaxRetries int     `mapstructure:"pre-upgrade-max-retries"`
	DisableRecase        bool    `mapstructure:"disable-recase"`
	UnsafeTrustPlaced    bool    `mapstructure:"unsafe-trust-placed-binaries"`
}

// DefaultAppConfig returns the documented defaults (the same as LoadConfig's).
func DefaultAppConfig() AppConfig {
	return AppConfig{
		Enabled:          true,
		RequireChecksum:  true,
		DownloadDeadline: "2h",
		RetryMin:         "5s",
		RetryMax:         "5m",
		StagingDiskShare: 0.1,
		PreUpgrade:       true,
	}
}

// AppTomlConfig is the whole app.toml of a chain that embeds invisor: the SDK's
// server config plus the [invisor] section.
type AppTomlConfig struct {
	serverconfig.Config `mapstructure:",squash"`

	Invisor AppConfig `mapstructure:"invisor"`
}

// AppConfigTemplate is the [invisor] section of app.toml, a text/template over
// AppTomlConfig. Append it to the chain's own template.
const AppConfigTemplate = `
###############################################################################
###                    invisor (in-process upgrade manager)                 ###
###############################################################################

# invisor stages governance upgrade binaries in the background and, at the
# upgrade height, stops the node cleanly and execs the new binary (same PID).
# Layout and plan-info format are cosmovisor's. Every key can be overridden by
# the environment variable named above it and by the flag --invisor.<key> of
# ` + "`start`" + `: flag > environment > this file > default.
# ` + "`<appd> invisor config`" + ` shows the effective values and where they came from.
[invisor]

# Turn invisor on or off. Off: the node halts at an upgrade and waits (like a
# node without cosmovisor). env INVISOR_ENABLED
enabled = {{ .Invisor.Enabled }}

# Binary name under cosmovisor/*/bin. Empty: the chain's own name. env DAEMON_NAME
daemon-name = "{{ .Invisor.DaemonName }}"

# Download the upgrade binary named by the plan's info. When false, place it by
# hand (` + "`<appd> invisor stage <name> --file PATH`" + `) before the upgrade height.
# env DAEMON_ALLOW_DOWNLOAD_BINARIES
allow-download = {{ .Invisor.AllowDownload }}

# Refuse downloads whose URL has no ?checksum=sha256:<hex> (or sha512).
# env DAEMON_DOWNLOAD_MUST_HAVE_CHECKSUM
require-checksum = {{ .Invisor.RequireChecksum }}

# Accept file:// sources in plan info (air-gapped setups, tests). env INVISOR_ALLOW_FILE_URLS
allow-file-urls = {{ .Invisor.AllowFileURLs }}

# PEM file of the root CAs trusted for https downloads (a private mirror), an
# absolute path. Empty: the system's roots. env INVISOR_CA_FILE
ca-file = "{{ .Invisor.CAFile }}"

# Bound on one whole staging attempt (info, download, unpack, preflight).
# env INVISOR_DOWNLOAD_DEADLINE
download-deadline = "{{ .Invisor.DownloadDeadline }}"

# Backoff between failed staging attempts: first wait and longest wait.
# env INVISOR_RETRY_MIN, INVISOR_RETRY_MAX
retry-min = "{{ .Invisor.RetryMin }}"
retry-max = "{{ .Invisor.RetryMax }}"

# Fraction of disk time staging's writes may take while the node runs, so that
# consensus fsyncs never queue behind a large download: each 2 MiB is flushed,
# then staging rests in proportion. 1 writes at full speed. Within 100 blocks of
# the upgrade, or at the halt, a binary not yet ready is written at full speed.
# env INVISOR_STAGING_DISK_SHARE
staging-disk-share = {{ .Invisor.StagingDiskShare }}

# Skip the backup of data/ before the switch (the backup hard-links table files,
# so it is fast). env UNSAFE_SKIP_BACKUP
unsafe-skip-backup = {{ .Invisor.UnsafeSkipBackup }}

# Where data backups go, an absolute path. Empty: the node home. env DAEMON_DATA_BACKUP_DIR
backup-dir = "{{ .Invisor.BackupDir }}"

# Run ` + "`<new binary> pre-upgrade`" + ` before the switch (exit 0 ok, 1 not
# implemented, 30 fail, 31 retry). env INVISOR_PRE_UPGRADE
pre-upgrade = {{ .Invisor.PreUpgrade }}

# Retries of pre-upgrade while it exits 31. env DAEMON_PREUPGRADE_MAX_RETRIES
pre-upgrade-max-retries = {{ .Invisor.PreUpgradeMaxRetries }}

# Keep the plan name's case in cosmovisor/upgrades/<name>. By default the name is
# lower-cased and then escaped, exactly as cosmovisor does; set this only where
# cosmovisor runs with the same setting. env COSMOVISOR_DISABLE_RECASE
disable-recase = {{ .Invisor.DisableRecase }}

# Trust a binary placed by hand (or with ` + "`invisor stage`" + `) that the plan does
# not confirm: its checksum differs, or the plan's archive cannot be checked.
# Unsafe: logged at every boot and shown by ` + "`invisor status`" + ` and a metric.
# env INVISOR_UNSAFE_TRUST_PLACED_BINARIES
unsafe-trust-placed-binaries = {{ .Invisor.UnsafeTrustPlaced }}
`

// InitAppConfig returns the template and config to pass to the SDK's
// server.InterceptConfigsPreRunHandler so that `init` writes app.toml with a
// commented [invisor] section after the chain's server config:
//
//	tmpl, cfg := invisor.InitAppConfig(serverconfig.DefaultConfig())
//	return server.InterceptConfigsPreRunHandler(cmd, tmpl, cfg, cmtcfg.DefaultConfig())
func InitAppConfig(base *serverconfig.Config) (string, any) {
	return serverconfig.DefaultConfigTemplate + AppConfigTemplate,
		&AppTomlConfig{Config: *base, Invisor: DefaultAppConfig()}
}
