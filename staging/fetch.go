package staging

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/invisor/invisor/internal/home"
	"github.com/invisor/invisor/internal/probe"
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

// Plan is the upgrade plan a binary is staged for (name, height, info), the same
// type as home.Plan, so a record's proof is checked against exactly what staging
// was given.
type Plan = home.Plan

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

// Fetch runs one synchronous attempt to bring the binary of plan p to
// Layout.UpgradeBin(p.Name) in a verified, recorded state, and returns the install
// as home.Layout.Open proves it.
//
//   - A completion record for exactly p (name, height, info) whose file is provably
//     unchanged: returned at once.
//   - A record for another plan of the same name (replaced by governance): that
//     install is taken out of the name space first (a download is removed, an
//     operator's install is moved to upgrades/<dir>#replaced-<unix seconds>).
//   - A binary at the install path without a record for p (placed by the operator,
//     or left by a crash between rename and record): verified against what the plan
//     names for this platform (see doc.go, "Binaries placed by the operator"),
//     preflighted and recorded; never overwritten or deleted.
//   - Nothing there: the tree a proposal check kept for exactly p, while p was a
//     proposal in its voting period (home.ProposalsDir), is installed without
//     downloading again once its binary re-hashes to its record; else the
//     binary cfg.ImageDir holds for p (a container image's pre-staged
//     binaries) is copied, verified as a placed binary is, installed and
//     recorded (home.SourceImage; see image.go); else, when cfg.AllowDownload,
//     the binary the plan names is downloaded, verified, unpacked, preflighted,
//     moved into place and recorded. An image binary the plan does not confirm
//     falls through to the download, or, without downloads, is an *ImageError.
//
// On any error the upgrade directory is left as it was and the attempt's temp
// directory is removed. A plan name home.DirName cannot map is an error wrapping
// *home.UnmappableNameError that says what the operator can do.
func Fetch(ctx context.Context, cfg Config, p Plan, log Logger) (Install, error) {
	if err := cfg.Validate(); err != nil {
		return Install{}, err
	}
	if log == nil {
		log = NopLogger{}
	}
	return fetch(ctx, cfg, p, log, nil)
}

// job is one attempt for one plan.
type job struct {
	cfg  Config
	l    home.Layout
	p    Plan
	log  Logger
	obs  *observer
	pace *pacer
	dir  string // l.UpgradeDir(p.Name)
	bin  string // l.UpgradeBin(p.Name)
	tmp  string // the attempt's temp dir, made by temp
	// answer is the probe answer of the binary preflight ran (nil: none), for its record.
	answer *probe.Answer
	// image is set while the attempt verifies a copy of an image directory's
	// binary (fromImage): record installs that copy before it writes the record.
	image *imageCopy
}

// temp returns the attempt's private temp directory under <home>/cosmovisor (same
// filesystem as upgrades/), creating it on first use.
func (j *job) temp() (string, error) {
	if j.tmp != "" {
		return j.tmp, nil
	}
	if err := os.MkdirAll(j.l.Root(), 0o755); err != nil {
		return "", fmt.Errorf("create %s: %w; check that the node home is writable", j.l.Root(), err)
	}
	tmp, err := os.MkdirTemp(j.l.Root(), TempPrefix)
	if err != nil {
		return "", fmt.Errorf("create temp dir under %s: %w", j.l.Root(), err)
	}
	j.tmp = tmp
	return tmp, nil
}

// cleanup removes the temp directory; what was installed has been renamed out of
// it, and a large download is freed in paced steps.
func (j *job) cleanup() {
	if j.tmp != "" {
		removeTreePaced(j.tmp, j.pace)
	}
}

