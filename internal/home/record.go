package home

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/invisor/invisor/internal/probe"
)

// ErrNotTrusted is wrapped by every reason a file may not run for a plan.
var ErrNotTrusted = errors.New("binary not trusted")

// Plan is the upgrade plan a binary is for, as x/upgrade stores it.
type Plan struct {
	Name   string `json:"name"`
	Height int64  `json:"height"`
	Info   string `json:"info"`
}

// InfoHash is the hex sha256 of the plan's info: a plan replaced under the same
// name and height with other info gets another hash.
func (p Plan) InfoHash() string { return InfoHash(p.Info) }

// InfoHash is the hex sha256 of a plan info string.
func InfoHash(info string) string {
	s := sha256.Sum256([]byte(info))
	return hex.EncodeToString(s[:])
}

// Source says how a binary's bytes were tied to the plan.
type Source string

// The sources a record may name. Only these are proofs; anything else (such as
// the "hand-placed" of records written before this package) is not.
const (
	// SourceDownload: fetched from the URL the plan names for this platform; the
	// checksum the plan pins matched.
	SourceDownload Source = "download"
	// SourcePlanChecksum: placed by the operator (by hand, `invisor stage`,
	// `prepare`, `import`); equal to the checksum the plan names for this platform.
	SourcePlanChecksum Source = "operator-file-checksum"
	// SourcePlanArchive: placed by the operator; equal, byte for byte, to the
	// binary inside the plan's own archive, downloaded and checksum-verified.
	SourcePlanArchive Source = "operator-file-archive"
	// SourceOperatorWord: the plan names no binary for this platform (no info, or
	// no entry for this OS/arch and no "any"), so the operator's placement is the
	// only source there is, as with cosmovisor; accepted after the preflight.
	SourceOperatorWord Source = "operator-word"
	// SourceOverride: the operator explicitly told invisor to trust a binary the
	// plan does not confirm (unsafe-trust-placed-binaries). Logged at every boot.
	SourceOverride Source = "operator-override"
	// SourceOperatorStarted: the operator started this binary from a path of
	// their own (their process manager's ExecStart) while data/upgrade-info.json
	// named the plan, and it said, in its own process, that it carries the plan's
	// upgrade handler (a patch release of the upgrade); the boot installed a copy
	// (InstallBinary). The plan does not confirm the bytes.
	SourceOperatorStarted Source = "operator-started"
	// SourceOperatorReplaced: `invisor stage NAME --replace` put it in place of the
	// binary of an upgrade already applied or staged (a patch release), verified
	// as a download is (checksum, unpacking, OS/arch, preflight) and carrying the
	// plan's upgrade handler by its own probe answer. The plan does not confirm the
	// bytes.
	SourceOperatorReplaced Source = "operator-replaced"
	// SourceImage: copied by staging from the read-only image directory
	// (staging.Config.ImageDir, a container image's pre-staged binaries) into
	// the upgrade's place, and confirmed by the plan exactly as an operator's
	// file is: equal to the checksum it names, or byte for byte to the binary in
	// its archive. An image binary the plan names nothing for is recorded as
	// SourceOperatorWord, with File naming the image's file.
	SourceImage Source = "image"
)

// Valid reports whether s is one of the sources above.
func (s Source) Valid() bool {
	switch s {
	case SourceDownload, SourcePlanChecksum, SourcePlanArchive, SourceOperatorWord, SourceOverride,
		SourceOperatorStarted, SourceOperatorReplaced, SourceImage:
		return true
	}
	return false
}

// Unconfirmed reports whether the plan itself does not confirm the bytes: the
// operator's word, override, or a patch release the operator started or put in
// place. Status and metrics show such binaries.
func (s Source) Unconfirmed() bool {
	switch s {
	case SourceOperatorWord, SourceOverride, SourceOperatorStarted, SourceOperatorReplaced:
		return true
	}
	return false
}

