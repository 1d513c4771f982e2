package staging

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
)

// Logger is satisfied by cosmossdk.io/log Logger.
type Logger interface {
	Info(msg string, kv ...any)
	Warn(msg string, kv ...any)
	Error(msg string, kv ...any)
}

// NopLogger discards everything.
type NopLogger struct{}

func (NopLogger) Info(string, ...any)  {}
func (NopLogger) Warn(string, ...any)  {}
func (NopLogger) Error(string, ...any) {}

// Plan is the part of an x/upgrade plan staging needs.
type Plan struct {
	Name   string
	Height int64
	Info   string
}

// observer receives state changes and progress from fetch; a Stager sets it.
type observer struct {
	state    func(State)
	progress func(done, total int64)
	hurry    *atomic.Bool // set when the chain waits for the binary: write at full speed
}

func (o *observer) hurryFlag() *atomic.Bool {
	if o == nil {
		return nil
	}
	return o.hurry
}

func (o *observer) setState(s State) {
	if o != nil && o.state != nil {
		o.state(s)
	}
}

// Fetch runs one synchronous attempt to bring BinPath(cfg.Home, cfg.DaemonName, p.Name)
// into a verified, recorded state, and returns the trusted install.
//
// If the plan already has a valid completion record for the same plan info, it is
// returned at once. If a binary was placed there by hand without a record, it is
// checked (against the plan checksum when the plan names a plain binary), preflighted
// and recorded; it is never overwritten. Otherwise, if cfg.AllowDownload, the plan info
// is resolved and the binary downloaded, verified, unpacked, preflighted and
// atomically moved into place, then recorded. On any error the upgrade directory is
// left as it was and the attempt's temp directory is removed.
func Fetch(ctx context.Context, cfg Config, p Plan, log Logger) (Install, error) {
	if err := cfg.Validate(); err != nil {
		return Install{}, err
	}
	if log == nil {
		log = NopLogger{}
	}
	return fetch(ctx, cfg, p, log, nil)
}

func infoHash(info string) string {
	s := sha256.Sum256([]byte(info))
	return hex.EncodeToString(s[:])
}

func fetch(ctx context.Context, cfg Config, p Plan, log Logger, obs *observer) (Install, error) {
	if _, err := SafeName(p.Name); err != nil {
		return Install{}, err
	}
	if err := ctx.Err(); err != nil {
		return Install{}, context.Cause(ctx)
	}
	upDir := UpgradeDir(cfg.Home, p.Name)
	bin := BinPath(cfg.Home, cfg.DaemonName, p.Name)
	recPath := bin + RecordSuffix

	if err := checkNoSymlinks(cfg.Home, upDir); err != nil {
		return Install{}, err
	}

	// 1. Already staged for this plan?
	if _, err := os.Lstat(recPath); err == nil {
		inst, err := Trusted(cfg.Home, cfg.DaemonName, p.Name)
		if err != nil {
			return Install{}, err
		}
		if inst.Record.InfoHash == infoHash(p.Info) {
			return inst, nil
		}
		// Recorded for another plan of the same name: a plan replaced by
		// governance, or a binary staged by hand before the plan existed.
		if inst.Record.Source == "hand-placed" {
			// The operator's binary stays; it is verified again against the plan
			// in force (its checksum, when it names a plain binary) and recorded
			// for it, or left untrusted.
			if err := os.Remove(recPath); err != nil {
				return Install{}, err
			}
			if log != nil {
				log.Info("staging: verifying the binary placed by hand against the plan in force", "plan", p.Name, "path", bin)
			}
			return adoptPlaced(ctx, cfg, p, log, obs, bin)
		}
		// Downloaded for a replaced plan: it must never run for this one.
		if err := removeInstall(cfg.Home, upDir, newPacer(ctx, cfg.DiskShare, obs.hurryFlag())); err != nil {
			return Install{}, fmt.Errorf("staging: removing %s, staged for a replaced plan %q: %w", upDir, p.Name, err)
		}
		if log != nil {
			log.Info("staging: removed the binary staged for the replaced plan", "plan", p.Name, "dir", upDir)
		}
	}

	// 2. Placed by hand (or a crash between rename and record): verify and record.
	if fi, err := os.Lstat(bin); err == nil {
		if fi.Mode()&fs.ModeSymlink != 0 {
			return Install{}, fmt.Errorf("%w: %s is a symlink; replace it with the binary itself", ErrNotTrusted, bin)
		}
		return adoptPlaced(ctx, cfg, p, log, obs, bin)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return Install{}, err
	}

	if !cfg.AllowDownload {
		return Install{}, fmt.Errorf("%w: downloads are disabled (DAEMON_ALLOW_DOWNLOAD_BINARIES=false); place the binary for plan %q at %s",
			ErrNotFound, p.Name, bin)
	}
	return download(ctx, cfg, p, log, obs, newPacer(ctx, cfg.DiskShare, obs.hurryFlag()))
}

