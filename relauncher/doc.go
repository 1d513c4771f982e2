// Package relauncher owns the process lifecycle of a chain node that embeds invisor:
// the boot redirect, the halt coordinator, and the switch to the upgrade binary with
// syscall.Exec (same PID, argv, environment and working directory).
//
// # Layout
//
// The layout, the plan-name rule (cosmovisor's: lower-cased unless
// Config.DisableRecase, then url.PathEscape), the completion records and their
// proof, crash-safe writes, the home lock and the attempts ledger are
// internal/home's (Relauncher.Home); this package builds no path of its own:
//
//	<Home>/cosmovisor/genesis/bin/<daemon>
//	<Home>/cosmovisor/upgrades/<dir>/bin/<daemon>            (+ .invisor.json, the completion record)
//	<Home>/cosmovisor/current -> <root>/genesis | <root>/upgrades/<dir>   (written absolute, as cosmovisor needs; read either way)
//	<Home>/cosmovisor/.invisor-attempts.json                 (switch attempts per upgrade)
//	<Home>/data/upgrade-info.json                            (written by x/upgrade, or by the edge for an upgrade scheduled at a height; never deleted or moved)
//
// # Wiring
//
//	awaited := relauncher.AwaitPreUpgrade(os.Environ()) // first thing in main, before any config is read
//	lock, err := layout.Acquire(os.Environ())           // held for the whole process, adopted across execs
//	r, err := relauncher.New(cfg, nil, logger, relauncher.OS{Lock: lock, Fetch: stageNow, AwaitedPreUpgrade: awaited})
//	if relauncher.UnderCosmovisor() { /* stage only; cosmovisor swaps */ }
//	r.Layout()             // first start on a home
//	r.Boot()               // before any database is opened; fails after a failed awaited pre-upgrade
//	... start the node; at the upgrade halt the hook calls
//	    r.Halt(ctx, name, height, state, why) with what CometBFT says (NodeState) ...
//	if name, ok := r.Armed(); ok { err := r.Switch(name); os.Exit(1) } // after the node stopped
//	... once the new binary committed a block past the height: layout.ClearAttempts(plan) (the edge's job)
//
// # Halt paths
//
// The halt path comes from CometBFT's own state at the halt (NodeState, which the
// edge learns from the node's /status; PathFor), never from call stacks:
//   - In consensus (with or without optimistic execution) CometBFT recovers
//     x/upgrade's error and idles: the clean stop. The waiter proves the binary,
//     arms, calls OS.Stop; the edge calls Switch once `start` returned and every
//     store is closed.
//   - Catching up (block sync), before CometBFT started (the handshake replays the
//     halting block, and the failed start leaves CometBFT's stores open) or when
//     CometBFT cannot be asked: the re-exec (ReexecAtHalt). The halting call waits
//     for the proof in the same wait loop, then execs this same image; its Boot,
//     with no store open, does backup, pre-upgrade, the flip and the exec.
//
// Both paths log which one they took and why, and nothing is backed up or run on
// open stores.
//
// # Guarantees
//
//   - Never runs a file without a proof for exactly the plan in
//     data/upgrade-info.json (name, height, info): the Verifier's Binary, by
//     default home.Layout.Open (completion record; stamp unchanged or re-hashed
//     through the descriptor). A proof for another plan or path is refused
//     (ErrLayout). The one file Boot lets run without such a proof is the binary
//     the operator started, which is running already: see the next point.
//   - Patch releases: when this executable is not the proven binary of the plan
//     in data/upgrade-info.json, Boot asks it (OS.Handles) whether it carries
//     that plan's upgrade handler. If it does, it runs as started and becomes the
//     upgrade's binary: home.Layout.InstallBinary puts a copy with a
//     home.SourceOperatorStarted record in the upgrade's place (keeping the
//     binary there before under upgrades/<dir>/previous/), and `current` points
//     to the upgrade (after backup and pre-upgrade, if no switch prepared it).
//     If it lacks the handler or cannot tell, it is redirected, and the log says
//     why. An image re-executed at a halt is not asked.
//   - No window between check and run: pre-upgrade (sequential and overlapped)
//     and the exec run the proven descriptor itself (Verified.ExecPath,
//     /proc/self/fd/N on Linux), each right after Verified.Recheck; `current` is
//     flipped only after a Recheck. Nothing re-opens the file by name between the
//     proof and the run. A change refuses (home.ErrChanged) before anything runs.
//     A script (#!) gets the descriptor across its exec, since its interpreter
//     reads it again.
//   - The boot's "this is the binary the chain needs" is a proof too, also just
//     after invisor's own exec (cheap then: the stamp is unchanged): this very
//     file (Verified.Is), or a copy with the recorded size and SHA-256.
//   - Execs only for the upgrade named in data/upgrade-info.json: Switch refuses
//     without the file (ErrNoUpgradeInfo) or for another name (ErrUpgradeMismatch);
//     the halt waiter waits until the file names the halt's plan.
//   - A plan name no directory can hold (home.UnmappableNameError) never fails a
//     boot and never arms a switch: Boot and OnHalt log the name, the reason and
//     the advice, and the node runs as it is.
//   - The home lock (OS.Lock) is held through every exec: the new image inherits
//     its descriptor (Lock.InheritEnv, after every child was started) and adopts
//     it; a failed exec takes it back (Lock.Keep).
//   - Exec loops are bounded across restarts: before every exec into an
//     upgrade's binary the attempts ledger is consulted, and at
//     Config.MaxSwitchAttempts the exec is refused (ErrExecLoop, saying what to
//     do), with no backup and no pre-upgrade. Only the first attempt takes a data
//     backup. Per PID, a second redirect to the same target in a row, or more than
//     MaxExecGeneration execs, is refused too.
//   - A node restarted at the halt without the binary fetches it at boot
//     (OS.Fetch, when Config.DownloadsEnabled), bounded by BootFetchTimeout, and
//     switches once it is proven.
//   - `current` is replaced atomically (home.Symlink) and only after backup and
//     pre-upgrade succeeded, so "current points to upgrades/N" means the
//     preparation for N is complete.
//   - The exec keeps PID, argv (argv[0] as the process had it), working directory
//     and environment; it adds INVISOR_EXEC_GENERATION, INVISOR_EXECED_FROM and the
//     home lock's INVISOR_HOME_LOCK, for a boot redirect INVISOR_REDIRECT_TARGET,
//     and for an overlapped pre-upgrade INVISOR_EXEC_PRE_UPGRADE.
//   - Overlapped pre-upgrade: Switch (not the boot redirect) starts `<new bin>
//     pre-upgrade` and execs without waiting for it only if the Binary is marked
//     AwaitsPreUpgrade, which only that very file's own answer establishes (the
//     probe answer staging keeps in its completion record, which LayoutVerifier
//     reads; a binary that did not answer gets the sequential order). The new binary's
//     AwaitPreUpgrade waits for the child before the node reads any
//     configuration, with the same exit code semantics, retries and per-run
//     timeout, and flips `current` itself; its Boot refuses to start the node
//     after a failure. No pre-upgrade child gets INVISOR_EXEC_PRE_UPGRADE or
//     INVISOR_HOME_LOCK, nor the lock's descriptor.
//   - An exec failure returns an *ExecError naming the errno (ENOENT, EACCES, ENOEXEC,
//     ETXTBSY, ...); the caller exits non-zero and the process manager restarts into Boot.
//   - OnHalt never blocks and never panics; it arms at most once and calls Stop once.
//   - data/upgrade-info.json is only ever read.
//
// # What is on disk after a crash
//
//   - During Layout: either no genesis binary or a complete one (home.CopyFile);
//     at worst a temp name carrying home.TempMarker that the next Layout removes.
//   - During the backup: a "<BackupDir>/data-backup-...invisor-tmp-..." directory that
//     the next Layout removes; a directory under the final name is always complete,
//     its manifest (.invisor-backup.json, written inside the temp directory before
//     the rename) included. Retention renames a backup to a temp name before
//     removing it.
//     Table files in a backup are hard links: they share the inode with the live
//     files (LevelDB and Pebble never rewrite tables in place). The attempts
//     ledger names the backup only once the attempt is noted (right before the
//     exec): a crash before that takes another backup next time.
//   - During pre-upgrade: whatever pre-upgrade itself wrote; `current` unchanged, so
//     the next Boot redoes pre-upgrade (and the backup if the ledger has none).
//   - Overlapped pre-upgrade, the old process killed after starting the child and
//     before the exec, or the new one killed while it waits: the orphaned child runs
//     to its end (its output goes to a "<root>/.pre-upgrade.invisor-tmp-..." file
//     the next Layout removes) unless it dies with its process group or unit
//     (systemd's default KillMode=control-group kills it with the node); `current`
//     is not flipped, so the next Boot redoes pre-upgrade, possibly while the
//     orphan still runs (pre-upgrade must be idempotent, as under cosmovisor).
//   - Overlapped pre-upgrade failed (exit 30, other code, timeout, retries
//     exhausted): the new binary exits non-zero before opening any store, `current`
//     unchanged; a restart goes through the boot redirect, which runs pre-upgrade
//     again, sequentially.
//   - Between the flip and the exec (sequential), or between the flip and the
//     node's start (overlapped): `current` points to the new upgrade and
//     upgrade-info.json names it; a restart through current/bin runs the new binary,
//     a restart of the old path is redirected by Boot without repeating pre-upgrade.
//   - The ledger (<home>/cosmovisor/.invisor-attempts.json) counts every exec
//     into an upgrade's binary, including one that then failed (the count is
//     written before the exec, which does not return on success).
//   - The exec failed: sequential, same as the previous case, `current` is not
//     rolled back; overlapped, Switch waited for (or killed at its timeout) the
//     child and removed its output first, and `current` was never flipped.
//
// # What it does not do
//
// It does not download, verify or install binaries (staging does, reached through
// OS.Fetch and the completion records); it does not take the home lock (the edge
// acquires it before Boot and hands it over in OS.Lock) nor refuse a second
// process (home.Layout.Acquire does); it does not clear the attempts ledger after
// a successful upgrade (the edge calls home.Layout.ClearAttempts once the new
// binary got past the height) and cannot tell a failed exec from a binary that
// halted again; it does not decide whether a binary can await its pre-upgrade
// (the binary says so when staging probes it; LayoutVerifier reads the record). It
// does not stop the node itself beyond calling OS.Stop (SIGTERM to its own pid by
// default) and it cannot tell whether the stores were closed: Switch must be
// called only after the node's start command returned, with no other goroutine
// starting processes (they would inherit the lock's descriptor). It does not read
// the environment or app.toml (the edge maps DAEMON_* onto Config), does not run
// under cosmovisor's control (see UnderCosmovisor), deletes only its own old
// backups beyond Config.BackupKeep (those holding a BackupManifestFile), and does
// not roll back `current` after a failed exec (Rollback, a standalone operation
// with the node stopped, takes the home lock itself and undoes a whole switch). It does not overlap
// pre-upgrade for a boot redirect, nor for a binary not marked, and it cannot
// tell whether an orphaned pre-upgrade of an earlier attempt is still running.
// The halt waiter's proof stays open until Switch takes it (Close does not close
// it, since Switch follows Close).
package relauncher
