package home

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"time"
)

// PreviousDir is the directory inside an upgrade's directory where InstallBinary
// keeps each binary it replaced, with the record that binary had:
//
//	<home>/cosmovisor/upgrades/<dir>/previous/<UTC time>/<daemon>
//	<home>/cosmovisor/upgrades/<dir>/previous/<UTC time>/<daemon>.invisor.json
//
// Nothing runs from there and a record there proves nothing (Open reads only
// bin/<daemon>'s): it is kept so that the operator can put the binary back.
const PreviousDir = "previous"

// previousTimeFormat names a kept binary's directory by when it was replaced.
const previousTimeFormat = "20060102T150405Z"

// Replacement is what InstallBinary did.
type Replacement struct {
	// Path is the installed binary, Layout.UpgradeBin of the record's plan.
	Path string
	// Record is the completion record written beside it.
	Record Record
	// Kept is where the binary that was at Path is kept now (under PreviousDir),
	// "" when there was none or it was the source itself.
	Kept string
	// KeptRecord is the record that binary had, nil if it had none or it did not
	// parse (the file is kept as it was either way).
	KeptRecord *Record
}

// InstallBinary puts a copy of the executable src at the binary path of plan
// rec.Plan with rec as its completion record, and keeps the binary that was
// there, with its record, under PreviousDir. It is how a patch release becomes
// the binary of an upgrade already applied or staged; the caller holds the home
// lock (or knows why it need not) and has decided that src may run for the plan.
//
// rec's SHA256, Size and Stamp describe the installed file: the copy is hashed
// in its final place, through a descriptor stamped before the first byte is
// read, as every record's content is. A non-empty rec.SHA256 (and a non-zero
// rec.Size) is what the caller verified: a copy that hashes otherwise is not
// recorded, and the previous binary is put back. src may be the file at the
// binary path itself (started from there without a record): then nothing is
// copied and only its record is written, the old record kept.
//
// What is left on disk after a crash: the previous binary is kept (a hard link,
// or a copy where linking fails) before the binary path is touched, and the
// copy is renamed over it (CopyFile), so the path holds the old binary or the
// new one, never part of one. Between that rename and the record, the old
// record describes other bytes, and Open refuses the file (ErrChanged) until
// InstallBinary runs again; at worst a kept copy too many under PreviousDir, or
// a temp name that RemoveStaleTemps removes.
func (l Layout) InstallBinary(ctx context.Context, src string, rec Record) (Replacement, error) {
	bin, err := l.UpgradeBin(rec.Plan)
	if err != nil {
		return Replacement{}, err
	}
	dir := filepath.Dir(filepath.Dir(bin))
	if err := RealDirs(l.UpgradesRoot(), dir, filepath.Dir(bin), filepath.Join(dir, PreviousDir)); err != nil {
		return Replacement{}, err
	}
	if fi, err := os.Stat(src); err != nil {
		return Replacement{}, fmt.Errorf("home: install %s: %w", src, err)
	} else if !fi.Mode().IsRegular() || fi.Mode().Perm()&0o111 == 0 {
		return Replacement{}, fmt.Errorf("home: install %s: not a regular executable file (%v)", src, fi.Mode())
	}
	if err := os.MkdirAll(filepath.Dir(bin), 0o755); err != nil {
		return Replacement{}, err
	}
	inPlace := SameFile(src, bin)
	rep := Replacement{Path: bin}

	kept, err := l.keepPrevious(bin, !inPlace, time.Now())
	if err != nil {
		return Replacement{}, fmt.Errorf("home: keeping the binary at %s before replacing it: %w", bin, err)
	}
	restore := func() {
		if kept.dir == "" {
			return
		}
		if kept.bin != "" {
			_ = os.Rename(kept.bin, bin)
		}
		_ = os.RemoveAll(kept.dir)
		_ = SyncDir(filepath.Dir(bin))
	}
	if !inPlace {
		if _, err := CopyFile(src, bin, 0o755); err != nil {
			restore()
			return Replacement{}, fmt.Errorf("home: copy %s to %s: %w", src, bin, err)
		}
		if kept.bin == "" {
			// Nothing was there: undoing is removing the copy.
			restore = func() {
				_ = os.Remove(bin)
				if kept.dir != "" {
					_ = os.RemoveAll(kept.dir)
				}
			}
		}
	}
	d, err := hashAt(ctx, bin)
	if err != nil {
		restore()
		return Replacement{}, err
	}
	if (rec.SHA256 != "" && rec.SHA256 != d.SHA256) || (rec.Size != 0 && rec.Size != d.Size) {
		restore()
		return Replacement{}, fmt.Errorf("%w: %w: %s hashes to sha256 %s (%d bytes) in place, not the verified %s (%d bytes); another process writes there, or %s changed while it was copied; nothing was replaced",
			ErrNotTrusted, ErrChanged, bin, d.SHA256, d.Size, rec.SHA256, rec.Size, src)
	}
	rec.SHA256, rec.Size, rec.Stamp = d.SHA256, d.Size, d.Stamp
	rec.Plan = CanonicalName(rec.Plan)
	if rec.Format == 0 {
		rec.Format = RecordFormat
	}
	if rec.Time.IsZero() {
		rec.Time = time.Now().UTC()
	}
	if err := l.WriteRecord(rec); err != nil {
		restore()
		return Replacement{}, fmt.Errorf("home: write the completion record of %s: %w; nothing was replaced", bin, err)
	}
	rep.Record = rec
	rep.Kept, rep.KeptRecord = kept.bin, kept.rec
	return rep, nil
}

