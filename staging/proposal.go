package staging

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/invisor/invisor/internal/home"
	"github.com/invisor/invisor/internal/probe"
)

// Proposal checks: validators vote on a software-upgrade proposal without
// knowing whether its binary exists for their platform, matches its checksum,
// runs, or carries the upgrade handler the plan names. A check answers that
// while the proposal is in its voting period, with the pipeline a passed plan
// is staged with (info, download, checksum, safe unpacking, header, preflight,
// probe), and can keep the verified tree in the proposal area
// (home.ProposalsDir), from which fetch installs it once the plan passes
// unchanged.

// Proposal is a software-upgrade proposal in its voting period, as the chain
// reader hands it to OfferProposals or CheckProposal.
type Proposal struct {
	ID        uint64
	Title     string
	Plan      Plan      // name, height, info exactly as MsgSoftwareUpgrade carries them
	VotingEnd time.Time // zero if unknown
}

// CheckState is where the check of one proposal stands.
type CheckState string

const (
	// CheckQueued: offered, not checked yet (or pre-empted by staging of a passed plan).
	CheckQueued CheckState = "queued"
	// CheckRunning: the check runs now.
	CheckRunning CheckState = "checking"
	// CheckVerified: downloaded and checksum verified; on this node's platform
	// also preflight passed and the probe says it has the handler (or it did not
	// answer the probe: Handler says so).
	CheckVerified CheckState = "verified"
	// CheckFailed: any fault: no binary for the platform, no checksum when one is
	// required, checksum mismatch, unsafe archive, wrong OS/arch, preflight
	// failed, download failed (a Stager retries transient faults with backoff).
	CheckFailed CheckState = "failed"
	// CheckRefused: the binary answered the probe without the plan's upgrade
	// handler (ErrMissingHandler): it would halt the chain again at the height.
	CheckRefused CheckState = "refused"
	// CheckSkipped: not checked because downloads are disabled
	// (AllowDownload=false); Err says how to check by hand.
	CheckSkipped CheckState = "skipped"
)

// Values of ProposalCheck.Handler.
const (
	HandlerYes      = "yes"       // the binary answered the probe: it has the plan's handler
	HandlerNo       = "no"        // it answered without it (CheckRefused)
	HandlerNotAsked = "not asked" // it gave no answer, could not tell, or is for another platform
)

// ProposalCheck is what the check of one proposal found.
type ProposalCheck struct {
	ID       uint64     `json:"id"`
	Title    string     `json:"title,omitempty"`
	Plan     Plan       `json:"plan"`
	Platform string     `json:"platform"`      // "linux/amd64"; the plan key that was used is in Key
	Key      string     `json:"key,omitempty"` // binaries map key used ("linux/amd64" or "any")
	State    CheckState `json:"state"`
	URL      string     `json:"url,omitempty"` // redacted
	SHA256   string     `json:"sha256,omitempty"`
	Version  string     `json:"version,omitempty"` // what preflight printed
	Handler  string     `json:"handler,omitempty"` // HandlerYes, HandlerNo or HandlerNotAsked
	Err      string     `json:"error,omitempty"`   // cause and what to do
	Checked  time.Time  `json:"checked,omitempty"`
	// Kept is the path of the verified binary kept for the plan in the proposal
	// area (home.Layout.ProposalBin), "" if none.
	Kept      string    `json:"kept,omitempty"`
	VotingEnd time.Time `json:"voting_end,omitempty"`
}

// Summary is one line a validator can act on, e.g.
//
//	proposal 12 "v5": linux/amd64 binary verified (sha256 ab12…), has handler "v5"
//	proposal 13 "v5": linux/amd64 binary checksum mismatch: expected sha256 …, got …
//	proposal 14 "v5": linux/amd64 binary has no upgrade handler "v5": it would halt the chain again at height 120
func (c ProposalCheck) Summary() string {
	head := fmt.Sprintf("proposal %d %q: ", c.ID, c.Plan.Name)
	plat := c.Platform
	if plat == "" {
		plat = "this platform's"
	}
	switch c.State {
	case CheckVerified:
		s := fmt.Sprintf("%s binary verified (sha256 %s)", plat, shortSHA(c.SHA256))
		switch {
		case c.Handler == HandlerYes:
			s += fmt.Sprintf(", has handler %q", c.Plan.Name)
		case c.Platform != "" && c.Platform != runtime.GOOS+"/"+runtime.GOARCH:
			s += fmt.Sprintf(": checksum, archive and executable header only; its preflight and probe cannot run on %s/%s", runtime.GOOS, runtime.GOARCH)
		default:
			s += fmt.Sprintf(", runs (%q), but gave no probe answer, so whether it has handler %q is not known", c.Version, c.Plan.Name)
		}
		return head + s
	case CheckRefused:
		return head + fmt.Sprintf("%s binary has no upgrade handler %q: it would halt the chain again at height %d", plat, c.Plan.Name, c.Plan.Height)
	case CheckFailed, CheckSkipped:
		return head + c.Err
	case CheckRunning:
		return head + plat + " binary is being checked"
	}
	if c.Err != "" {
		return head + plat + " binary not checked yet: " + c.Err
	}
	return head + plat + " binary not checked yet"
}

