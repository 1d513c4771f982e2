// Package staging brings the binary for an x/upgrade plan into a verified, recorded
// state at <home>/cosmovisor/upgrades/<dir>/bin/<daemon>, off the consensus path, long
// before the upgrade height; or says exactly why it cannot.
//
// Paths, the plan-name rule, crash-safe writes, file stamps, completion records and
// the proof that a file may run for a plan belong to internal/home; staging builds
// none of its own. Its output is a home.Record; home.Layout.Open is the one check of
// it, made by whoever runs the file.
//
// # Use
//
// The process edge takes the home lock (home.Layout.Acquire) for the whole
// boot..exec, then creates one Stager per home with New (which fails at boot if the
// home is unwritable or read-only, temp and upgrades/ are on different filesystems,
// upgrades/ is mounted noexec, or Config.CAFile does not load), runs Stager.Run in a
// goroutine, and lets the consensus hook call Stager.Offer every block with the plan
// in force (nil when none). The relauncher calls Stager.WaitReady, and
// home.Layout.Open right before it runs the file. Fetch runs a single attempt
// synchronously, for CLIs and tests; it too expects the caller to hold the home lock.
// The chain reader calls Stager.OfferProposals with the software-upgrade
// proposals in their voting period (the whole list each time), and
// Status.Proposals says what each check found (ProposalCheck.Summary is one line
// a validator can vote on); CheckProposal runs one check synchronously, for this
// node's platform or another.
//
// # Guarantees
//
//   - Names: whatever home.DirName maps, staging stages, in exactly that directory
//     (cosmovisor's mapping: lower-cased unless Config.DisableRecase, then
//     url.PathEscape). A name it cannot map (".", "..", longer than 255 bytes
//     escaped; and, because a JSON record cannot hold it, invalid UTF-8) is an error
//     wrapping *home.UnmappableNameError with its Advice; a Stager reports it once
//     as StateUnmappable, the day the plan is offered, and does not retry it.
//   - A binary is trusted only through its completion record (home.Record, written
//     with home.Layout.WriteRecord): plan name, height, sha256 of the plan info, the
//     source (home.Source*), URL (redacted), checksum, sha256, size, the preflight's
//     first line, the binary's probe answer (when it gave one), and the stamp of the binary in its final place, whose content was
//     hashed no earlier than that stamp proves (see "Why a recorded stamp proves the
//     bytes").
//   - Downloads are pinned by ?checksum= (sha256 or sha512) unless RequireChecksum is
//     false; md5/sha1/unpinned are refused when the plan is first seen, before any
//     byte is requested. The info URL of a plan must be pinned too.
//   - Every attempt downloads into a fresh temp directory <home>/cosmovisor/TempPrefix*
//     (same filesystem as upgrades/), never resumes, and streams: body -> size cap ->
//     hashes -> file through one 1 MiB buffer, so memory does not grow with the
//     binary (TestStage1GiBRSS: staging 1 GiB raises RSS by a few MiB). Caps
//     (MaxBinaryBytes, MaxArchiveBytes, MaxArchiveEntries, MaxInfoBytes) are errors
//     (ErrTooLarge), never silent truncation. Writes are paced (DiskShare) unless
//     the Stager is told to Hurry.
//   - A body whose Content-Length exceeds the free space of the home is refused
//     before it is read (SpaceError); a disk that fills up during download or
//     unpacking is ErrNoSpace. Either way the temp directory is removed and
//     upgrades/ is untouched.
//   - Transfers have a response-header timeout, a stall/minimum-throughput watchdog
//     (IdleTimeout, MinThroughput) and an overall Deadline, and stop at once when the
//     plan is withdrawn or replaced. TLS certificates are always verified (against
//     the system roots, or Config.CAFile). Redirects only go to http(s), never
//     https->http.
//   - Archives (tar, tar.gz/tgz, tar.bz2/tbz2, tar.xz/txz, tar.zst/tzst, zip) are
//     unpacked only after the checksum matched. Entries with "..", absolute paths,
//     links, devices or duplicates reject the whole archive; all writes go through an
//     os.Root confined to the temp root; setuid/setgid/sticky and group/world-write
//     bits are stripped. Single compressed binaries (.gz, .bz2, .xz, .zst) work too.
//   - The binary must be an ELF (Mach-O on darwin) for this GOOS/GOARCH and pass a
//     bounded preflight run before it is recorded: `<bin> <PreflightArgs> --home
//     <scratch>` (default `version`), process group killed on timeout, with its
//     working directory, HOME, XDG_* and TMPDIR directories and DAEMON_HOME in a fresh
//     scratch directory of the attempt's temp dir, removed afterwards. A candidate
//     writes nothing outside it, and an unwritable $HOME (systemd ProtectHome=,
//     DynamicUser=) does not fail it. It is installed 0755.
//   - After the preflight the binary is asked what it can do (internal/probe), once,
//     in the same sandbox: no arguments, probe.RequestEnv for the plan,
//     ProbeTimeout, output capped at probe.MaxAnswer. The answer goes into the
//     record (home.Record.Probe), so the switch at the height asks nothing. A
//     binary that does not answer (non-zero exit, timeout, no answer line, a
//     garbled one: logged) is accepted as before, its record without Probe.
//   - A binary that answers it has no upgrade handler for the plan would halt the
//     chain again at the height, so it is refused days before it, whatever its
//     source and even with TrustPlacedBinaries: a *MissingHandlerError
//     (ErrMissingHandler) naming the plan, sha256 and height; no record, a
//     download is not installed, an operator's file is left as it is. A Stager
//     reports it once as StateRefused and does not download it again; it tries
//     again when the plan changes, when a file is placed, replaced or removed at
//     the install path (`invisor stage`), or after a restart.
//   - Install is fsync (files, dirs) -> rename into upgrades/<dir> -> fsync parent ->
//     stamp proof -> crash-safe record write. When upgrades/<dir> does not exist the
//     whole unpacked tree (bin/, lib/, ...) is renamed in one step; otherwise only
//     bin/<daemon> is moved.
//   - A replaced plan never inherits a file: when the record at the install path is
//     for another plan of the same name (other height or info), that install is
//     taken out of the name space before the plan in force is staged: a download is
//     removed (renamed to a temp name, freed in paced steps), an operator's install
//     is renamed to upgrades/<dir>#replaced-<unix seconds> (home.DirName never
//     yields '#'), so the operator's file is not lost. Then the plan in force is
//     staged normally: downloaded when allowed, otherwise placed again. A withdrawn
//     plan's download is removed too, unless the current link or
//     data/upgrade-info.json points at it.
//   - Symlinks planted at upgrades/, upgrades/<dir>, its bin/ or the binary are refused.
//   - Proposal checks: each offered proposal is checked once per (ID, plan), in
//     the background, with the pipeline above (info and info URL, policy,
//     download, checksum, safe unpacking, header, preflight, probe asking for
//     the plan's handler), paced by DiskShare (Hurry does not apply), one at a
//     time in ID order, and only while the plan in force needs nothing (none,
//     ready or unmappable): an Offer of another plan cancels a running check,
//     which goes back to CheckQueued and runs again afterwards. Transient faults
//     (transfer, 5xx, disk) are retried with the staging backoff; a mismatch, a
//     missing handler, no binary or no checksum for the platform, an unsafe
//     archive, a wrong OS/arch or a failed preflight are not, until the
//     proposal's plan changes or the process restarts. Downloads disabled:
//     CheckSkipped, with how to check by hand.
//   - A verified check keeps its tree in the proposal area
//     (<home>/cosmovisor/invisor-proposals/<id>, home.ProposalsDir) with a
//     home.Record for exactly the proposal's plan (and Record.Proposal). Nothing
//     runs from there and nothing that lists or proves upgrades sees it. When
//     that very plan (name, height, info) is in force and nothing is at its
//     install path, Fetch hashes the kept binary again (a changed one is removed
//     with a warning) and installs the tree as a download, without a request;
//     any other plan is downloaded as usual. The area of a proposal no longer
//     offered is removed a grace period (two minutes) after it left the list,
//     so a passed proposal whose plan the hook offers a few blocks later is not
//     downloaded again; an area whose record is for the plan in force stays.
//
// # Why a recorded stamp proves the bytes
//
// A stamp (device, inode, size, mode, mtime, ctime) changes with any write, truncate,
// chmod, rename or replacement, and user space cannot set ctime back. Downloads are
// hashed as they are written into the attempt's private temp directory (0700, under
// the home lock), so nobody else can change them between the hash and the stamp
// taken before the preflight; after the preflight the stamp must be the same, or the
// file is hashed again and must still match. After the rename into upgrades/ the
// stamp is taken again: a rename changes only ctime (home.Stamp.Renamed), so a stamp
// otherwise equal to the one before proves the same bytes and is recorded; anything
// else is hashed again and that hash's stamp recorded, or refused. A file the
// operator placed is hashed through one descriptor by home.HashFile, which stamps it
// before reading (and again after a chmod to 0755); the same proof across the
// preflight applies, and that stamp is recorded. home.Layout.Open then accepts the
// file with a stat while its stamp is unchanged, and re-hashes it otherwise.
//
// # Binaries placed by the operator
//
// A binary at the install path without a record for the plan in force (placed by
// hand, by `invisor stage/prepare/import`, or left by a crash between the rename and
// the record write) is never overwritten, moved or deleted by this check, only made
// 0755 once it passed. It must be a regular executable for this platform and pass
// the preflight, and the plan decides what else it needs:
//
//   - The plan names a plain binary for this GOOS/GOARCH (or "any") with a checksum:
//     the file must hash to it (home.SourcePlanChecksum). Otherwise a
//     *PlacedMismatchError (ErrChecksumMismatch, ErrNotTrusted) names expected and
//     actual and says to remove or replace the file.
//   - The plan names an archive (or, with RequireChecksum off, an unpinned binary):
//     with AllowDownload it is fetched exactly like a download (checksum, safe
//     unpacking into the temp dir, caps, pacing) and its binary compared byte for
//     byte (home.SourcePlanArchive); nothing from it is installed. A mismatch is
//     refused as above. Without downloads the error says how to verify it: allow
//     downloads, `<daemon> invisor stage NAME --url <archive URL>` or `--file`, or
//     the override.
//   - The plan names a URL (info or archive) that cannot be fetched now, or one the
//     policy refuses: an error, retried with backoff; never trusted on the preflight
//     alone.
//   - The plan names no binary for this platform (no info, free text, JSON that is
//     not a binaries map, or a map without this OS/arch and without "any"): the
//     operator's placement is the only source, as with cosmovisor; accepted after
//     the preflight (home.SourceOperatorWord) and logged as a warning.
//   - Config.TrustPlacedBinaries (unsafe-trust-placed-binaries) is the explicit
//     override: whatever the plan does not confirm, or cannot be checked against
//     now, is accepted after the preflight (home.SourceOverride) with a warning
//     naming the plan, path and sha256.
//   - Records of an earlier format (source "hand-placed", or no format and stamp),
//     incomplete or unreadable records are no proof: the record is removed and the
//     file verified again under these rules (a format-0 download record for another
//     plan is a replaced plan's download and is removed with its install).
//
// A binary placed without a record before its plan exists is thus verified against
// whatever plan comes, which is how staging ahead of a proposal works; a record
// written for a plan that is not the one in force makes the install a replaced
// plan's.
//
// # What is on disk after a crash
//
//   - During download, verification or a removal: a <home>/cosmovisor/TempPrefix*
//     directory (.staging-tmp-* from earlier releases). It is never trusted; New
//     removes it on the next start. So New must be called under the home lock: the
//     lock is what proves no live attempt owns it.
//   - During a record write: a home.TempMarker name beside the binary, removed by New.
//   - Between the rename into place and the record write: a binary without a
//     record. It is not trusted; the next attempt verifies it as a placed binary
//     (the plan's checksum or archive; it is never re-downloaded over).
//   - During a proposal check: its temp directory (removed by New, as above);
//     between moving a checked tree into invisor-proposals/<id> and its record,
//     an area without a record, which New removes. Valid areas stay across a
//     restart, and a check offered again reports from them without downloading.
//     While an area is installed into upgrades/, its record is removed first, so
//     a crash leaves a binary without a record at the install path (verified
//     as a placed binary on the next attempt) or the area without a record.
//   - Between moving a replaced plan's install aside and staging the new one:
//     upgrades/<dir>#replaced-<unix> and no upgrades/<dir>; the next attempt stages
//     the plan in force.
//   - Any failure other than a crash leaves the upgrade directory as it was: the temp
//     directory is removed and, if writing or proving the record fails, what was
//     moved is removed.
//
// # What it does not do
//
// It takes no lock (the edge holds the home lock) and keeps no second proof: it
// never decides at exec time whether a file may run (home.Layout.Open does). It does
// not exec anything except the preflight and the probe, does not touch the `current` link,
// data/upgrade-info.json or the genesis binary, does not decide when to upgrade (skip
// heights, halt detection) and does not back up data: those belong to the hook and
// the relauncher. It does not read proposals from the chain (the caller offers
// them), does not vote, and checks another platform's binary only as far as
// that works without running it (checksum, archive, executable header); a
// check says nothing about the binaries of other nodes' platforms unless asked. It never deletes an operator's file: a replaced plan's is moved
// aside, a mismatching one left in place. It does not support go-getter's other
// schemes (git, s3, gcs), checksum files (checksum=file:...), or X-Terraform-Get. It
// keeps no mutable package state and never modifies go-getter's package globals.
//
// # Why go-getter is used the way it is
//
// HTTP is done here with net/http because the checks FAULTS.md asks for (one-pass
// hashing, caps that error instead of truncating, stall detection, scheme-checked
// redirects, no HEAD+Range resume) do not fit HttpGetter. go-getter supplies the
// compression codecs, constructed per call with LimitedDecompressors and a limit of
// cap+1 so that overflow is detected, and its decompressor table defines which URL
// suffixes are archives (the cosmovisor convention). Tar and zip containers are walked
// here because go-getter turns link entries into empty files instead of rejecting them.
// A codec stage is not interruptible: a cancel during it takes effect when it returns,
// which is bounded by MaxArchiveBytes.
package staging