// kept is what keepPrevious kept.
type kept struct {
	dir, bin string
	rec      *Record
}

// keepPrevious keeps the binary at bin (if keepBinary and there is one) and its
// record (if any) in a new directory under PreviousDir, without touching bin.
func (l Layout) keepPrevious(bin string, keepBinary bool, now time.Time) (kept, error) {
	var k kept
	fi, err := os.Lstat(bin)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		keepBinary = false
	case err != nil:
		return k, err
	case !fi.Mode().IsRegular():
		return k, fmt.Errorf("%s is not a regular file (%v); move it away by hand", bin, fi.Mode().Type())
	}
	recPath := bin + RecordSuffix
	_, rerr := os.Lstat(recPath)
	hasRec := rerr == nil
	if !keepBinary && !hasRec {
		return k, nil
	}
	root := filepath.Join(filepath.Dir(filepath.Dir(bin)), PreviousDir)
	if err := os.MkdirAll(root, 0o755); err != nil {
		return k, err
	}
	base := filepath.Join(root, now.UTC().Format(previousTimeFormat))
	k.dir = base
	for i := 1; ; i++ {
		err := os.Mkdir(k.dir, 0o755)
		if err == nil {
			break
		}
		if !errors.Is(err, fs.ErrExist) {
			return kept{}, err
		}
		k.dir = base + "-" + strconv.Itoa(i)
	}
	fail := func(err error) (kept, error) {
		os.RemoveAll(k.dir)
		return kept{}, err
	}
	if keepBinary {
		k.bin = filepath.Join(k.dir, filepath.Base(bin))
		// A hard link keeps the very file, at no cost in space; where the
		// filesystem refuses links, a copy.
		if err := os.Link(bin, k.bin); err != nil {
			if _, err := CopyFile(bin, k.bin, fi.Mode().Perm()); err != nil {
				return fail(err)
			}
		}
	}
	if hasRec {
		if _, err := CopyFile(recPath, filepath.Join(k.dir, filepath.Base(recPath)), 0o644); err != nil {
			return fail(err)
		}
		if r, err := readRecordFile(recPath); err == nil {
			k.rec = &r
		}
	}
	if err := SyncDir(k.dir); err != nil {
		return fail(err)
	}
	if err := SyncDir(root); err != nil {
		return fail(err)
	}
	return k, SyncDir(filepath.Dir(root))
}

// hashAt hashes the regular file at p through a descriptor stamped first.
func hashAt(ctx context.Context, p string) (Digest, error) {
	f, err := OpenRegular(p)
	if err != nil {
		return Digest{}, fmt.Errorf("%w: %w", ErrNotTrusted, err)
	}
	defer f.Close()
	return HashFile(ctx, f)
}

// RealDirs refuses a symlink, or anything but a directory, at any of dirs that
// exists, so that nothing is written outside the home through a planted link.
// Staging checks upgrades/, upgrades/<dir> and its bin/ with it before an install.
func RealDirs(dirs ...string) error {
	for _, d := range dirs {
		fi, err := os.Lstat(d)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return err
		}
		if fi.Mode()&fs.ModeSymlink != 0 {
			return fmt.Errorf("%w: %s is a symlink; invisor only writes into real directories of the home, replace it with a directory", ErrNotTrusted, d)
		}
		if !fi.IsDir() {
			return fmt.Errorf("%w: %s is not a directory", ErrNotTrusted, d)
		}
	}
	return nil
}

// Previous lists the binaries InstallBinary kept for upgrade name, newest first,
// each with the record it had (Err set when it had none, or an unreadable one).
func (l Layout) Previous(name string) ([]Installed, error) {
	dir, err := l.UpgradeDir(name)
	if err != nil {
		return nil, err
	}
	root := filepath.Join(dir, PreviousDir)
	ents, err := os.ReadDir(root)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []Installed
	for _, e := range ents {
		if !e.IsDir() {
			continue
		}
		in := Installed{Dir: filepath.Join(root, e.Name())}
		in.Bin = filepath.Join(in.Dir, l.daemon)
		in.Record, in.Err = readRecordFile(in.Bin + RecordSuffix)
		out = append(out, in)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Dir > out[j].Dir })
	return out, nil
}
