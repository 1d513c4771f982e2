package relauncher

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/invisor/invisor/internal/home"
)

// Home is the node home's layout (paths, the plan-name rule, proofs, the attempts
// ledger), as internal/home owns it.
func (r *Relauncher) Home() home.Layout { return r.layout }

// Layout lays out cosmovisor's folders at first start on a home: it copies the
// running executable to genesis/bin/<daemon> if absent (crash-safe: home.CopyFile)
// and points `current` at genesis if `current` does not exist. It never changes an
// existing genesis binary or an existing `current` link, and removes temp names a
// crash left behind (the caller holds the home lock, so only a dead process can
// have left them), then runs Check. A crash leaves either no genesis binary or a
// complete one.
func (r *Relauncher) Layout() error {
	l := r.layout
	gen := l.GenesisBin()
	for _, d := range []string{filepath.Dir(gen), l.UpgradesRoot()} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("relauncher: layout: %w", err)
		}
	}
	// Partial backups too: only names carrying home.TempMarker are removed.
	for _, d := range []string{l.Root(), filepath.Dir(gen), r.cfg.BackupDir} {
		if err := home.RemoveStaleTemps(d); err != nil {
			r.log.Warn("invisor: could not remove temp files a crash left", "dir", d, "err", err)
		}
	}

	if _, err := os.Lstat(gen); errors.Is(err, fs.ErrNotExist) {
		self, err := r.os.Executable()
		if err != nil {
			return fmt.Errorf("relauncher: layout: executable: %w", err)
		}
		start := time.Now()
		if _, err := home.CopyFile(self, gen, 0o755); err != nil {
			return fmt.Errorf("relauncher: layout: genesis binary: %w", err)
		}
		r.log.Info("invisor: copied running executable as genesis binary", "from", self, "to", gen, "took", time.Since(start))
	} else if err != nil {
		return fmt.Errorf("relauncher: layout: %w", err)
	}

	if _, err := os.Lstat(l.Current()); errors.Is(err, fs.ErrNotExist) {
		if err := home.Symlink(l.GenesisTarget(), l.Current()); err != nil {
			return fmt.Errorf("relauncher: layout: %w", err)
		}
		r.log.Info("invisor: created current link", "link", l.Current(), "target", l.GenesisTarget())
	} else if err != nil {
		return fmt.Errorf("relauncher: layout: %w", err)
	} else if t, err := os.Readlink(l.Current()); err == nil && !filepath.IsAbs(t) {
		// Earlier invisor releases wrote it relative; cosmovisor uses the link's
		// text as is and would not start on such a home. Same target, absolute.
		abs := filepath.Join(l.Root(), t)
		if _, err := os.Stat(abs); err == nil {
			if err := home.Symlink(abs, l.Current()); err != nil {
				return fmt.Errorf("relauncher: layout: %w", err)
			}
			r.log.Info("invisor: rewrote the current link as an absolute path, as cosmovisor needs it", "link", l.Current(), "target", abs)
		}
	}
	return r.Check()
}
