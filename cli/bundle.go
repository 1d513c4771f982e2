package cli

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/invisor/invisor/internal/config"
	"github.com/invisor/invisor/internal/home"
	"github.com/invisor/invisor/staging"
)

// Bundles: `invisor export` and `invisor import`
//
// A bundle is a tar.gz holding, first, manifest.json (BundleManifest) and then one
// regular file per binary at the path the manifest names:
//
//	manifest.json
//	genesis/bin/<daemon>
//	upgrades/<dir>/bin/<daemon>        <dir> = home.DirName(name)
//
// so that a node syncing from genesis has every binary it will need. Only the
// binaries travel (not lib/ or other files of an upgrade directory). These paths
// are the bundle's format, not where import writes: each must be exactly the one
// its name maps to with home.DirName (recased, or not as with
// COSMOVISOR_DISABLE_RECASE, so a bundle from either kind of home reads anywhere),
// and import places each binary where the importing home's layout puts that name
// (home.Layout.UpgradeBin), never at a path taken from the archive.
//
// export takes the genesis binary and every upgrade install whose completion
// record proves it (home.Layout.Installs: a record of this format whose source is
// a proof, for a plan whose name maps to that very directory). An install without
// one is refused, naming it and saying what to do. Every byte is re-hashed as it is
// written into the archive and compared with the record's sha256 and size (the
// genesis binary with the hash taken just before); the archive goes to a temp file
// beside the output that is fsynced and renamed over it.
//
// import takes the home lock (home.Layout.Acquire) for its whole run: it refuses
// while a node runs on the home (*home.LockedError names the holder), and a node
// started meanwhile stops at boot instead of racing it. The bundle (a local file,
// or an http(s) URL that must carry ?checksum=sha256:<hex> unless
// --insecure-no-checksum, fetched with staging.Download: staging's HTTP client,
// timeouts, CA file, redirect rules and caps) is read strictly with staging's tar
// reader (staging.WalkTar, the checks of an upgrade archive): manifest.json first,
// then only the files it lists, each a regular file of exactly the listed size;
// "..", absolute paths, links, devices, duplicates, unlisted entries and the
// byte/entry caps of the staging configuration (MaxArchiveBytes,
// MaxArchiveEntries, MaxBinaryBytes for each binary) reject the whole bundle.
// Every file is hashed while it is unpacked into a temp directory under
// <home>/cosmovisor and must match its manifest sha256. Nothing is placed until
// the whole bundle has been read and checked against the home: a different file
// already at an upgrade's path (recorded or not), a completion record naming
// another sha256, or a different genesis binary is an error naming both hashes;
// so is a symlink planted at upgrades/, an upgrade directory or its bin/
// (staging.CheckInstallDirs, Fetch's own check). Then each binary passes the header
// check for this OS/arch and the bounded preflight (staging.Fetch from a file://
// source pinned to the manifest sha256 into a scratch home, so the preflight runs
// with a scratch --home and HOME) and is hard-linked into place, which never
// replaces a file: an upgrade binary at Layout.UpgradeBin(name), the genesis binary
// at genesis/bin/<daemon> only if nothing is there.
//
// import writes no completion record. A bundle is unauthenticated input (a URL pin
// only says it is the file the operator meant), and the only proof invisor accepts
// is one made against the plan in force: when a plan is in force, the node's
// staging verifies the placed binary against it (the plan's checksum, or the binary
// in the plan's own archive; the operator's word only when the plan names no
// binary for this platform), exactly as for a binary placed by hand, and records
// it. Until then `invisor status` shows it as placed, not yet trusted. A failure
// midway keeps the binaries already placed; running import again skips them.

const (
	bundleManifestName = "manifest.json"
	bundleFormat       = 1
	genesisEntryName   = "genesis"
	maxManifestBytes   = 1 << 20

	// bundleArchive is the staging.Source archive key of a bundle, whatever its
	// file name or URL says.
	bundleArchive = "tar.gz"

	flagInsecureNoChecksum = "insecure-no-checksum"
)

// BundleManifest is manifest.json, the first entry of a bundle.
type BundleManifest struct {
	Format   int           `json:"format"`  // 1
	Daemon   string        `json:"daemon"`  // binary name under bin/ in the bundle
	Created  time.Time     `json:"created"` // when export ran
	Binaries []BundleEntry `json:"binaries"`
}

// BundleEntry is one binary of a bundle. Everything but Path, SHA256 and Size is
// what the exporting home's completion record said, for the operator to read:
// import trusts none of it.
type BundleEntry struct {
	// Name is "genesis" for genesis/bin/<daemon>, else the upgrade (plan) name.
	Name string `json:"name"`
	// Path is genesis/bin/<daemon> or upgrades/<home.DirName(name)>/bin/<daemon>.
	Path   string `json:"path"`
	SHA256 string `json:"sha256"`
	Size   int64  `json:"size"`
	Height int64  `json:"height,omitempty"` // upgrade height, from the completion record
	// InfoSHA256 is the sha256 of the plan info the record was made for.
	InfoSHA256 string `json:"info_sha256,omitempty"`
	Version    string `json:"version,omitempty"` // preflight output recorded at staging
}