// checkNoSymlinks refuses a planted symlink at upgrades/, upgrades/<name> or its bin/,
// so the install can never land outside the home.
func checkNoSymlinks(home, upDir string) error {
	for _, d := range []string{filepath.Dir(upDir), upDir, filepath.Join(upDir, "bin")} {
		fi, err := os.Lstat(d)
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
		if fi.Mode()&fs.ModeSymlink != 0 {
			return fmt.Errorf("%w: %s is a symlink; staging only installs into real directories under %s, replace it with a directory",
				ErrNotTrusted, d, CosmovisorRoot(home))
		}
		if !fi.IsDir() {
			return fmt.Errorf("%w: %s is not a directory", ErrNotTrusted, d)
		}
	}
	return nil
}

// resolve turns Plan.Info into the download source for this platform.
func resolve(ctx context.Context, cfg Config, p Plan, log Logger) (Source, error) {
	info := strings.TrimSpace(p.Info)
	if info == "" {
		return Source{}, fmt.Errorf("%w: plan %q has no info, so there is nothing to download; place the binary at %s",
			ErrNotFound, p.Name, BinPath(cfg.Home, cfg.DaemonName, p.Name))
	}
	if !strings.HasPrefix(info, "{") {
		src, err := ParseSource(info, cfg)
		if err != nil {
			return Source{}, fmt.Errorf("plan info URL: %w", err)
		}
		if src.Archive != "" {
			return Source{}, fmt.Errorf("%w: plan info URL %s must point at JSON, not a %s archive", ErrBadInfo, redact(info), src.Archive)
		}
		client, err := newHTTPClient(cfg)
		if err != nil {
			return Source{}, err
		}
		defer client.CloseIdleConnections()
		body := &capBuffer{max: int(cfg.MaxInfoBytes) + 1}
		t := transfer{cfg: cfg, client: client, src: src, limit: cfg.MaxInfoBytes, field: "MaxInfoBytes", what: "plan info", plan: p.Name}
		if _, err := t.run(ctx, body); err != nil {
			return Source{}, fmt.Errorf("plan info URL: %w", err)
		}
		info = body.String()
		log.Info("staging: fetched plan info", "plan", p.Name, "url", redact(src.URL.String()), "bytes", len(info))
	}
	bins, err := ParseInfo(info)
	if err != nil {
		return Source{}, err
	}
	goos, goarch := hostPlatform()
	raw, err := bins.Pick(goos, goarch)
	if err != nil {
		return Source{}, err
	}
	return ParseSource(raw, cfg)
}

