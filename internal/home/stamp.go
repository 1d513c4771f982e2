package home

import (
	"errors"
	"fmt"
	"os"
)

// ErrChanged means a file is not provably the one that was verified.
var ErrChanged = errors.New("file changed after verification")

// Stamp identifies one version of a file without reading it: any write, truncate,
// chmod, rename or replacement changes at least one field, since the kernel sets
// ctime on every change and user space cannot set it back. Where the platform
// exposes no stamp (Valid false) the file is always re-hashed instead.
type Stamp struct {
	Dev     uint64      `json:"dev"`
	Ino     uint64      `json:"ino"`
	Size    int64       `json:"size"`
	Mode    os.FileMode `json:"mode"`
	MtimeNs int64       `json:"mtime_ns"`
	CtimeNs int64       `json:"ctime_ns"`
	Valid   bool        `json:"valid"`
}

// StampOf returns the stamp of the file at p, not following a final symlink.
func StampOf(p string) (Stamp, error) {
	fi, err := os.Lstat(p)
	if err != nil {
		return Stamp{}, err
	}
	return stampOf(fi), nil
}

// StampFile returns the stamp of an open file.
func StampFile(f *os.File) (Stamp, error) {
	fi, err := f.Stat()
	if err != nil {
		return Stamp{}, err
	}
	return stampOf(fi), nil
}

// Same reports whether both stamps are valid and equal: the file is provably unchanged.
func (s Stamp) Same(o Stamp) bool { return s.Valid && o.Valid && s == o }

// Renamed reports whether o is s after a rename of the same file: a rename sets
// ctime and changes nothing else.
func (s Stamp) Renamed(o Stamp) bool {
	if !s.Valid || !o.Valid {
		return false
	}
	o.CtimeNs = s.CtimeNs
	return s == o
}

// Recheck returns an error wrapping ErrChanged unless the file at p still has stamp s.
func (s Stamp) Recheck(p string) error {
	n, err := StampOf(p)
	if err != nil {
		return fmt.Errorf("%w: %s: %v", ErrChanged, p, err)
	}
	if !s.Same(n) {
		return fmt.Errorf("%w: %s was replaced or modified after verification", ErrChanged, p)
	}
	return nil
}