func fetch(ctx context.Context, cfg Config, p Plan, log Logger, obs *observer) (Install, error) {
	l, err := cfg.Layout()
	if err != nil {
		return Install{}, fmt.Errorf("staging: %w", err)
	}
	dir, err := upgradeDir(l, p.Name)
	if err != nil {
		return Install{}, err
	}
	if err := ctx.Err(); err != nil {
		return Install{}, context.Cause(ctx)
	}
	bin, _ := l.UpgradeBin(p.Name) // mapped above
	j := &job{cfg: cfg, l: l, p: p, log: log, obs: obs, pace: newPacer(ctx, cfg.DiskShare, obs.hurryFlag()), dir: dir, bin: bin}
	defer j.cleanup()

	if err := checkNoSymlinks(l, dir); err != nil {
		return Install{}, err
	}
	// 1. Recorded: for this very plan, or for a plan it replaced.
	if inst, done, err := j.fromRecord(ctx); done || err != nil {
		return inst, err
	}
	// 2. Placed by the operator (or a crash between rename and record).
	if fi, err := os.Lstat(bin); err == nil {
		if fi.Mode()&fs.ModeSymlink != 0 {
			return Install{}, fmt.Errorf("%w: %s is a symlink; replace it with the binary itself", ErrNotTrusted, bin)
		}
		return j.adoptPlaced(ctx)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return Install{}, err
	}
	// 3. Nothing there: the binary checked while the plan was a proposal, if it
	// is exactly this plan's, else the image directory's copy, else a download.
	if inst, done, err := j.fromProposal(ctx); done || err != nil {
		return inst, err
	}
	if inst, done, err := j.fromImage(ctx); done && err == nil {
		return inst, nil
	} else if done && (!cfg.AllowDownload || ctx.Err() != nil) {
		return Install{}, err
	} else if done {
		log.Warn("staging: the image directory's binary is not used; downloading the binary the plan names instead", "plan", p.Name, "err", err)
	}
	if !cfg.AllowDownload {
		return Install{}, fmt.Errorf("%w: downloads are disabled (DAEMON_ALLOW_DOWNLOAD_BINARIES=false); place the binary for plan %q at %s",
			ErrNotFound, p.Name, bin)
	}
	return j.download(ctx)
}

// fromRecord handles a completion record at the install path. done is true when
// the install is the proven one for the plan. A record that is not a proof for
// the plan in force is removed (a previous format, incomplete, unreadable: the
// file is verified again as a placed one) or, when it is for a replaced plan of
// the same name, its install is taken out of the name space (retire).
func (j *job) fromRecord(ctx context.Context) (Install, bool, error) {
	rec, err := j.l.ReadRecord(j.p.Name)
	if errors.Is(err, fs.ErrNotExist) {
		return Install{}, false, nil
	}
	if err != nil {
		j.log.Warn("staging: the completion record is unreadable, so it is no proof; the binary is verified again", "plan", j.p.Name, "err", err)
		return Install{}, false, j.l.RemoveRecord(j.p.Name)
	}
	legacy := rec.Format < home.RecordFormat
	other := rec.Plan != j.p.Name || rec.Height != j.p.Height || rec.InfoHash != j.p.InfoHash()
	switch {
	case !legacy && rec.For(j.p) == nil && rec.Source == home.SourceOverride && !j.cfg.TrustPlacedBinaries:
		j.log.Warn("staging: the binary was trusted on the unsafe-trust-placed-binaries override, which is no longer set; it is verified again against the plan",
			"plan", j.p.Name, "path", j.bin, "sha256", rec.SHA256)
		return Install{}, false, j.l.RemoveRecord(j.p.Name)
	case !legacy && rec.For(j.p) == nil:
		inst, err := openInstall(ctx, j.l, j.p)
		if err != nil {
			if _, lerr := os.Lstat(j.bin); errors.Is(lerr, fs.ErrNotExist) {
				// A record without its binary proves nothing and hides nothing.
				j.log.Warn("staging: completion record without its binary; removed it", "plan", j.p.Name, "path", j.bin)
				return Install{}, false, j.l.RemoveRecord(j.p.Name)
			}
			return Install{}, false, err
		}
		switch rec.Source {
		case home.SourceOverride:
			j.log.Warn("staging: UNSAFE: the binary for the plan in force is trusted on the unsafe-trust-placed-binaries override, not on the plan",
				"plan", j.p.Name, "path", j.bin, "sha256", rec.SHA256)
		case home.SourceOperatorWord:
			j.log.Warn("staging: the binary for the plan in force is trusted on the operator's word (the plan names no binary for this platform)",
				"plan", j.p.Name, "path", j.bin, "sha256", rec.SHA256)
		}
		return inst, true, nil
	case other && (!legacy || rec.Source == home.SourceDownload):
		return Install{}, false, j.retire(ctx, rec)
	default:
		j.log.Warn("staging: the completion record is not a proof this version accepts (an earlier format or incomplete); the binary is verified again against the plan",
			"plan", j.p.Name, "path", j.bin, "source", rec.Source, "format", rec.Format)
		return Install{}, false, j.l.RemoveRecord(j.p.Name)
	}
}

