package invisor

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"github.com/spf13/viper"

	"github.com/invisor/invisor/internal/home"
	"github.com/invisor/invisor/relauncher"
	"github.com/invisor/invisor/staging"
)

// Config is invisor's effective configuration for one node home.
type Config struct {
	// Enabled turns invisor off entirely (the node then behaves as without it).
	Enabled    bool
	Staging    staging.Config
	Relauncher relauncher.Config
	// Sources says where each setting came from: "default", "app.toml", "env NAME"
	// or "flag --invisor.KEY".
	Sources map[string]string
	// Values holds the effective value of each setting as text, keyed like Sources.
	Values map[string]string
}

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

// FlagPrefix prefixes the flag of every setting: --invisor.allow-download.
const FlagPrefix = "invisor."

// AddFlags adds a --invisor.<key> flag for every setting to fs (the `start`
// command, and the `invisor` commands that show what start would do). A flag
// that is given wins over the environment and app.toml. Boolean settings take
// --invisor.key or --invisor.key=false; values are checked by LoadConfigFlags,
// which names the flag.
func AddFlags(fs *pflag.FlagSet) {
	for _, s := range settings {
		if fs.Lookup(FlagPrefix+s.key) != nil {
			continue
		}
		// pflag reads a `quoted` word of the usage as the value's name: drop backquotes.
		usage := fmt.Sprintf("invisor: %s (app.toml [invisor] %s, env %s)", strings.ReplaceAll(s.doc, "`", ""), s.key, s.env)
		v := &settingValue{s: s.def, isBool: s.def == "true" || s.def == "false"}
		f := fs.VarPF(v, FlagPrefix+s.key, "", usage)
		if v.isBool {
			f.NoOptDefVal = "true"
		}
	}
}

// settingValue is the flag value of a setting. It accepts any text (LoadConfigFlags
// validates it and names the flag) and remembers whether the command line set it:
// the SDK's config interceptor copies app.toml values into unset flags and marks
// them changed, which would otherwise pass app.toml values off as flags.
type settingValue struct {
	s                 string
	isBool            bool
	marked, onCmdLine bool
}

func (v *settingValue) String() string { return v.s }
func (v *settingValue) Set(s string) error {
	v.s = s
	return nil
}

func (v *settingValue) Type() string {
	if v.isBool {
		return "bool"
	}
	return "string"
}

// markCommandLineFlags records, for the command about to run, which --invisor.*
// flags the command line set. It must run after flag parsing and before the SDK's
// config interceptor: Execute wraps the root's PersistentPreRunE with it.
func markCommandLineFlags(cmd *cobra.Command) {
	cmd.Flags().VisitAll(func(f *pflag.Flag) {
		if v, ok := f.Value.(*settingValue); ok {
			v.marked, v.onCmdLine = true, f.Changed
		}
	})
}

// flagGiven reports whether the command line set flag f.
func flagGiven(f *pflag.Flag) bool {
	if v, ok := f.Value.(*settingValue); ok && v.marked {
		return v.onCmdLine
	}
	return f.Changed
}

// setting is one [invisor] key of app.toml, with its environment name and how it
// lands in the typed configs.
type setting struct {
	key, env, def, doc string
	apply              func(c *Config, v string) error
}

func boolSetting(key, env, def, doc string, set func(c *Config, b bool)) setting {
	return setting{key, env, def, doc, func(c *Config, v string) error {
		b, err := strconv.ParseBool(strings.TrimSpace(v))
		if err != nil {
			return fmt.Errorf("want true or false, got %q", v)
		}
		set(c, b)
		return nil
	}}
}

func durationSetting(key, env, def, doc string, set func(c *Config, d time.Duration)) setting {
	return setting{key, env, def, doc, func(c *Config, v string) error {
		d, err := time.ParseDuration(strings.TrimSpace(v))
		if err != nil || d <= 0 {
			return fmt.Errorf("want a positive duration such as 30s or 2h, got %q", v)
		}
		set(c, d)
		return nil
	}}
}