func (b BundleEntry) genesis() bool { return strings.HasPrefix(b.Path, "genesis/") }

// upgradeEntryPath is the bundle's archive path for the upgrade directory dir.
func upgradeEntryPath(dir, daemon string) string { return "upgrades/" + dir + "/bin/" + daemon }

// bundlePaths returns the archive paths b may have: genesis/bin/<daemon>, or the
// upgrade directory home.DirName maps b.Name to, recased or not.
func bundlePaths(daemon string, b BundleEntry) ([]string, error) {
	if b.Name == genesisEntryName && b.genesis() {
		return []string{"genesis/bin/" + daemon}, nil
	}
	var out []string
	var first error
	for _, keepCase := range []bool{false, true} {
		d, err := home.DirName(b.Name, keepCase)
		if err != nil {
			if first == nil {
				first = err
			}
			continue
		}
		if p := upgradeEntryPath(d, daemon); len(out) == 0 || out[0] != p {
			out = append(out, p)
		}
	}
	if len(out) == 0 {
		return nil, first
	}
	return out, nil
}

// parseManifest parses and checks manifest.json.
func parseManifest(data []byte) (BundleManifest, error) {
	var m BundleManifest
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&m); err != nil {
		return m, fmt.Errorf("bundle %s: %w", bundleManifestName, err)
	}
	if dec.More() {
		return m, fmt.Errorf("bundle %s: trailing data after the JSON object", bundleManifestName)
	}
	if m.Format != bundleFormat {
		return m, fmt.Errorf("bundle %s: format %d, this binary reads format %d", bundleManifestName, m.Format, bundleFormat)
	}
	if err := home.ValidDaemonName(m.Daemon); err != nil {
		return m, fmt.Errorf("bundle %s: %w", bundleManifestName, err)
	}
	if len(m.Binaries) == 0 {
		return m, fmt.Errorf("bundle %s: lists no binaries", bundleManifestName)
	}
	names, paths := map[string]bool{}, map[string]bool{}
	genesis := 0
	for i, b := range m.Binaries {
		want, err := bundlePaths(m.Daemon, b)
		if err != nil {
			return m, fmt.Errorf("bundle %s: binary %d: %w", bundleManifestName, i, err)
		}
		ok := false
		for _, w := range want {
			ok = ok || b.Path == w
		}
		if !ok {
			return m, fmt.Errorf("bundle %s: binary %q has path %q, want %q", bundleManifestName, b.Name, b.Path, strings.Join(want, `" or "`))
		}
		key := "upgrade:" + b.Name
		if b.genesis() {
			genesis++
			key = "genesis"
		}
		if names[key] || paths[b.Path] {
			return m, fmt.Errorf("bundle %s: %q is listed twice", bundleManifestName, b.Name)
		}
		names[key], paths[b.Path] = true, true
		if len(b.SHA256) != 64 || strings.ToLower(b.SHA256) != b.SHA256 {
			return m, fmt.Errorf("bundle %s: binary %q: sha256 %q is not 64 lower-case hex digits", bundleManifestName, b.Name, b.SHA256)
		}
		if _, err := hex.DecodeString(b.SHA256); err != nil {
			return m, fmt.Errorf("bundle %s: binary %q: sha256: %w", bundleManifestName, b.Name, err)
		}
		if b.Size <= 0 {
			return m, fmt.Errorf("bundle %s: binary %q: size %d", bundleManifestName, b.Name, b.Size)
		}
		if b.Height < 0 {
			return m, fmt.Errorf("bundle %s: binary %q: height %d", bundleManifestName, b.Name, b.Height)
		}
	}
	if genesis > 1 {
		return m, fmt.Errorf("bundle %s: more than one genesis binary", bundleManifestName)
	}
	return m, nil
}

// unpacked is a verified binary read from a bundle.
type unpacked struct {
	BundleEntry
	File string // where it was unpacked (a scratch directory)
}