// retire takes the install of a replaced plan (same directory, recorded for
// another name, height or info) out of the name space, so it is never adopted for
// the plan in force: a download is removed; an operator's install is moved to
// <dir>#replaced-<unix seconds>, so the operator's file is not lost.
func (j *job) retire(ctx context.Context, rec home.Record) error {
	if j.l.CurrentIs(j.dir) {
		return fmt.Errorf("%w: %s holds the binary of plan %q (height %d), which the current link points to; the plan in force %q (height %d) is staged only once that install is moved away by hand",
			ErrNotTrusted, j.dir, rec.Plan, rec.Height, j.p.Name, j.p.Height)
	}
	if ui, ok, _ := j.l.ReadUpgradeInfo(); ok && ui.Name == rec.Plan && ui.Height == rec.Height {
		return fmt.Errorf("%w: %s holds the binary of plan %q (height %d), which data/upgrade-info.json names; it is not replaced by the binary of plan %q (height %d)",
			ErrNotTrusted, j.dir, rec.Plan, rec.Height, j.p.Name, j.p.Height)
	}
	if rec.Source == home.SourceDownload && stillRecorded(ctx, j.bin, rec) {
		if err := removeInstall(j.l, j.dir, j.pace); err != nil {
			return fmt.Errorf("staging: removing %s, downloaded for a replaced plan %q: %w", j.dir, rec.Plan, err)
		}
		j.log.Info("staging: removed the binary downloaded for a replaced plan of the same name; the plan in force is staged anew",
			"plan", j.p.Name, "height", j.p.Height, "old_height", rec.Height, "dir", j.dir)
		return nil
	}
	dst, err := moveAside(j.dir, time.Now())
	if err != nil {
		return fmt.Errorf("staging: moving %s (the operator's binary for a replaced plan %q) aside: %w", j.dir, rec.Plan, err)
	}
	j.log.Warn("staging: the plan was replaced under the same name; the operator's binary recorded for the old plan is never used for the new one and was moved aside",
		"plan", j.p.Name, "height", j.p.Height, "old_height", rec.Height, "source", rec.Source, "moved_to", dst)
	return nil
}

// stillRecorded reports whether the file at bin is (provably) the one rec describes,
// or is gone: only then is an install removed rather than moved aside, so a file
// the operator put over a download is not deleted.
func stillRecorded(ctx context.Context, bin string, rec home.Record) bool {
	f, err := openNoFollow(bin)
	if errors.Is(err, fs.ErrNotExist) {
		return true
	}
	if err != nil {
		return false
	}
	defer f.Close()
	if st, err := home.StampFile(f); err == nil && st.Same(rec.Stamp) {
		return true
	}
	d, err := home.HashFile(ctx, f)
	return err == nil && d.SHA256 == rec.SHA256 && d.Size == rec.Size
}

// resolve turns Plan.Info into the download source for this platform.
func resolve(ctx context.Context, cfg Config, p Plan, log Logger, bin string) (Source, error) {
	goos, goarch := hostPlatform()
	src, _, err := resolveFor(ctx, cfg, p, log, bin, goos, goarch)
	return src, err
}

// noBinaryError is resolveFor's answer when the plan names no binary for the
// platform (no info, free text, or a binaries map without it and without "any").
// It wraps err, staging's message (ErrNotFound); why says what the plan lacks,
// for messages that are not about the install path (proposal checks).
type noBinaryError struct {
	why string
	err error
}

