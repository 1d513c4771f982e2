package relauncher

import "syscall"

// mntNoexec is MNT_NOEXEC from <sys/mount.h>, reported in Statfs_t.Flags.
const mntNoexec = 0x4

func noexecMount(dir string) (bool, error) {
	var fs syscall.Statfs_t
	if err := syscall.Statfs(dir, &fs); err != nil {
		return false, err
	}
	return fs.Flags&mntNoexec != 0, nil
}
