package relauncher

import "syscall"

// stNoexec is ST_NOEXEC from statvfs(3), reported in Statfs_t.Flags on Linux.
const stNoexec = 0x8

func noexecMount(dir string) (bool, error) {
	var fs syscall.Statfs_t
	if err := syscall.Statfs(dir, &fs); err != nil {
		return false, err
	}
	return fs.Flags&stNoexec != 0, nil
}