func (e *noBinaryError) Error() string { return e.err.Error() }
func (e *noBinaryError) Unwrap() error { return e.err }

// resolveFor turns Plan.Info into the download source for goos/goarch (an info
// URL is fetched) and returns the binaries key it used ("os/arch" or "any"). bin
// is the install path, for the messages.
func resolveFor(ctx context.Context, cfg Config, p Plan, log Logger, bin, goos, goarch string) (Source, string, error) {
	info := strings.TrimSpace(p.Info)
	if info == "" {
		return Source{}, "", &noBinaryError{why: "the plan has no info", err: fmt.Errorf("%w: plan %q has no info, so there is nothing to download; place the binary at %s",
			ErrNotFound, p.Name, bin)}
	}
	if !strings.HasPrefix(info, "{") {
		if !looksLikeURL(info) {
			return Source{}, "", &noBinaryError{why: "the plan info is neither a binaries map nor a URL", err: fmt.Errorf("%w: the info of plan %q is neither a binaries map nor a URL, so there is nothing to download; place the binary at %s",
				ErrNotFound, p.Name, bin)}
		}
		body, err := fetchInfo(ctx, cfg, p, log, info)
		if err != nil {
			return Source{}, "", err
		}
		info = body
	}
	bins, err := ParseInfo(info)
	if err != nil {
		return Source{}, "", err
	}
	raw, err := bins.Pick(goos, goarch)
	if err != nil {
		return Source{}, "", &noBinaryError{why: fmt.Sprintf("it names binaries for %v", sortedKeys(bins)), err: err}
	}
	key := goos + "/" + goarch
	if _, ok := bins[key]; !ok {
		key = "any"
	}
	src, err := ParseSource(raw, cfg)
	return src, key, err
}

// fetchInfo downloads the plan info a URL names (pinned like a binary, capped at
// MaxInfoBytes).
func fetchInfo(ctx context.Context, cfg Config, p Plan, log Logger, raw string) (string, error) {
	src, err := ParseSource(raw, cfg)
	if err != nil {
		return "", fmt.Errorf("plan info URL: %w", err)
	}
	if src.Archive != "" {
		return "", fmt.Errorf("%w: plan info URL %s must point at JSON, not a %s archive", ErrBadInfo, redact(raw), src.Archive)
	}
	client, err := newHTTPClient(cfg)
	if err != nil {
		return "", err
	}
	defer client.CloseIdleConnections()
	body := &capBuffer{max: int(cfg.MaxInfoBytes) + 1}
	t := transfer{cfg: cfg, client: client, src: src, limit: cfg.MaxInfoBytes, field: "MaxInfoBytes", what: "plan info", plan: p.Name}
	if _, err := t.run(ctx, body); err != nil {
		return "", fmt.Errorf("plan info URL: %w", err)
	}
	log.Info("staging: fetched plan info", "plan", p.Name, "url", redact(src.URL.String()), "bytes", body.buf.Len())
	return body.String(), nil
}

func (j *job) download(ctx context.Context) (Install, error) {
	ctx, cancel := context.WithTimeoutCause(ctx, j.cfg.Deadline,
		fmt.Errorf("%w: attempt exceeded Config.Deadline (%v)", ErrDownload, j.cfg.Deadline))
	defer cancel()

	j.obs.setState(StateDownloading)
	src, err := resolve(ctx, j.cfg, j.p, j.log, j.bin)
	if err != nil {
		return Install{}, err
	}
	root, d, err := j.obtain(ctx, src)
	if err != nil {
		return Install{}, err
	}
	staged := filepath.Join(root, home.BinDir, j.cfg.DaemonName)
	verifyStart := time.Now()
	pre, version, err := j.preflightStaged(ctx, staged, d)
	if err != nil {
		return Install{}, err
	}
	syncStart := time.Now()
	if err := syncTree(root); err != nil {
		return Install{}, err
	}
	j.log.Info("staging: preflight passed", "plan", j.p.Name, "version", version,
		"preflight", syncStart.Sub(verifyStart).Round(time.Millisecond), "fsync", time.Since(syncStart).Round(time.Millisecond))
	if err := ctx.Err(); err != nil {
		return Install{}, context.Cause(ctx)
	}
	rec := home.Record{
		Plan: j.p.Name, Height: j.p.Height, InfoHash: j.p.InfoHash(), Source: home.SourceDownload,
		URL: redact(src.URL.String()), Checksum: checksumString(src.Checksum),
		SHA256: d.SHA256, Size: d.Size, Preflight: version, Probe: j.answer,
	}
	return j.install(ctx, root, d, pre, rec)
}