func download(ctx context.Context, cfg Config, p Plan, log Logger, obs *observer, pace *pacer) (inst Install, err error) {
	ctx, cancel := context.WithTimeoutCause(ctx, cfg.Deadline,
		fmt.Errorf("%w: attempt exceeded Config.Deadline (%v)", ErrDownload, cfg.Deadline))
	defer cancel()

	obs.setState(StateDownloading)
	src, err := resolve(ctx, cfg, p, log)
	if err != nil {
		return Install{}, err
	}
	if err := os.MkdirAll(CosmovisorRoot(cfg.Home), 0o755); err != nil {
		return Install{}, fmt.Errorf("create %s: %w; check that the node home is writable", CosmovisorRoot(cfg.Home), err)
	}
	tmp, err := os.MkdirTemp(CosmovisorRoot(cfg.Home), TempPrefix)
	if err != nil {
		return Install{}, fmt.Errorf("create temp dir under %s: %w", CosmovisorRoot(cfg.Home), err)
	}
	// On success the payload has already been renamed out; the download itself
	// (a large archive) is freed in paced steps.
	defer removeTreePaced(tmp, pace)

	limit, field := cfg.MaxBinaryBytes, "MaxBinaryBytes"
	if src.Archive != "" {
		limit, field = cfg.MaxArchiveBytes, "MaxArchiveBytes"
	}
	dl := filepath.Join(tmp, "download")
	f, err := os.OpenFile(dl, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return Install{}, err
	}
	client, err := newHTTPClient(cfg)
	if err != nil {
		f.Close()
		return Install{}, err
	}
	log.Info("staging: downloading", "plan", p.Name, "url", redact(src.URL.String()), "archive", src.Archive, "checksum", checksumString(src.Checksum))
	start := time.Now()
	t := transfer{cfg: cfg, client: client, src: src, limit: limit, field: field, what: "download", log: log, plan: p.Name, spaceDir: CosmovisorRoot(cfg.Home)}
	if obs != nil {
		t.progress = obs.progress
	}
	res, err := t.run(ctx, &writeBehind{f: f, pace: pace})
	client.CloseIdleConnections()
	if err == nil {
		err = diskFull(f.Sync(), "download", CosmovisorRoot(cfg.Home))
	}
	if cerr := f.Close(); err == nil {
		err = diskFull(cerr, "download", CosmovisorRoot(cfg.Home))
	}
	if err != nil {
		return Install{}, err
	}
	if src.Checksum == nil {
		log.Warn("staging: download is not pinned by a checksum (RequireChecksum=false)", "plan", p.Name, "sha256", res.SHA256)
	}
	log.Info("staging: downloaded", "plan", p.Name, "bytes", res.N, "sha256", res.SHA256,
		"verified", res.Verified, "elapsed", time.Since(start).Round(time.Millisecond), "paced", pace.rested().Round(time.Millisecond))

	obs.setState(StateVerifying)
	root := filepath.Join(tmp, "root")
	if err := os.Mkdir(root, 0o755); err != nil {
		return Install{}, err
	}
	unpackStart, restedBefore := time.Now(), pace.rested()
	known, err := unpack(ctx, cfg, src.Archive, dl, root, tmp, digest{SHA256: res.SHA256, Size: res.N}, pace)
	if err != nil {
		return Install{}, diskFull(err, "the unpacked archive", CosmovisorRoot(cfg.Home))
	}
	if src.Archive != "" {
		log.Info("staging: unpacked", "plan", p.Name, "archive", src.Archive,
			"elapsed", time.Since(unpackStart).Round(time.Millisecond), "paced", (pace.rested() - restedBefore).Round(time.Millisecond))
	}
	staged := filepath.Join(root, "bin", cfg.DaemonName)
	// The temp root is private: fix the mode before verifyBinary takes its stamp.
	if err := chmodExec(staged); err != nil {
		return Install{}, err
	}
	verifyStart := time.Now()
	sum, size, version, err := verifyBinary(ctx, cfg, staged, nil, known)
	if err != nil {
		return Install{}, err
	}
	syncStart := time.Now()
	if err := syncTree(root); err != nil {
		return Install{}, err
	}
	log.Info("staging: preflight passed", "plan", p.Name, "version", version,
		"preflight", syncStart.Sub(verifyStart).Round(time.Millisecond), "fsync", time.Since(syncStart).Round(time.Millisecond))
	if err := ctx.Err(); err != nil {
		return Install{}, context.Cause(ctx)
	}
	bin := BinPath(cfg.Home, cfg.DaemonName, p.Name)
	rec := Record{
		Plan: p.Name, Height: p.Height, URL: redact(src.URL.String()), Checksum: checksumString(src.Checksum),
		InfoHash: infoHash(p.Info), SHA256: sum, Size: size, Preflight: version, Source: "download", Time: time.Now().UTC(),
	}
	if err := install(cfg, p, root, rec, log); err != nil {
		return Install{}, err
	}
	// The bytes were hashed as they were written and proven unchanged across
	// preflight (verifyBinary); Trusted re-hashes them at boot and before exec.
	return Install{Name: p.Name, Path: bin, SHA256: sum, Size: size, Record: rec}, nil
}

func checksumString(c *Checksum) string {
	if c == nil {
		return ""
	}
	return c.String()
}

// digest is the sha256 and size of bytes as this package wrote them, computed while
// writing so that they need not be read again.
type digest struct {
	SHA256 string
	Size   int64
}