// shortSHA is the head of a hex digest, for one-line summaries.
func shortSHA(h string) string {
	if len(h) <= 12 {
		return h
	}
	return h[:12] + "…"
}

// CheckProposal runs one check now, synchronously. platform "" means this node's
// GOOS/GOARCH. For this node's platform it preflights and probes the binary (the
// probe asks for the plan's handler, as staging does); for another platform it
// downloads, verifies the checksum, checks archive safety and the executable header
// for that OS/arch, and says that preflight and probe could not run here. When keep
// is true (this platform only) a verified binary is kept in the proposal area
// (home.Layout.ProposalDir) with a completion record for exactly p.Plan, and an area
// already holding exactly that, provably unchanged, is reported without
// downloading again; otherwise nothing is left on disk. Downloads obey cfg as
// staging does (AllowDownload, RequireChecksum, DiskShare, size limits, allowed
// schemes, Deadline). With keep it writes in the home, so the caller holds the
// home lock; without, it only uses a temp directory under <home>/cosmovisor.
func CheckProposal(ctx context.Context, cfg Config, p Proposal, platform string, keep bool, log Logger) ProposalCheck {
	c, _ := checkProposal(ctx, cfg, p, platform, keep, log, nil)
	return c
}

// checkProposal is CheckProposal, also returning the fault (nil when verified or
// skipped) so that a Stager can tell a transient one from a permanent one. pace,
// when set, paces the check's writes (a Stager passes its own; nil: DiskShare).
func checkProposal(ctx context.Context, cfg Config, p Proposal, platform string, keep bool, log Logger, pace *pacer) (ProposalCheck, error) {
	c := ProposalCheck{ID: p.ID, Title: p.Title, Plan: p.Plan, VotingEnd: p.VotingEnd, Platform: platform}
	if log == nil {
		log = NopLogger{}
	}
	goos, goarch, host, err := parsePlatform(platform)
	if err != nil {
		return c.fail(err), err
	}
	c.Platform = goos + "/" + goarch
	if err := cfg.Validate(); err != nil {
		return c.fail(err), err
	}
	l, err := cfg.Layout()
	if err != nil {
		return c.fail(err), err
	}
	if _, err := upgradeDir(l, p.Plan.Name); err != nil {
		// No node could stage it: the validators should know before they vote.
		return c.fail(err), err
	}
	if !cfg.AllowDownload {
		c.State, c.Checked = CheckSkipped, time.Now()
		c.Err = skippedAdvice(cfg, p, goos, goarch)
		return c, nil
	}
	keep = keep && host
	if pace == nil {
		pace = newPacer(ctx, cfg.DiskShare, nil)
	}
	cfg.NoHandler = false // a proposal is governance's: its plan runs an upgrade handler
	j := &job{cfg: cfg, l: l, p: p.Plan, log: log, pace: pace, dir: l.ProposalDir(p.ID), bin: l.ProposalBin(p.ID)}
	defer j.cleanup()
	if keep {
		if kept, ok := j.keptProposal(ctx, p, &c); ok {
			log.Info("staging: the binary of proposal "+fmt.Sprint(p.ID)+" was checked before and is kept unchanged", "plan", p.Plan.Name, "path", kept)
			return c, nil
		}
		if err := ctx.Err(); err != nil {
			return c.fail(context.Cause(ctx)), context.Cause(ctx)
		}
	}

	ctx, cancel := context.WithTimeoutCause(ctx, cfg.Deadline,
		fmt.Errorf("%w: the check exceeded Config.Deadline (%v)", ErrDownload, cfg.Deadline))
	defer cancel()
	log.Info("staging: checking the binary of a proposal in its voting period", "proposal", p.ID, "plan", p.Plan.Name, "height", p.Plan.Height, "platform", c.Platform)
	src, key, err := resolveFor(ctx, cfg, p.Plan, log, j.bin, goos, goarch)
	if err != nil {
		return c.fail(err), err
	}
	c.Key, c.URL = key, redact(src.URL.String())
	root, d, err := j.obtain(ctx, src)
	if err != nil {
		return c.fail(err), err
	}
	c.SHA256 = d.SHA256
	staged := filepath.Join(root, home.BinDir, cfg.DaemonName)
	if !host {
		if err := j.inspectOther(staged, goos, goarch); err != nil {
			return c.fail(err), err
		}
		c.Handler = HandlerNotAsked
		c.State, c.Checked = CheckVerified, time.Now()
		return c, nil
	}
	pre, version, err := j.preflightStaged(ctx, staged, d)
	if err != nil {
		return c.fail(err), err
	}
	c.Version, c.Handler = version, handlerOf(j.answer, p.Plan.Name)
	if keep {
		rec := home.Record{
			Plan: p.Plan.Name, Height: p.Plan.Height, InfoHash: p.Plan.InfoHash(), Source: home.SourceDownload,
			URL: c.URL, Checksum: checksumString(src.Checksum),
			SHA256: d.SHA256, Size: d.Size, Preflight: version, Probe: j.answer,
		}
		kept, err := j.keepProposal(ctx, p, root, d, pre, rec)
		if err != nil {
			return c.fail(err), err
		}
		c.Kept = kept
	}
	c.State, c.Checked = CheckVerified, time.Now()
	return c, nil
}