// obtain downloads src into the attempt's temp dir and unpacks it: the returned root
// holds bin/<daemon> (and whatever else an archive held), d is the binary's digest.
// The checksum the plan pins is verified before anything is unpacked.
func (j *job) obtain(ctx context.Context, src Source) (root string, d digest, err error) {
	tmp, err := j.temp()
	if err != nil {
		return "", d, err
	}
	limit, field := j.cfg.MaxBinaryBytes, "MaxBinaryBytes"
	if src.Archive != "" {
		limit, field = j.cfg.MaxArchiveBytes, "MaxArchiveBytes"
	}
	dl := filepath.Join(tmp, "download")
	f, err := os.OpenFile(dl, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return "", d, err
	}
	client, err := newHTTPClient(j.cfg)
	if err != nil {
		f.Close()
		return "", d, err
	}
	j.log.Info("staging: downloading", "plan", j.p.Name, "url", redact(src.URL.String()), "archive", src.Archive, "checksum", checksumString(src.Checksum))
	start := time.Now()
	t := transfer{cfg: j.cfg, client: client, src: src, limit: limit, field: field, what: "download", log: j.log, plan: j.p.Name, spaceDir: j.l.Root()}
	if j.obs != nil {
		t.progress = j.obs.progress
	}
	res, err := t.run(ctx, &writeBehind{f: f, pace: j.pace})
	client.CloseIdleConnections()
	if err == nil {
		err = diskFull(f.Sync(), "download", j.l.Root())
	}
	if cerr := f.Close(); err == nil {
		err = diskFull(cerr, "download", j.l.Root())
	}
	if err != nil {
		return "", d, err
	}
	if src.Checksum == nil {
		j.log.Warn("staging: download is not pinned by a checksum (RequireChecksum=false)", "plan", j.p.Name, "sha256", res.SHA256)
	}
	j.log.Info("staging: downloaded", "plan", j.p.Name, "bytes", res.N, "sha256", res.SHA256,
		"verified", res.Verified, "elapsed", time.Since(start).Round(time.Millisecond), "paced", j.pace.rested().Round(time.Millisecond))

	j.obs.setState(StateVerifying)
	root = filepath.Join(tmp, "root")
	if err := os.Mkdir(root, 0o755); err != nil {
		return "", d, err
	}
	unpackStart, restedBefore := time.Now(), j.pace.rested()
	known, err := unpack(ctx, j.cfg, src.Archive, dl, root, tmp, digest{SHA256: res.SHA256, Size: res.N}, j.pace)
	if err != nil {
		return "", d, diskFull(err, "the unpacked archive", j.l.Root())
	}
	if src.Archive != "" {
		j.log.Info("staging: unpacked", "plan", j.p.Name, "archive", src.Archive,
			"elapsed", time.Since(unpackStart).Round(time.Millisecond), "paced", (j.pace.rested() - restedBefore).Round(time.Millisecond))
	}
	staged := filepath.Join(root, home.BinDir, j.cfg.DaemonName)
	// The temp root is private: fix the mode before the stamp is taken.
	if err := chmodExec(staged); err != nil {
		return "", d, err
	}
	if known != nil {
		return root, *known, nil
	}
	// A single compressed binary: hash what the codec wrote.
	f, err = openNoFollow(staged)
	if err != nil {
		return "", d, err
	}
	defer f.Close()
	hd, err := home.HashFile(ctx, f)
	if err != nil {
		return "", d, err
	}
	return root, digest{SHA256: hd.SHA256, Size: hd.Size}, nil
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

// preflightStaged checks the binary staged in the private temp dir (regular file,
// under MaxBinaryBytes, an executable for this platform, its size that of d),
// stamps it, runs the preflight and proves it unchanged across it: the stamp must
// be the same after the run, or the file is hashed again and must still be d.
// The returned stamp is that of bytes whose digest is d.
func (j *job) preflightStaged(ctx context.Context, staged string, d digest) (home.Stamp, string, error) {
	f, err := openNoFollow(staged)
	if err != nil {
		return home.Stamp{}, "", fmt.Errorf("%w: %w", ErrNotExecutable, err)
	}
	pre, err := j.inspect(f, staged)
	f.Close() // before the preflight: an exec of a file open for writing fails, keep it tidy
	if err != nil {
		return home.Stamp{}, "", err
	}
	if pre.Size != d.Size {
		return home.Stamp{}, "", fmt.Errorf("%w: %s is %d bytes, %d were written", ErrNotTrusted, staged, pre.Size, d.Size)
	}
	version, err := j.preflight(ctx, staged, d.SHA256)
	if err != nil {
		return home.Stamp{}, "", err
	}
	st, err := proveUnchanged(ctx, staged, pre, d)
	return st, version, err
}

// inspect checks the open file f: a regular file under MaxBinaryBytes holding an
// executable for this platform. It returns the file's stamp.
func (j *job) inspect(f *os.File, path string) (home.Stamp, error) {
	goos, goarch := hostPlatform()
	return j.inspectFor(f, path, goos, goarch)
}

// inspectFor is inspect for goos/goarch: a proposal check looks at the binary of
// another platform with it, without running it.
func (j *job) inspectFor(f *os.File, path, goos, goarch string) (home.Stamp, error) {
	fi, err := f.Stat()
	if err != nil {
		return home.Stamp{}, err
	}
	if !fi.Mode().IsRegular() {
		return home.Stamp{}, fmt.Errorf("%w: %s is not a regular file", ErrNotExecutable, path)
	}
	if fi.Size() > j.cfg.MaxBinaryBytes {
		return home.Stamp{}, &SizeError{What: "binary " + filepath.Base(path), Limit: j.cfg.MaxBinaryBytes, Field: "MaxBinaryBytes"}
	}
	if err := checkExecutable(f, path, goos, goarch); err != nil {
		return home.Stamp{}, err
	}
	st, err := home.StampFile(f)
	if err != nil {
		return home.Stamp{}, err
	}
	if !st.Valid {
		st.Size = fi.Size() // no stamps here: keep the size for the check above
	}
	return st, nil
}

// proveUnchanged returns a stamp of the file at path whose content is d: pre if the
// file still has it, else the stamp of a fresh hash that must equal d.
func proveUnchanged(ctx context.Context, path string, pre home.Stamp, d digest) (home.Stamp, error) {
	if now, err := home.StampOf(path); err == nil && pre.Same(now) {
		return pre, nil
	}
	return rehash(ctx, path, d)
}

// rehash hashes the file at path (not following a symlink) and returns its stamp,
// taken before the hash, if its content is d.
func rehash(ctx context.Context, path string, d digest) (home.Stamp, error) {
	f, err := openNoFollow(path)
	if err != nil {
		return home.Stamp{}, fmt.Errorf("%w: %w", ErrNotTrusted, err)
	}
	defer f.Close()
	h, err := home.HashFile(ctx, f)
	if err != nil {
		return home.Stamp{}, fmt.Errorf("%w: %w", ErrNotTrusted, err)
	}
	if h.SHA256 != d.SHA256 || h.Size != d.Size {
		return home.Stamp{}, fmt.Errorf("%w: %s changed while it was verified (now sha256 %s, %d bytes; verified %s, %d bytes); another process writes there",
			ErrNotTrusted, path, h.SHA256, h.Size, d.SHA256, d.Size)
	}
	return h.Stamp, nil
}

// openNoFollow opens path for reading, refusing a final symlink.
func openNoFollow(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if errors.Is(err, syscall.ELOOP) {
		return nil, fmt.Errorf("%w: %s is a symlink; only a regular file is trusted", ErrNotTrusted, path)
	}
	return f, err
}

// chmodExec makes a regular file 0755; it is used only inside the private temp root.
func chmodExec(path string) error {
	fi, err := os.Lstat(path)
	if err != nil || fi.Mode().Perm() == 0o755 || !fi.Mode().IsRegular() {
		return err // a non-regular file is reported by inspect
	}
	return os.Chmod(path, 0o755)
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
		return home.SyncDir(p)
	})
}

