// Package config is invisor's configuration: the [invisor] section of app.toml,
// overridden by the environment and by --invisor.* flags, read into the typed
// configs of staging and the relauncher.
//
// One table (settings) holds every key with its environment name, default, doc
// and parser. The app.toml section (Section), the flags (AddFlags), the loader
// (LoadConfigFlags), `invisor config` (Settings) and the tests that hold the
// operator guide to it all read that table, so they cannot drift apart.
//
// This package and the process edge are the only code that reads viper or the
// environment; the library packages take the typed Config.
//
// What it leaves on disk: the [invisor] section it appends to an app.toml that
// the chain's own config interceptor has just created (WrapPreRun). It never
// rewrites an app.toml that existed before the command ran.
package config

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"
	"github.com/spf13/viper"

	"github.com/invisor/invisor/internal/health"
	"github.com/invisor/invisor/internal/home"
	"github.com/invisor/invisor/internal/notify"
	"github.com/invisor/invisor/relauncher"
	"github.com/invisor/invisor/staging"
)

// Options say how the chain binary is named and where its home is by default.
// The process edge (invisor.Execute) and the operator commands (cli) share it.
type Options struct {
	// DaemonName is the file name under cosmovisor/*/bin; DAEMON_NAME (the
	// daemon-name setting) overrides it.
	DaemonName string
	// DefaultHome is the node home when --home is not given.
	DefaultHome string
	// EnvPrefix is passed to the SDK's Execute for flag binding.
	EnvPrefix string
	// ServerOf reads a command's server context; the SDK line's adapter sets it.
	ServerOf ServerOf
}

// Config is invisor's effective configuration for one node home.
type Config struct {
	// Enabled turns invisor off entirely (the node then behaves as without it).
	Enabled    bool
	Staging    staging.Config
	Relauncher relauncher.Config
	// Notify is the webhook's (URL empty: no notifications).
	Notify notify.Config
	// Health is the post-upgrade health gate's (internal/health).
	Health health.Config
	// CheckProposals: the node checks the binaries of software-upgrade
	// proposals in their voting period (staging.Stager.OfferProposals).
	CheckProposals bool
	// OnHalt is what the node does at an upgrade halt: switch to the verified
	// binary itself (OnHaltSwitch), or stop and exit for an orchestrator that
	// swaps the binary (OnHaltExit, OnHaltExitAlways).
	OnHalt OnHalt
	// Sources says where each setting came from: "default", "app.toml", "env NAME"
	// or "flag --invisor.KEY".
	Sources map[string]string
	// Values holds the effective value of each setting as text, keyed like Sources.
	Values map[string]string
}

// OnHalt is the on-halt setting: who swaps the binary at an upgrade halt.
type OnHalt string

// The values of on-halt.
const (
	// OnHaltSwitch: invisor switches (clean stop, backup, pre-upgrade, the flip
	// of `current`, exec in the same PID); the boot redirect runs at every start.
	OnHaltSwitch OnHalt = "switch"
	// OnHaltExit: staging and verification as usual; at the halt the node stops
	// cleanly and exits with invisor.ExitUpgradeHalt after writing the halt
	// report, leaving the swap to an orchestrator. A restart from an older
	// binary is still redirected to the verified one (the safety net when the
	// orchestrator restarts the old image).
	OnHaltExit OnHalt = "exit"
	// OnHaltExitAlways: as OnHaltExit, and invisor never execs at boot either:
	// an older binary restarted after the halt replays to it and exits again
	// with the same code, until the orchestrator starts the new one.
	OnHaltExitAlways OnHalt = "exit-always"
)

// Exits reports whether the node exits at an upgrade halt instead of switching.
func (o OnHalt) Exits() bool { return o == OnHaltExit || o == OnHaltExitAlways }

// Layout is the node home's layout for this configuration.
func (c Config) Layout() (home.Layout, error) { return c.Staging.Layout() }

// Setting describes one key of the [invisor] section of app.toml.
type Setting struct {
	Key     string // app.toml key under [invisor]; the flag is --invisor.<Key>
	Env     string // environment variable that overrides app.toml
	Default string // default as written in app.toml ("" means: see Doc)
	Doc     string // one-line meaning
}