// parsePlatform reads "os/arch" ("" is this node's); host says it is this node's.
func parsePlatform(platform string) (goos, goarch string, host bool, err error) {
	hgoos, hgoarch := hostPlatform()
	if platform == "" {
		return hgoos, hgoarch, true, nil
	}
	if !platformKey.MatchString(platform) {
		return "", "", false, fmt.Errorf("%w: platform %q is not \"os/arch\" (such as linux/amd64)", ErrBadInfo, platform)
	}
	goos, goarch, _ = strings.Cut(platform, "/")
	return goos, goarch, goos == hgoos && goarch == hgoarch, nil
}

// handlerOf is what a probe answer says about plan name's handler.
func handlerOf(a *probe.Answer, name string) string {
	switch has, known := a.HasHandler(name); {
	case known && has:
		return HandlerYes
	case known:
		return HandlerNo
	}
	return HandlerNotAsked
}

// fail records err as the outcome: CheckRefused for a missing handler, else
// CheckFailed, with an Err that names the cause and what it means for voters.
func (c *ProposalCheck) fail(err error) ProposalCheck {
	c.State, c.Checked = CheckFailed, time.Now()
	plat := c.Platform
	var (
		ce *ChecksumError
		mh *MissingHandlerError
		nb *noBinaryError
	)
	switch {
	case errors.As(err, &mh):
		c.State, c.Handler = CheckRefused, HandlerNo
		c.Err = fmt.Sprintf("%s binary (sha256 %s, invisor %s) has no upgrade handler %q: it would halt the chain again at height %d; the proposal names a release not built for this upgrade",
			plat, mh.SHA256, mh.InvisorVersion, c.Plan.Name, c.Plan.Height)
	case errors.As(err, &ce):
		c.Err = fmt.Sprintf("%s binary checksum mismatch: expected %s %s, got %s; the file at %s is not the one the proposal pins (a wrong upload, or tampering), so no node could stage it",
			plat, ce.Algo, ce.Expected, ce.Actual, redact(ce.URL))
	case errors.As(err, &nb) && strings.HasPrefix(nb.why, "it names"):
		c.Err = fmt.Sprintf(`the plan names no binary for %s and no "any"; validators on %s would have to build or fetch it themselves (%s)`, plat, plat, nb.why)
	case errors.As(err, &nb):
		c.Err = fmt.Sprintf("%s, so it names no binary for %s; validators on %s would have to build or fetch it themselves", nb.why, plat, plat)
	case errors.Is(err, context.Canceled) || errors.Is(err, ErrPlanSuperseded) || errors.Is(err, ErrPlanCancelled):
		c.Err = fmt.Sprintf("the check of the %s binary was interrupted (%v); it is not known whether the binary is good", plat, err)
	default:
		c.Err = fmt.Sprintf("%s binary: %v", plat, err)
	}
	return *c
}

