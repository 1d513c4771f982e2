package staging

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/invisor/invisor/internal/home"
)

// TempPrefix names the per-attempt temp directories under <home>/cosmovisor. It
// carries home.TempMarker, so whoever holds the home lock after a crash may remove
// them (New does, and so does home.RemoveStaleTemps).
const TempPrefix = ".staging" + home.TempMarker

// legacyTempPrefix named the temp directories of earlier releases; New removes them too.
const legacyTempPrefix = ".staging-tmp-"

// ReplacedMarker is inserted between an upgrade directory's name and a Unix time
// when the operator's install of a plan that was replaced under the same name is
// moved aside (upgrades/<dir>#replaced-<unix seconds>). home.DirName escapes '#', so
// no plan name maps there.
const ReplacedMarker = "#replaced-"

// Install is a binary proven (by home.Layout.Open) to be the one recorded for a plan.
type Install struct {
	Plan   Plan   // the plan it is recorded for
	Name   string // Plan.Name
	Path   string // absolute path of the binary
	SHA256 string // hex sha256 of the binary
	Size   int64
	Record home.Record
}

func installOf(v *home.Verified) Install {
	return Install{Plan: v.Plan, Name: v.Plan.Name, Path: v.Path, SHA256: v.Record.SHA256, Size: v.Record.Size, Record: v.Record}
}

// openInstall returns the install of plan p if the one proof (home.Layout.Open)
// accepts it.
func openInstall(ctx context.Context, l home.Layout, p Plan) (Install, error) {
	v, err := l.Open(ctx, p)
	if err != nil {
		return Install{}, err
	}
	defer v.Close()
	return installOf(v), nil
}

// upgradeDir maps a plan name with the one rule (home.DirName); names that are
// not valid UTF-8 are compared in the form upgrade-info.json holds them
// (home.CanonicalName), so they work too.
func upgradeDir(l home.Layout, name string) (string, error) {
	dir, err := l.UpgradeDir(name)
	if err != nil {
		return "", nameError(err)
	}
	return dir, nil
}

// nameError explains a plan name home.DirName refuses. An *home.UnmappableNameError
// stays reachable with errors.As; its Advice says what the operator can do.
func nameError(err error) error {
	var u *home.UnmappableNameError
	if errors.As(err, &u) {
		return fmt.Errorf("staging: %w; %s", u, u.Advice())
	}
	return fmt.Errorf("staging: %w", err)
}

// removeInstall removes an upgrade directory by renaming it to a temp name
// first: a crash leaves a temp directory that New removes, never a
// half-deleted install. Large files are freed in paced steps (removeTreePaced).
func removeInstall(l home.Layout, dir string, pace *pacer) error {
	tmp, err := os.MkdirTemp(l.Root(), TempPrefix+"remove-")
	if err != nil {
		return err
	}
	gone := filepath.Join(tmp, filepath.Base(dir))
	if err := os.Rename(dir, gone); err != nil {
		os.Remove(tmp)
		return err
	}
	if err := home.SyncDir(filepath.Dir(dir)); err != nil {
		return err
	}
	return removeTreePaced(tmp, pace)
}

// moveAside renames an upgrade directory to <dir>#replaced-<unix seconds> (with a
// counter if that exists) and returns the new path.
func moveAside(dir string, now time.Time) (string, error) {
	base := dir + ReplacedMarker + strconv.FormatInt(now.Unix(), 10)
	dst := base
	for i := 1; ; i++ {
		if _, err := os.Lstat(dst); errors.Is(err, fs.ErrNotExist) {
			break
		} else if err != nil {
			return "", err
		}
		dst = base + "-" + strconv.Itoa(i)
	}
	if err := os.Rename(dir, dst); err != nil {
		return "", err
	}
	return dst, home.SyncDir(filepath.Dir(dir))
}

// checkNoSymlinks refuses a planted symlink at upgrades/, upgrades/<dir> or its bin/,
// so the install can never land outside the home.
func checkNoSymlinks(l home.Layout, upDir string) error {
	return home.RealDirs(l.UpgradesRoot(), upDir, filepath.Join(upDir, home.BinDir))
}

// redact removes userinfo and the query (which may hold tokens) from a URL for logs.
func redact(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "<unparseable url>"
	}
	u.User = nil
	if u.RawQuery != "" {
		q := u.Query()
		keep := url.Values{}
		for _, k := range []string{"checksum", "archive"} {
			if v, ok := q[k]; ok {
				keep[k] = v
			}
		}
		u.RawQuery = keep.Encode()
	}
	return u.String()
}
