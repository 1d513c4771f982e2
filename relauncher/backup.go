package relauncher

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/invisor/invisor/internal/home"
)

// DefaultBackupKeep is how many of invisor's own data backups Config.BackupKeep
// keeps by default: the one `invisor rollback` restores (the last switch's) and
// the one before it, for a restore by hand. More is rarely worth the disk: a
// backup hard-links the database's table files, so it is cheap when taken, but it
// keeps every table the live database later compacts away, and so grows toward a
// full copy of data/.
const DefaultBackupKeep = 2

// BackupManifestFile is the description invisor writes into each backup it takes
// at a switch: <BackupDir>/data-backup-<time>-<name>/BackupManifestFile. It is
// written before the backup gets its final name, so a backup under that name
// always describes itself, and it is never copied: the copier (copyTree) skips
// it at the top of a tree, so neither the restore of `invisor rollback` nor the
// next backup puts it into data/ or takes it from there.
const BackupManifestFile = ".invisor-backup.json"

// BackupKind is the Kind of every BackupManifest invisor writes. Retention and
// rollback act only on backups whose manifest says so.
const BackupKind = "invisor-data-backup"

// BackupManifestFormat is the version of the manifest layout this package writes.
const BackupManifestFormat = 1

// backupPrefix starts the name of every backup directory (cosmovisor's too).
const backupPrefix = "data-backup-"

// BackupManifest describes one data backup invisor took at a switch: what it was
// taken for and what ran before, so that `invisor rollback` can restore it and
// point `current` back without guessing.
type BackupManifest struct {
	Format int    `json:"format"`
	Kind   string `json:"kind"`
	// Upgrade, Height and InfoHash are the plan the switch was for, as
	// data/upgrade-info.json named it (Height 0 when the file did not name it).
	Upgrade  string `json:"upgrade"`
	Height   int64  `json:"height"`
	InfoHash string `json:"info_sha256,omitempty"`
	// Previous is the directory `current` pointed to before the flip (absolute):
	// the binary that ran before the switch is PreviousBin.
	Previous    string `json:"previous"`
	PreviousBin string `json:"previous_bin"`
	// PreviousSHA256 is that binary's sha256 from its completion record; empty for
	// the genesis binary, which has none.
	PreviousSHA256 string    `json:"previous_sha256,omitempty"`
	Time           time.Time `json:"time"`
	// Path is the backup directory; Data the data directory it is a copy of
	// (symlinks resolved).
	Path  string      `json:"path"`
	Data  string      `json:"data"`
	Stats BackupStats `json:"stats"`
}

// ManifestPath is where m is kept: in its backup.
func (m BackupManifest) ManifestPath() string { return filepath.Join(m.Path, BackupManifestFile) }

