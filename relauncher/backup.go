package relauncher

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/invisor/invisor/internal/home"
)

// BackupStats describes one backup.
type BackupStats struct {
	Linked        int   // table files hard-linked
	LinkedBytes   int64 //
	Copied        int   // files copied (mutable files, and tables whose link failed)
	CopiedBytes   int64 //
	LinkFallbacks int   // tables copied because the hard link failed (EXDEV, EPERM, ...)
	Skipped       int   // LOCK files, sockets, devices
	Took          time.Duration
}

// isTable reports immutable table files: LevelDB (.ldb, old .sst) and Pebble/RocksDB
// (.sst) never rewrite them in place, they only create and delete them.
func isTable(name string) bool {
	return strings.HasSuffix(name, ".ldb") || strings.HasSuffix(name, ".sst")
}

// backupFreeMargin is kept free on the backup filesystem on top of the backup.
const backupFreeMargin = 64 << 20

// BackupData backs up dataDir into <backupDir>/data-backup-<YYYY-MM-DD_HHMMSS>[-<label>]
// and returns that path. Table files (*.ldb, *.sst) are hard-linked (copied if the
// link fails, e.g. across filesystems); all other regular files are copied and
// fsynced; LOCK files are skipped; symlinks are recreated, not followed. The data
// must be quiescent (node stopped). The backup is built under a temp name and
// renamed into place when complete: a crash leaves only a temp directory that Layout
// removes, never a half backup under the final name.
func BackupData(ctx context.Context, dataDir, backupDir, label string, now time.Time) (string, BackupStats, error) {
	start := time.Now()
	var st BackupStats
	src, err := filepath.EvalSymlinks(dataDir)
	if err != nil {
		return "", st, fmt.Errorf("relauncher: backup: %w", err)
	}
	if fi, err := os.Stat(src); err != nil {
		return "", st, fmt.Errorf("relauncher: backup: %w", err)
	} else if !fi.IsDir() {
		return "", st, fmt.Errorf("relauncher: backup: %s is not a directory", src)
	}
	if err := os.MkdirAll(backupDir, 0o755); err != nil {
		return "", st, fmt.Errorf("relauncher: backup: %w", err)
	}
	if err := checkBackupSpace(src, backupDir); err != nil {
		return "", st, err
	}

	base := "data-backup-" + now.Format("2006-01-02_150405")
	if label != "" {
		// A plan name may be up to home.MaxDirBytes escaped: cut the label so that
		// the temp name (base, marker, random suffix) still fits a directory entry.
		l := url.PathEscape(label)
		if room := home.MaxDirBytes - len(base) - 1 - len(home.TempMarker) - 24; len(l) > room {
			l = l[:room]
		}
		base += "-" + l
	}
	final := filepath.Join(backupDir, base)
	for i := 1; ; i++ {
		if _, err := os.Lstat(final); errors.Is(err, fs.ErrNotExist) {
			break
		}
		final = filepath.Join(backupDir, fmt.Sprintf("%s-%d", base, i))
	}
	tmp, err := os.MkdirTemp(backupDir, base+home.TempMarker)
	if err != nil {
		return "", st, fmt.Errorf("relauncher: backup: %w", err)
	}
	ok := false
	defer func() {
		if !ok {
			_ = os.RemoveAll(tmp)
		}
	}()

	var dirs []string
	err = filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		dst := filepath.Join(tmp, rel)
		switch t := d.Type(); {
		case d.IsDir():
			if rel != "." {
				fi, err := d.Info()
				if err != nil {
					return err
				}
				if err := os.Mkdir(dst, fi.Mode().Perm()|0o700); err != nil {
					return err
				}
			}
			dirs = append(dirs, dst)
		case t&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			return os.Symlink(target, dst)
		case t.IsRegular():
			if d.Name() == "LOCK" {
				st.Skipped++
				return nil
			}
			fi, err := d.Info()
			if err != nil {
				return err
			}
			if isTable(d.Name()) {
				if err := os.Link(p, dst); err == nil {
					st.Linked++
					st.LinkedBytes += fi.Size()
					return nil
				}
				st.LinkFallbacks++
			}
			n, err := copyFile(p, dst, fi.Mode().Perm())
			if err != nil {
				return err
			}
			st.Copied++
			st.CopiedBytes += n
		default:
			st.Skipped++
		}
		return nil
	})
	if err != nil {
		return "", st, fmt.Errorf("relauncher: backup %s: %w", src, err)
	}
	// Children before parents, so every new entry is durable before its parent is.
	for i := len(dirs) - 1; i >= 0; i-- {
		if err := home.SyncDir(dirs[i]); err != nil {
			return "", st, err
		}
	}
	if err := os.Rename(tmp, final); err != nil {
		return "", st, fmt.Errorf("relauncher: backup: %w", err)
	}
	ok = true
	if err := home.SyncDir(backupDir); err != nil {
		return final, st, err
	}
	st.Took = time.Since(start)
	return final, st, nil
}

// copyFile copies src to a new file dst (copy_file_range where the kernel allows)
// and fsyncs it.
func copyFile(src, dst string, perm fs.FileMode) (int64, error) {
	in, err := os.Open(src)
	if err != nil {
		return 0, err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return 0, err
	}
	n, err := io.Copy(out, in)
	if err == nil {
		err = out.Sync()
	}
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	return n, err
}

// checkBackupSpace refuses a backup that would not fit: only mutable files need
// space when tables can be hard-linked (same filesystem), everything otherwise.
func checkBackupSpace(src, backupDir string) error {
	var sfs, dfs syscall.Stat_t
	if err := syscall.Stat(src, &sfs); err != nil {
		return fmt.Errorf("relauncher: backup: stat %s: %w", src, err)
	}
	if err := syscall.Stat(backupDir, &dfs); err != nil {
		return fmt.Errorf("relauncher: backup: stat %s: %w", backupDir, err)
	}
	sameFS := sfs.Dev == dfs.Dev
	var need int64
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		if sameFS && isTable(d.Name()) {
			return nil
		}
		if fi, err := d.Info(); err == nil {
			need += fi.Size()
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("relauncher: backup: %w", err)
	}
	var fsst syscall.Statfs_t
	if err := syscall.Statfs(backupDir, &fsst); err != nil {
		return fmt.Errorf("relauncher: backup: statfs %s: %w", backupDir, err)
	}
	free := int64(fsst.Bavail) * int64(fsst.Bsize)
	if need+backupFreeMargin > free {
		return fmt.Errorf("%w: backup of %s needs %d bytes (+%d margin) in %s, %d free; free space, set DAEMON_DATA_BACKUP_DIR elsewhere, or UNSAFE_SKIP_BACKUP=true",
			ErrNoSpace, src, need, backupFreeMargin, backupDir, free)
	}
	return nil
}

// backup backs up <Home>/data for upgrade name into the configured directory.
func (r *Relauncher) backup(ctx context.Context, name string) (string, error) {
	r.log.Info("invisor: backing up data", "from", r.layout.DataDir(), "to", r.cfg.BackupDir)
	p, st, err := BackupData(ctx, r.layout.DataDir(), r.cfg.BackupDir, name, time.Now())
	if err != nil {
		return "", err
	}
	r.log.Info("invisor: data backed up", "path", p, "linked", st.Linked, "linked_bytes", st.LinkedBytes,
		"copied", st.Copied, "copied_bytes", st.CopiedBytes, "link_fallbacks", st.LinkFallbacks, "took", st.Took)
	return p, nil
}
