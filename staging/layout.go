package staging

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"
	"unicode/utf8"
)

// Layout names, shared with cosmovisor.
const (
	// CosmovisorDir is the directory under Home holding the cosmovisor layout.
	CosmovisorDir = "cosmovisor"
	// UpgradesDir is the directory under CosmovisorDir holding one directory per plan.
	UpgradesDir = "upgrades"
	// RecordSuffix is appended to the binary path to name its completion record.
	RecordSuffix = ".invisor.json"
	// TempPrefix names the per-attempt temp directories under Home/cosmovisor.
	TempPrefix = ".staging-tmp-"
	// LockName is the lock file under Home/cosmovisor held by a Stager.
	LockName = ".staging.lock"
	// MaxNameBytes caps the escaped directory name (NAME_MAX on common filesystems).
	MaxNameBytes = 255
)

// SafeName maps a plan name to its directory name under upgrades/. It uses the same
// mapping as cosmovisor (url.PathEscape, so "/" becomes "%2F") and refuses names that
// cannot be mapped safely: empty, "." or "..", control characters including NUL,
// invalid UTF-8, or an escaped form longer than MaxNameBytes.
func SafeName(name string) (string, error) {
	switch {
	case name == "":
		return "", fmt.Errorf("%w: empty plan name", ErrBadName)
	case !utf8.ValidString(name):
		return "", fmt.Errorf("%w: plan name %q is not valid UTF-8", ErrBadName, name)
	}
	for _, r := range name {
		if r < 0x20 || r == 0x7f {
			return "", fmt.Errorf("%w: plan name %q contains a control character", ErrBadName, name)
		}
	}
	safe := url.PathEscape(name)
	switch {
	case safe == "." || safe == "..":
		return "", fmt.Errorf("%w: plan name %q is a relative directory name", ErrBadName, name)
	case len(safe) > MaxNameBytes:
		return "", fmt.Errorf("%w: plan name is %d bytes once escaped, more than %d", ErrBadName, len(safe), MaxNameBytes)
	case strings.ContainsAny(safe, `/\`):
		// url.PathEscape escapes "/" but leaves "\" on some inputs; refuse both.
		return "", fmt.Errorf("%w: plan name %q contains a path separator", ErrBadName, name)
	}
	return safe, nil
}

// CosmovisorRoot returns <home>/cosmovisor.
func CosmovisorRoot(home string) string { return filepath.Join(home, CosmovisorDir) }

// UpgradeDir returns <home>/cosmovisor/upgrades/<SafeName(name)>. For a name SafeName
// refuses it returns a directory named ".invalid-<hash>" that this package never
// creates or trusts, so a caller that skipped SafeName cannot be steered elsewhere.
func UpgradeDir(home, name string) string {
	safe, err := SafeName(name)
	if err != nil {
		sum := sha256.Sum256([]byte(name))
		safe = ".invalid-" + hex.EncodeToString(sum[:8])
	}
	return filepath.Join(home, CosmovisorDir, UpgradesDir, safe)
}

// BinPath returns <UpgradeDir>/bin/<daemon>.
func BinPath(home, daemon, name string) string {
	return filepath.Join(UpgradeDir(home, name), "bin", daemon)
}

// RecordPath returns the completion record path, next to the binary.
func RecordPath(home, daemon, name string) string {
	return BinPath(home, daemon, name) + RecordSuffix
}

// Install is a trusted, verified binary.
type Install struct {
	Name   string // plan name
	Path   string // absolute path of the binary
	SHA256 string // hex sha256 of the binary
	Size   int64
	Record Record
}

// Record is the completion record written as JSON next to the binary once it has
// been verified, preflighted and atomically placed. Only binaries with a record whose
// hash still matches are trusted.
type Record struct {
	Plan      string    `json:"plan"`
	Height    int64     `json:"height"`
	URL       string    `json:"url,omitempty"`      // source, credentials redacted; empty when placed by hand
	Checksum  string    `json:"checksum,omitempty"` // plan checksum of the download, "algo:hex"
	InfoHash  string    `json:"info_sha256"`        // sha256 of Plan.Info the binary was staged for
	SHA256    string    `json:"sha256"`             // of the installed binary
	Size      int64     `json:"size"`
	Preflight string    `json:"preflight"` // first line of `<bin> version`
	Source    string    `json:"source"`    // "download" or "hand-placed"
	Time      time.Time `json:"time"`
}

// Trusted returns the install for plan name only if it has a completion record for
// that plan and the binary is a regular executable file that re-hashes to the
// recorded sha256. It is meant to be called at boot and just before exec.
func Trusted(home, daemon, name string) (Install, error) {
	if _, err := SafeName(name); err != nil {
		return Install{}, fmt.Errorf("%w: %w", ErrNotTrusted, err)
	}
	bin := BinPath(home, daemon, name)
	rec, err := readRecord(RecordPath(home, daemon, name))
	if err != nil {
		return Install{}, err
	}
	if rec.Plan != name {
		return Install{}, fmt.Errorf("%w: record %s is for plan %q, not %q; remove %s and let it be staged again",
			ErrNotTrusted, RecordPath(home, daemon, name), rec.Plan, name, UpgradeDir(home, name))
	}
	sum, size, err := hashRegularExecutable(context.Background(), bin)
	if err != nil {
		return Install{}, fmt.Errorf("%w: %w", ErrNotTrusted, err)
	}
	if size != rec.Size || sum != rec.SHA256 {
		return Install{}, fmt.Errorf("%w: %s was modified after verification (sha256 %s, %d bytes; recorded %s, %d bytes); remove %s and let it be staged again",
			ErrNotTrusted, bin, sum, size, rec.SHA256, rec.Size, UpgradeDir(home, name))
	}
	return Install{Name: name, Path: bin, SHA256: sum, Size: size, Record: rec}, nil
}

// ReadRecord returns the completion record of plan name's install without
// verifying the binary against it (use Trusted for that).
func ReadRecord(home, daemon, name string) (Record, error) {
	if _, err := SafeName(name); err != nil {
		return Record{}, fmt.Errorf("%w: %w", ErrNotTrusted, err)
	}
	return readRecord(RecordPath(home, daemon, name))
}

// TrustedFor is Trusted for the plan in force: the install must also have been
// staged (or, for a binary placed by hand, verified) for this very plan info, so
// that a plan replaced under the same name never gets the old plan's binary.
func TrustedFor(home, daemon string, p Plan) (Install, error) {
	inst, err := Trusted(home, daemon, p.Name)
	if err != nil {
		return Install{}, err
	}
	if inst.Record.InfoHash != infoHash(p.Info) {
		return Install{}, fmt.Errorf("%w: %s was staged for another plan named %q (different info); staging replaces it with the binary of the plan in force",
			ErrNotTrusted, inst.Path, p.Name)
	}
	return inst, nil
}

// removeInstall removes an upgrade directory by renaming it to a temp name
// first: a crash leaves a temp directory that New removes, never a
// half-deleted install. Large files are freed in paced steps (removeTreePaced).
func removeInstall(home, dir string, pace *pacer) error {
	tmp, err := os.MkdirTemp(CosmovisorRoot(home), TempPrefix+"remove-")
	if err != nil {
		return err
	}
	gone := filepath.Join(tmp, filepath.Base(dir))
	if err := os.Rename(dir, gone); err != nil {
		os.Remove(tmp)
		return err
	}
	return removeTreePaced(tmp, pace)
}

func readRecord(path string) (Record, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return Record{}, fmt.Errorf("%w: no completion record %s (not staged yet, or staging did not finish)", ErrNotTrusted, path)
		}
		return Record{}, fmt.Errorf("%w: open completion record: %w", ErrNotTrusted, err)
	}
	defer f.Close()
	var rec Record
	dec := json.NewDecoder(io.LimitReader(f, 64<<10))
	if err := dec.Decode(&rec); err != nil {
		return Record{}, fmt.Errorf("%w: completion record %s is corrupt: %w; remove it to have the binary verified again", ErrNotTrusted, path, err)
	}
	if len(rec.SHA256) != 64 || rec.Size <= 0 {
		return Record{}, fmt.Errorf("%w: completion record %s is incomplete", ErrNotTrusted, path)
	}
	return rec, nil
}

// hashRegularExecutable opens path without following symlinks, checks it is a regular
// file with an execute bit, and returns its sha256 and size (streaming).
func hashRegularExecutable(ctx context.Context, path string) (string, int64, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		if errors.Is(err, syscall.ELOOP) {
			return "", 0, fmt.Errorf("%s is a symlink; only a regular file is trusted", path)
		}
		return "", 0, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return "", 0, err
	}
	if !fi.Mode().IsRegular() {
		return "", 0, fmt.Errorf("%s is not a regular file (%v)", path, fi.Mode().Type())
	}
	if fi.Mode().Perm()&0o111 == 0 {
		return "", 0, fmt.Errorf("%s is not executable (mode %v)", path, fi.Mode().Perm())
	}
	h := sha256.New()
	n, err := hashStream(ctx, f, h)
	if err != nil {
		return "", 0, fmt.Errorf("read %s: %w", path, err)
	}
	return hex.EncodeToString(h.Sum(nil)), n, nil
}

// writeFileAtomic writes data to path via a temp file in the same directory, fsyncs
// it, renames it into place and fsyncs the directory.
func writeFileAtomic(path string, data []byte, perm os.FileMode) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-")
	if err != nil {
		return err
	}
	tmp := f.Name()
	ok := false
	defer func() {
		if !ok {
			f.Close()
			os.Remove(tmp)
		}
	}()
	if _, err := f.Write(data); err != nil {
		return err
	}
	if err := f.Chmod(perm); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	ok = true
	return syncPath(dir)
}

// syncPath fsyncs a file or directory. EINVAL (a filesystem without fsync for
// directories) is not an error.
func syncPath(p string) error {
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Sync(); err != nil && !errors.Is(err, syscall.EINVAL) {
		return fmt.Errorf("fsync %s: %w", p, err)
	}
	return nil
}

func writeRecord(path string, rec Record) error {
	b, err := json.MarshalIndent(rec, "", "  ")
	if err != nil {
		return err
	}
	return writeFileAtomic(path, append(b, '\n'), 0o644)
}

// redact removes userinfo and the query (which may hold tokens) from a URL for logs.
func redact(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "<unparseable url>"
	}
	u.User = nil
	if u.RawQuery != "" {
		q := u.Query()
		keep := url.Values{}
		for _, k := range []string{"checksum", "archive"} {
			if v, ok := q[k]; ok {
				keep[k] = v
			}
		}
		u.RawQuery = keep.Encode()
	}
	return u.String()
}

// FileSHA256 returns the hex sha256 of the file at path, streaming it.
func FileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := hashStream(context.Background(), f, h); err != nil {
		return "", fmt.Errorf("read %s: %w", path, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