// readBundle reads a tar.gz bundle strictly (see the comment at the top) with
// staging's tar reader under cfg's caps, unpacks each listed binary into dir as a
// flat file bin-<i>, and checks its size and sha256.
func readBundle(ctx context.Context, cfg staging.Config, r io.Reader, dir string) (BundleManifest, []unpacked, error) {
	var (
		m            BundleManifest
		haveManifest bool
		byPath       = map[string]int{}
		seen         = map[string]bool{}
		out          []unpacked
	)
	err := staging.WalkTar(ctx, cfg, bundleArchive, r, func(f staging.TarFile) error {
		if seen[f.Name] {
			return &staging.ArchiveError{Entry: f.Header, Reason: "is a duplicate of an earlier entry"}
		}
		seen[f.Name] = true
		if !haveManifest {
			if f.Name != bundleManifestName {
				return fmt.Errorf("the first file is %q, want %s", f.Header, bundleManifestName)
			}
			if f.Size > maxManifestBytes {
				return fmt.Errorf("%s is %d bytes, more than %d: %w", bundleManifestName, f.Size, maxManifestBytes, staging.ErrTooLarge)
			}
			data, err := io.ReadAll(f.Body)
			if err != nil {
				return fmt.Errorf("reading %s: %w", bundleManifestName, err)
			}
			if m, err = parseManifest(data); err != nil {
				return err
			}
			for i, b := range m.Binaries {
				byPath[b.Path] = i
			}
			haveManifest = true
			return nil
		}
		i, ok := byPath[f.Name]
		if !ok {
			return &staging.ArchiveError{Entry: f.Header, Reason: "is not listed in " + bundleManifestName}
		}
		b := m.Binaries[i]
		if f.Size > cfg.MaxBinaryBytes {
			return &staging.SizeError{What: fmt.Sprintf("binary %s (%d bytes)", f.Header, f.Size), Limit: cfg.MaxBinaryBytes, Field: "MaxBinaryBytes"}
		}
		if f.Size != b.Size {
			return fmt.Errorf("%s is %d bytes, the manifest says %d", f.Header, f.Size, b.Size)
		}
		file := filepath.Join(dir, fmt.Sprintf("bin-%d", i))
		sum, err := writeHashed(file, f.Body, f.Size)
		if err != nil {
			return fmt.Errorf("unpacking %s: %w", f.Header, err)
		}
		if sum != b.SHA256 {
			return fmt.Errorf("%s has sha256 %s, %s says %s (a corrupt or tampered bundle): %w",
				f.Header, sum, bundleManifestName, b.SHA256, staging.ErrChecksumMismatch)
		}
		out = append(out, unpacked{BundleEntry: b, File: file})
		return nil
	})
	if err != nil {
		return m, nil, err
	}
	if !haveManifest {
		return m, nil, fmt.Errorf("no %s", bundleManifestName)
	}
	if len(out) != len(m.Binaries) {
		for _, b := range m.Binaries {
			if !seen[b.Path] {
				return m, nil, fmt.Errorf("%s lists %s (%q), which the bundle does not contain", bundleManifestName, b.Path, b.Name)
			}
		}
	}
	return m, out, nil
}