// RecordFormat is the version of the record layout this package writes.
const RecordFormat = 2

// Record is the completion record beside a binary: the single proof that the file
// may run for one plan.
type Record struct {
	Format int `json:"format"`
	// Plan is the plan name in its canonical form (CanonicalName), the form
	// x/upgrade's data/upgrade-info.json holds it in.
	Plan     string `json:"plan"`
	Height   int64  `json:"height"`
	InfoHash string `json:"info_sha256"`
	Source   Source `json:"source"`
	// URL is where the bytes came from, credentials and query redacted; empty for
	// an operator's file.
	URL string `json:"url,omitempty"`
	// Checksum is the plan's pin ("sha256:<hex>") the bytes, or the archive they
	// came from, matched.
	Checksum string `json:"checksum,omitempty"`
	// File is the operator's file the bytes were copied from, for the log.
	File   string `json:"file,omitempty"`
	SHA256 string `json:"sha256"`
	Size   int64  `json:"size"`
	// Stamp is the binary's stamp in its final place; its content was hashed no
	// earlier than this stamp can prove (see Stamp.Renamed).
	Stamp Stamp `json:"stamp"`
	// Preflight is the first line the bounded preflight run printed.
	Preflight string `json:"preflight,omitempty"`
	// Probe is what the binary answered, at staging time, when asked what it can do
	// (internal/probe): its protocols, and whether it has the plan's upgrade
	// handler. Nil when it gave no answer (it links no invisor, or a release older
	// than the probe) and in records written before the probe; the switch then
	// assumes only what every binary supports.
	Probe *probe.Answer `json:"probe,omitempty"`
	Time  time.Time     `json:"time"`
	// Proposal is the governance proposal during whose voting period staging
	// downloaded and checked these bytes (kept in the proposal area, see
	// ProposalsDir); 0 when they were fetched for the passed plan itself.
	Proposal uint64 `json:"proposal,omitempty"`
}

// For reports (wrapping ErrNotTrusted) why r is not the proof for plan p.
func (r Record) For(p Plan) error {
	switch {
	case !r.Source.Valid():
		return fmt.Errorf("%w: the record's source %q is not a proof this version accepts; staging verifies the binary again", ErrNotTrusted, r.Source)
	case r.Format < RecordFormat:
		return fmt.Errorf("%w: the record is of an earlier format (%d); staging verifies the binary again", ErrNotTrusted, r.Format)
	case r.Plan != CanonicalName(p.Name):
		return fmt.Errorf("%w: the record is for plan %q, not %q", ErrNotTrusted, r.Plan, p.Name)
	case r.InfoHash != p.InfoHash():
		return fmt.Errorf("%w: the record is for another plan named %q (different info): a replaced plan never inherits a binary", ErrNotTrusted, p.Name)
	case r.Height != p.Height:
		return fmt.Errorf("%w: the record is for plan %q at height %d, the plan in force is at %d: a replaced plan never inherits a binary", ErrNotTrusted, p.Name, r.Height, p.Height)
	case len(r.SHA256) != 64 || r.Size <= 0:
		return fmt.Errorf("%w: the record is incomplete", ErrNotTrusted)
	}
	return nil
}

// ReadRecord reads the completion record of plan name's binary. A missing record
// wraps both ErrNotTrusted and fs.ErrNotExist.
func (l Layout) ReadRecord(name string) (Record, error) {
	path, err := l.RecordPath(name)
	if err != nil {
		return Record{}, fmt.Errorf("%w: %w", ErrNotTrusted, err)
	}
	return readRecordFile(path)
}