// verifyBinary checks that bin is a regular file under MaxBinaryBytes holding an
// executable for this platform, makes it 0755, preflights it and returns its sha256,
// size and version line.
//
// known is the digest of the bytes as this package wrote them into its private temp
// directory (0700, under the home lock), so the file is not read again. Otherwise
// (known == nil, e.g. a binary placed by hand) it is hashed here in one pass together
// with want's algorithm, and a mismatch with want is a ChecksumError before anything
// else happens to the file. Either way, the stamp of the file (inode, size, mtime,
// ctime) taken before preflight must be unchanged after it, or the file is hashed
// again and must still match: the recorded hash is that of the bytes that passed.
func verifyBinary(ctx context.Context, cfg Config, bin string, want *Checksum, known *digest) (sum string, size int64, version string, err error) {
	d, stamp, stamped, err := inspectBinary(ctx, cfg, bin, want, known)
	if err != nil {
		return "", 0, "", err
	}
	version, err = preflight(ctx, bin, cfg.PreflightArgs, cfg.PreflightTimeout)
	if err != nil {
		if cause := context.Cause(ctx); cause != nil {
			return "", 0, "", cause
		}
		return "", 0, "", err
	}
	if fi, err := os.Lstat(bin); err == nil && stamped {
		if now, ok := stampOf(fi); ok && now == stamp {
			return d.SHA256, d.Size, version, nil
		}
	}
	s, n, err := hashRegularExecutable(ctx, bin)
	if err != nil {
		return "", 0, "", fmt.Errorf("%w: %w", ErrNotTrusted, err)
	}
	if s != d.SHA256 || n != d.Size {
		return "", 0, "", fmt.Errorf("%w: %s changed while it was verified (now sha256 %s, %d bytes; verified %s, %d bytes); another process writes there",
			ErrNotTrusted, bin, s, n, d.SHA256, d.Size)
	}
	return d.SHA256, d.Size, version, nil
}

// inspectBinary is the part of verifyBinary before preflight, on one open file
// description: type and size checks, the hash (unless known), want, the header check
// and the mode. stamped is false when the stamp cannot prove the file unchanged.
func inspectBinary(ctx context.Context, cfg Config, bin string, want *Checksum, known *digest) (d digest, stamp fileStamp, stamped bool, err error) {
	f, err := os.OpenFile(bin, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return d, stamp, false, fmt.Errorf("%w: %w", ErrNotExecutable, err)
	}
	defer f.Close() // before preflight: an exec of a file open for writing fails, keep it tidy
	fi, err := f.Stat()
	if err != nil {
		return d, stamp, false, err
	}
	if !fi.Mode().IsRegular() {
		return d, stamp, false, fmt.Errorf("%w: %s is not a regular file", ErrNotExecutable, bin)
	}
	if fi.Size() > cfg.MaxBinaryBytes {
		return d, stamp, false, &SizeError{What: "binary " + filepath.Base(bin), Limit: cfg.MaxBinaryBytes, Field: "MaxBinaryBytes"}
	}
	stamp, stamped = stampOf(fi)
	if known != nil {
		if known.Size != fi.Size() {
			return d, stamp, false, fmt.Errorf("%w: %s is %d bytes, %d were written", ErrNotTrusted, bin, fi.Size(), known.Size)
		}
		d = *known
	} else {
		sha := sha256.New()
		var planHash hash.Hash
		if want != nil && want.Algo != "sha256" {
			planHash = want.newHash()
		}
		n, err := hashStream(ctx, f, sha, planHash)
		if err != nil {
			return d, stamp, false, err
		}
		d = digest{SHA256: hex.EncodeToString(sha.Sum(nil)), Size: n}
		if want != nil {
			actual := d.SHA256
			if planHash != nil {
				actual = hex.EncodeToString(planHash.Sum(nil))
			}
			if actual != want.Hex {
				return d, stamp, false, &ChecksumError{URL: "file://" + bin, Algo: want.Algo, Expected: want.Hex, Actual: actual}
			}
		}
	}
	goos, goarch := hostPlatform()
	if err := checkExecutable(f, bin, goos, goarch); err != nil {
		return d, stamp, false, err
	}
	if fi.Mode().Perm() != 0o755 {
		// Only now, so a file that failed the checks above is not made executable.
		if err := f.Chmod(0o755); err != nil {
			return d, stamp, false, err
		}
		stamped = false // the chmod changed ctime; re-hash after preflight
	}
	return d, stamp, stamped, nil
}

// chmodExec makes a regular file 0755; it is used only inside the private temp root.
func chmodExec(path string) error {
	fi, err := os.Lstat(path)
	if err != nil || fi.Mode().Perm() == 0o755 || !fi.Mode().IsRegular() {
		return err // a non-regular file is reported by inspectBinary
	}
	return os.Chmod(path, 0o755)
}

// hashStream feeds r to the non-nil hashes through one copyBufSize buffer, checking ctx
// between reads, and returns the byte count.
func hashStream(ctx context.Context, r io.Reader, hashes ...hash.Hash) (int64, error) {
	ws := make([]io.Writer, 0, len(hashes))
	for _, h := range hashes {
		if h != nil {
			ws = append(ws, h)
		}
	}
	return io.CopyBuffer(io.MultiWriter(ws...), ctxReader{ctx, io.NopCloser(r)}, make([]byte, copyBufSize))
}

// syncTree fsyncs every regular file and directory under root.
func syncTree(root string) error {
	return filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && !d.Type().IsRegular() {
			return nil
		}
		return syncPath(p)
	})
}