// BackupStats describes one backup.
type BackupStats struct {
	Linked        int           `json:"linked"` // table files hard-linked
	LinkedBytes   int64         `json:"linked_bytes"`
	Copied        int           `json:"copied"` // files copied (mutable files, and tables whose link failed)
	CopiedBytes   int64         `json:"copied_bytes"`
	LinkFallbacks int           `json:"link_fallbacks"` // tables copied because the hard link failed (EXDEV, EPERM, ...)
	Skipped       int           `json:"skipped"`        // LOCK files, sockets, devices
	Took          time.Duration `json:"took"`
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
// removes, never a half backup under the final name. It writes no manifest (the
// switch's backup does).
func BackupData(ctx context.Context, dataDir, backupDir, label string, now time.Time) (string, BackupStats, error) {
	return backupData(ctx, dataDir, backupDir, label, now, nil)
}

// backupData is BackupData; describe, if not nil, returns the manifest of the
// complete backup (its final path, the copy's stats), which is written into it
// before it gets its final name.
func backupData(ctx context.Context, dataDir, backupDir, label string, now time.Time,
	describe func(final string, st BackupStats) BackupManifest) (string, BackupStats, error) {
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
	if need, free, err := spaceFor(src, backupDir); err != nil {
		return "", st, fmt.Errorf("relauncher: backup: %w", err)
	} else if need+backupFreeMargin > free {
		return "", st, fmt.Errorf("%w: backup of %s needs %d bytes (+%d margin) in %s, %d free; free space, set DAEMON_DATA_BACKUP_DIR elsewhere, or UNSAFE_SKIP_BACKUP=true",
			ErrNoSpace, src, need, backupFreeMargin, backupDir, free)
	}

	base, final := freeName(backupDir, backupPrefix, label, now)
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
	if st, err = copyTree(ctx, src, tmp); err != nil {
		return "", st, fmt.Errorf("relauncher: backup %s: %w", src, err)
	}
	if describe != nil {
		st.Took = time.Since(start)
		if err := writeBackupManifest(tmp, describe(final, st)); err != nil {
			return "", st, fmt.Errorf("relauncher: backup: describe %s: %w", final, err)
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

// freeName returns <prefix><YYYY-MM-DD_HHMMSS>[-<label>] and that name in dir,
// with a -N suffix if it, or it with any of the sibling suffixes, is taken. The
// label (a plan name) is escaped and cut so that a temp name built on it still
// fits a directory entry.
func freeName(dir, prefix, label string, now time.Time, siblings ...string) (base, path string) {
	base = prefix + now.Format("2006-01-02_150405")
	if label != "" {
		// A plan name may be up to home.MaxDirBytes escaped: cut the label so that
		// the temp name (base, marker, random suffix) still fits a directory entry.
		l := url.PathEscape(label)
		if room := home.MaxDirBytes - len(base) - 1 - len(home.TempMarker) - 24; len(l) > room {
			l = l[:room]
		}
		base += "-" + l
	}
	taken := func(p string) bool {
		for _, s := range append([]string{""}, siblings...) {
			if _, err := os.Lstat(p + s); !errors.Is(err, fs.ErrNotExist) {
				return true
			}
		}
		return false
	}
	path = filepath.Join(dir, base)
	for i := 1; taken(path); i++ {
		path = filepath.Join(dir, fmt.Sprintf("%s-%d", base, i))
	}
	return filepath.Base(path), path
}

// copyTree copies the tree src into the existing empty directory dst the way a
// backup is taken (see BackupData): tables hard-linked, or copied where the link
// fails; other regular files copied and fsynced; LOCK files, sockets and devices
// skipped; symlinks recreated. Every directory of dst is fsynced, children first.
// A BackupManifestFile at the top of src is not copied. It is the one copier of
// data trees: the backup and the rollback's restore use it.
func copyTree(ctx context.Context, src, dst string) (BackupStats, error) {
	var st BackupStats
	var dirs []string
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
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
		to := filepath.Join(dst, rel)
		switch t := d.Type(); {
		case d.IsDir():
			if rel != "." {
				fi, err := d.Info()
				if err != nil {
					return err
				}
				if err := os.Mkdir(to, fi.Mode().Perm()|0o700); err != nil {
					return err
				}
			}
			dirs = append(dirs, to)
		case t&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			return os.Symlink(target, to)
		case t.IsRegular():
			if d.Name() == "LOCK" || rel == BackupManifestFile {
				st.Skipped++
				return nil
			}
			fi, err := d.Info()
			if err != nil {
				return err
			}
			if isTable(d.Name()) {
				if err := os.Link(p, to); err == nil {
					st.Linked++
					st.LinkedBytes += fi.Size()
					return nil
				}
				st.LinkFallbacks++
			}
			n, err := copyFile(p, to, fi.Mode().Perm())
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
		return st, err
	}
	// Children before parents, so every new entry is durable before its parent is.
	for i := len(dirs) - 1; i >= 0; i-- {
		if err := home.SyncDir(dirs[i]); err != nil {
			return st, err
		}
	}
	return st, nil
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

// spaceFor says how many bytes a copy of the tree src into dir needs (only the
// mutable files when tables can be hard-linked, on the same filesystem; everything
// otherwise) and how many are free there.
func spaceFor(src, dir string) (need, free int64, err error) {
	same, err := sameFS(src, dir)
	if err != nil {
		return 0, 0, err
	}
	err = filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		if same && isTable(d.Name()) {
			return nil
		}
		if fi, err := d.Info(); err == nil {
			need += fi.Size()
		}
		return nil
	})
	if err != nil {
		return 0, 0, err
	}
	var fsst syscall.Statfs_t
	if err := syscall.Statfs(dir, &fsst); err != nil {
		return 0, 0, fmt.Errorf("statfs %s: %w", dir, err)
	}
	return need, int64(fsst.Bavail) * int64(fsst.Bsize), nil
}

// sameFS reports whether a and b are on one filesystem (a rename or hard link
// between them can work).
func sameFS(a, b string) (bool, error) {
	var sa, sb syscall.Stat_t
	if err := syscall.Stat(a, &sa); err != nil {
		return false, fmt.Errorf("stat %s: %w", a, err)
	}
	if err := syscall.Stat(b, &sb); err != nil {
		return false, fmt.Errorf("stat %s: %w", b, err)
	}
	return sa.Dev == sb.Dev, nil
}

// backup backs up <Home>/data for upgrade name into the configured directory,
// described by its manifest, and then applies the retention (Config.BackupKeep).
func (r *Relauncher) backup(ctx context.Context, name string) (string, error) {
	r.log.Info("invisor: backing up data", "from", r.layout.DataDir(), "to", r.cfg.BackupDir)
	// Read before the flip: this is what ran before the switch.
	m := r.describeBackup(name)
	now := time.Now()
	m.Time = now.UTC()
	m.Data, _ = filepath.EvalSymlinks(r.layout.DataDir())
	p, st, err := backupData(ctx, r.layout.DataDir(), r.cfg.BackupDir, name, now, func(final string, st BackupStats) BackupManifest {
		m.Path, m.Stats = final, st
		return m
	})
	if err != nil {
		return "", err
	}
	r.log.Info("invisor: data backed up", "path", p, "linked", st.Linked, "linked_bytes", st.LinkedBytes,
		"copied", st.Copied, "copied_bytes", st.CopiedBytes, "link_fallbacks", st.LinkFallbacks, "took", st.Took,
		"previous", m.Previous)
	r.pruneBackups()
	return p, nil
}

// describeBackup is the manifest of a backup taken now for upgrade name: the plan
// data/upgrade-info.json names (the switch only runs for that plan) and what
// `current` points to before the flip.
func (r *Relauncher) describeBackup(name string) BackupManifest {
	l := r.layout
	m := BackupManifest{Format: BackupManifestFormat, Kind: BackupKind, Upgrade: home.CanonicalName(name)}
	if p, ok, err := l.ReadUpgradeInfo(); err == nil && ok && p.Name == m.Upgrade {
		m.Height, m.InfoHash = p.Height, p.InfoHash()
	}
	dir, ok, err := l.CurrentDir()
	switch {
	case err != nil:
		// Not a link: nothing to point back to; rollback refuses and says so.
		return m
	case !ok:
		dir = l.GenesisTarget() // no link runs the genesis binary, as with cosmovisor
	}
	m.Previous, m.PreviousBin = dir, filepath.Join(dir, home.BinDir, l.Daemon())
	for _, in := range l.Installs() {
		if in.Err == nil && home.SameFile(in.Dir, dir) {
			m.PreviousSHA256 = in.Record.SHA256
		}
	}
	return m
}

// writeBackupManifest writes m into the backup being built at dir.
func writeBackupManifest(dir string, m BackupManifest) error {
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	return home.WriteFile(filepath.Join(dir, BackupManifestFile), append(b, '\n'), 0o644)
}

// maxManifestSize caps what is read from a manifest.
const maxManifestSize = 64 << 10

// ListBackups returns invisor's own backups in backupDir, newest first: the
// data-backup-* directories holding a manifest of BackupKind that describes that
// very directory. Everything else in backupDir is ignored.
func ListBackups(backupDir string) ([]BackupManifest, error) {
	ents, err := os.ReadDir(backupDir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("relauncher: list backups: %w", err)
	}
	var out []BackupManifest
	for _, e := range ents {
		n := e.Name()
		if !e.IsDir() || !strings.HasPrefix(n, backupPrefix) || strings.Contains(n, home.TempMarker) {
			continue
		}
		dir := filepath.Join(backupDir, n)
		if m, ok := readBackupManifest(filepath.Join(dir, BackupManifestFile)); ok && m.Path == dir {
			out = append(out, m)
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if !out[i].Time.Equal(out[j].Time) {
			return out[i].Time.After(out[j].Time)
		}
		return out[i].Path > out[j].Path
	})
	return out, nil
}

func readBackupManifest(path string) (BackupManifest, bool) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return BackupManifest{}, false
	}
	defer f.Close()
	var m BackupManifest
	if json.NewDecoder(io.LimitReader(f, maxManifestSize)).Decode(&m) != nil || m.Kind != BackupKind || m.Format < 1 {
		return BackupManifest{}, false
	}
	m.Path = filepath.Clean(m.Path)
	return m, true
}

// Pruned is one backup the retention removed, or failed to remove (Err).
type Pruned struct {
	Backup BackupManifest
	Err    error
}

// PruneBackups removes invisor's own backups in backupDir beyond the newest keep
// (ListBackups order), and nothing else. A backup is first renamed to a temp name
// (which Layout removes if this is interrupted), then its files go: a backup
// under its name is never half removed. One failure does not stop the others.
func PruneBackups(backupDir string, keep int) ([]Pruned, error) {
	if keep < 1 {
		return nil, fmt.Errorf("relauncher: keep %d backups: want at least 1", keep)
	}
	ms, err := ListBackups(backupDir)
	if err != nil || len(ms) <= keep {
		return nil, err
	}
	var out []Pruned
	for _, m := range ms[keep:] {
		out = append(out, Pruned{Backup: m, Err: removeBackup(m)})
	}
	return out, nil
}

func removeBackup(m BackupManifest) error {
	tmp := home.TempName(m.Path)
	if err := os.Rename(m.Path, tmp); err != nil {
		return err
	}
	if err := home.SyncDir(filepath.Dir(m.Path)); err != nil {
		return err
	}
	if err := os.RemoveAll(tmp); err != nil {
		return fmt.Errorf("%w (what is left, %s, is removed at the next start)", err, tmp)
	}
	return nil
}

// pruneBackups applies Config.BackupKeep after a new backup; it logs each removal
// and each failure, and never fails the switch.
func (r *Relauncher) pruneBackups() {
	pruned, err := PruneBackups(r.cfg.BackupDir, r.cfg.BackupKeep)
	if err != nil {
		r.log.Warn("invisor: could not apply the backup retention; old backups stay", "dir", r.cfg.BackupDir, "keep", r.cfg.BackupKeep, "err", err)
		return
	}
	for _, p := range pruned {
		if p.Err != nil {
			r.log.Warn("invisor: could not remove an old data backup; remove it by hand", "path", p.Backup.Path,
				"upgrade", p.Backup.Upgrade, "keep", r.cfg.BackupKeep, "err", p.Err)
			continue
		}
		r.log.Info("invisor: removed an old data backup (backup-keep)", "path", p.Backup.Path, "upgrade", p.Backup.Upgrade,
			"height", p.Backup.Height, "taken", p.Backup.Time, "keep", r.cfg.BackupKeep)
	}
}