// writeHashed writes exactly size bytes of r, a stream (the tar entry), to a new
// file and returns their sha256, computed as they are written.
func writeHashed(file string, r io.Reader, size int64) (string, error) {
	f, err := os.OpenFile(file, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o700)
	if err != nil {
		return "", err
	}
	h := sha256.New()
	n, err := io.CopyN(io.MultiWriter(f, h), r, size)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return "", err
	}
	if n != size {
		return "", io.ErrUnexpectedEOF
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// ---- export ----

func exportCmd(opts config.Options) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "export <bundle.tar.gz>",
		Short: "Write the genesis binary and every recorded upgrade binary of this home into a bundle with a checksum manifest",
		Long: `Write a tar.gz holding manifest.json (name, path, sha256, size, height of each binary),
the genesis binary (cosmovisor/genesis/bin/<daemon>) and the binary of every upgrade under
cosmovisor/upgrades whose completion record proves it. An upgrade without one (placed by
hand or by ` + "`invisor import`" + ` and not verified against its plan yet, or changed since) is
refused: ` + "`invisor status`" + ` shows why; move it out of cosmovisor/upgrades to export the rest.
Every byte is re-hashed as it is written and must match the record.

` + "`invisor import`" + ` on another home places the binaries, so a node that syncs from genesis has
every binary it will need. The bundle is written to a temp file beside it and renamed into place.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			e, err := loadValidEnv(cmd, opts)
			if err != nil {
				return err
			}
			l, err := e.cfg.Staging.Layout()
			if err != nil {
				return err
			}
			m, sum, err := exportBundle(cmd.Context(), l, args[0], e.appName())
			if err != nil {
				return err
			}
			abs, _ := filepath.Abs(args[0])
			for _, b := range m.Binaries {
				h := "-"
				if b.Height > 0 {
					h = fmt.Sprint(b.Height)
				}
				fmt.Fprintf(e.out, "  %-12s height %-8s sha256 %s  %s\n", b.Name, h, b.SHA256, b.Path)
			}
			fmt.Fprintf(e.out, "wrote %s: %d binaries, sha256 %s\nimport it with: %s invisor import %s   (or an http(s) URL serving it, with ?checksum=sha256:%s)\n",
				abs, len(m.Binaries), sum, e.appName(), abs, sum)
			return nil
		},
	}
	return cmd
}

// provenRecord returns the record of install in if it proves the binary for the
// plan it names, as far as that can be told without the plan's info: a record of
// this format whose source is a proof, complete, for a plan whose name maps to
// that very directory, beside a regular executable. export re-hashes the bytes
// against it.
func provenRecord(l home.Layout, in home.Installed) (home.Record, error) {
	if in.Err != nil {
		return home.Record{}, in.Err
	}
	r := in.Record
	switch {
	case r.Format < home.RecordFormat || !r.Source.Valid():
		return r, fmt.Errorf("its completion record (format %d, source %q) is not a proof this version accepts", r.Format, r.Source)
	case r.Plan == "" || len(r.SHA256) != 64 || r.Size <= 0:
		return r, errors.New("its completion record is incomplete")
	}
	d, err := l.DirName(r.Plan)
	if err != nil {
		return r, fmt.Errorf("its completion record names plan %q: %w", r.Plan, err)
	}
	if d != filepath.Base(in.Dir) {
		return r, fmt.Errorf("its completion record is for plan %q, whose directory is %s", r.Plan, filepath.Join(l.UpgradesRoot(), d))
	}
	f, err := home.OpenRegular(in.Bin)
	if err != nil {
		return r, err
	}
	f.Close()
	return r, nil
}

// exportBundle writes the bundle of the home l to out and returns its manifest and
// sha256. app names the chain binary in hints.
func exportBundle(ctx context.Context, l home.Layout, out, app string) (BundleManifest, string, error) {
	daemon := l.Daemon()
	m := BundleManifest{Format: bundleFormat, Daemon: daemon, Created: time.Now().UTC().Truncate(time.Second)}
	var files []string

	gen := l.GenesisBin()
	gf, err := os.Open(gen)
	if errors.Is(err, fs.ErrNotExist) {
		return m, "", fmt.Errorf("no genesis binary at %s: start the node once (it copies itself there) or place the chain's genesis binary there", gen)
	}
	if err != nil {
		return m, "", err
	}
	fi, err := gf.Stat()
	if err == nil && !fi.Mode().IsRegular() {
		err = fmt.Errorf("genesis binary %s is not a regular file", gen)
	}
	var gd home.Digest
	if err == nil {
		gd, err = home.HashFile(ctx, gf)
	}
	gf.Close()
	if err != nil {
		return m, "", err
	}
	m.Binaries = append(m.Binaries, BundleEntry{Name: genesisEntryName, Path: "genesis/bin/" + daemon, SHA256: gd.SHA256, Size: gd.Size})
	files = append(files, gen)

	type upgrade struct {
		rec home.Record
		in  home.Installed
	}
	var ups []upgrade
	var refused []string
	for _, in := range l.Installs() {
		rec, err := provenRecord(l, in)
		if err != nil {
			refused = append(refused, fmt.Sprintf("%s is not proven by a completion record, refusing to export it: %v. "+
				"It is trusted once the node verifies it against its plan in force (`%s invisor status` shows its state); "+
				"or move %s out of %s and export again",
				in.Bin, err, app, in.Dir, l.UpgradesRoot()))
			continue
		}
		ups = append(ups, upgrade{rec: rec, in: in})
	}
	if len(refused) > 0 {
		return m, "", fmt.Errorf("nothing exported: %s", strings.Join(refused, "; "))
	}
	sort.Slice(ups, func(i, j int) bool {
		if ups[i].rec.Height != ups[j].rec.Height {
			return ups[i].rec.Height < ups[j].rec.Height
		}
		return ups[i].rec.Plan < ups[j].rec.Plan
	})
	for _, u := range ups {
		m.Binaries = append(m.Binaries, BundleEntry{Name: u.rec.Plan, Path: upgradeEntryPath(filepath.Base(u.in.Dir), daemon),
			SHA256: u.rec.SHA256, Size: u.rec.Size, Height: u.rec.Height, InfoSHA256: u.rec.InfoHash, Version: u.rec.Preflight})
		files = append(files, u.in.Bin)
	}
	mj, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return m, "", err
	}
	if _, err := parseManifest(mj); err != nil { // what import will check
		return m, "", err
	}

	abs, err := filepath.Abs(out)
	if err != nil {
		return m, "", err
	}
	tmpName := home.TempName(abs)
	tmp, err := os.OpenFile(tmpName, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return m, "", err
	}
	ok := false
	defer func() {
		if !ok {
			tmp.Close()
			os.Remove(tmpName)
		}
	}()
	bh := sha256.New()
	// BestSpeed: on chain binaries it is about 3x faster than the default level
	// for a bundle about 7% larger.
	zw, err := gzip.NewWriterLevel(io.MultiWriter(tmp, bh), gzip.BestSpeed)
	if err != nil {
		return m, "", err
	}
	tw := tar.NewWriter(zw)
	hdr := func(name string, size int64, mode int64) *tar.Header {
		return &tar.Header{Typeflag: tar.TypeReg, Name: name, Size: size, Mode: mode, ModTime: m.Created, Format: tar.FormatPAX}
	}
	if err := tw.WriteHeader(hdr(bundleManifestName, int64(len(mj)), 0o644)); err != nil {
		return m, "", err
	}
	if _, err := tw.Write(mj); err != nil {
		return m, "", err
	}
	for i, b := range m.Binaries {
		if err := tw.WriteHeader(hdr(b.Path, b.Size, 0o755)); err != nil {
			return m, "", err
		}
		if err := copyVerified(ctx, tw, files[i], b); err != nil {
			return m, "", err
		}
	}
	if err := tw.Close(); err != nil {
		return m, "", err
	}
	if err := zw.Close(); err != nil {
		return m, "", err
	}
	if err := tmp.Chmod(0o644); err != nil {
		return m, "", err
	}
	if err := tmp.Sync(); err != nil {
		return m, "", err
	}
	if err := tmp.Close(); err != nil {
		return m, "", err
	}
	if err := os.Rename(tmpName, abs); err != nil {
		return m, "", err
	}
	ok = true
	return m, hex.EncodeToString(bh.Sum(nil)), home.SyncDir(filepath.Dir(abs))
}

// copyVerified copies file into w, hashing the bytes as they are written, and
// checks that they are exactly the size and sha256 of b (for an upgrade, what its
// completion record says). The archive is discarded on a mismatch.
func copyVerified(ctx context.Context, w io.Writer, file string, b BundleEntry) error {
	f, err := os.Open(file)
	if err != nil {
		return err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(w, h), io.LimitReader(f, b.Size))
	if err != nil {
		return fmt.Errorf("%s: %w", file, err)
	}
	if err := ctx.Err(); err != nil {
		return context.Cause(ctx)
	}
	if got := hex.EncodeToString(h.Sum(nil)); n != b.Size || got != b.SHA256 {
		what := "its completion record says"
		if b.genesis() {
			what = "it had when export started"
		}
		return fmt.Errorf("%s is not the file %s (%d bytes, sha256 %s): read %d bytes, sha256 %s; it was modified, "+
			"so nothing was exported: remove it and stage it again (or, if it changed while export ran, run export again)", file, what, b.Size, b.SHA256, n, got)
	}
	if extra, _ := f.Read(make([]byte, 1)); extra > 0 {
		return fmt.Errorf("%s is larger than the %d bytes it should have (it was modified), so nothing was exported: remove it and stage it again", file, b.Size)
	}
	return nil
}

// ---- import ----

func importCmd(opts config.Options) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "import <bundle.tar.gz | https://...?checksum=sha256:HEX>",
		Short: "Place the genesis and past upgrade binaries from a bundle made by `invisor export`; the node verifies each against its plan",
		Long: `Unpack a bundle made by ` + "`invisor export`" + ` into this home. Each upgrade binary is placed at
cosmovisor/upgrades/<name>/bin/<daemon> once it matches its manifest sha256, passes the header
check for this OS/arch and a bounded preflight (` + "`<bin> version`" + ` with a scratch --home and
HOME); the genesis binary goes to cosmovisor/genesis/bin/<daemon> the same way if there is none.
Placing never replaces a file: a different binary already there, or a completion record naming
another sha256, is an error naming both hashes. Binaries already in place with the same sha256
are skipped, so import can be run again.

Import writes no completion record: a bundle is not authenticated, and invisor trusts a binary
only on a proof made against the plan in force. When a plan is in force, the node verifies the
placed binary against it (the plan's checksum, or the binary in the plan's own archive; the
operator's word only when the plan names no binary for this platform), exactly as for a binary
placed by hand, and records it. Until then ` + "`invisor status`" + ` shows it as placed, not yet trusted.

The bundle is a local file or an http(s) URL. A URL must pin the bundle with
?checksum=sha256:HEX (export prints it) unless --insecure-no-checksum is given; a local
file may be pinned with --checksum.

The node must be stopped: import holds the home lock for its whole run, so a node cannot
start half-way through.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			e, err := loadValidEnv(cmd, opts)
			if err != nil {
				return err
			}
			sum, _ := cmd.Flags().GetString(flagChecksum)
			insecure, _ := cmd.Flags().GetBool(flagInsecureNoChecksum)
			im := importer{cfg: e.cfg.Staging, out: e.out, log: stagingLog{e}, app: e.appName()}
			return im.run(cmd.Context(), args[0], sum, insecure)
		},
	}
	cmd.Flags().String(flagChecksum, "", "expected checksum of a local bundle file, sha256:HEX or sha512:HEX")
	cmd.Flags().Bool(flagInsecureNoChecksum, false, "accept a bundle URL without ?checksum= (the binaries are still checked against the manifest, which is then unauthenticated)")
	config.AddFlags(cmd.Flags())
	return cmd
}