// skippedAdvice says how to check proposal p by hand when downloads are disabled.
func skippedAdvice(cfg Config, p Proposal, goos, goarch string) string {
	what := "the binary the plan info names for " + goos + "/" + goarch
	if info := strings.TrimSpace(p.Plan.Info); strings.HasPrefix(info, "{") {
		if bins, ok := lenientBinaries(info); ok {
			if raw, ok := pick(bins, goos, goarch); ok {
				what = redact(raw)
			}
		}
	}
	return fmt.Sprintf("%s/%s binary not checked: downloads are disabled (DAEMON_ALLOW_DOWNLOAD_BINARIES=false); to check it by hand, download %s, compare its sha256 with the checksum the plan pins and run `%s version` on it; or allow downloads",
		goos, goarch, what, cfg.DaemonName)
}

// inspectOther checks the staged binary for another platform without running
// it: a regular file under MaxBinaryBytes holding an executable for goos/goarch.
func (j *job) inspectOther(staged, goos, goarch string) error {
	f, err := openNoFollow(staged)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrNotExecutable, err)
	}
	defer f.Close()
	_, err = j.inspectFor(f, staged, goos, goarch)
	return err
}

// permanentCheckFault reports whether a check that failed with err would fail the
// same way again for the same plan (its bytes are pinned), so a Stager does not
// retry it: only a transfer, the disk or the sandbox can fail transiently.
func permanentCheckFault(err error) bool {
	for _, e := range []error{ErrChecksumMismatch, ErrMissingHandler, ErrNotFound, ErrNoChecksum, ErrBadInfo,
		ErrBadName, ErrUnsafeArchive, ErrNotExecutable, ErrTooLarge, ErrPreflight} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// keptProposal reports a proposal area that already holds exactly p.Plan's
// binary, provably unchanged (home.Layout.OpenProposal), filling c from its
// record. An area of the proposal for anything else is removed, so that with
// keep the area ends up holding p.Plan's binary or nothing.
func (j *job) keptProposal(ctx context.Context, p Proposal, c *ProposalCheck) (string, bool) {
	dir := j.l.ProposalDir(p.ID)
	if _, err := os.Lstat(dir); err != nil {
		return "", false
	}
	v, err := j.l.OpenProposal(ctx, p.ID, p.Plan)
	if err == nil {
		defer v.Close()
		rec := v.Record
		c.URL, c.SHA256, c.Version, c.Handler, c.Kept, c.Checked = rec.URL, rec.SHA256, rec.Preflight, handlerOf(rec.Probe, p.Plan.Name), v.Path, rec.Time
		c.Key = planKey(p.Plan.Info, c.Platform)
		c.State = CheckVerified
		return v.Path, true
	}
	if ctx.Err() != nil {
		return "", false
	}
	j.log.Info("staging: the proposal area holds no binary for the proposal's plan as offered; removed it and checking anew", "proposal", p.ID, "dir", dir, "why", err)
	if err := removeInstall(j.l, dir, j.pace); err != nil {
		j.log.Warn("staging: could not remove a stale proposal area", "dir", dir, "err", err)
	}
	return "", false
}

// planKey is the binaries key an inline plan info uses for platform, "" when the
// info is not inline JSON or names none.
func planKey(info, platform string) string {
	bins, ok := lenientBinaries(strings.TrimSpace(info))
	if !ok {
		return ""
	}
	if _, ok := bins[platform]; ok {
		return platform
	}
	if _, ok := bins["any"]; ok {
		return "any"
	}
	return ""
}

// keepProposal moves the verified tree root into proposal p's area and records
// it there, the way install does for an upgrade: fsync, rename, fsync parent,
// stamp proof (pre is the binary's stamp with content d before the move), then
// the crash-safe record. Any failure removes what was moved. It returns the
// kept binary's path.
func (j *job) keepProposal(ctx context.Context, p Proposal, root string, d digest, pre home.Stamp, rec home.Record) (string, error) {
	if err := syncTree(root); err != nil {
		return "", err
	}
	areas := j.l.ProposalsRoot()
	if err := os.MkdirAll(areas, 0o755); err != nil {
		return "", fmt.Errorf("create the proposal area %s: %w; check that the node home is writable", areas, err)
	}
	if err := home.RealDirs(areas); err != nil {
		return "", err
	}
	dir := j.l.ProposalDir(p.ID)
	if _, err := os.Lstat(dir); err == nil {
		if err := removeInstall(j.l, dir, j.pace); err != nil {
			return "", fmt.Errorf("remove the earlier proposal area %s: %w", dir, err)
		}
	}
	if err := os.Rename(root, dir); err != nil {
		return "", fmt.Errorf("keep the checked binary in %s: %w", dir, err)
	}
	undo := func() { os.RemoveAll(dir) }
	if err := home.SyncDir(areas); err != nil {
		undo()
		return "", err
	}
	bin := j.l.ProposalBin(p.ID)
	post, err := home.StampOf(bin)
	if err != nil || !pre.Renamed(post) {
		if post, err = rehash(ctx, bin, d); err != nil {
			undo()
			return "", err
		}
	}
	rec.Stamp = post
	if err := j.l.WriteProposalRecord(p.ID, rec); err != nil {
		undo()
		return "", fmt.Errorf("write the record of the checked binary in %s: %w (disk full?); it was removed again", dir, err)
	}
	v, err := j.l.OpenProposal(ctx, p.ID, p.Plan)
	if err != nil {
		undo()
		return "", fmt.Errorf("the checked binary changed right after it was recorded: %w", err)
	}
	v.Close()
	j.log.Info("staging: kept the checked binary of the proposal for its plan", "proposal", p.ID, "plan", p.Plan.Name, "path", bin, "sha256", d.SHA256)
	return bin, nil
}

// fromProposal installs the tree a proposal check kept for exactly the plan in
// force (step 3 of fetch, when nothing is at the install path): its binary is
// hashed again and must match its record (a tampered or truncated one is removed
// and ignored, with a warning), then the tree goes into upgrades/ with the install
// and record code a download uses, as a download (it was fetched from the plan's
// URL and verified against the plan's checksum). done is false when no area
// serves, or installing from it failed (logged; the caller downloads).
func (j *job) fromProposal(ctx context.Context) (Install, bool, error) {
	for _, a := range j.l.ProposalAreas() {
		if a.Err != nil || a.Record.For(j.p) != nil {
			continue
		}
		inst, err := j.promote(ctx, a)
		if err == nil {
			j.log.Info(fmt.Sprintf("staging: the binary checked while proposal %d was in its voting period is the plan's; installed without downloading again", a.ID),
				"plan", j.p.Name, "height", j.p.Height, "path", inst.Path, "sha256", inst.SHA256)
			return inst, true, nil
		}
		if ctx.Err() != nil {
			return Install{}, false, context.Cause(ctx)
		}
		j.log.Warn(fmt.Sprintf("staging: the binary checked while proposal %d was in its voting period cannot be installed; it was removed", a.ID),
			"plan", j.p.Name, "dir", a.Dir, "err", err)
		if _, lerr := os.Lstat(a.Dir); lerr == nil {
			if rerr := removeInstall(j.l, a.Dir, j.pace); rerr != nil {
				j.log.Warn("staging: could not remove the proposal area", "dir", a.Dir, "err", rerr)
			}
		}
	}
	return Install{}, false, nil
}

// promote moves proposal area a into the plan's upgrade directory (see fromProposal).
func (j *job) promote(ctx context.Context, a home.ProposalArea) (Install, error) {
	j.obs.setState(StateVerifying)
	if err := chmodExec(a.Bin); err != nil {
		return Install{}, err
	}
	f, err := openNoFollow(a.Bin)
	if err != nil {
		return Install{}, err
	}
	hd, err := home.HashFile(ctx, f)
	f.Close()
	if err != nil {
		return Install{}, err
	}
	if hd.SHA256 != a.Record.SHA256 || hd.Size != a.Record.Size {
		return Install{}, fmt.Errorf("%w: %s has sha256 %s (%d bytes), its record says %s (%d bytes): changed since it was checked",
			ErrNotTrusted, a.Bin, hd.SHA256, hd.Size, a.Record.SHA256, a.Record.Size)
	}
	// The area's record does not go along: between the move and the upgrade's
	// record the install path holds a binary without a record, as after a
	// download (the next attempt verifies it as a placed binary).
	if err := os.Remove(a.Bin + home.RecordSuffix); err != nil {
		return Install{}, err
	}
	rec := a.Record
	rec.Stamp, rec.Time, rec.Format, rec.Proposal = home.Stamp{}, time.Time{}, 0, a.ID
	rec.Source = home.SourceDownload
	inst, err := j.install(ctx, a.Dir, digest{SHA256: hd.SHA256, Size: hd.Size}, hd.Stamp, rec)
	if err != nil {
		return Install{}, err
	}
	if _, err := os.Lstat(a.Dir); err == nil {
		// The upgrade directory existed, so only the binary moved: the rest goes.
		if err := removeInstall(j.l, a.Dir, j.pace); err != nil {
			j.log.Warn("staging: could not remove what remained of the proposal area", "dir", a.Dir, "err", err)
		}
	}
	return inst, nil
}