func readRecordFile(path string) (Record, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return Record{}, fmt.Errorf("%w: no completion record %s (not staged yet, or staging did not finish): %w", ErrNotTrusted, path, fs.ErrNotExist)
		}
		return Record{}, fmt.Errorf("%w: open completion record: %w", ErrNotTrusted, err)
	}
	defer f.Close()
	var rec Record
	if err := json.NewDecoder(io.LimitReader(f, 64<<10)).Decode(&rec); err != nil {
		return Record{}, fmt.Errorf("%w: completion record %s is corrupt (%v); remove it and the binary is verified again", ErrNotTrusted, path, err)
	}
	return rec, nil
}

// WriteRecord writes rec as the completion record of plan rec.Plan, crash-safely.
// Format and Time are filled in when zero.
func (l Layout) WriteRecord(rec Record) error {
	path, err := l.RecordPath(rec.Plan)
	if err != nil {
		return err
	}
	return writeRecordFile(path, rec)
}

// writeRecordFile writes rec to path crash-safely: the one record writer, for
// upgrades and the proposal area alike.
func writeRecordFile(path string, rec Record) error {
	if rec.Format == 0 {
		rec.Format = RecordFormat
	}
	rec.Plan = CanonicalName(rec.Plan)
	if rec.Time.IsZero() {
		rec.Time = time.Now().UTC()
	}
	b, err := json.MarshalIndent(rec, "", "  ")
	if err != nil {
		return err
	}
	return WriteFile(path, append(b, '\n'), 0o644)
}

// RemoveRecord removes plan name's completion record, if any: the binary beside it
// is no longer trusted.
func (l Layout) RemoveRecord(name string) error {
	path, err := l.RecordPath(name)
	if err != nil {
		return err
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

// Digest is what hashing a file found.
type Digest struct {
	SHA256 string
	Size   int64
	// Stamp was taken before the first byte was read, so a change during or after
	// the hash shows as a stamp that differs from the file's.
	Stamp Stamp
}

// HashFile stamps the open file f, then hashes it from the start with sha256 and
// any extra hashes. It honours ctx between reads.
func HashFile(ctx context.Context, f *os.File, extra ...hash.Hash) (Digest, error) {
	st, err := StampFile(f)
	if err != nil {
		return Digest{}, err
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return Digest{}, err
	}
	h := sha256.New()
	w := io.MultiWriter(append([]io.Writer{h}, writers(extra)...)...)
	buf := make([]byte, 1<<20)
	var n int64
	for {
		if err := ctx.Err(); err != nil {
			return Digest{}, context.Cause(ctx)
		}
		k, rerr := f.Read(buf)
		if k > 0 {
			w.Write(buf[:k])
			n += int64(k)
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			return Digest{}, fmt.Errorf("read %s: %w", f.Name(), rerr)
		}
	}
	return Digest{SHA256: hex.EncodeToString(h.Sum(nil)), Size: n, Stamp: st}, nil
}

func writers(hs []hash.Hash) []io.Writer {
	out := make([]io.Writer, len(hs))
	for i, h := range hs {
		out[i] = h
	}
	return out
}

// Installed is one upgrade directory under upgrades/ and what its record says.
type Installed struct {
	Dir    string // <home>/cosmovisor/upgrades/<dir>
	Bin    string // Dir/bin/<daemon>
	Record Record // zero when Err is set
	Err    error  // no record, or an unreadable one
}

// Installs lists every upgrade directory, with its completion record where it has
// one; names that no plan can map to (a replaced install kept aside) are skipped.
func (l Layout) Installs() []Installed {
	ents, err := os.ReadDir(l.UpgradesRoot())
	if err != nil {
		return nil
	}
	var out []Installed
	for _, e := range ents {
		if !e.IsDir() || strings.ContainsAny(e.Name(), "#") || strings.Contains(e.Name(), TempMarker) {
			continue
		}
		dir := filepath.Join(l.UpgradesRoot(), e.Name())
		in := Installed{Dir: dir, Bin: filepath.Join(dir, BinDir, l.daemon)}
		in.Record, in.Err = readRecordFile(in.Bin + RecordSuffix)
		out = append(out, in)
	}
	return out
}
