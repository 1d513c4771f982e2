package home

import (
	"io/fs"
	"syscall"
)

func stampOf(fi fs.FileInfo) Stamp {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return Stamp{}
	}
	return Stamp{
		Dev: uint64(st.Dev), Ino: uint64(st.Ino), Size: fi.Size(), Mode: fi.Mode(),
		MtimeNs: st.Mtim.Nano(), CtimeNs: st.Ctim.Nano(), Valid: true,
	}
}