// Settings returns the reference of the [invisor] section, in app.toml order.
func Settings() []Setting {
	out := make([]Setting, len(settings))
	for i, s := range settings {
		out[i] = Setting{Key: s.key, Env: s.env, Default: s.def, Doc: s.doc}
	}
	return out
}

// LoadConfig reads the [invisor] section of app.toml from v, then the environment
// (which wins), for the node at home. Unknown keys and bad values are errors that
// name the key.
func LoadConfig(v *viper.Viper, home string, opts Options) (Config, error) {
	return LoadConfigFlags(v, nil, home, opts)
}

// LoadConfigFlags is LoadConfig with the --invisor.* flags of fs (see AddFlags) on
// top: flag > environment > app.toml > default. fs may be nil.
func LoadConfigFlags(v *viper.Viper, fs *pflag.FlagSet, home string, opts Options) (Config, error) {
	home, err := filepath.Abs(home)
	if err != nil {
		return Config{}, fmt.Errorf("invisor: node home: %w", err)
	}
	c := Config{Enabled: true, OnHalt: OnHaltSwitch, Staging: staging.DefaultConfig(), Relauncher: relauncher.DefaultConfig(), Notify: notify.DefaultConfig(), Health: health.DefaultConfig(),
		Sources: map[string]string{}, Values: map[string]string{}}
	c.Staging.Home, c.Relauncher.Home = home, home
	c.Staging.DaemonName, c.Relauncher.DaemonName = opts.DaemonName, opts.DaemonName

	known := map[string]bool{}
	for _, s := range settings {
		known[s.key] = true
	}
	if v != nil {
		if section, ok := v.Get(sectionName).(map[string]any); ok {
			var unknown []string
			for k := range section {
				if !known[k] {
					unknown = append(unknown, k)
				}
			}
			sort.Strings(unknown)
			if len(unknown) > 0 {
				return Config{}, fmt.Errorf("invisor: unknown key %q in the [invisor] section of app.toml; known keys: %s",
					unknown[0], strings.Join(keys(), ", "))
			}
		}
	}
	for _, s := range settings {
		val, src := s.def, "default"
		if v != nil && v.IsSet(sectionName+"."+s.key) {
			val, src = fmt.Sprint(v.Get(sectionName+"."+s.key)), "app.toml"
		}
		if e, ok := os.LookupEnv(s.env); ok {
			val, src = e, "env "+s.env
		}
		if fs != nil {
			if f := fs.Lookup(FlagPrefix + s.key); f != nil && flagGiven(f) {
				val, src = f.Value.String(), "flag --"+FlagPrefix+s.key
			}
		}
		c.Sources[s.key] = src
		c.Values[s.key] = val
		if src == "default" && val == "" {
			continue
		}
		if err := s.apply(&c, val); err != nil {
			where := "invisor." + s.key + " in app.toml"
			if strings.HasPrefix(src, "env ") {
				where = strings.TrimPrefix(src, "env ")
			} else if strings.HasPrefix(src, "flag ") {
				where = "--" + FlagPrefix + s.key
			} else if src == "default" {
				where = "default of invisor." + s.key
			}
			return Config{}, fmt.Errorf("invisor: bad value for %s: %w", where, err)
		}
	}
	if c.Values["daemon-name"] == "" {
		c.Values["daemon-name"] = c.Staging.DaemonName
	}
	if c.Values["backup-dir"] == "" {
		c.Values["backup-dir"] = home
	}
	if err := c.Staging.Validate(); err != nil {
		return Config{}, fmt.Errorf("invisor: %w", err)
	}
	if err := c.Relauncher.Validate(); err != nil {
		return Config{}, fmt.Errorf("invisor: %w", err)
	}
	if err := c.Health.Validate(); err != nil {
		return Config{}, fmt.Errorf("invisor: %w", err)
	}
	if err := c.Notify.Validate(); err != nil {
		return Config{}, fmt.Errorf("invisor: %w", err)
	}
	return c, nil
}

// sectionName is the app.toml table invisor owns.
const sectionName = "invisor"

func keys() []string {
	out := make([]string, len(settings))
	for i, s := range settings {
		out[i] = s.key
	}
	return out
}

