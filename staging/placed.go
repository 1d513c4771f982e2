package staging

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"hash"
	"net/url"
	"strings"

	"github.com/invisor/invisor/internal/home"
)

// The trust bar for a binary found at the install path without a record for the
// plan in force: placed by hand, by `invisor stage/prepare/import`, or left by a
// crash between the rename and the record write. See doc.go, "Binaries placed by
// the operator".

// planBinary is what the plan names for this platform.
type planBinary struct {
	named bool   // false: the plan names no binary for this platform
	why   string // when !named, for the log
	raw   string // the URL as the plan spells it
	src   Source
}

// planBinary reads the plan info the way cosmovisor does, leniently: no info, free
// text, JSON that is not a binaries map, or a map without this platform and without
// "any" name no binary. An info URL is fetched; failing that, or a URL the policy
// refuses (unpinned, another scheme), is an error: the plan may name a binary, so
// it cannot be verified now.
func (j *job) planBinary(ctx context.Context) (planBinary, error) {
	info := strings.TrimSpace(j.p.Info)
	if info == "" {
		return planBinary{why: "the plan has no info"}, nil
	}
	fromURL := ""
	if !strings.HasPrefix(info, "{") {
		if !looksLikeURL(info) {
			return planBinary{why: "the plan info is neither a binaries map nor a URL"}, nil
		}
		body, err := fetchInfo(ctx, j.cfg, j.p, j.log, info)
		if err != nil {
			return planBinary{}, err
		}
		fromURL, info = info, body
	}
	bins, ok := lenientBinaries(info)
	if !ok {
		if fromURL != "" {
			return planBinary{}, fmt.Errorf("%w: plan info URL %s did not return a binaries map", ErrBadInfo, redact(fromURL))
		}
		return planBinary{why: "the plan info is not a binaries map"}, nil
	}
	goos, goarch := hostPlatform()
	raw, ok := pick(bins, goos, goarch)
	if !ok || strings.TrimSpace(raw) == "" {
		return planBinary{why: fmt.Sprintf(`the plan names binaries for %v, none for %s/%s and no "any"`, sortedKeys(bins), goos, goarch)}, nil
	}
	src, err := ParseSource(raw, j.cfg)
	if err != nil {
		return planBinary{}, err
	}
	return planBinary{named: true, raw: raw, src: src}, nil
}

// lenientBinaries returns the "binaries" map of a JSON plan info, ignoring keys it
// cannot use; ok is false when info is not such a JSON object.
func lenientBinaries(info string) (map[string]string, bool) {
	var doc struct {
		Binaries map[string]any `json:"binaries"`
	}
	if err := json.Unmarshal([]byte(info), &doc); err != nil {
		return nil, false
	}
	out := make(map[string]string, len(doc.Binaries))
	for k, v := range doc.Binaries {
		if s, ok := v.(string); ok {
			out[k] = s
		}
	}
	return out, true
}

// looksLikeURL reports whether a plan info that is not JSON is meant as a URL (one
// token with a scheme and a host, or file:), rather than free text.
func looksLikeURL(s string) bool {
	if strings.ContainsAny(s, " \t\r\n") {
		return false
	}
	u, err := url.Parse(s)
	if err != nil || u.Scheme == "" {
		return false
	}
	return u.Host != "" || strings.EqualFold(u.Scheme, "file")
}