// importer places a bundle's binaries into cfg.Home.
type importer struct {
	cfg staging.Config // also the caps of the bundle (MaxArchiveBytes, MaxArchiveEntries, MaxBinaryBytes)
	out io.Writer
	log staging.Logger
	app string
}

// errNodeRunning is returned by import when another process holds the home lock.
var errNodeRunning = errors.New("the node is running")

// placement is a binary of the bundle and where it goes in the home.
type placement struct {
	unpacked
	dest string
}

func (im importer) run(ctx context.Context, src, checksum string, insecure bool) error {
	l, err := im.cfg.Layout()
	if err != nil {
		return err
	}
	isURL := strings.HasPrefix(src, "http://") || strings.HasPrefix(src, "https://")
	if isURL && checksum != "" {
		return fmt.Errorf("--checksum is for a local bundle; pin a URL with ?checksum=sha256:HEX")
	}
	if !isURL && strings.Contains(src, "://") {
		return fmt.Errorf("bundle %q: only http(s) URLs or local paths are accepted", src)
	}
	var want *staging.Checksum
	if checksum != "" {
		c, err := staging.ParseChecksum(checksum)
		if err != nil || !c.Strong() {
			return fmt.Errorf("--checksum %q: want sha256:HEX or sha512:HEX", checksum)
		}
		want = &c
	}

	// The home lock, held to the end (see the comment at the top).
	lock, err := l.Acquire(os.Environ())
	if locked := (*home.LockedError)(nil); errors.As(err, &locked) {
		return fmt.Errorf("%w: %w; run import again once it is stopped, then start the node: "+
			"import lays out genesis/ and upgrades/, which the node reads at boot", errNodeRunning, err)
	}
	if err != nil {
		return err
	}
	defer lock.Release()

	scratch, err := os.MkdirTemp(l.Root(), staging.TempPrefix+"import-")
	if err != nil {
		return fmt.Errorf("scratch directory under %s: %w", l.Root(), err)
	}
	defer os.RemoveAll(scratch)

	// 1. The bundle.
	shown := src
	var f *os.File
	if isURL {
		shown = staging.Redact(src)
		file := filepath.Join(scratch, "bundle")
		if err := im.download(ctx, src, insecure, file); err != nil {
			return err
		}
		if f, err = os.Open(file); err != nil {
			return err
		}
	} else {
		if f, err = os.Open(src); err != nil {
			return err
		}
		if want != nil {
			if err := checkFileSum(ctx, f, *want); err != nil {
				f.Close()
				return fmt.Errorf("bundle %s: %w", src, err)
			}
		}
	}
	bdir := filepath.Join(scratch, "unpacked")
	if err := os.Mkdir(bdir, 0o700); err != nil {
		f.Close()
		return err
	}
	m, bins, err := readBundle(ctx, im.cfg, f, bdir)
	f.Close()
	if err != nil {
		return fmt.Errorf("bundle %s: %w", shown, err)
	}
	if m.Daemon != l.Daemon() {
		fmt.Fprintf(im.out, "note: the bundle names the binary %q; placing it as %q\n", m.Daemon, l.Daemon())
	}

	// 2. Check the whole bundle against the home before placing anything.
	todo, problems := im.check(ctx, l, bins)
	if len(problems) > 0 {
		return fmt.Errorf("nothing imported: %s", strings.Join(problems, "; "))
	}

	// 3. Verify and place: the upgrades, then the genesis binary.
	sort.SliceStable(todo, func(i, j int) bool { return !todo[i].genesis() && todo[j].genesis() })
	var done []string
	upgrades := 0
	for _, p := range todo {
		if err := im.install(ctx, l, p); err != nil {
			if len(done) > 0 {
				return fmt.Errorf("%w (already placed: %s; running import again skips them)", err, strings.Join(done, ", "))
			}
			return err
		}
		done = append(done, p.Name)
		if !p.genesis() {
			upgrades++
		}
	}
	fmt.Fprintf(im.out, "imported %d of %d binaries from %s\n", len(done), len(bins), shown)
	if upgrades > 0 {
		fmt.Fprintf(im.out, "the upgrade binaries are placed, not yet trusted: the node verifies each against its plan when that plan is in force "+
			"(the plan's checksum or archive) and records it; `%s invisor status` shows them as placed until then\n", im.app)
	}
	return nil
}

