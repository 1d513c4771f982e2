package staging

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/invisor/invisor/internal/home"
)

// The image directory (Config.ImageDir) as a pre-staged source
//
// In a container the chain's image may carry the upgrade binaries itself, in a
// directory that is read-only at run time, while the node home (and with it
// cosmovisor/upgrades/) lives on a volume. Such a binary is a source like a
// download, never a place to run from: for the plan in force, when nothing is at
// its install path, fetch copies <ImageDir>/upgrades/<dir>/bin/<daemon> into
// the attempt's private temp directory and that copy goes through the pipeline
// an operator's file does (adoptPlaced: OS/arch header, the plan's checksum, or
// its archive compared byte for byte, preflight, probe for the handler), then is
// installed by rename like a download and recorded with home.SourceImage (the
// operator's word when the plan names no binary for this platform). Nothing in
// the image directory is ever written, chmod'ed or executed.
//
// A binary the image holds that the plan does not confirm is not installed; the
// attempt falls through to a download when downloads are allowed, and otherwise
// fails with an *ImageError that says to rebuild the image or stage the binary.

// ImageBinaryPath is where an image directory holds the binary of plan name:
// <imageDir>/upgrades/<dir>/bin/<daemon>, <dir> being the home's directory name
// for the plan (home.DirName).
func ImageBinaryPath(imageDir, daemon, name string, disableRecase bool) (string, error) {
	dir, err := home.DirName(name, disableRecase)
	if err != nil {
		return "", err
	}
	return filepath.Join(imageDir, home.UpgradesDir, dir, home.BinDir, daemon), nil
}

// CheckImageDir fails at boot when cfg.ImageDir is set but is not a readable
// directory, so a typo in the setting is found on the day it is made, not at
// the upgrade height. An unset ImageDir is fine.
func CheckImageDir(cfg Config) error {
	if cfg.ImageDir == "" {
		return nil
	}
	fi, err := os.Stat(cfg.ImageDir)
	if err != nil {
		return fmt.Errorf("staging: image-dir %s: %w; set it to the image's directory of pre-staged binaries (holding upgrades/<name>/bin/%s) or leave it empty",
			cfg.ImageDir, err, cfg.DaemonName)
	}
	if !fi.IsDir() {
		return fmt.Errorf("staging: image-dir %s is not a directory; set it to the image's directory of pre-staged binaries (holding upgrades/<name>/bin/%s) or leave it empty",
			cfg.ImageDir, cfg.DaemonName)
	}
	if _, err := os.ReadDir(cfg.ImageDir); err != nil {
		return fmt.Errorf("staging: image-dir %s cannot be read by this user: %w", cfg.ImageDir, err)
	}
	return nil
}

// ImageError says why the image directory's binary for a plan was not used.
// It wraps the verifier's reason (errors.Is works on it: ErrChecksumMismatch,
// ErrMissingHandler, ErrNotExecutable, ...).
type ImageError struct {
	Plan string // plan name
	Path string // the binary in the image directory
	Err  error
}

func (e *ImageError) Error() string {
	return fmt.Sprintf("the image directory's binary %s for plan %q is not used: %v; rebuild the image with the binary the plan names, or stage it with `invisor stage %s --file <path>`",
		e.Path, e.Plan, e.Err, e.Plan)
}

func (e *ImageError) Unwrap() error { return e.Err }

// imageCopy is the copy of an image binary an attempt verifies: installed from
// root (holding bin/<daemon>) once adoptPlaced accepted it.
type imageCopy struct {
	src  string // the binary in the image directory
	root string // the private tree holding the copy at bin/<daemon>
	bin  string // the layout's install path, restored into the job for the install
}

