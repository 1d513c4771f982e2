package staging

import (
	"archive/tar"
	"archive/zip"
	"bufio"
	"compress/bzip2"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"syscall"

	getter "github.com/hashicorp/go-getter"
	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
)

// Archive handling is split deliberately:
//
//   - go-getter tells archives from plain binaries (its decompressor table) and
//     decompresses a single compressed binary, with codecs constructed per call by
//     LimitedDecompressors and a size limit of cap+1, so a stream that would exceed
//     the cap is detected (go-getter itself truncates silently).
//   - A compressed tar is streamed from the decompressor straight into the tar
//     reader (openTarStream), capped the same way and with bounded decoder memory,
//     instead of go-getter writing the whole .tar to a scratch file first.
//   - The archive container (tar, zip) is walked here, because go-getter materialises
//     symlink and hardlink entries as empty files instead of rejecting the archive and
//     trusts header sizes. Every entry is written through an os.Root, so even a bug in
//     the name checks cannot write outside the temp root.
//
// Decompression runs only after the download matched the plan checksum.

var tarCodec = map[string]string{
	"tar": "", "tar.gz": "gz", "tgz": "gz", "tar.bz2": "bz2", "tbz2": "bz2",
	"tar.xz": "xz", "txz": "xz", "tar.zst": "zst", "tzst": "zst",
}

// unpack turns the verified download at file into <root>/bin/<daemon>. root must be an
// empty directory; scratch is a directory for intermediate files. dl is the digest of
// file. It returns the digest of the binary when it was computed while writing it (a
// plain download is renamed, not copied; tar and zip entries are hashed as they are
// written), or nil when the caller must hash it (single compressed binaries).
func unpack(ctx context.Context, cfg Config, archive, file, root, scratch string, dl digest, pace *pacer) (*digest, error) {
	binRel := path.Join("bin", cfg.DaemonName)
	x := &extractor{ctx: ctx, lim: limitsOf(cfg), pace: pace, hashed: map[string]*digest{binRel: nil, cfg.DaemonName: nil}}
	switch {
	case archive == "":
		if err := os.MkdirAll(filepath.Join(root, "bin"), 0o755); err != nil {
			return nil, err
		}
		return &dl, os.Rename(file, filepath.Join(root, "bin", cfg.DaemonName))
	case archive == "zip":
		if err := extractZip(x, file, root); err != nil {
			return nil, err
		}
	default:
		codec, isTar := tarCodec[archive]
		if !isTar {
			// A single compressed binary (.gz, .xz, .zst, .bz2).
			if err := os.MkdirAll(filepath.Join(root, "bin"), 0o755); err != nil {
				return nil, err
			}
			return nil, decompressFile(archive, file, filepath.Join(root, filepath.FromSlash(binRel)),
				&SizeError{What: "decompressed binary", Limit: cfg.MaxBinaryBytes, Field: "MaxBinaryBytes"})
		}
		// The tar stream goes from the decompressor straight into the tar
		// reader: no scratch copy of the whole archive to write, read and
		// delete (a gigabyte of writes that stalled the node's fsyncs).
		r, closeR, err := openTarStream(codec, file,
			&SizeError{What: "decompressed archive", Limit: cfg.MaxArchiveBytes, Field: "MaxArchiveBytes"})
		if err != nil {
			return nil, err
		}
		err = extractTar(x, r, root)
		closeR()
		if err != nil {
			return nil, err
		}
	}
	if err := placeBinary(root, cfg.DaemonName); err != nil {
		return nil, err
	}
	// placeBinary prefers bin/<daemon> and renames <daemon> there otherwise.
	if d := x.hashed[binRel]; d != nil {
		return d, nil
	}
	return x.hashed[cfg.DaemonName], nil
}

// openTarStream opens file and, for a compressed tar, its decompressor, capped
// at tooLarge.Limit bytes of tar stream: one byte more is tooLarge, never a
// silent truncation. Decoder memory is bounded (xz dictionary, zstd window).
func openTarStream(codec, file string, tooLarge *SizeError) (io.Reader, func(), error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, nil, err
	}
	r, closeR, err := tarStream(codec, f, tooLarge)
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	return r, func() { closeR(); f.Close() }, nil
}