// check compares each binary of the bundle with what the home has at its place,
// and returns the ones to place, or the problems that stop the whole import.
func (im importer) check(ctx context.Context, l home.Layout, bins []unpacked) ([]placement, []string) {
	var todo []placement
	var problems []string
	dests := map[string]string{}
	for _, b := range bins {
		if b.genesis() {
			gen := l.GenesisBin()
			have, exists, err := hashAt(ctx, gen, true)
			switch {
			case !exists:
				todo = append(todo, placement{unpacked: b, dest: gen})
			case err != nil:
				problems = append(problems, fmt.Sprintf("genesis binary %s: %v", gen, err))
			case have != b.SHA256:
				problems = append(problems, fmt.Sprintf("genesis binary %s has sha256 %s, the bundle's has sha256 %s; it is never overwritten: if the bundle is right, move the existing one away and import again", gen, have, b.SHA256))
			default:
				fmt.Fprintf(im.out, "genesis binary already in place: %s (sha256 %s)\n", gen, have)
			}
			continue
		}
		bin, err := l.UpgradeBin(b.Name)
		if err != nil {
			var un *home.UnmappableNameError
			if errors.As(err, &un) {
				err = fmt.Errorf("%w; %s", err, un.Advice())
			}
			problems = append(problems, fmt.Sprintf("upgrade %q: %v", b.Name, err))
			continue
		}
		if other, dup := dests[bin]; dup {
			problems = append(problems, fmt.Sprintf("upgrades %q and %q both go to %s in this home (COSMOVISOR_DISABLE_RECASE=%v here); import one of them by hand", other, b.Name, bin, l.Options().DisableRecase))
			continue
		}
		dests[bin] = b.Name
		dir, _ := l.UpgradeDir(b.Name)
		if err := staging.CheckInstallDirs(l, b.Name); err != nil {
			problems = append(problems, fmt.Sprintf("upgrade %q: %v", b.Name, err))
			continue
		}
		rec, rerr := l.ReadRecord(b.Name)
		hasRec := rerr == nil
		have, exists, err := hashAt(ctx, bin, false)
		switch {
		case exists && err != nil:
			problems = append(problems, fmt.Sprintf("upgrade %q: %s is in the way: %v; remove %s and import again", b.Name, bin, err, dir))
		case exists && have != b.SHA256 && hasRec && rec.SHA256 == have:
			problems = append(problems, fmt.Sprintf("upgrade %q: %s is recorded for plan %q at height %d with sha256 %s, the bundle's has sha256 %s; it is never overwritten: if the bundle's is the right one, remove %s and import again",
				b.Name, bin, rec.Plan, rec.Height, have, b.SHA256, dir))
		case exists && have != b.SHA256:
			problems = append(problems, fmt.Sprintf("upgrade %q: a different file is in the way: %s has sha256 %s, the bundle's has sha256 %s; it is never overwritten: if the bundle's is the right one, remove %s and import again",
				b.Name, bin, have, b.SHA256, dir))
		case exists:
			state := "placed, not yet trusted"
			if hasRec && rec.SHA256 == have {
				state = fmt.Sprintf("recorded for plan %q at height %d", rec.Plan, rec.Height)
			}
			fmt.Fprintf(im.out, "upgrade %q already in place (%s): %s (sha256 %s)\n", b.Name, state, bin, have)
		case hasRec && rec.SHA256 != b.SHA256:
			problems = append(problems, fmt.Sprintf("upgrade %q: the completion record beside %s (plan %q, height %d) names sha256 %s, the bundle's has sha256 %s; remove %s and import again",
				b.Name, bin, rec.Plan, rec.Height, rec.SHA256, b.SHA256, dir))
		default:
			todo = append(todo, placement{unpacked: b, dest: bin})
		}
	}
	return todo, problems
}