// install moves the verified tree into upgrades/<name> and writes the record. When the
// upgrade directory does not exist the whole unpacked tree (bin/ plus anything else the
// archive held, e.g. lib/) is renamed in one step; otherwise only bin/<daemon> is
// moved. If writing the record fails, what was moved is removed again so the upgrade
// directory is left as it was.
func install(cfg Config, p Plan, root string, rec Record, log Logger) error {
	upDir := UpgradeDir(cfg.Home, p.Name)
	upgrades := filepath.Dir(upDir)
	bin := BinPath(cfg.Home, cfg.DaemonName, p.Name)
	if err := os.MkdirAll(upgrades, 0o755); err != nil {
		return err
	}
	if err := checkNoSymlinks(cfg.Home, upDir); err != nil {
		return err
	}
	var undo func()
	if err := os.Rename(root, upDir); err == nil {
		undo = func() { os.RemoveAll(upDir) }
		if err := syncPath(upgrades); err != nil {
			undo()
			return err
		}
	} else if errors.Is(err, fs.ErrExist) || errors.Is(err, syscall.ENOTEMPTY) || errors.Is(err, syscall.EEXIST) {
		if err := os.MkdirAll(filepath.Dir(bin), 0o755); err != nil {
			return err
		}
		if err := checkNoSymlinks(cfg.Home, upDir); err != nil {
			return err
		}
		if _, err := os.Lstat(bin); err == nil {
			return fmt.Errorf("%w: %s appeared while staging (placed by hand?); it will be verified on the next attempt", ErrNotTrusted, bin)
		}
		if err := os.Rename(filepath.Join(root, "bin", cfg.DaemonName), bin); err != nil {
			return err
		}
		undo = func() { os.Remove(bin) }
		if err := syncPath(filepath.Dir(bin)); err != nil {
			undo()
			return err
		}
		log.Warn("staging: upgrade directory already existed; installed only the binary", "plan", p.Name, "dir", upDir)
	} else {
		return fmt.Errorf("install into %s: %w", upDir, err)
	}
	if err := writeRecord(bin+RecordSuffix, rec); err != nil {
		undo()
		return fmt.Errorf("write completion record: %w (disk full?); the binary was removed again", err)
	}
	return nil
}

// adoptPlaced verifies a binary the operator placed by hand and records it.
func adoptPlaced(ctx context.Context, cfg Config, p Plan, log Logger, obs *observer, bin string) (Install, error) {
	obs.setState(StateVerifying)
	log.Info("staging: found a binary without a completion record; verifying it", "plan", p.Name, "path", bin)
	var sum *Checksum
	var srcURL string
	if strings.TrimSpace(p.Info) != "" {
		// Compare with the plan checksum when the plan names a plain binary. An
		// archive checksum cannot be compared with the binary; a plan info that
		// cannot be resolved does not block a binary the operator placed on purpose.
		src, err := resolve(ctx, cfg, p, log)
		switch {
		case err == nil && src.Archive == "" && src.Checksum != nil:
			sum, srcURL = src.Checksum, redact(src.URL.String())
		case err == nil:
			log.Warn("staging: plan checksum is for an archive or missing; the hand-placed binary is trusted on preflight alone", "plan", p.Name)
		case ctx.Err() != nil:
			return Install{}, context.Cause(ctx)
		default:
			log.Warn("staging: cannot resolve plan info; the hand-placed binary is trusted on preflight alone", "plan", p.Name, "err", err)
		}
	}
	s, size, version, err := verifyBinary(ctx, cfg, bin, sum, nil)
	if err != nil {
		if errors.Is(err, ErrChecksumMismatch) {
			return Install{}, fmt.Errorf("hand-placed %s: %w; replace it with the binary the plan names", bin, err)
		}
		return Install{}, fmt.Errorf("hand-placed binary %s: %w", bin, err)
	}
	if err := syncPath(bin); err != nil {
		return Install{}, err
	}
	rec := Record{
		Plan: p.Name, Height: p.Height, URL: srcURL, Checksum: checksumString(sum), InfoHash: infoHash(p.Info),
		SHA256: s, Size: size, Preflight: version, Source: "hand-placed", Time: time.Now().UTC(),
	}
	if err := writeRecord(bin+RecordSuffix, rec); err != nil {
		return Install{}, fmt.Errorf("write completion record: %w", err)
	}
	log.Info("staging: hand-placed binary verified and recorded", "plan", p.Name, "sha256", s, "version", version)
	return Trusted(cfg.Home, cfg.DaemonName, p.Name)
}
