package home

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
)

// Verified is a binary proven to be the one recorded for a plan, held open: the
// caller runs this very descriptor (ExecPath), so a file renamed into the path
// after the check is not what runs.
type Verified struct {
	Plan   Plan
	Path   string
	Record Record
	// Rehashed says the stamp could not prove the file unchanged, so Open hashed it.
	Rehashed bool

	f     *os.File
	stamp Stamp
}

// Open returns the binary recorded for exactly plan p, open for reading. It fails
// (wrapping ErrNotTrusted) unless the record is for p (name, height, info; see
// Record.For) and the file is a regular executable that is provably the recorded
// one: its stamp equals the record's, or it re-hashes (through the descriptor) to
// the recorded sha256 and size. Close it when done.
func (l Layout) Open(ctx context.Context, p Plan) (*Verified, error) {
	rec, err := l.ReadRecord(p.Name)
	if err != nil {
		return nil, err
	}
	bin, _ := l.UpgradeBin(p.Name) // ReadRecord mapped the name already
	if err := rec.For(p); err != nil {
		return nil, fmt.Errorf("%s: %w", bin, err)
	}
	return l.openRecorded(ctx, p, bin, rec)
}

// Inspect checks that upgrade name's binary is the file its record describes
// (stamp, or a re-hash), whatever plan the record is for. It is for reports such
// as `invisor verify`; it is never a proof that the file may run (that is Open).
func (l Layout) Inspect(ctx context.Context, name string) (*Verified, error) {
	rec, err := l.ReadRecord(name)
	if err != nil {
		return nil, err
	}
	bin, _ := l.UpgradeBin(name)
	return l.openRecorded(ctx, Plan{Name: name, Height: rec.Height}, bin, rec)
}

func (l Layout) openRecorded(ctx context.Context, p Plan, bin string, rec Record) (*Verified, error) {
	f, err := OpenRegular(bin)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrNotTrusted, err)
	}
	v := &Verified{Plan: p, Path: bin, Record: rec, f: f}
	st, err := StampFile(f)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("%w: %w", ErrNotTrusted, err)
	}
	if !st.Same(rec.Stamp) {
		d, err := HashFile(ctx, f)
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("%w: %w", ErrNotTrusted, err)
		}
		if d.SHA256 != rec.SHA256 || d.Size != rec.Size {
			f.Close()
			return nil, fmt.Errorf("%w: %w: %s has sha256 %s (%d bytes), the record says %s (%d bytes); remove %s and let it be staged again",
				ErrNotTrusted, ErrChanged, bin, d.SHA256, d.Size, rec.SHA256, rec.Size, filepath.Dir(filepath.Dir(bin)))
		}
		st, v.Rehashed = d.Stamp, true
	}
	v.stamp = st
	return v, nil
}

// OpenRegular opens path without following a final symlink and checks that it is a
// regular file with an execute bit.
func OpenRegular(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		if errors.Is(err, syscall.ELOOP) {
			return nil, fmt.Errorf("%s is a symlink; only a regular file is trusted", path)
		}
		return nil, err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	switch {
	case !fi.Mode().IsRegular():
		f.Close()
		return nil, fmt.Errorf("%s is not a regular file (%v)", path, fi.Mode().Type())
	case fi.Mode().Perm()&0o111 == 0:
		f.Close()
		return nil, fmt.Errorf("%s is not executable (mode %v)", path, fi.Mode().Perm())
	}
	return f, nil
}

// File is the open descriptor.
func (v *Verified) File() *os.File { return v.f }

// Stamp is the file's stamp when it was verified.
func (v *Verified) Stamp() Stamp { return v.stamp }

// Recheck proves, without reading the file, that the descriptor's file is unchanged
// since Open and that Path still names it. Call it right before running the file.
func (v *Verified) Recheck() error {
	st, err := StampFile(v.f)
	if err != nil {
		return fmt.Errorf("%w: %w: %v", ErrNotTrusted, ErrChanged, err)
	}
	if v.stamp.Valid && !st.Same(v.stamp) {
		return fmt.Errorf("%w: %w: %s was modified after verification", ErrNotTrusted, ErrChanged, v.Path)
	}
	if !v.stamp.Valid {
		// No stamps here: hash again through the descriptor.
		d, err := HashFile(context.Background(), v.f)
		if err != nil || d.SHA256 != v.Record.SHA256 {
			return fmt.Errorf("%w: %w: %s no longer hashes to %s", ErrNotTrusted, ErrChanged, v.Path, v.Record.SHA256)
		}
	}
	if err := v.stamp.Recheck(v.Path); v.stamp.Valid && err != nil {
		return fmt.Errorf("%w: %w", ErrNotTrusted, err)
	}
	return nil
}

// ExecPath is the path to give exec so that it runs this descriptor: on Linux
// /proc/self/fd/<n> (the kernel opens the very inode that was verified), else Path.
// The descriptor must stay open until the exec; it is close-on-exec.
func (v *Verified) ExecPath() string { return fdPath(v.f, v.Path) }

// Close closes the descriptor.
func (v *Verified) Close() error {
	if v == nil || v.f == nil {
		return nil
	}
	return v.f.Close()
}

// Is reports whether the file at p is the verified file (same device and inode).
func (v *Verified) Is(p string) bool {
	fi, err := os.Stat(p)
	if err != nil {
		return false
	}
	vi, err := v.f.Stat()
	if err != nil {
		return false
	}
	return os.SameFile(fi, vi)
}