// setting is one [invisor] key of app.toml, with its environment name, how it is
// written in app.toml and how it lands in the typed configs.
type setting struct {
	key, env, def, doc string
	// note is the comment above the key in app.toml, in full sentences; <appd>
	// stands for the chain binary's name.
	note string
	// quoted: the default is a TOML string (durations, paths, names), not a bare
	// boolean or number.
	quoted bool
	apply  func(c *Config, v string) error
}

func boolSetting(key, env, def, doc, note string, set func(c *Config, b bool)) setting {
	return setting{key, env, def, doc, note, false, func(c *Config, v string) error {
		b, err := strconv.ParseBool(strings.TrimSpace(v))
		if err != nil {
			return fmt.Errorf("want true or false, got %q", v)
		}
		set(c, b)
		return nil
	}}
}

func durationSetting(key, env, def, doc, note string, set func(c *Config, d time.Duration)) setting {
	return setting{key, env, def, doc, note, true, func(c *Config, v string) error {
		d, err := time.ParseDuration(strings.TrimSpace(v))
		if err != nil || d <= 0 {
			return fmt.Errorf("want a positive duration such as 30s or 2h, got %q", v)
		}
		set(c, d)
		return nil
	}}
}

// wholeSetting is a whole number of at least min; what, if not empty, says in the
// error what the number counts.
func wholeSetting(key, env, def, doc, note string, min int, what string, set func(c *Config, n int)) setting {
	return setting{key, env, def, doc, note, false, func(c *Config, v string) error {
		n, err := strconv.Atoi(strings.TrimSpace(v))
		if err != nil || n < min {
			counts := ""
			if what != "" {
				counts = " (" + what + ")"
			}
			return fmt.Errorf("want a whole number >= %d%s, got %q", min, counts, v)
		}
		set(c, n)
		return nil
	}}
}

func pathSetting(key, env, doc, note string, set func(c *Config, path string)) setting {
	return setting{key, env, "", doc, note, true, func(c *Config, v string) error {
		if v != "" && !filepath.IsAbs(v) {
			return fmt.Errorf("want an absolute path, got %q", v)
		}
		set(c, v)
		return nil
	}}
}

