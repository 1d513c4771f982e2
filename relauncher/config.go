package relauncher

import (
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"github.com/invisor/invisor/internal/home"
)

// Defaults used by DefaultConfig and by New for zero values.
const (
	// DefaultHaltPollInterval is how often OnHalt re-asks the Verifier while it waits
	// for the upgrade binary.
	DefaultHaltPollInterval = 200 * time.Millisecond
	// DefaultHaltGossip is how long, at most, the clean stop at an upgrade halt
	// lets the node keep gossiping the halting block's votes to peers that do not
	// have its commit yet: a few block intervals of a fast chain, far less than
	// a straggler costs the network (it halts only once the others are back).
	DefaultHaltGossip = 2 * time.Second
	// haltGossipPoll is how often that wait asks CometBFT for its peers' steps.
	haltGossipPoll = 20 * time.Millisecond
	// DefaultHaltLogInterval is how often OnHalt logs what is still missing.
	DefaultHaltLogInterval = 5 * time.Second
	// DefaultPreUpgradeTimeout bounds one run of `<bin> pre-upgrade`.
	DefaultPreUpgradeTimeout = 10 * time.Minute
	// DefaultMaxExecGeneration bounds how many execs one PID may go through; it is
	// generous because a node replaying history can pass several upgrades in a row.
	DefaultMaxExecGeneration = 64
	// DefaultMaxSwitchAttempts bounds the execs into one upgrade's binary across
	// restarts (the ledger in <home>/cosmovisor/.invisor-attempts.json).
	DefaultMaxSwitchAttempts = 3
	// DefaultBootFetchTimeout bounds the download of a missing binary at boot.
	DefaultBootFetchTimeout = 30 * time.Minute
)

// Environment markers passed to every exec'd process. They are how a process knows
// it was exec'd by invisor, and they guard against redirect loops.
const (
	// EnvExecGeneration counts the execs this PID went through (1 after the first).
	EnvExecGeneration = "INVISOR_EXEC_GENERATION"
	// EnvExecedFrom is the path of the executable that did the last exec.
	EnvExecedFrom = "INVISOR_EXECED_FROM"
	// EnvRedirectTarget is set by a boot redirect to the path it exec'd; a second
	// redirect to the same target in a row is refused as a loop. Switch clears it.
	EnvRedirectTarget = "INVISOR_REDIRECT_TARGET"
	// EnvExecPreUpgrade is set by a Switch that started `pre-upgrade` without
	// waiting for it: it tells the new binary which child to wait for and what to
	// do after (see AwaitPreUpgrade). Any later exec, and every pre-upgrade child,
	// gets the environment without it.
	EnvExecPreUpgrade = "INVISOR_EXEC_PRE_UPGRADE"
)

// Config configures a Relauncher. Library code never reads the environment: the edge
// (app wiring, CLI) maps DAEMON_* variables and app.toml onto this struct.
type Config struct {
	// Home is the node home (DAEMON_HOME); cosmovisor's folders live in Home/cosmovisor.
	Home string
	// DaemonName is the binary name under bin/ (DAEMON_NAME).
	DaemonName string
	// DisableRecase keeps the plan name's case in directory names
	// (COSMOVISOR_DISABLE_RECASE); by default names are lower-cased as cosmovisor does.
	DisableRecase bool

	// RunPreUpgrade runs `<new bin> pre-upgrade [PreUpgradeArgs...]` before the exec.
	// Exit codes: 0 ok, 1 not implemented (ok), 30 failure, 31 retry; any other code
	// or a failure to start it is a failure.
	RunPreUpgrade bool
	// PreUpgradeMaxRetries has DAEMON_PREUPGRADE_MAX_RETRIES semantics: the command
	// runs at most 1+PreUpgradeMaxRetries times while it exits 31.
	PreUpgradeMaxRetries int
	// PreUpgradeArgs are appended after "pre-upgrade" (cosmovisor passes none);
	// "--home <Home>" always follows them.
	PreUpgradeArgs []string
	// PreUpgradeTimeout bounds one run of pre-upgrade; 0 means DefaultPreUpgradeTimeout.
	PreUpgradeTimeout time.Duration

	// Backup backs up Home/data before the switch (UNSAFE_SKIP_BACKUP inverted).
	Backup bool
	// BackupDir receives data-backup-<time>-<name> (DAEMON_DATA_BACKUP_DIR); empty means Home.
	BackupDir string
	// BackupKeep is how many of invisor's own backups (those with a BackupManifest)
	// stay in BackupDir after a new one is complete, the newest; older ones are
	// removed. Anything else in BackupDir is never touched. 0 means
	// DefaultBackupKeep.
	BackupKeep int

	// DownloadsEnabled lets Boot fetch a missing binary (OS.Fetch) and changes the
	// advice printed when a binary is missing.
	DownloadsEnabled bool
	// BootFetchTimeout bounds that fetch; 0 means DefaultBootFetchTimeout.
	BootFetchTimeout time.Duration

	// HaltPollInterval and HaltLogInterval tune OnHalt; 0 means the defaults.
	HaltPollInterval time.Duration
	HaltLogInterval  time.Duration
	// HaltGossip bounds how long the clean stop at an upgrade halt waits for
	// every peer to have the halting block's commit (OS.PeersAtHalt); 0 means
	// DefaultHaltGossip.
	HaltGossip time.Duration

	// MaxExecGeneration refuses an exec once EnvExecGeneration reached it; 0 means
	// DefaultMaxExecGeneration.
	MaxExecGeneration int
	// MaxSwitchAttempts refuses an exec into an upgrade's binary once the attempts
	// ledger counts that many for the plan, across restarts; 0 means
	// DefaultMaxSwitchAttempts.
	MaxSwitchAttempts int
}

