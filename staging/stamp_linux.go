package staging

import (
	"io/fs"
	"syscall"
)

// fileStamp identifies one version of a file without reading it. Any write, truncate,
// chmod, rename or replacement of the file changes at least one field: the kernel sets
// ctime on every such change, and user space cannot set ctime back.
type fileStamp struct {
	dev, ino     uint64
	size         int64
	mtime, ctime syscall.Timespec
}

// stampOf returns the stamp of fi, and false where the platform does not expose one
// (the caller then re-hashes instead).
func stampOf(fi fs.FileInfo) (fileStamp, bool) {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return fileStamp{}, false
	}
	return fileStamp{dev: uint64(st.Dev), ino: uint64(st.Ino), size: st.Size, mtime: st.Mtim, ctime: st.Ctim}, true
}