// fromImage stages the plan in force from the image directory: done is false
// when the image holds no binary for the plan (or ImageDir is unset). The caller
// has checked that nothing is at the install path.
func (j *job) fromImage(ctx context.Context) (Install, bool, error) {
	if j.cfg.ImageDir == "" {
		return Install{}, false, nil
	}
	src, err := ImageBinaryPath(j.cfg.ImageDir, j.cfg.DaemonName, j.p.Name, j.cfg.DisableRecase)
	if err != nil {
		return Install{}, false, err
	}
	fi, err := os.Stat(src)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return Install{}, false, nil
	case err != nil:
		return Install{}, true, &ImageError{Plan: j.p.Name, Path: src, Err: err}
	case !fi.Mode().IsRegular():
		return Install{}, true, &ImageError{Plan: j.p.Name, Path: src, Err: fmt.Errorf("%w: not a regular file", ErrNotExecutable)}
	case fi.Size() > j.cfg.MaxBinaryBytes:
		return Install{}, true, &ImageError{Plan: j.p.Name, Path: src,
			Err: &SizeError{What: "binary " + filepath.Base(src), Limit: j.cfg.MaxBinaryBytes, Field: "MaxBinaryBytes"}}
	}
	j.log.Info("staging: the image directory holds the binary for the plan in force; verifying a copy of it", "plan", j.p.Name, "image", src, "bytes", fi.Size())
	root, err := j.copyImage(ctx, src)
	if err != nil {
		return Install{}, true, &ImageError{Plan: j.p.Name, Path: src, Err: err}
	}
	// The copy is verified where it lies, with the one placed-binary pipeline;
	// record (below) installs it once that pipeline accepted it.
	ij := *j
	ij.bin = filepath.Join(root, home.BinDir, j.cfg.DaemonName)
	ij.image = &imageCopy{src: src, root: root, bin: j.bin}
	inst, err := ij.adoptPlaced(ctx)
	j.answer, j.tmp = ij.answer, ij.tmp
	if err != nil {
		var pm *PlacedMismatchError
		if errors.As(err, &pm) {
			pm.Path = src
		}
		return Install{}, true, &ImageError{Plan: j.p.Name, Path: src, Err: err}
	}
	return inst, true, nil
}

// copyImage copies the image binary src into a fresh tree in the attempt's
// temp directory (0755, paced like a download) and returns the tree's root.
func (j *job) copyImage(ctx context.Context, src string) (string, error) {
	tmp, err := j.temp()
	if err != nil {
		return "", err
	}
	root := filepath.Join(tmp, "image")
	if err := os.MkdirAll(filepath.Join(root, home.BinDir), 0o755); err != nil {
		return "", err
	}
	in, err := os.Open(src)
	if err != nil {
		return "", err
	}
	defer in.Close()
	dst := filepath.Join(root, home.BinDir, j.cfg.DaemonName)
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o755)
	if err != nil {
		return "", err
	}
	// One byte over the cap is enough to know the file grew past it.
	n, err := io.Copy(&writeBehind{f: out, pace: j.pace}, io.LimitReader(ctxReader{ctx, in}, j.cfg.MaxBinaryBytes+1))
	if err == nil && n > j.cfg.MaxBinaryBytes {
		err = &SizeError{What: "binary " + filepath.Base(src), Limit: j.cfg.MaxBinaryBytes, Field: "MaxBinaryBytes"}
	}
	if err == nil {
		err = diskFull(out.Sync(), "the copy of the image's binary", j.l.Root())
	}
	if cerr := out.Close(); err == nil {
		err = diskFull(cerr, "the copy of the image's binary", j.l.Root())
	}
	if err != nil {
		return "", err
	}
	return root, nil
}

// installImage is record's step for a copy of an image binary that adoptPlaced
// accepted (rec is its record, stamped in the temp tree): the tree is installed
// by rename like a download, the stamp proven again in the final place, and the
// record names the image's file and, when the plan confirmed the bytes,
// home.SourceImage.
func (j *job) installImage(ctx context.Context, rec home.Record) (Install, error) {
	c := j.image
	j.image, j.bin = nil, c.bin
	rec.File = c.src
	switch rec.Source {
	case home.SourcePlanChecksum, home.SourcePlanArchive:
		rec.Source = home.SourceImage
	}
	if err := syncTree(c.root); err != nil {
		return Install{}, err
	}
	pre := rec.Stamp
	rec.Stamp = home.Stamp{}
	inst, err := j.install(ctx, c.root, digest{SHA256: rec.SHA256, Size: rec.Size}, pre, rec)
	if err != nil {
		return Install{}, err
	}
	j.log.Info("staging: installed the image directory's binary", "plan", j.p.Name, "source", rec.Source, "image", c.src, "path", inst.Path, "sha256", inst.SHA256)
	return inst, nil
}