// DefaultConfig returns cosmovisor's defaults: pre-upgrade on with no retries, backup
// on into Home. Home and DaemonName must still be set.
func DefaultConfig() Config {
	return Config{
		RunPreUpgrade:     true,
		Backup:            true,
		PreUpgradeTimeout: DefaultPreUpgradeTimeout,
		HaltPollInterval:  DefaultHaltPollInterval,
		HaltLogInterval:   DefaultHaltLogInterval,
		HaltGossip:        DefaultHaltGossip,
		MaxExecGeneration: DefaultMaxExecGeneration,
		MaxSwitchAttempts: DefaultMaxSwitchAttempts,
		BootFetchTimeout:  DefaultBootFetchTimeout,
		BackupKeep:        DefaultBackupKeep,
	}
}

// Validate reports the first invalid field.
func (c Config) Validate() error {
	if c.Home == "" {
		return errors.New("relauncher: Home is empty")
	}
	if err := home.ValidDaemonName(c.DaemonName); err != nil {
		return fmt.Errorf("relauncher: %w", err)
	}
	if c.PreUpgradeMaxRetries < 0 {
		return fmt.Errorf("relauncher: PreUpgradeMaxRetries %d < 0", c.PreUpgradeMaxRetries)
	}
	if c.PreUpgradeTimeout < 0 || c.HaltPollInterval < 0 || c.HaltLogInterval < 0 || c.HaltGossip < 0 || c.BootFetchTimeout < 0 {
		return errors.New("relauncher: negative duration in config")
	}
	if c.MaxExecGeneration < 0 {
		return fmt.Errorf("relauncher: MaxExecGeneration %d < 0", c.MaxExecGeneration)
	}
	if c.MaxSwitchAttempts < 0 {
		return fmt.Errorf("relauncher: MaxSwitchAttempts %d < 0", c.MaxSwitchAttempts)
	}
	if c.BackupKeep < 0 {
		return fmt.Errorf("relauncher: BackupKeep %d < 0 (keep at least 1 backup; 0 means %d)", c.BackupKeep, DefaultBackupKeep)
	}
	if c.BackupDir != "" && !filepath.IsAbs(c.BackupDir) {
		return fmt.Errorf("relauncher: BackupDir %q is not absolute", c.BackupDir)
	}
	return nil
}

func (c Config) withDefaults() Config {
	if c.PreUpgradeTimeout == 0 {
		c.PreUpgradeTimeout = DefaultPreUpgradeTimeout
	}
	if c.HaltPollInterval == 0 {
		c.HaltPollInterval = DefaultHaltPollInterval
	}
	if c.HaltLogInterval == 0 {
		c.HaltLogInterval = DefaultHaltLogInterval
	}
	if c.HaltGossip == 0 {
		c.HaltGossip = DefaultHaltGossip
	}
	if c.MaxExecGeneration == 0 {
		c.MaxExecGeneration = DefaultMaxExecGeneration
	}
	if c.MaxSwitchAttempts == 0 {
		c.MaxSwitchAttempts = DefaultMaxSwitchAttempts
	}
	if c.BootFetchTimeout == 0 {
		c.BootFetchTimeout = DefaultBootFetchTimeout
	}
	if c.BackupDir == "" {
		c.BackupDir = c.Home
	}
	if c.BackupKeep == 0 {
		c.BackupKeep = DefaultBackupKeep
	}
	return c
}
