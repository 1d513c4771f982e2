package relauncher

import (
	"crypto/rand"
	"encoding/hex"
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
)

// Names inside <Home>/cosmovisor, as cosmovisor lays them out.
const (
	RootDir     = "cosmovisor"
	GenesisDir  = "genesis"
	UpgradesDir = "upgrades"
	CurrentLink = "current"
	BinDir      = "bin"
)

// Root is <Home>/cosmovisor.
func (r *Relauncher) Root() string { return filepath.Join(r.home, RootDir) }

// GenesisBin is <Home>/cosmovisor/genesis/bin/<daemon>.
func (r *Relauncher) GenesisBin() string {
	return filepath.Join(r.Root(), GenesisDir, BinDir, r.cfg.DaemonName)
}

// UpgradeDir is <Home>/cosmovisor/upgrades/<name> with cosmovisor's name mapping
// (url.PathEscape), so "a/b" becomes "a%2Fb".
func (r *Relauncher) UpgradeDir(name string) string {
	return filepath.Join(r.Root(), UpgradesDir, url.PathEscape(name))
}

// ExpectedBinary is where the binary for upgrade name is expected: the Verifier's
// answer if it implements BinaryPather, else UpgradeDir(name)/bin/<daemon>.
func (r *Relauncher) ExpectedBinary(name string) string {
	if bp, ok := r.v.(BinaryPather); ok {
		if p := bp.BinaryPath(name); p != "" {
			return p
		}
	}
	return filepath.Join(r.UpgradeDir(name), BinDir, r.cfg.DaemonName)
}

// CurrentTarget returns the directory `current` points to, resolved against the
// cosmovisor root when the link is relative. ok is false if there is no link.
func (r *Relauncher) CurrentTarget() (dir string, ok bool, err error) {
	link := filepath.Join(r.Root(), CurrentLink)
	t, err := os.Readlink(link)
	if errors.Is(err, fs.ErrNotExist) {
		return "", false, nil
	}
	if err != nil {
		return "", false, fmt.Errorf("relauncher: %s is not a symlink: %w", link, err)
	}
	if !filepath.IsAbs(t) {
		t = filepath.Join(r.Root(), t)
	}
	return filepath.Clean(t), true, nil
}

// currentIs reports whether `current` resolves to dir (absolute or relative link).
func (r *Relauncher) currentIs(dir string) bool {
	t, ok, err := r.CurrentTarget()
	if err != nil || !ok {
		return false
	}
	return sameFile(t, dir)
}

func sameFile(a, b string) bool {
	if filepath.Clean(a) == filepath.Clean(b) {
		return true
	}
	sa, err := os.Stat(a)
	if err != nil {
		return false
	}
	sb, err := os.Stat(b)
	if err != nil {
		return false
	}
	return os.SameFile(sa, sb)
}

func randSuffix() string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// tmpMarker is part of every temp name this package creates next to a final name,
// so Layout can remove leftovers after a crash.
const tmpMarker = ".invisor-tmp-"

// atomicSymlink points link at target: symlink to a temp name in the same
// directory, rename over link, fsync the directory. A crash leaves either the old
// or the new link, plus at worst a stray temp link.
func atomicSymlink(target, link string) error {
	tmp := filepath.Join(filepath.Dir(link), "."+filepath.Base(link)+tmpMarker+randSuffix())
	if err := os.Symlink(target, tmp); err != nil {
		return fmt.Errorf("relauncher: symlink: %w", err)
	}
	if err := os.Rename(tmp, link); err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("relauncher: replace %s: %w", link, err)
	}
	return syncDir(filepath.Dir(link))
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("relauncher: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil && !errors.Is(err, syscall.EINVAL) {
		return fmt.Errorf("relauncher: fsync %s: %w", dir, err)
	}
	return nil
}

// atomicCopy copies src to dst via a temp file in dst's directory, fsync, chmod,
// rename and directory fsync. dst is never seen half-written.
func atomicCopy(src, dst string, perm fs.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("relauncher: %w", err)
	}
	defer in.Close()
	tmp := filepath.Join(filepath.Dir(dst), "."+filepath.Base(dst)+tmpMarker+randSuffix())
	out, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("relauncher: %w", err)
	}
	ok := false
	defer func() {
		if !ok {
			out.Close()
			os.Remove(tmp)
		}
	}()
	if _, err := io.Copy(out, in); err != nil {
		return fmt.Errorf("relauncher: copy %s: %w", src, err)
	}
	if err := out.Chmod(perm); err != nil {
		return fmt.Errorf("relauncher: %w", err)
	}
	if err := out.Sync(); err != nil {
		return fmt.Errorf("relauncher: fsync %s: %w", tmp, err)
	}
	if err := out.Close(); err != nil {
		return fmt.Errorf("relauncher: %w", err)
	}
	if err := os.Rename(tmp, dst); err != nil {
		return fmt.Errorf("relauncher: %w", err)
	}
	ok = true
	return syncDir(filepath.Dir(dst))
}

// removeStaleTemps removes temp names left by a crash in dir (only our own marker).
func removeStaleTemps(dir string) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, e := range ents {
		if strings.Contains(e.Name(), tmpMarker) {
			_ = os.RemoveAll(filepath.Join(dir, e.Name()))
		}
	}
}

// Layout lays out cosmovisor's folders at first start on a home: it copies the
// running executable to genesis/bin/<daemon> if absent (temp file, fsync, rename)
// and points `current` at genesis if `current` does not exist. It never changes an
// existing genesis binary or an existing `current` link, and removes temp names a
// crash left behind, then runs Check. A crash leaves either no genesis binary or a
// complete one.
func (r *Relauncher) Layout() error {
	root := r.Root()
	for _, d := range []string{filepath.Join(root, GenesisDir, BinDir), filepath.Join(root, UpgradesDir)} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("relauncher: layout: %w", err)
		}
	}
	removeStaleTemps(root)
	removeStaleTemps(filepath.Join(root, GenesisDir, BinDir))
	removeStaleTemps(r.cfg.BackupDir) // partial backups; only names carrying our marker

	gen := r.GenesisBin()
	if _, err := os.Lstat(gen); errors.Is(err, fs.ErrNotExist) {
		self, err := r.os.Executable()
		if err != nil {
			return fmt.Errorf("relauncher: layout: executable: %w", err)
		}
		start := time.Now()
		if err := atomicCopy(self, gen, 0o755); err != nil {
			return fmt.Errorf("relauncher: layout: genesis binary: %w", err)
		}
		r.log.Info("invisor: copied running executable as genesis binary", "from", self, "to", gen, "took", time.Since(start))
	} else if err != nil {
		return fmt.Errorf("relauncher: layout: %w", err)
	}

	link := filepath.Join(root, CurrentLink)
	if _, err := os.Lstat(link); errors.Is(err, fs.ErrNotExist) {
		if err := atomicSymlink(GenesisDir, link); err != nil {
			return fmt.Errorf("relauncher: layout: %w", err)
		}
		r.log.Info("invisor: created current link", "link", link, "target", GenesisDir)
	} else if err != nil {
		return fmt.Errorf("relauncher: layout: %w", err)
	}
	return r.Check()
}
