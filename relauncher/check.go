package relauncher

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/invisor/invisor/internal/home"
)

// Check fails at boot rather than at the halt height: the cosmovisor root must be a
// writable directory on a filesystem that allows exec, and the backup directory
// (when backups are on) must be writable. Layout calls it; it may be called alone
// after Layout. It leaves nothing on disk.
func (r *Relauncher) Check() error {
	root := r.layout.Root()
	if err := checkWritableDir(root); err != nil {
		return fmt.Errorf("relauncher: %s: %w", root, err)
	}
	noexec, err := noexecMount(root)
	if err != nil {
		return fmt.Errorf("relauncher: statfs %s: %w", root, err)
	}
	if noexec {
		return fmt.Errorf("relauncher: %s is on a noexec mount: upgrade binaries could not be executed; remount without noexec or move the home", root)
	}
	if r.cfg.Backup {
		if err := checkWritableDir(r.cfg.BackupDir); err != nil {
			return fmt.Errorf("relauncher: backup dir %s: %w (set DAEMON_DATA_BACKUP_DIR or UNSAFE_SKIP_BACKUP=true)", r.cfg.BackupDir, err)
		}
	}
	return nil
}

func checkWritableDir(dir string) error {
	f, err := os.CreateTemp(dir, "."+filepath.Base(dir)+home.TempMarker+"probe-")
	if err != nil {
		return err
	}
	name := f.Name()
	f.Close()
	return os.Remove(name)
}