// hashAt hashes the regular file at p (following a final symlink only if follow).
// exists is false, with no error, when there is nothing at p.
func hashAt(ctx context.Context, p string, follow bool) (sum string, exists bool, err error) {
	if _, err := os.Lstat(p); errors.Is(err, fs.ErrNotExist) {
		return "", false, nil
	}
	flag := os.O_RDONLY
	if !follow {
		flag |= syscall.O_NOFOLLOW
	}
	f, err := os.OpenFile(p, flag, 0)
	if errors.Is(err, syscall.ELOOP) {
		return "", true, fmt.Errorf("%s is a symlink", p)
	}
	if err != nil {
		return "", true, err
	}
	defer f.Close()
	if fi, err := f.Stat(); err != nil {
		return "", true, err
	} else if !fi.Mode().IsRegular() {
		return "", true, fmt.Errorf("%s is not a regular file (%v)", p, fi.Mode().Type())
	}
	d, err := home.HashFile(ctx, f)
	if err != nil {
		return "", true, err
	}
	return d.SHA256, true, nil
}

// fileSource is the file:// source of an unpacked binary, pinned to its manifest hash.
func fileSource(b unpacked) string {
	u := url.URL{Scheme: "file", Path: b.File, RawQuery: url.Values{"checksum": {"sha256:" + b.SHA256}}.Encode()}
	return u.String()
}