// tarStream is openTarStream on a stream: src decompressed with codec and capped
// the same way. Closing it releases the decoder, not src.
func tarStream(codec string, src io.Reader, tooLarge *SizeError) (io.Reader, func(), error) {
	in := bufio.NewReaderSize(src, 1<<20)
	var r io.Reader
	closeAll := func() {}
	bad := func(err error) (io.Reader, func(), error) {
		return nil, nil, fmt.Errorf("%w: %s stream: %w; the file is corrupt or not %s", ErrUnsafeArchive, codec, err, codec)
	}
	switch codec {
	case "":
		r = in
	case "gz":
		zr, err := gzip.NewReader(in)
		if err != nil {
			return bad(err)
		}
		r = zr
	case "bz2":
		r = bzip2.NewReader(in)
	case "xz":
		xr, err := xz.ReaderConfig{DictCap: maxDecoderWindow}.NewReader(in)
		if err != nil {
			return bad(err)
		}
		r = xr
	case "zst":
		zr, err := zstd.NewReader(in, zstd.WithDecoderConcurrency(1), zstd.WithDecoderLowmem(true),
			zstd.WithDecoderMaxWindow(maxDecoderWindow), zstd.WithDecoderMaxMemory(uint64(tooLarge.Limit)+1))
		if err != nil {
			return bad(err)
		}
		r = zr
		closeAll = zr.Close
	default:
		return nil, nil, fmt.Errorf("%w: no decompressor for %q", ErrBadInfo, codec)
	}
	return &capReader{r: r, limit: tooLarge.Limit, tooLarge: tooLarge}, closeAll, nil
}

// maxDecoderWindow bounds the memory of the xz and zstd decoders (release
// archives use a few MiB; --long/-9 use up to 64 MiB).
const maxDecoderWindow = 64 << 20

// capReader fails with tooLarge once more than limit bytes were read.
type capReader struct {
	r        io.Reader
	n, limit int64
	tooLarge error
}

func (c *capReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	if c.n > c.limit {
		return n, c.tooLarge
	}
	return n, err
}

// decompressFile runs one go-getter codec with a limit of cap+1 bytes and turns
// reaching cap+1 into ErrTooLarge.
func decompressFile(codec, src, dst string, tooLarge *SizeError) error {
	d, ok := getter.LimitedDecompressors(1, tooLarge.Limit+1)[codec]
	if !ok {
		return fmt.Errorf("%w: no decompressor for %q", ErrBadInfo, codec)
	}
	if err := d.Decompress(dst, src, false, 0o077); err != nil {
		if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
			return fmt.Errorf("decompress %s: %w", codec, err) // the caller reports the full disk
		}
		return fmt.Errorf("%w: decompress %s: %w; the file is corrupt or not %s", ErrUnsafeArchive, codec, err, codec)
	}
	fi, err := os.Lstat(dst)
	if err != nil {
		return err
	}
	if fi.Size() > tooLarge.Limit {
		return tooLarge
	}
	return nil
}

// placeBinary moves <daemon> to bin/<daemon> if that is where the archive put it.
func placeBinary(root, daemon string) error {
	want := filepath.Join(root, "bin", daemon)
	if fi, err := os.Lstat(want); err == nil {
		if !fi.Mode().IsRegular() {
			return fmt.Errorf("%w: bin/%s in the archive is not a regular file", ErrNotExecutable, daemon)
		}
		return nil
	}
	alt := filepath.Join(root, daemon)
	fi, err := os.Lstat(alt)
	if err != nil {
		return fmt.Errorf("%w: the archive holds neither bin/%s nor %s; check DAEMON_NAME and the archive layout", ErrNotFound, daemon, daemon)
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("%w: %s in the archive is not a regular file", ErrNotExecutable, daemon)
	}
	if err := os.MkdirAll(filepath.Join(root, "bin"), 0o755); err != nil {
		return err
	}
	return os.Rename(alt, want)
}

type extractLimits struct {
	Bytes   int64 // total unpacked bytes
	Entries int64
}