// settings is the [invisor] section's reference, in app.toml order.
var settings = []setting{
	boolSetting("enabled", "INVISOR_ENABLED", "true", "turn invisor on or off",
		"Turn invisor on or off. Off: the node halts at an upgrade and waits, like a node without cosmovisor.",
		func(c *Config, b bool) { c.Enabled = b }),
	{"daemon-name", "DAEMON_NAME", "", "binary name under cosmovisor/*/bin (empty: the chain's own name)",
		"Binary name under cosmovisor/*/bin. Empty: the chain's own name.", true,
		func(c *Config, v string) error {
			if v = strings.TrimSpace(v); v == "" {
				return nil // keep Options.DaemonName
			}
			c.Staging.DaemonName, c.Relauncher.DaemonName = v, v
			return nil
		}},
	boolSetting("allow-download", "DAEMON_ALLOW_DOWNLOAD_BINARIES", "false", "download the upgrade binary named by the plan's info",
		"Download the upgrade binary named by the plan's info. When false, place it by hand (`<appd> invisor stage <name> --file PATH`) before the upgrade height.",
		func(c *Config, b bool) { c.Staging.AllowDownload, c.Relauncher.DownloadsEnabled = b, b }),
	boolSetting("check-proposals", "INVISOR_CHECK_PROPOSALS", "true", "check the binary of each software-upgrade proposal in its voting period",
		"Check, in the background, the binary of each software-upgrade proposal while it is in its voting period: download and verify it for this platform (with the settings above; nothing is downloaded when allow-download is false), preflight it and ask it for the plan's handler, so validators know before they vote. Shown by `<appd> invisor status`; a verified binary becomes the staged one if the proposal passes unchanged.",
		func(c *Config, b bool) { c.CheckProposals = b }),
	boolSetting("require-checksum", "DAEMON_DOWNLOAD_MUST_HAVE_CHECKSUM", "true", "refuse downloads without a sha256/sha512 checksum",
		"Refuse downloads whose URL has no ?checksum=sha256:<hex> (or sha512).",
		func(c *Config, b bool) { c.Staging.RequireChecksum = b }),
	boolSetting("allow-file-urls", "INVISOR_ALLOW_FILE_URLS", "false", "accept file:// sources in plan info",
		"Accept file:// sources in plan info (air-gapped setups, tests).",
		func(c *Config, b bool) { c.Staging.AllowFileURLs = b }),
	pathSetting("ca-file", "INVISOR_CA_FILE", "PEM file of the root CAs trusted for https downloads (default: the system's)",
		"PEM file of the root CAs trusted for https downloads (a private mirror), an absolute path. Empty: the system's roots.",
		func(c *Config, v string) { c.Staging.CAFile = v }),
	pathSetting("image-dir", "INVISOR_IMAGE_DIR", "read-only directory of upgrade binaries baked into the container image, used instead of a download (empty: none)",
		"Read-only directory of upgrade binaries baked into the node's container image, an absolute path, laid out as cosmovisor's upgrades/ tree: <dir>/upgrades/<name>/bin/<appd>. The binary for the plan in force is copied from there into the home's upgrades/ and verified and recorded like a download (the plan's checksum or archive, OS/arch, preflight, the plan's handler); nothing there is written or run in place. Empty: none.",
		func(c *Config, v string) { c.Staging.ImageDir = v }),
	durationSetting("download-deadline", "INVISOR_DOWNLOAD_DEADLINE", "2h", "bound on one whole staging attempt",
		"Bound on one whole staging attempt (info, download, unpack, preflight).",
		func(c *Config, d time.Duration) { c.Staging.Deadline = d }),
	durationSetting("retry-min", "INVISOR_RETRY_MIN", "5s", "first wait before retrying a failed attempt",
		"First wait before retrying a failed staging attempt; each further wait doubles, up to retry-max.",
		func(c *Config, d time.Duration) { c.Staging.RetryMin = d }),
	durationSetting("retry-max", "INVISOR_RETRY_MAX", "5m", "longest wait between attempts",
		"Longest wait between failed staging attempts.",
		func(c *Config, d time.Duration) { c.Staging.RetryMax = d }),
	{"staging-disk-share", "INVISOR_STAGING_DISK_SHARE", "0.1", "fraction of disk time staging's writes may take while the node runs (1: full speed)",
		fmt.Sprintf("Fraction of disk time staging's writes may take while the node runs, so that consensus fsyncs never queue behind a large download: each 2 MiB is flushed, then staging rests in proportion. 1 writes at full speed. Within %d blocks of the upgrade, or at the halt, a binary not yet ready is written at full speed.",
			staging.HurryWithinBlocks), false,
		func(c *Config, v string) error {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err != nil || !(f > 0 && f <= 1) {
				return fmt.Errorf("want a fraction in (0, 1] such as 0.1 (1 writes at full speed), got %q", v)
			}
			c.Staging.DiskShare = f
			return nil
		}},
	boolSetting("unsafe-skip-backup", "UNSAFE_SKIP_BACKUP", "false", "skip the data backup before the switch",
		"Skip the backup of data/ before the switch (the backup hard-links table files, so it is fast).",
		func(c *Config, b bool) { c.Relauncher.Backup = !b }),
	pathSetting("backup-dir", "DAEMON_DATA_BACKUP_DIR", "where data backups go (default: the node home)",
		"Where data backups go, an absolute path. Empty: the node home.",
		func(c *Config, v string) { c.Relauncher.BackupDir = v }),
	wholeSetting("backup-keep", "INVISOR_BACKUP_KEEP", strconv.Itoa(relauncher.DefaultBackupKeep), "how many of invisor's own data backups to keep, the newest (at least 1)",
		"How many of invisor's own data backups to keep in backup-dir, the newest; older ones are removed after each new backup, and backups invisor did not take never are. "+
			"2 keeps the one `<appd> invisor rollback` restores (the last switch's) and the one before it. A backup hard-links the database's table files, so it is cheap when "+
			"taken, but it keeps every table the live database later compacts away: each grows toward a full copy of data/.",
		1, "the newest backups to keep", func(c *Config, n int) { c.Relauncher.BackupKeep = n }),
	boolSetting("disable-recase", "COSMOVISOR_DISABLE_RECASE", "false", "keep the plan name's case in upgrades/<name> (cosmovisor lower-cases it by default)",
		"Keep the plan name's case in cosmovisor/upgrades/<name>. By default the name is lower-cased and then escaped, exactly as cosmovisor does; set this only where cosmovisor runs with the same setting.",
		func(c *Config, b bool) { c.Staging.DisableRecase, c.Relauncher.DisableRecase = b, b }),
	boolSetting("unsafe-trust-placed-binaries", "INVISOR_UNSAFE_TRUST_PLACED_BINARIES", "false", "trust a binary placed by hand that the plan does not confirm (logged at every boot)",
		"Trust a binary placed by hand (or with `<appd> invisor stage`) that the plan does not confirm: its checksum differs, or the plan's archive cannot be checked. Unsafe: logged at every boot and shown by `invisor status` and a metric.",
		func(c *Config, b bool) { c.Staging.TrustPlacedBinaries = b }),
	boolSetting("pre-upgrade", "INVISOR_PRE_UPGRADE", "true", "run `<new binary> pre-upgrade` before the switch",
		"Run `<new binary> pre-upgrade` before the switch (exit 0 ok, 1 not implemented, 30 fail, 31 retry).",
		func(c *Config, b bool) { c.Relauncher.RunPreUpgrade = b }),
	wholeSetting("pre-upgrade-max-retries", "DAEMON_PREUPGRADE_MAX_RETRIES", "0", "retries of pre-upgrade while it exits 31",
		"Retries of pre-upgrade while it exits 31.", 0, "", func(c *Config, n int) { c.Relauncher.PreUpgradeMaxRetries = n }),
	{"on-halt", "INVISOR_ON_HALT", string(OnHaltSwitch), "at an upgrade halt: switch to the verified binary, or exit for an orchestrator (exit, exit-always)",
		"At an upgrade halt: \"switch\" runs the verified binary in the same process; \"exit\" stops the node cleanly, writes cosmovisor/" + relauncher.HaltReportFile + " and exits with code " + strconv.Itoa(relauncher.ExitUpgradeHalt) + ", leaving the swap to an orchestrator (a restart of an older binary is still redirected to the verified one); \"exit-always\" also never execs at boot, so an older binary exits again at the height until the orchestrator starts the new one.", true,
		func(c *Config, v string) error {
			switch o := OnHalt(strings.TrimSpace(v)); o {
			case OnHaltSwitch, OnHaltExit, OnHaltExitAlways:
				c.OnHalt = o
				return nil
			}
			return fmt.Errorf("want %q, %q or %q, got %q", OnHaltSwitch, OnHaltExit, OnHaltExitAlways, v)
		}},
	{"health-deadline", "INVISOR_HEALTH_DEADLINE", "60s", "how long after a switch the block after the upgrade height may take before invisor reports the upgrade stalled (0: never)",
		"How long after the boot of an upgrade binary the block after the upgrade height may take before invisor reports the upgrade stalled, and why (the network, this node), in the log, `<appd> invisor status`, a metric and the webhook. 0: no stall report; a failed upgrade handler is reported at once either way.", true,
		func(c *Config, v string) error {
			d, err := time.ParseDuration(strings.TrimSpace(v))
			if err != nil || d < 0 {
				return fmt.Errorf("want a duration such as 60s or 5m (0: no stall report), got %q", v)
			}
			c.Health.Deadline = d
			return nil
		}},
	{"webhook-url", "INVISOR_WEBHOOK_URL", "", "http(s) URL that gets a JSON document for each upgrade event (empty: none)",
		"http(s) URL that gets a POST of a small JSON document (invisor.event/1) for each upgrade event: proposal checked, plan seen, binary ready or refused, not ready near the height, halted, switched, healthy or stalled after the switch. Never blocks the node; see the operator guide. Empty: no notifications.", true,
		func(c *Config, v string) error {
			v = strings.TrimSpace(v)
			if v != "" {
				if err := notify.ValidateURL(v); err != nil {
					return err
				}
			}
			c.Notify.URL = v
			// `invisor config` shows Values: a token in the URL stays out of it.
			if v != "" {
				c.Values["webhook-url"] = staging.Redact(v)
			}
			return nil
		}},
}