// adoptPlaced verifies the binary at the install path against the plan in force
// and records it, or says why it is not trusted. The file is never overwritten,
// moved or deleted (only made 0755 once it passed the checks).
func (j *job) adoptPlaced(ctx context.Context) (Install, error) {
	j.obs.setState(StateVerifying)
	j.log.Info("staging: found a binary without a completion record for the plan in force; verifying it against the plan", "plan", j.p.Name, "path", j.bin)

	// Cheap local checks first: a symlink, a directory, an HTML page or a binary for
	// another platform needs no network to be refused.
	f, err := openNoFollow(j.bin)
	if err != nil {
		return Install{}, fmt.Errorf("placed binary %s: %w", j.bin, err)
	}
	defer func() { f.Close() }()
	if _, err := j.inspect(f, j.bin); err != nil {
		return Install{}, fmt.Errorf("placed binary %s: %w", j.bin, err)
	}

	pb, perr := j.planBinary(ctx)
	if cause := context.Cause(ctx); ctx.Err() != nil {
		return Install{}, cause
	}
	var planHash hash.Hash
	if perr == nil && pb.named && pb.src.Archive == "" && pb.src.Checksum != nil && pb.src.Checksum.Algo != "sha256" {
		planHash = pb.src.Checksum.newHash()
	}
	var extra []hash.Hash
	if planHash != nil {
		extra = append(extra, planHash)
	}
	d, err := home.HashFile(ctx, f, extra...)
	if err != nil {
		return Install{}, err
	}
	rec := home.Record{Plan: j.p.Name, Height: j.p.Height, InfoHash: j.p.InfoHash(), SHA256: d.SHA256, Size: d.Size}

	var refused error // why the plan does not confirm these bytes
	switch {
	case perr != nil:
		refused = fmt.Errorf("%w: cannot verify the binary placed at %s against plan %q now: %w; it is not trusted until it can be, and the check is retried",
			ErrNotTrusted, j.bin, j.p.Name, perr)
	case !pb.named:
		rec.Source = home.SourceOperatorWord
	case pb.src.Archive == "" && pb.src.Checksum != nil:
		actual := d.SHA256
		if planHash != nil {
			actual = hex.EncodeToString(planHash.Sum(nil))
		}
		if actual != pb.src.Checksum.Hex {
			refused = &PlacedMismatchError{Plan: j.p.Name, Path: j.bin, Against: "the plan checksum",
				Algo: pb.src.Checksum.Algo, Expected: pb.src.Checksum.Hex, Actual: actual}
			break
		}
		rec.Source, rec.URL, rec.Checksum = home.SourcePlanChecksum, redact(pb.src.URL.String()), pb.src.Checksum.String()
	default:
		// An archive (or, with RequireChecksum off, an unpinned binary): the plan's
		// own binary is needed to compare with.
		what := "an archive (" + pb.src.Archive + ")"
		if pb.src.Archive == "" {
			what = "a binary without a checksum"
		}
		if !j.cfg.AllowDownload {
			refused = fmt.Errorf("%w: plan %q names %s, so verifying the binary placed at %s needs it: allow downloads (DAEMON_ALLOW_DOWNLOAD_BINARIES=true), or stage it with `%s invisor stage %s --url '%s'` or `--file <the archive>`, or set unsafe-trust-placed-binaries to trust the placed file on your word",
				ErrNotTrusted, j.p.Name, what, j.bin, j.cfg.DaemonName, j.p.Name, redact(pb.raw))
			break
		}
		pd, err := j.planDigest(ctx, pb.src)
		if err != nil {
			if ctx.Err() != nil {
				return Install{}, context.Cause(ctx)
			}
			refused = fmt.Errorf("%w: plan %q names %s; fetching it to compare with the binary placed at %s failed: %w; it is not trusted until they can be compared, and the check is retried",
				ErrNotTrusted, j.p.Name, what, j.bin, err)
			break
		}
		if pd.SHA256 != d.SHA256 || pd.Size != d.Size {
			refused = &PlacedMismatchError{Plan: j.p.Name, Path: j.bin, Against: "the binary the plan's " + map[bool]string{true: "archive", false: "URL"}[pb.src.Archive != ""] + " holds",
				Algo: "sha256", Expected: pd.SHA256, Actual: d.SHA256}
			break
		}
		rec.Source, rec.URL, rec.Checksum = home.SourcePlanArchive, redact(pb.src.URL.String()), checksumString(pb.src.Checksum)
	}
	if refused != nil {
		if !j.cfg.TrustPlacedBinaries {
			return Install{}, refused
		}
		rec.Source = home.SourceOverride
	}

	// Verified (or taken on the operator's word): make it executable, then prove
	// across the preflight that the recorded bytes are the ones hashed.
	stamp := d.Stamp
	if fi, err := f.Stat(); err == nil && fi.Mode().Perm() != 0o755 {
		if err := f.Chmod(0o755); err != nil {
			return Install{}, err
		}
		h, err := home.HashFile(ctx, f) // the chmod changed ctime: stamp (and hash) again
		if err != nil {
			return Install{}, err
		}
		if h.SHA256 != d.SHA256 || h.Size != d.Size {
			return Install{}, fmt.Errorf("%w: %s changed while it was verified; another process writes there", ErrNotTrusted, j.bin)
		}
		stamp = h.Stamp
	}
	f.Close()
	version, err := j.preflight(ctx, j.bin, d.SHA256)
	if err != nil {
		return Install{}, fmt.Errorf("placed binary %s: %w", j.bin, err)
	}
	if stamp, err = proveUnchanged(ctx, j.bin, stamp, digest{SHA256: d.SHA256, Size: d.Size}); err != nil {
		return Install{}, err
	}
	rec.Stamp, rec.Preflight, rec.Probe = stamp, version, j.answer

	switch rec.Source {
	case home.SourceOverride:
		j.log.Warn("staging: UNSAFE: trusting the placed binary the plan does not confirm, because unsafe-trust-placed-binaries is set",
			"plan", j.p.Name, "path", j.bin, "sha256", d.SHA256, "reason", refused)
	case home.SourceOperatorWord:
		j.log.Warn("staging: the plan names no binary for this platform; the placed binary is trusted on the operator's word after its preflight",
			"plan", j.p.Name, "path", j.bin, "sha256", d.SHA256, "why", pb.why, "version", version)
	default:
		j.log.Info("staging: placed binary verified against the plan and recorded", "plan", j.p.Name, "source", rec.Source, "sha256", d.SHA256, "version", version)
	}
	return j.record(ctx, rec, nil)
}

// planDigest downloads the binary the plan names (through its archive, exactly as a
// download: checksum verified, safe unpacking, caps, pacing) into the attempt's
// temp dir and returns its digest. Nothing is installed.
func (j *job) planDigest(ctx context.Context, src Source) (digest, error) {
	ctx, cancel := context.WithTimeoutCause(ctx, j.cfg.Deadline,
		fmt.Errorf("%w: attempt exceeded Config.Deadline (%v)", ErrDownload, j.cfg.Deadline))
	defer cancel()
	j.obs.setState(StateDownloading)
	defer j.obs.setState(StateVerifying)
	_, d, err := j.obtain(ctx, src)
	if err != nil {
		return digest{}, err
	}
	return d, nil
}
