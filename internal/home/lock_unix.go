//go:build unix

package home

import (
	"os"
	"syscall"
)

func flock(f *os.File) error { return syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB) }

// flockShared tries a shared lock (to see whether anyone holds the exclusive one)
// and drops it again.
func flockShared(f *os.File) error {
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_SH|syscall.LOCK_NB); err != nil {
		return err
	}
	return syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
}

// ClearCloseOnExec lets descriptor fd survive the next exec (the lock hand-over,
// and a script binary run through its verified descriptor).
func ClearCloseOnExec(fd int) error {
	_, _, e := syscall.Syscall(syscall.SYS_FCNTL, uintptr(fd), syscall.F_SETFD, 0)
	if e != 0 {
		return e
	}
	return nil
}
