// Package home owns a node home as invisor and cosmovisor lay it out, and the one
// proof that a file may run for an upgrade plan. Every other package (staging,
// relauncher, the CLI, bundles, the edge) asks it for paths and proofs and builds
// none of its own.
//
//	<home>/data/upgrade-info.json                    written by x/upgrade at the halt
//	<home>/cosmovisor/genesis/bin/<daemon>
//	<home>/cosmovisor/upgrades/<dir>/bin/<daemon>    <dir> = DirName(plan name)
//	<home>/cosmovisor/upgrades/<dir>/bin/<daemon>.invisor.json   the completion record
//	<home>/cosmovisor/current -> genesis | upgrades/<dir>
//	<home>/cosmovisor/.invisor.lock                  the home lock (flock, holder PID)
//	<home>/cosmovisor/.invisor-attempts.json         switch attempts per upgrade
//	<home>/cosmovisor/invisor-scheduled.json         upgrades at a height without governance
//	<home>/cosmovisor/invisor-proposals/<id>/bin/<daemon>(.invisor.json)   a binary checked while
//	                                                 proposal <id> was in its voting period (no proof to run)
//	<home>/cosmovisor/upgrades/<dir>/previous/<UTC time>/<daemon>(.invisor.json)
//	                                                 binaries InstallBinary replaced, with their records (no proof)
//
// # Guarantees
//
//   - InstallBinary puts a copy of a file in an upgrade's place with its record,
//     hashed in place, and keeps the binary it replaces.
//   - The schedule of upgrades at a height (Schedule, AddScheduled,
//     RemoveScheduled) is one file written crash-safely; a file that does not
//     parse is an error, never an empty schedule.
//   - One plan-name rule (DirName): every name x/upgrade accepts maps to the
//     directory cosmovisor v1.5.0 uses for it: lower-cased unless
//     COSMOVISOR_DISABLE_RECASE (Options.DisableRecase), then url.PathEscape. The
//     few names that cannot be mapped safely (".", "..", more than 255 bytes
//     escaped) are an *UnmappableNameError, never a different directory.
//   - A completion record is the single proof that a file may run for a plan. It
//     names the plan (name, height, sha256 of its info), where the bytes came from
//     (Source), their sha256 and size, and a file stamp (device, inode, size,
//     mode, mtime, ctime) of the file in its final place, whose content was hashed
//     no earlier than the stamp could prove. Open returns the file descriptor of
//     the binary only if the record is for exactly the plan in force and the file
//     is provably the recorded one: its stamp is unchanged, or it re-hashes to the
//     recorded sha256 through that very descriptor. The caller runs that
//     descriptor (ExecPath), so no path race remains between check and run.
//   - Writes are crash-safe (WriteFile, Symlink, CopyFile): a temp name in the same
//     directory, fsync, rename, fsync of the directory.
//   - The home lock (Lock) admits one invisor process per home; a second one gets
//     a *LockedError naming the holder's PID. It can be handed across syscall.Exec
//     (Lock.InheritEnv) so that the new image holds it from its first instruction.
//
// # What is on disk after a crash
//
// Temp names carrying TempMarker (RemoveStaleTemps removes them under the lock), and
// otherwise either the old or the new version of every file this package writes.
// A binary without a record is never trusted.
//
// # What it does not do
//
// It downloads nothing, runs nothing and decides nothing about when to upgrade; it
// never writes data/upgrade-info.json (x/upgrade owns it).
package home