func limitsOf(cfg Config) extractLimits {
	return extractLimits{Bytes: cfg.MaxArchiveBytes, Entries: cfg.MaxArchiveEntries}
}

// entryPath validates an archive entry name and returns it as a clean relative
// slash path; "" means the entry is the root itself.
func entryPath(name string) (string, error) {
	switch {
	case name == "":
		return "", errors.New("has an empty name")
	case strings.ContainsRune(name, 0):
		return "", errors.New("contains NUL")
	case strings.HasPrefix(name, "/") || strings.HasPrefix(name, `\`):
		return "", errors.New("is an absolute path")
	case len(name) >= 2 && name[1] == ':':
		return "", errors.New("has a drive letter")
	}
	for _, part := range strings.FieldsFunc(name, func(r rune) bool { return r == '/' || r == '\\' }) {
		if part == ".." {
			return "", errors.New(`contains a ".." component`)
		}
	}
	clean := path.Clean(strings.ReplaceAll(name, `\`, "/"))
	if clean == "." {
		return "", nil
	}
	if !fs.ValidPath(clean) {
		return "", errors.New("is not a valid relative path")
	}
	return clean, nil
}

// safeMode strips setuid, setgid, sticky and group/world write bits, and keeps the
// owner able to read and write so the temp root can always be removed.
func safeMode(m fs.FileMode) fs.FileMode { return (m.Perm() &^ 0o022) | 0o600 }

type extractor struct {
	ctx     context.Context
	root    *os.Root
	lim     extractLimits
	pace    *pacer // nil: unpaced
	entries int64
	bytes   int64
	// hashed holds the entries (clean relative paths) whose sha256 is computed while
	// they are written; a nil value is filled in when the entry is extracted.
	hashed map[string]*digest
}

func (x *extractor) entry(name string) (string, error) {
	if err := x.ctx.Err(); err != nil {
		return "", context.Cause(x.ctx)
	}
	x.entries++
	if x.entries > x.lim.Entries {
		return "", &SizeError{What: "archive entry count", Limit: x.lim.Entries, Field: "MaxArchiveEntries"}
	}
	rel, err := entryPath(name)
	if err != nil {
		return "", &ArchiveError{Entry: name, Reason: err.Error()}
	}
	return rel, nil
}

func (x *extractor) dir(rel string) error {
	if rel == "" {
		return nil
	}
	return x.root.MkdirAll(rel, 0o755)
}

func (x *extractor) file(rel, name string, mode fs.FileMode, r io.Reader) error {
	if rel == "" {
		return &ArchiveError{Entry: name, Reason: "is a file named like the root"}
	}
	if dir := path.Dir(rel); dir != "." {
		if err := x.root.MkdirAll(dir, 0o755); err != nil {
			return &ArchiveError{Entry: name, Reason: fmt.Sprintf("cannot create its directory: %v", err)}
		}
	}
	// O_EXCL: a duplicate entry is refused rather than silently replacing an earlier one.
	f, err := x.root.OpenFile(rel, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return &ArchiveError{Entry: name, Reason: fmt.Sprintf("cannot be created (duplicate or conflicting entry?): %v", err)}
	}
	remaining := x.lim.Bytes - x.bytes
	var w io.Writer = &writeBehind{f: f, pace: x.pace}
	_, hashIt := x.hashed[rel]
	h := sha256.New()
	if hashIt {
		w = io.MultiWriter(w, h)
	}
	n, err := io.CopyBuffer(w, io.LimitReader(ctxReader{x.ctx, io.NopCloser(r)}, remaining+1), make([]byte, 256<<10))
	x.bytes += n
	if err == nil && n > remaining {
		err = &SizeError{What: "unpacked archive", Limit: x.lim.Bytes, Field: "MaxArchiveBytes"}
	}
	if err == nil && hashIt {
		x.hashed[rel] = &digest{SHA256: hex.EncodeToString(h.Sum(nil)), Size: n}
	}
	if err == nil {
		err = f.Chmod(safeMode(mode))
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

func linkErr(name, kind, target string) error {
	return &ArchiveError{Entry: name, Reason: fmt.Sprintf("is a %s to %q; links are not allowed in upgrade archives", kind, target)}
}

// extractTar unpacks r into root under x's limits.
func extractTar(x *extractor, r io.Reader, root string) error {
	rt, err := os.OpenRoot(root)
	if err != nil {
		return err
	}
	defer rt.Close()
	x.root = rt
	return walkTar(x, r, x.dir, func(rel string, hdr *tar.Header, r io.Reader) error {
		return x.file(rel, hdr.Name, hdr.FileInfo().Mode(), r)
	})
}

// walkTar reads the tar stream r under x's checks (entry names and count; links,
// devices, fifos and sparse files refused) and hands each directory to dir and
// each regular file, with its header and contents, to file. The same walk serves
// extractTar and WalkTar, so both refuse exactly the same archives.
func walkTar(x *extractor, r io.Reader, dir func(rel string) error, file func(rel string, hdr *tar.Header, r io.Reader) error) error {
	tr := tar.NewReader(r)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			if errors.Is(err, tar.ErrInsecurePath) {
				return &ArchiveError{Entry: hdr.Name, Reason: "is an insecure path"}
			}
			return fmt.Errorf("%w: reading tar: %w", ErrUnsafeArchive, err)
		}
		if hdr.Typeflag == tar.TypeXGlobalHeader {
			continue
		}
		rel, err := x.entry(hdr.Name)
		if err != nil {
			return err
		}
		switch hdr.Typeflag {
		case tar.TypeDir:
			err = dir(rel)
		case tar.TypeReg: // tar.Reader reports the old TypeRegA as TypeReg
			err = file(rel, hdr, tr)
		case tar.TypeSymlink:
			err = linkErr(hdr.Name, "symlink", hdr.Linkname)
		case tar.TypeLink:
			err = linkErr(hdr.Name, "hardlink", hdr.Linkname)
		default:
			err = &ArchiveError{Entry: hdr.Name, Reason: fmt.Sprintf("has unsupported type %q (devices, fifos and sparse files are not allowed)", hdr.Typeflag)}
		}
		if err != nil {
			return err
		}
	}
	if x.entries == 0 {
		return fmt.Errorf("%w: the archive is empty", ErrNotFound)
	}
	return nil
}

// extractZip unpacks file into root under x's limits.
func extractZip(x *extractor, file, root string) error {
	zr, err := zip.OpenReader(file)
	if err != nil {
		return fmt.Errorf("%w: reading zip: %w", ErrUnsafeArchive, err)
	}
	defer zr.Close()
	if int64(len(zr.File)) > x.lim.Entries {
		return &SizeError{What: "archive entry count", Limit: x.lim.Entries, Field: "MaxArchiveEntries"}
	}
	rt, err := os.OpenRoot(root)
	if err != nil {
		return err
	}
	defer rt.Close()
	x.root = rt
	for _, zf := range zr.File {
		rel, err := x.entry(zf.Name)
		if err != nil {
			return err
		}
		m := zf.Mode()
		switch {
		case m&fs.ModeSymlink != 0:
			err = linkErr(zf.Name, "symlink", "(zip symlink)")
		case m.IsDir():
			err = x.dir(rel)
		case m.IsRegular():
			var rc io.ReadCloser
			rc, err = zf.Open()
			if err == nil {
				err = x.file(rel, zf.Name, m, rc)
				if errors.Is(err, zip.ErrChecksum) || errors.Is(err, zip.ErrFormat) || errors.Is(err, zip.ErrAlgorithm) {
					err = fmt.Errorf("%w: zip entry %q: %w", ErrUnsafeArchive, zf.Name, err)
				}
				rc.Close()
			} else {
				err = fmt.Errorf("%w: zip entry %q: %w", ErrUnsafeArchive, zf.Name, err)
			}
		default:
			err = &ArchiveError{Entry: zf.Name, Reason: fmt.Sprintf("has unsupported type %v", m.Type())}
		}
		if err != nil {
			return err
		}
	}
	if x.entries == 0 {
		return fmt.Errorf("%w: the archive is empty", ErrNotFound)
	}
	return nil
}
