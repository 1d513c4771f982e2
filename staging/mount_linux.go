package staging

import (
	"fmt"
	"syscall"
)

const stNoexec = 0x8 // ST_NOEXEC in statfs(2) f_flags

// checkExecMount refuses a directory on a noexec mount: the staged binary could be
// downloaded and verified but never run.
func checkExecMount(dir string) error {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return fmt.Errorf("staging: statfs %s: %w", dir, err)
	}
	if st.Flags&stNoexec != 0 {
		return fmt.Errorf("staging: %s is on a noexec mount; binaries staged there cannot run, remount it or move the home", dir)
	}
	return nil
}

// freeBytes returns the bytes available to an unprivileged writer on dir's filesystem.
func freeBytes(dir string) (int64, bool) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return 0, false
	}
	return int64(st.Bavail) * int64(st.Bsize), true
}