// install moves the verified tree into upgrades/<dir>, proves the binary in its final
// place is the one verified, and writes the record. When the upgrade directory does
// not exist the whole unpacked tree (bin/ plus anything else the archive held, e.g.
// lib/) is renamed in one step; otherwise only bin/<daemon> is moved. pre is the
// stamp the binary had, with content d, before the move: a rename changes only
// ctime (home.Stamp.Renamed), so an equal stamp afterwards proves the content;
// anything else is hashed again. If writing the record fails, what was moved is
// removed again so the upgrade directory is left as it was.
func (j *job) install(ctx context.Context, root string, d digest, pre home.Stamp, rec home.Record) (Install, error) {
	upgrades := j.l.UpgradesRoot()
	if err := os.MkdirAll(upgrades, 0o755); err != nil {
		return Install{}, err
	}
	if err := checkNoSymlinks(j.l, j.dir); err != nil {
		return Install{}, err
	}
	var undo func()
	if err := os.Rename(root, j.dir); err == nil {
		undo = func() { os.RemoveAll(j.dir) }
		if err := home.SyncDir(upgrades); err != nil {
			undo()
			return Install{}, err
		}
	} else if errors.Is(err, fs.ErrExist) || errors.Is(err, syscall.ENOTEMPTY) || errors.Is(err, syscall.EEXIST) {
		if err := os.MkdirAll(filepath.Dir(j.bin), 0o755); err != nil {
			return Install{}, err
		}
		if err := checkNoSymlinks(j.l, j.dir); err != nil {
			return Install{}, err
		}
		if _, err := os.Lstat(j.bin); err == nil {
			return Install{}, fmt.Errorf("%w: %s appeared while staging (placed by the operator?); it will be verified on the next attempt", ErrNotTrusted, j.bin)
		}
		if err := os.Rename(filepath.Join(root, home.BinDir, j.cfg.DaemonName), j.bin); err != nil {
			return Install{}, err
		}
		undo = func() { os.Remove(j.bin) }
		if err := home.SyncDir(filepath.Dir(j.bin)); err != nil {
			undo()
			return Install{}, err
		}
		j.log.Warn("staging: upgrade directory already existed; installed only the binary", "plan", j.p.Name, "dir", j.dir)
	} else {
		return Install{}, fmt.Errorf("install into %s: %w", j.dir, err)
	}
	post, err := home.StampOf(j.bin)
	if err != nil || !pre.Renamed(post) {
		if post, err = rehash(ctx, j.bin, d); err != nil {
			undo()
			return Install{}, err
		}
	}
	rec.Stamp = post
	return j.record(ctx, rec, undo)
}

// record writes rec and returns the install as the one proof (home.Layout.Open)
// sees it. On failure the record is removed again and undo (if any) runs.
func (j *job) record(ctx context.Context, rec home.Record, undo func()) (Install, error) {
	if j.image != nil {
		return j.installImage(ctx, rec)
	}
	if err := j.l.WriteRecord(rec); err != nil {
		if undo != nil {
			undo()
			return Install{}, fmt.Errorf("write completion record: %w (disk full?); the binary was removed again", err)
		}
		return Install{}, fmt.Errorf("write completion record: %w", err)
	}
	inst, err := openInstall(ctx, j.l, j.p)
	if err != nil {
		_ = j.l.RemoveRecord(j.p.Name)
		if undo != nil {
			undo()
		}
		return Install{}, fmt.Errorf("the binary changed right after it was recorded: %w", err)
	}
	return inst, nil
}
