// Package staging brings the binary for an x/upgrade plan into a verified, ready state
// at <home>/cosmovisor/upgrades/<name>/bin/<daemon>, off the consensus path, long
// before the upgrade height; or says exactly why it cannot.
//
// # Use
//
// The app wiring creates one Stager per home with New (which fails at boot if the
// home is unwritable or read-only, temp and upgrades/ are on different filesystems,
// upgrades/ is mounted noexec, Config.CAFile does not load, or another Stager holds
// the lock), runs Stager.Run in a goroutine,
// and lets the consensus hook call Stager.Offer every block with the plan in force
// (nil when none). The relauncher calls Stager.WaitReady or Trusted before exec.
// Fetch runs a single attempt synchronously, for CLIs and tests.
//
// # Guarantees
//
//   - A binary is trusted only if a completion record (JSON, <bin>.invisor.json) sits
//     next to it and the file is a regular executable that re-hashes to the recorded
//     sha256. Trusted checks this at boot and just before exec.
//   - Downloads are pinned by ?checksum= (sha256 or sha512) unless RequireChecksum is
//     false; md5/sha1/unpinned are refused when the plan is first seen, before any
//     byte is requested. The info URL of a plan must be pinned too.
//   - Every attempt downloads into a fresh temp directory under <home>/cosmovisor
//     (same filesystem as upgrades/), never resumes, and streams: body -> size cap ->
//     hashes -> file through one 1 MiB buffer, so memory does not grow with the
//     binary (TestStage1GiBRSS: staging 1 GiB raises RSS by a few MiB). Caps
//     (MaxBinaryBytes, MaxArchiveBytes, MaxArchiveEntries, MaxInfoBytes) are errors
//     (ErrTooLarge), never silent truncation.
//   - A body whose Content-Length exceeds the free space of the home is refused
//     before it is read (SpaceError, naming needed and available bytes); a disk that
//     fills up during download or unpacking is ErrNoSpace. Either way the temp
//     directory is removed and upgrades/ is untouched.
//   - Each byte is hashed once, as it is written. A downloaded binary (or one
//     unpacked from tar/zip) is not read again: its stamp (inode, size, mtime, ctime)
//     taken before preflight must be unchanged after it, or it is re-hashed and must
//     still match (a mismatch is ErrNotTrusted). A plain download is renamed into
//     place, never copied.
//   - Transfers have a response-header timeout, a stall/minimum-throughput watchdog
//     (IdleTimeout, MinThroughput) and an overall Deadline, and stop at once when the
//     plan is withdrawn or replaced. TLS certificates are always verified (against
//     the system roots, or Config.CAFile); a failed verification is an error naming
//     TLS. Redirects only go to http(s), never https->http.
//   - Archives (tar, tar.gz/tgz, tar.bz2/tbz2, tar.xz/txz, tar.zst/tzst, zip) are
//     unpacked only after the checksum matched. Entries with "..", absolute paths,
//     links, devices or duplicates reject the whole archive; all writes go through an
//     os.Root confined to the temp root; setuid/setgid/sticky and group/world-write
//     bits are stripped. Single compressed binaries (.gz, .bz2, .xz, .zst) work too.
//   - The binary must be an ELF (Mach-O on darwin) for this GOOS/GOARCH and must pass
//     a bounded preflight run (`<bin> version` by default, process group killed on
//     timeout) before it is moved into place. It is installed 0755.
//   - Install is fsync (files, dirs) -> rename into upgrades/<name> -> fsync parent ->
//     atomic record write. When upgrades/<name> does not exist the whole unpacked tree
//     (bin/, lib/, ...) is renamed in one step; otherwise only bin/<daemon> is moved.
//   - A binary placed by hand (no record) is never overwritten: it is checked against
//     the plan checksum when the plan names a plain binary, preflighted and recorded.
//   - Symlinks planted at upgrades/, upgrades/<name>, its bin/ or the binary are refused.
//   - Plan names are mapped as cosmovisor does (url.PathEscape); ".", "..", control
//     characters, invalid UTF-8 and names longer than 255 bytes escaped are refused.
//
// # What is left on disk after a crash
//
//   - During download or verification: a <home>/cosmovisor/.staging-tmp-* directory.
//     It is never trusted and New removes it (under the lock) on the next start.
//   - Between the rename into place and the record write: a binary without a record.
//     It is not trusted; the next attempt treats it like a hand-placed binary
//     (checksum when possible, header check, preflight) and records it.
//   - Any failure other than a crash leaves the upgrade directory as it was: the temp
//     directory is removed and, if writing the record fails, what was moved is removed.
//
// # What it does not do
//
// It does not exec anything except the preflight, does not touch the `current` link,
// data/upgrade-info.json or the genesis binary, does not decide when to upgrade (skip
// heights, halt detection) and does not back up data: those belong to the hook and the
// relauncher. It does not support go-getter's other schemes (git, s3, gcs), checksum
// files (checksum=file:...), or X-Terraform-Get. It keeps no mutable package state and
// never modifies go-getter's package globals.
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
