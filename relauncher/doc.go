// Package relauncher owns the process lifecycle of a chain node that embeds invisor:
// the boot redirect, the halt coordinator, and the switch to the upgrade binary with
// syscall.Exec (same PID, argv, environment and working directory).
//
// # Layout
//
// The layout is cosmovisor's, so an operator can move between cosmovisor and invisor:
//
//	<Home>/cosmovisor/genesis/bin/<daemon>
//	<Home>/cosmovisor/upgrades/<name>/bin/<daemon>
//	<Home>/cosmovisor/current -> genesis | upgrades/<name>   (absolute or relative on read; written relative)
//	<Home>/data/upgrade-info.json                            (written by x/upgrade; never deleted or moved)
//
// # Wiring
//
//	r, err := relauncher.New(cfg, stager, logger, relauncher.OS{})
//	if relauncher.UnderCosmovisor() { /* stage only; cosmovisor swaps */ }
//	r.Layout()             // first start on a home
//	r.Boot()               // before any database is opened; returns only if this binary is right
//	... start the node; the hook calls r.OnHalt(name, height) at the upgrade halt ...
//	if name, ok := r.Armed(); ok { err := r.Switch(name); os.Exit(1) } // after the node stopped
//
// # Guarantees
//
//   - Never execs a binary the Verifier did not return as trusted in the same call;
//     between that re-hash and the exec, a change of the file's inode, size, mode,
//     mtime or ctime refuses the exec (ErrBinaryChanged).
//   - Execs only for the upgrade named in data/upgrade-info.json: Switch refuses
//     without the file (ErrNoUpgradeInfo) or for another name (ErrUpgradeMismatch).
//   - `current` is replaced atomically (symlink to a temp name, rename, directory
//     fsync) and only after backup and pre-upgrade succeeded, so "current points to
//     upgrades/N" means the preparation for N is complete.
//   - The exec keeps PID, argv, working directory and environment; it adds
//     INVISOR_EXEC_GENERATION and INVISOR_EXECED_FROM, and for a boot redirect
//     INVISOR_REDIRECT_TARGET. A second redirect to the same target in a row, or
//     more than MaxExecGeneration execs in one PID, is refused (ErrExecLoop).
//   - An exec failure returns an *ExecError naming the errno (ENOENT, EACCES, ENOEXEC,
//     ETXTBSY, ...); the caller exits non-zero and the process manager restarts into Boot.
//   - OnHalt never blocks and never panics; it arms at most once and calls Stop once.
//   - data/upgrade-info.json is only ever read.
//
// # What is on disk after a crash
//
//   - During Layout: either no genesis binary or a complete one (temp file, fsync,
//     rename); at worst a temp name with ".invisor-tmp-" that the next Layout removes.
//   - During the backup: a "<BackupDir>/data-backup-...invisor-tmp-..." directory that
//     the next Layout removes; a directory under the final name is always complete.
//     Table files in a backup are hard links: they share the inode with the live
//     files (LevelDB and Pebble never rewrite tables in place).
//   - During pre-upgrade: whatever pre-upgrade itself wrote; `current` unchanged, so
//     the next Boot redoes backup and pre-upgrade.
//   - Between the flip and the exec: `current` points to the new upgrade and
//     upgrade-info.json names it; a restart through current/bin runs the new binary,
//     a restart of the old path is redirected by Boot without repeating pre-upgrade.
//   - The exec failed: same as the previous case; `current` is not rolled back.
//
// # What it does not do
//
// It does not download, verify or install binaries (the staging package does, and
// is reached only through Verifier); it does not stop the node itself beyond calling
// OS.Stop (SIGTERM to its own pid by default) and it cannot tell whether the stores
// were closed: Switch must be called only after the node's start command returned.
// It does not read the environment or app.toml (the edge maps DAEMON_* onto Config),
// does not run under cosmovisor's control (see UnderCosmovisor), does not take a
// lock on the home (two supervisors on one home must be prevented by the caller),
// does not delete old backups, and does not roll back `current` after a failed exec.
package relauncher
