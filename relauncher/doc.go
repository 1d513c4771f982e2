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
//	awaited := relauncher.AwaitPreUpgrade(os.Environ()) // first thing in main, before any config is read
//	r, err := relauncher.New(cfg, stager, logger, relauncher.OS{AwaitedPreUpgrade: awaited})
//	if relauncher.UnderCosmovisor() { /* stage only; cosmovisor swaps */ }
//	r.Layout()             // first start on a home
//	r.Boot()               // before any database is opened; fails after a failed awaited pre-upgrade
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
//     INVISOR_EXEC_GENERATION and INVISOR_EXECED_FROM, for a boot redirect
//     INVISOR_REDIRECT_TARGET, and for an overlapped pre-upgrade
//     INVISOR_EXEC_PRE_UPGRADE. A second redirect to the same target in a row, or
//     more than MaxExecGeneration execs in one PID, is refused (ErrExecLoop).
//   - Overlapped pre-upgrade: Switch (not the boot redirect) starts `<new bin>
//     pre-upgrade` and execs without waiting for it only if the Verifier marked the
//     binary AwaitsPreUpgrade, which only a scan of that very file can establish
//     (BinaryAwaitsPreUpgrade: the capability token the linker keeps exactly when
//     AwaitPreUpgrade is linked, under a stamp taken before the hash and rechecked
//     after the scan). The new binary's AwaitPreUpgrade waits for the child before
//     the node reads any configuration, with the same exit code semantics, retries
//     and per-run timeout, and flips `current` itself; its Boot refuses to start
//     the node after a failure. The child's environment, like that of any later
//     exec, never contains INVISOR_EXEC_PRE_UPGRADE.
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
//   - Overlapped pre-upgrade, the old process killed after starting the child and
//     before the exec, or the new one killed while it waits: the orphaned child runs
//     to its end (its output goes to a "<root>/.pre-upgrade.invisor-tmp-..." file
//     the next Layout removes) unless it dies with its process group or unit
//     (systemd's default KillMode=control-group kills it with the node); `current`
//     is not flipped, so the next Boot redoes backup and pre-upgrade, possibly while
//     the orphan still runs (pre-upgrade must be idempotent, as under cosmovisor).
//   - Overlapped pre-upgrade failed (exit 30, other code, timeout, retries
//     exhausted): the new binary exits non-zero before opening any store, `current`
//     unchanged; a restart goes through the boot redirect, which runs pre-upgrade
//     again, sequentially.
//   - Between the flip and the exec (sequential), or between the flip and the
//     node's start (overlapped): `current` points to the new upgrade and
//     upgrade-info.json names it; a restart through current/bin runs the new binary,
//     a restart of the old path is redirected by Boot without repeating pre-upgrade.
//   - The exec failed: sequential, same as the previous case, `current` is not
//     rolled back; overlapped, Switch waited for (or killed at its timeout) the
//     child and removed its output first, and `current` was never flipped.
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
// It does not overlap pre-upgrade for a boot redirect, nor for a binary it has not
// scanned, and it cannot tell whether an orphaned pre-upgrade of an earlier attempt
// is still running.
package relauncher