// settings is the [invisor] section's reference: key, env, default, meaning.
var settings = []setting{
	boolSetting("enabled", "INVISOR_ENABLED", "true", "turn invisor on or off",
		func(c *Config, b bool) { c.Enabled = b }),
	{"daemon-name", "DAEMON_NAME", "", "binary name under cosmovisor/*/bin (empty: the chain's own name)",
		func(c *Config, v string) error {
			if v = strings.TrimSpace(v); v == "" {
				return nil // keep Options.DaemonName
			}
			c.Staging.DaemonName, c.Relauncher.DaemonName = v, v
			return nil
		}},
	boolSetting("allow-download", "DAEMON_ALLOW_DOWNLOAD_BINARIES", "false", "download the upgrade binary named by the plan's info",
		func(c *Config, b bool) { c.Staging.AllowDownload, c.Relauncher.DownloadsEnabled = b, b }),
	boolSetting("require-checksum", "DAEMON_DOWNLOAD_MUST_HAVE_CHECKSUM", "true", "refuse downloads without a sha256/sha512 checksum",
		func(c *Config, b bool) { c.Staging.RequireChecksum = b }),
	boolSetting("allow-file-urls", "INVISOR_ALLOW_FILE_URLS", "false", "accept file:// sources in plan info",
		func(c *Config, b bool) { c.Staging.AllowFileURLs = b }),
	{"ca-file", "INVISOR_CA_FILE", "", "PEM file of the root CAs trusted for https downloads (default: the system's)",
		func(c *Config, v string) error {
			if v != "" && !filepath.IsAbs(v) {
				return fmt.Errorf("want an absolute path, got %q", v)
			}
			c.Staging.CAFile = v
			return nil
		}},
	durationSetting("download-deadline", "INVISOR_DOWNLOAD_DEADLINE", "2h", "bound on one whole staging attempt",
		func(c *Config, d time.Duration) { c.Staging.Deadline = d }),
	durationSetting("retry-min", "INVISOR_RETRY_MIN", "5s", "first wait before retrying a failed attempt",
		func(c *Config, d time.Duration) { c.Staging.RetryMin = d }),
	durationSetting("retry-max", "INVISOR_RETRY_MAX", "5m", "longest wait between attempts",
		func(c *Config, d time.Duration) { c.Staging.RetryMax = d }),
	{"staging-disk-share", "INVISOR_STAGING_DISK_SHARE", "0.1", "fraction of disk time staging's writes may take while the node runs (1: full speed)",
		func(c *Config, v string) error {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err != nil || !(f > 0 && f <= 1) {
				return fmt.Errorf("want a fraction in (0, 1] such as 0.1 (1 writes at full speed), got %q", v)
			}
			c.Staging.DiskShare = f
			return nil
		}},
	boolSetting("unsafe-skip-backup", "UNSAFE_SKIP_BACKUP", "false", "skip the data backup before the switch",
		func(c *Config, b bool) { c.Relauncher.Backup = !b }),
	{"backup-dir", "DAEMON_DATA_BACKUP_DIR", "", "where data backups go (default: the node home)",
		func(c *Config, v string) error {
			if v != "" && !filepath.IsAbs(v) {
				return fmt.Errorf("want an absolute path, got %q", v)
			}
			c.Relauncher.BackupDir = v
			return nil
		}},
	boolSetting("disable-recase", "COSMOVISOR_DISABLE_RECASE", "false", "keep the plan name's case in upgrades/<name> (cosmovisor lower-cases it by default)",
		func(c *Config, b bool) { c.Staging.DisableRecase, c.Relauncher.DisableRecase = b, b }),
	boolSetting("unsafe-trust-placed-binaries", "INVISOR_UNSAFE_TRUST_PLACED_BINARIES", "false", "trust a binary placed by hand that the plan does not confirm (logged at every boot)",
		func(c *Config, b bool) { c.Staging.TrustPlacedBinaries = b }),
	boolSetting("pre-upgrade", "INVISOR_PRE_UPGRADE", "true", "run `<new binary> pre-upgrade` before the switch",
		func(c *Config, b bool) { c.Relauncher.RunPreUpgrade = b }),
	{"pre-upgrade-max-retries", "DAEMON_PREUPGRADE_MAX_RETRIES", "0", "retries of pre-upgrade while it exits 31",
		func(c *Config, v string) error {
			n, err := strconv.Atoi(strings.TrimSpace(v))
			if err != nil || n < 0 {
				return fmt.Errorf("want a whole number >= 0, got %q", v)
			}
			c.Relauncher.PreUpgradeMaxRetries = n
			return nil
		}},
}

// Layout is the node home's layout for this configuration.
func (c Config) Layout() (home.Layout, error) { return c.Staging.Layout() }

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
	c := Config{Enabled: true, Staging: staging.DefaultConfig(), Relauncher: relauncher.DefaultConfig(),
		Sources: map[string]string{}, Values: map[string]string{}}
	c.Staging.Home, c.Relauncher.Home = home, home
	c.Staging.DaemonName, c.Relauncher.DaemonName = opts.DaemonName, opts.DaemonName

	known := map[string]bool{}
	for _, s := range settings {
		known[s.key] = true
	}
	if v != nil {
		if section, ok := v.Get("invisor").(map[string]any); ok {
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
		if v != nil && v.IsSet("invisor."+s.key) {
			val, src = fmt.Sprint(v.Get("invisor."+s.key)), "app.toml"
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
	return c, nil
}

func keys() []string {
	out := make([]string, len(settings))
	for i, s := range settings {
		out[i] = s.key
	}
	return out
}

// wrapFlagMarking runs markCommandLineFlags before the root's PersistentPreRunE
// (where the SDK intercepts the config), for every command of the tree.
func wrapFlagMarking(root *cobra.Command) {
	pre, preE := root.PersistentPreRun, root.PersistentPreRunE
	root.PersistentPreRunE = func(cmd *cobra.Command, args []string) error {
		markCommandLineFlags(cmd)
		if preE != nil {
			return preE(cmd, args)
		}
		if pre != nil {
			pre(cmd, args)
		}
		return nil
	}
	root.PersistentPreRun = nil
}
