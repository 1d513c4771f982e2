package staging

import (
	"archive/tar"
	"context"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/invisor/invisor/internal/home"
)

// This file exports, for other commands that fetch or unpack operator input
// (`invisor import`), the pieces Fetch is made of: its downloader, its tar
// reader, its URL redaction and its install-directory check. They are thin
// wrappers, so there is one implementation of each and a fix reaches every caller.

// Redact returns raw without userinfo and without query parameters other than
// checksum and archive (a signed URL's token stays out of logs and errors), as
// every message of this package shows a URL. A URL that does not parse is
// shown as "<unparseable url>".
func Redact(raw string) string { return redact(raw) }

// NewHash returns a new hash of c's algorithm, so that a file can be checked
// against c (with home.HashFile, say) the way a download is.
func (c Checksum) NewHash() hash.Hash { return c.newHash() }

// Download fetches src (from ParseSource, whose cfg decides which schemes and
// checksums are allowed) into file, which must not exist, the way Fetch
// downloads a binary: the same HTTP client (Config.CAFile, ResponseHeaderTimeout,
// certificates always verified, redirects only to http(s) and never from https
// to http), the stall watchdog (IdleTimeout, MinThroughput), the whole transfer
// bounded by Config.Deadline, a cap of MaxArchiveBytes for an archive
// (src.Archive set) or MaxBinaryBytes otherwise (a *SizeError, also before the
// body is read when its Content-Length is over), a free-space check of file's
// directory, a truncated body refused, and src.Checksum verified over the bytes
// written (a *ChecksumError). It returns the sha256 and size of what it wrote,
// fsynced. On error, file is removed. cfg must pass Validate.
func Download(ctx context.Context, cfg Config, src Source, file string) (home.Digest, error) {
	if err := cfg.Validate(); err != nil {
		return home.Digest{}, err
	}
	limit, field := cfg.MaxBinaryBytes, "MaxBinaryBytes"
	if src.Archive != "" {
		limit, field = cfg.MaxArchiveBytes, "MaxArchiveBytes"
	}
	ctx, cancel := context.WithTimeoutCause(ctx, cfg.Deadline,
		fmt.Errorf("%w: the download exceeded Config.Deadline (%v)", ErrDownload, cfg.Deadline))
	defer cancel()
	client, err := newHTTPClient(cfg)
	if err != nil {
		return home.Digest{}, err
	}
	defer client.CloseIdleConnections()
	f, err := os.OpenFile(file, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return home.Digest{}, err
	}
	dir := filepath.Dir(file)
	t := transfer{cfg: cfg, client: client, src: src, limit: limit, field: field, what: "download", spaceDir: dir, hint: "check the URL"}
	res, err := t.run(ctx, f)
	if err == nil {
		err = diskFull(f.Sync(), "download", dir)
	}
	if cerr := f.Close(); err == nil {
		err = diskFull(cerr, "download", dir)
	}
	if err != nil {
		os.Remove(file)
		return home.Digest{}, err
	}
	return home.Digest{SHA256: res.SHA256, Size: res.N}, nil
}

// TarFile is a regular file of a tar archive, as WalkTar hands it over.
type TarFile struct {
	// Name is the entry's name as a clean relative slash path (what Fetch would
	// unpack it as: "./a//b" is "a/b"), to match against expected names.
	Name string
	// Header is the name as the archive spells it, for messages.
	Header string
	// Size is the header's size; Body yields exactly that many bytes or an error.
	Size int64
	Mode fs.FileMode
	Body io.Reader
}

// WalkTar reads the tar archive r, compressed as archive says (a Source.Archive
// key for a tar: "tar", "tar.gz", "tgz", "tar.xz", "tar.zst", "tar.bz2", ...),
// with the checks Fetch applies to an upgrade archive, and calls fn for each
// regular file in archive order. The whole archive is refused at the first entry
// that is absolute, has a ".." component, a drive letter or a NUL, is a link, a
// device, a fifo or sparse (an *ArchiveError, ErrUnsafeArchive); past
// cfg.MaxArchiveEntries entries, or cfg.MaxArchiveBytes bytes of files or of
// decompressed stream (a *SizeError, ErrTooLarge), the files' bytes counted from
// their headers before fn sees them; and when it holds no entry (ErrNotFound).
// Directories are checked and counted, not handed to fn. An error from fn stops
// the walk and is returned as it is. WalkTar writes nothing, and uses only those
// two fields of cfg: where a file goes, if anywhere, is fn's decision.
func WalkTar(ctx context.Context, cfg Config, archive string, r io.Reader, fn func(TarFile) error) error {
	codec, ok := tarCodec[archive]
	if !ok {
		return fmt.Errorf("%w: %q is not a tar archive", ErrBadInfo, archive)
	}
	stream, closeStream, err := tarStream(codec, r,
		&SizeError{What: "decompressed archive", Limit: cfg.MaxArchiveBytes, Field: "MaxArchiveBytes"})
	if err != nil {
		return err
	}
	defer closeStream()
	x := &extractor{ctx: ctx, lim: limitsOf(cfg)}
	return walkTar(x, stream, func(string) error { return nil }, func(rel string, hdr *tar.Header, body io.Reader) error {
		if rel == "" {
			return &ArchiveError{Entry: hdr.Name, Reason: "is a file named like the root"}
		}
		if hdr.Size > x.lim.Bytes-x.bytes { // not x.bytes+hdr.Size: a huge header would overflow it
			return &SizeError{What: "unpacked archive", Limit: x.lim.Bytes, Field: "MaxArchiveBytes"}
		}
		x.bytes += hdr.Size
		return fn(TarFile{Name: rel, Header: hdr.Name, Size: hdr.Size, Mode: hdr.FileInfo().Mode(), Body: ctxReader{ctx, io.NopCloser(body)}})
	})
}

// CheckInstallDirs refuses a symlink, or anything but a directory, at
// upgrades/, at the upgrade directory of plan name or at its bin/ (missing ones
// are fine): the check Fetch makes before it installs, for a caller that places
// a binary there itself, so that it cannot be led outside the home.
func CheckInstallDirs(l home.Layout, name string) error {
	dir, err := upgradeDir(l, name)
	if err != nil {
		return err
	}
	return checkNoSymlinks(l, dir)
}