// install verifies p's binary (the manifest sha256, header check, bounded
// preflight: staging.Fetch into a scratch home under the cosmovisor root, from a
// file:// source pinned to the manifest sha256) and links it to p.dest, which it
// never replaces. It writes no completion record.
func (im importer) install(ctx context.Context, l home.Layout, p placement) error {
	what := fmt.Sprintf("upgrade %q", p.Name)
	if p.genesis() {
		what = "the genesis binary"
	}
	fmt.Fprintf(im.out, "verifying %s ...\n", what)
	scratch, err := os.MkdirTemp(l.Root(), staging.TempPrefix+"import-bin-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(scratch)
	scfg := im.cfg
	scfg.Home, scfg.AllowDownload, scfg.AllowFileURLs, scfg.TrustPlacedBinaries = scratch, true, true, false
	inst, err := staging.Fetch(ctx, scfg, staging.Plan{Name: p.Name, Height: p.Height, Info: planInfo(fileSource(p.unpacked))}, im.log)
	if err != nil {
		return fmt.Errorf("importing %s: %w", what, err)
	}
	if inst.SHA256 != p.SHA256 {
		return fmt.Errorf("importing %s: verified sha256 %s, the bundle's is %s", what, inst.SHA256, p.SHA256)
	}
	os.Remove(p.File) // the verified copy is what is placed
	if err := linkInto(inst.Path, p.dest); err != nil {
		return fmt.Errorf("importing %s: %w", what, err)
	}
	if p.genesis() {
		fmt.Fprintf(im.out, "genesis binary: %s\n  sha256 %s, %d bytes; preflight: %s\n", p.dest, inst.SHA256, inst.Size, inst.Record.Preflight)
		return nil
	}
	fmt.Fprintf(im.out, "placed %q: %s\n  sha256 %s, %d bytes; preflight: %s; not yet trusted: the node verifies it against plan %q when that plan is in force\n",
		p.Name, p.dest, inst.SHA256, inst.Size, inst.Record.Preflight, p.Name)
	return nil
}

// linkInto puts the file src at dest with a hard link, which fails rather than
// replace anything at dest, creating dest's directories, and fsyncs what changed.
func linkInto(src, dest string) error {
	dir := filepath.Dir(dest)
	if err := mkdirAllSynced(dir); err != nil {
		return err
	}
	err := os.Link(src, dest)
	if errors.Is(err, syscall.EXDEV) {
		// dest's directory is on another filesystem: a crash-safe copy beside it first.
		tmp := home.TempName(dest)
		if _, err = home.CopyFile(src, tmp, 0o755); err == nil {
			err = os.Link(tmp, dest)
		}
		os.Remove(tmp)
	}
	if errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("%s appeared during import; it is left as it is", dest)
	}
	if err != nil {
		return err
	}
	return home.SyncDir(dir)
}

// mkdirAllSynced creates dir and its missing parents, and fsyncs the parent of each
// directory it created.
func mkdirAllSynced(dir string) error {
	var missing []string
	for d := dir; ; d = filepath.Dir(d) {
		if _, err := os.Lstat(d); err == nil || filepath.Dir(d) == d {
			break
		}
		missing = append(missing, d)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for i := len(missing) - 1; i >= 0; i-- {
		if err := home.SyncDir(filepath.Dir(missing[i])); err != nil {
			return err
		}
	}
	return nil
}

// checkFileSum hashes f with the algorithm of want (staging's, as for a
// download) and rewinds it.
func checkFileSum(ctx context.Context, f *os.File, want staging.Checksum) error {
	var extra []hash.Hash
	if want.Algo != "sha256" {
		extra = append(extra, want.NewHash())
	}
	d, err := home.HashFile(ctx, f, extra...)
	if err != nil {
		return err
	}
	got := d.SHA256
	if len(extra) > 0 {
		got = hex.EncodeToString(extra[0].Sum(nil))
	}
	if got != want.Hex {
		return fmt.Errorf("%s is %s:%s, --checksum says %s: %w", f.Name(), want.Algo, got, want, staging.ErrChecksumMismatch)
	}
	_, err = f.Seek(0, io.SeekStart)
	return err
}

// download fetches an http(s) bundle to file with staging's URL and checksum
// policy (staging.ParseSource) and its downloader (staging.Download: its HTTP
// client, timeouts, CA file, redirect rules, MaxArchiveBytes cap and checksum
// check). A URL must be pinned with sha256 or sha512 unless insecure.
func (im importer) download(ctx context.Context, raw string, insecure bool, file string) error {
	pcfg := im.cfg
	pcfg.AllowFileURLs, pcfg.RequireChecksum = false, !insecure
	src, err := staging.ParseSource(raw, pcfg)
	if err != nil {
		if errors.Is(err, staging.ErrNoChecksum) {
			return fmt.Errorf("%w; export prints the URL suffix ?checksum=sha256:<hex> to use, or pass --insecure-no-checksum", err)
		}
		return err
	}
	shown := staging.Redact(src.URL.String())
	if src.Checksum == nil {
		fmt.Fprintln(im.out, "warning: the bundle URL is not pinned (--insecure-no-checksum); the binaries are checked only against its own manifest")
	} else if !src.Checksum.Strong() {
		return fmt.Errorf("bundle URL %s pinned with %s, which is too weak; use sha256 or sha512", shown, src.Checksum.Algo)
	}
	src.Archive = bundleArchive // the MaxArchiveBytes cap, whatever the URL's name says
	d, err := staging.Download(ctx, pcfg, src, file)
	var mismatch *staging.ChecksumError
	if errors.As(err, &mismatch) {
		return fmt.Errorf("bundle %s is %s:%s, the URL pins %s:%s (wrong file or tampering); nothing was imported: %w",
			shown, mismatch.Algo, mismatch.Actual, mismatch.Algo, mismatch.Expected, staging.ErrChecksumMismatch)
	}
	if err != nil {
		return fmt.Errorf("bundle: %w", err)
	}
	fmt.Fprintf(im.out, "downloaded %s: %d bytes\n", shown, d.Size)
	return nil
}
