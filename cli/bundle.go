package cli

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"net/http"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/invisor/invisor"
	"github.com/invisor/invisor/staging"
)

// Bundles: `invisor export` and `invisor import`
//
// A bundle is a tar.gz holding, first, manifest.json (BundleManifest) and then one
// regular file per binary at the path the manifest names:
//
//	manifest.json
//	genesis/bin/<daemon>
//	upgrades/<SafeName(name)>/bin/<daemon>
//
// so that a node syncing from genesis has every binary it will need. Only the
// binaries travel (not lib/ or other files of an upgrade directory).
//
// export takes the genesis binary and every upgrade install staging.Trusted accepts
// (an untrusted install is refused, naming it), re-hashes each byte as it is written
// into the archive against the manifest, and writes the archive to a temp file
// beside the output that is fsynced and renamed over it.
//
// import refuses to run while a node holds the staging lock on the home, and holds
// that lock itself throughout: every binary is recorded by this command, so the
// result is trusted when it returns, and a node starting meanwhile fails at boot
// with ErrLocked instead of racing it. The bundle (a local file, or an http(s) URL
// that must carry ?checksum=sha256:<hex> unless --insecure-no-checksum) is read
// strictly: manifest.json first, then only the files it lists, each a regular file
// of exactly the listed size; "..", absolute paths, links, devices, duplicates,
// unlisted entries and the byte/entry caps of the staging configuration reject the
// whole bundle. Every file is hashed while it is unpacked into a staging temp
// directory under <home>/cosmovisor and must match its manifest sha256. Nothing is
// installed until the whole bundle has been read and checked against the home (a
// different binary already trusted for an upgrade, an unrecorded binary in the way,
// or a different genesis binary is an error naming both hashes). Then each upgrade
// binary is installed exactly as `stage --file` does (staging.Fetch from a
// file:// source pinned to the manifest sha256 into a scratch home: header check,
// preflight; rename into place; staging.Fetch on the home to record it), and the
// genesis binary, verified the same way, is linked into genesis/bin/<daemon> only
// if nothing is there. Each binary is installed atomically; a failure midway keeps
// the ones already installed (they are trusted) and running import again skips them.

const (
	bundleManifestName = "manifest.json"
	bundleFormat       = 1
	genesisEntryName   = "genesis"
	maxManifestBytes   = 1 << 20

	flagInsecureNoChecksum = "insecure-no-checksum"
)

// BundleManifest is manifest.json, the first entry of a bundle.
type BundleManifest struct {
	Format   int           `json:"format"`  // 1
	Daemon   string        `json:"daemon"`  // binary name under bin/ in the bundle
	Created  time.Time     `json:"created"` // when export ran
	Binaries []BundleEntry `json:"binaries"`
}

// BundleEntry is one binary of a bundle.
type BundleEntry struct {
	// Name is "genesis" for genesis/bin/<daemon>, else the upgrade (plan) name.
	Name string `json:"name"`
	// Path is genesis/bin/<daemon> or upgrades/<SafeName(name)>/bin/<daemon>.
	Path    string `json:"path"`
	SHA256  string `json:"sha256"`
	Size    int64  `json:"size"`
	Height  int64  `json:"height,omitempty"`  // upgrade height, from the completion record
	Version string `json:"version,omitempty"` // preflight output recorded at staging
}

func (b BundleEntry) genesis() bool { return strings.HasPrefix(b.Path, "genesis/") }

// bundleLimits caps what import reads.
type bundleLimits struct {
	Download int64 // compressed bundle
	Total    int64 // unpacked bytes
	Binary   int64 // one binary
	Entries  int64 // tar entries
}

func limitsFrom(c staging.Config) bundleLimits {
	return bundleLimits{Download: c.MaxArchiveBytes, Total: c.MaxArchiveBytes, Binary: c.MaxBinaryBytes, Entries: c.MaxArchiveEntries}
}

func bundlePath(daemon string, b BundleEntry) (string, error) {
	if b.Name == genesisEntryName && strings.HasPrefix(b.Path, "genesis/") {
		return "genesis/bin/" + daemon, nil
	}
	safe, err := staging.SafeName(b.Name)
	if err != nil {
		return "", err
	}
	return "upgrades/" + safe + "/bin/" + daemon, nil
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
	if m.Daemon == "" || m.Daemon == "." || m.Daemon == ".." || strings.ContainsAny(m.Daemon, "/\\\x00") {
		return m, fmt.Errorf("bundle %s: bad daemon name %q", bundleManifestName, m.Daemon)
	}
	if len(m.Binaries) == 0 {
		return m, fmt.Errorf("bundle %s: lists no binaries", bundleManifestName)
	}
	names, paths := map[string]bool{}, map[string]bool{}
	genesis := 0
	for i, b := range m.Binaries {
		want, err := bundlePath(m.Daemon, b)
		if err != nil {
			return m, fmt.Errorf("bundle %s: binary %d: %w", bundleManifestName, i, err)
		}
		if b.Path != want {
			return m, fmt.Errorf("bundle %s: binary %q has path %q, want %q", bundleManifestName, b.Name, b.Path, want)
		}
		key := b.Path
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

// readBundle reads a tar.gz bundle strictly (see the comment at the top), unpacks
// each listed binary into dir as a flat file, and checks its size and sha256.
func readBundle(r io.Reader, dir string, lim bundleLimits) (BundleManifest, []unpacked, error) {
	var m BundleManifest
	zr, err := gzip.NewReader(r)
	if err != nil {
		return m, nil, fmt.Errorf("bundle is not gzip-compressed: %w", err)
	}
	defer zr.Close()
	tr := tar.NewReader(zr)
	var (
		haveManifest bool
		entries      int64
		total        int64
		byPath       = map[string]int{}
		seen         = map[string]bool{}
		out          []unpacked
	)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return m, nil, fmt.Errorf("bundle: reading the archive: %w", err)
		}
		entries++
		if lim.Entries > 0 && entries > lim.Entries {
			return m, nil, fmt.Errorf("bundle: more than %d entries: %w", lim.Entries, staging.ErrTooLarge)
		}
		name, err := bundleEntryName(h.Name)
		if err != nil {
			return m, nil, err
		}
		switch h.Typeflag {
		case tar.TypeDir:
			continue
		case tar.TypeReg, tar.TypeRegA: //nolint:staticcheck // old tar writers
		case tar.TypeXGlobalHeader:
			continue
		default:
			return m, nil, &staging.ArchiveError{Entry: h.Name, Reason: fmt.Sprintf("type %q is not a regular file or directory (links and devices are refused)", string(h.Typeflag))}
		}
		if seen[name] {
			return m, nil, &staging.ArchiveError{Entry: h.Name, Reason: "duplicate entry"}
		}
		seen[name] = true
		if h.Size < 0 {
			return m, nil, &staging.ArchiveError{Entry: h.Name, Reason: "negative size"}
		}
		total += h.Size
		if lim.Total > 0 && total > lim.Total {
			return m, nil, fmt.Errorf("bundle: unpacks to more than %d bytes: %w", lim.Total, staging.ErrTooLarge)
		}
		if !haveManifest {
			if name != bundleManifestName {
				return m, nil, fmt.Errorf("bundle: the first file is %q, want %s", h.Name, bundleManifestName)
			}
			if h.Size > maxManifestBytes {
				return m, nil, fmt.Errorf("bundle: %s is %d bytes, more than %d: %w", bundleManifestName, h.Size, maxManifestBytes, staging.ErrTooLarge)
			}
			data, err := io.ReadAll(io.LimitReader(tr, maxManifestBytes+1))
			if err != nil {
				return m, nil, fmt.Errorf("bundle: reading %s: %w", bundleManifestName, err)
			}
			if m, err = parseManifest(data); err != nil {
				return m, nil, err
			}
			for i, b := range m.Binaries {
				byPath[b.Path] = i
			}
			haveManifest = true
			continue
		}
		i, ok := byPath[name]
		if !ok {
			return m, nil, &staging.ArchiveError{Entry: h.Name, Reason: "not listed in " + bundleManifestName}
		}
		b := m.Binaries[i]
		if lim.Binary > 0 && h.Size > lim.Binary {
			return m, nil, fmt.Errorf("bundle: %s is %d bytes, more than %d: %w", h.Name, h.Size, lim.Binary, staging.ErrTooLarge)
		}
		if h.Size != b.Size {
			return m, nil, fmt.Errorf("bundle: %s is %d bytes, the manifest says %d", h.Name, h.Size, b.Size)
		}
		file := filepath.Join(dir, fmt.Sprintf("bin-%d", i))
		sum, err := writeHashed(file, tr, h.Size)
		if err != nil {
			return m, nil, fmt.Errorf("bundle: unpacking %s: %w", h.Name, err)
		}
		if sum != b.SHA256 {
			return m, nil, fmt.Errorf("bundle: %s has sha256 %s, %s says %s (a corrupt or tampered bundle): %w",
				h.Name, sum, bundleManifestName, b.SHA256, staging.ErrChecksumMismatch)
		}
		out = append(out, unpacked{BundleEntry: b, File: file})
	}
	if !haveManifest {
		return m, nil, fmt.Errorf("bundle: no %s", bundleManifestName)
	}
	if len(out) != len(m.Binaries) {
		for _, b := range m.Binaries {
			if !seen[b.Path] {
				return m, nil, fmt.Errorf("bundle: %s lists %s (%q), which the bundle does not contain", bundleManifestName, b.Path, b.Name)
			}
		}
	}
	return m, out, nil
}

// bundleEntryName returns the clean relative name of a tar entry, or an error for
// absolute paths, "..", backslashes and other unclean names.
func bundleEntryName(raw string) (string, error) {
	n := strings.TrimPrefix(raw, "./")
	n = strings.TrimSuffix(n, "/")
	bad := func(why string) error { return &staging.ArchiveError{Entry: raw, Reason: why} }
	switch {
	case n == "" || n == ".":
		return "", bad("empty name")
	case strings.HasPrefix(n, "/") || filepath.IsAbs(n):
		return "", bad("absolute path")
	case strings.ContainsAny(n, "\\\x00"):
		return "", bad("backslash or NUL in the name")
	}
	for _, part := range strings.Split(n, "/") {
		if part == ".." {
			return "", bad(`".." in the path`)
		}
	}
	if path.Clean(n) != n {
		return "", bad("unclean path")
	}
	return n, nil
}

// writeHashed writes exactly size bytes of r to a new file and returns their sha256.
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

func exportCmd(opts invisor.Options) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "export <bundle.tar.gz>",
		Short: "Write the genesis binary and every trusted upgrade binary of this home into a bundle with a checksum manifest",
		Long: `Write a tar.gz holding manifest.json (name, path, sha256, size, height of each binary),
the genesis binary (cosmovisor/genesis/bin/<daemon>) and the binary of every upgrade under
cosmovisor/upgrades that has a valid completion record. An upgrade that is not trusted
(no record, or the binary changed) is refused: run ` + "`invisor verify`" + ` to see why.

` + "`invisor import`" + ` on another home unpacks it, so a node that syncs from genesis has every
binary it will need. The bundle is written to a temp file beside it and renamed into place.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			e, err := loadEnv(cmd, opts)
			if err != nil {
				return err
			}
			m, sum, err := exportBundle(e.home, e.daemon(), args[0])
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

// exportBundle writes the bundle of home to out and returns its manifest and sha256.
func exportBundle(home, daemon, out string) (BundleManifest, string, error) {
	m := BundleManifest{Format: bundleFormat, Daemon: daemon, Created: time.Now().UTC().Truncate(time.Second)}
	var files []string

	gen := filepath.Join(staging.CosmovisorRoot(home), "genesis", "bin", daemon)
	fi, err := os.Stat(gen)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return m, "", fmt.Errorf("no genesis binary at %s: start the node once (it copies itself there) or place the chain's genesis binary there", gen)
	case err != nil:
		return m, "", err
	case !fi.Mode().IsRegular():
		return m, "", fmt.Errorf("genesis binary %s is not a regular file", gen)
	}
	gsum, err := staging.FileSHA256(gen)
	if err != nil {
		return m, "", err
	}
	m.Binaries = append(m.Binaries, BundleEntry{Name: genesisEntryName, Path: "genesis/bin/" + daemon, SHA256: gsum, Size: fi.Size()})
	files = append(files, gen)

	dir := filepath.Join(staging.CosmovisorRoot(home), staging.UpgradesDir)
	ents, err := os.ReadDir(dir)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return m, "", err
	}
	var ups []staging.Install
	for _, d := range ents {
		if strings.HasPrefix(d.Name(), ".") {
			continue
		}
		name, err := unescape(d.Name())
		if err != nil {
			return m, "", fmt.Errorf("%s: cannot map the directory name back to an upgrade name: %w", filepath.Join(dir, d.Name()), err)
		}
		if safe, err := staging.SafeName(name); err != nil || safe != d.Name() {
			return m, "", fmt.Errorf("%s is not a directory name invisor or cosmovisor would create; move it away to export", filepath.Join(dir, d.Name()))
		}
		inst, err := staging.Trusted(home, daemon, name)
		if err != nil {
			return m, "", fmt.Errorf("upgrade %q is not trusted, refusing to export it: %w; check it with `invisor verify %s`, or move %s away", name, err, name, filepath.Join(dir, d.Name()))
		}
		ups = append(ups, inst)
	}
	sort.Slice(ups, func(i, j int) bool {
		if ups[i].Record.Height != ups[j].Record.Height {
			return ups[i].Record.Height < ups[j].Record.Height
		}
		return ups[i].Name < ups[j].Name
	})
	for _, u := range ups {
		safe, _ := staging.SafeName(u.Name)
		m.Binaries = append(m.Binaries, BundleEntry{Name: u.Name, Path: "upgrades/" + safe + "/bin/" + daemon,
			SHA256: u.SHA256, Size: u.Size, Height: u.Record.Height, Version: u.Record.Preflight})
		files = append(files, u.Path)
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
	tmp, err := os.CreateTemp(filepath.Dir(abs), "."+filepath.Base(abs)+".tmp-")
	if err != nil {
		return m, "", err
	}
	ok := false
	defer func() {
		if !ok {
			tmp.Close()
			os.Remove(tmp.Name())
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
		if err := copyVerified(tw, files[i], b); err != nil {
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
	if err := os.Rename(tmp.Name(), abs); err != nil {
		return m, "", err
	}
	ok = true
	if d, err := os.Open(filepath.Dir(abs)); err == nil {
		_ = d.Sync()
		d.Close()
	}
	return m, hex.EncodeToString(bh.Sum(nil)), nil
}

// copyVerified copies file into w, checking it still has the size and sha256 of b.
func copyVerified(w io.Writer, file string, b BundleEntry) error {
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
	if n != b.Size || hex.EncodeToString(h.Sum(nil)) != b.SHA256 {
		return fmt.Errorf("%s changed while it was exported (want %d bytes, sha256 %s); run export again", file, b.Size, b.SHA256)
	}
	if extra, _ := f.Read(make([]byte, 1)); extra > 0 {
		return fmt.Errorf("%s grew while it was exported; run export again", file)
	}
	return nil
}

// ---- import ----

func importCmd(opts invisor.Options) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "import <bundle.tar.gz | https://...?checksum=sha256:HEX>",
		Short: "Install the genesis and past upgrade binaries from a bundle made by `invisor export`, each verified and recorded",
		Long: `Unpack a bundle made by ` + "`invisor export`" + ` into this home: each upgrade binary goes to
cosmovisor/upgrades/<name>/bin/<daemon>, verified and recorded exactly like ` + "`invisor stage --file`" + `
(manifest sha256, header check for this OS/arch, preflight ` + "`<bin> version`" + `, atomic move,
completion record), and the genesis binary to cosmovisor/genesis/bin/<daemon> if there is
none (a different one already there is an error naming both hashes). Binaries already
installed with the same sha256 are skipped, so import can be run again.

The bundle is a local file or an http(s) URL. A URL must pin the bundle with
?checksum=sha256:HEX (export prints it) unless --insecure-no-checksum is given; a local
file may be pinned with --checksum.

The node must be stopped: import takes the staging lock for its whole run, so that every
binary is recorded by the time it returns and a node cannot start half-way through.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			e, err := loadValidEnv(cmd, opts)
			if err != nil {
				return err
			}
			sum, _ := cmd.Flags().GetString(flagChecksum)
			insecure, _ := cmd.Flags().GetBool(flagInsecureNoChecksum)
			im := importer{
				cfg: e.cfg.Staging, lim: limitsFrom(e.cfg.Staging), out: e.out, log: stagingLog{e}, app: e.appName(),
				plan: func(ctx context.Context, name string) *staging.Plan { return knownPlan(ctx, e, name) },
			}
			return im.run(cmd.Context(), args[0], sum, insecure)
		},
	}
	cmd.Flags().String(flagChecksum, "", "expected checksum of a local bundle file, sha256:HEX or sha512:HEX")
	cmd.Flags().Bool(flagInsecureNoChecksum, false, "accept a bundle URL without ?checksum= (the binaries are still checked against the manifest, which is then unauthenticated)")
	cmd.Flags().String(flagNode, "", "CometBFT RPC of the node, to learn the plan in force (default: rpc.laddr of config.toml)")
	invisor.AddFlags(cmd.Flags())
	return cmd
}

// importer installs a bundle into cfg.Home.
type importer struct {
	cfg  staging.Config
	lim  bundleLimits
	out  io.Writer
	log  staging.Logger
	app  string
	plan func(ctx context.Context, name string) *staging.Plan // the real plan when known, else nil
}

// errNodeRunning is returned by import when a node holds the staging lock.
var errNodeRunning = errors.New("the node is running")

func (im importer) run(ctx context.Context, src, checksum string, insecure bool) error {
	home, daemon := im.cfg.Home, im.cfg.DaemonName
	root := staging.CosmovisorRoot(home)
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

	// The lock, held to the end (see the comment at the top).
	st, err := staging.New(im.cfg, im.log)
	if errors.Is(err, staging.ErrLocked) {
		return fmt.Errorf("%w (it holds the staging lock on %s): stop it, run import, then start it again. "+
			"Import writes the completion record of every binary itself, which only the lock holder may do, "+
			"and lays out genesis/, which the node reads at boot: %w", errNodeRunning, home, err)
	}
	if err != nil {
		return err
	}
	defer st.Close()

	scratch, err := os.MkdirTemp(root, staging.TempPrefix+"import-")
	if err != nil {
		return fmt.Errorf("scratch directory under %s: %w", root, err)
	}
	defer os.RemoveAll(scratch)

	// 1. The bundle.
	var f *os.File
	if isURL {
		file := filepath.Join(scratch, "bundle")
		if err := downloadBundle(ctx, im.cfg, src, insecure, file, im.lim.Download, im.out); err != nil {
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
			if err := checkFileSum(f, *want); err != nil {
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
	m, bins, err := readBundle(f, bdir, im.lim)
	f.Close()
	if err != nil {
		return err
	}
	if m.Daemon != daemon {
		fmt.Fprintf(im.out, "note: the bundle names the binary %q; installing it as %q\n", m.Daemon, daemon)
	}

	// 2. Check the whole bundle against the home before installing anything.
	var todo []unpacked
	var problems []string
	gen := filepath.Join(root, "genesis", "bin", daemon)
	for _, b := range bins {
		if b.genesis() {
			if _, err := os.Lstat(gen); errors.Is(err, fs.ErrNotExist) {
				todo = append(todo, b)
				continue
			}
			have, err := staging.FileSHA256(gen)
			switch {
			case err != nil:
				problems = append(problems, fmt.Sprintf("genesis binary %s: %v", gen, err))
			case have != b.SHA256:
				problems = append(problems, fmt.Sprintf("genesis binary %s has sha256 %s, the bundle's has sha256 %s; it is never overwritten: if the bundle is right, move the existing one away and import again", gen, have, b.SHA256))
			default:
				fmt.Fprintf(im.out, "genesis binary already in place: %s (sha256 %s)\n", gen, have)
			}
			continue
		}
		bin := staging.BinPath(home, daemon, b.Name)
		if inst, err := staging.Trusted(home, daemon, b.Name); err == nil {
			if inst.SHA256 != b.SHA256 {
				problems = append(problems, fmt.Sprintf("upgrade %q: %s is trusted with sha256 %s, the bundle's has sha256 %s", b.Name, inst.Path, inst.SHA256, b.SHA256))
			} else {
				fmt.Fprintf(im.out, "upgrade %q already staged and trusted: %s (sha256 %s)\n", b.Name, inst.Path, inst.SHA256)
			}
			continue
		}
		if _, err := os.Lstat(bin); err == nil {
			problems = append(problems, fmt.Sprintf("upgrade %q: %s exists without a valid completion record; run `%s invisor verify %s`, or remove %s and import again",
				b.Name, bin, im.app, b.Name, staging.UpgradeDir(home, b.Name)))
			continue
		}
		todo = append(todo, b)
	}
	if len(problems) > 0 {
		return fmt.Errorf("nothing imported: %s", strings.Join(problems, "; "))
	}

	// 3. Install: upgrades like `stage --file`, then the genesis binary.
	sort.SliceStable(todo, func(i, j int) bool { return !todo[i].genesis() && todo[j].genesis() })
	var done []string
	for _, b := range todo {
		var err error
		if b.genesis() {
			err = im.installGenesis(ctx, b, gen)
		} else {
			err = im.installUpgrade(ctx, b)
		}
		if err != nil {
			if len(done) > 0 {
				return fmt.Errorf("%w (already installed and trusted: %s; running import again skips them)", err, strings.Join(done, ", "))
			}
			return err
		}
		done = append(done, b.Name)
	}
	fmt.Fprintf(im.out, "imported %d of %d binaries from %s\n", len(done), len(bins), redactURL(src))
	return nil
}

// fileSource is the file:// source of an unpacked binary, pinned to its manifest hash.
func fileSource(b unpacked) string {
	u := url.URL{Scheme: "file", Path: b.File, RawQuery: url.Values{"checksum": {"sha256:" + b.SHA256}}.Encode()}
	return u.String()
}

// verifyInScratch runs staging.Fetch for plan into a new scratch home under the
// cosmovisor root and returns that home: the binary there passed the checksum,
// header check and preflight. The caller removes the scratch home.
func (im importer) verifyInScratch(ctx context.Context, p staging.Plan) (string, staging.Install, error) {
	scratch, err := os.MkdirTemp(staging.CosmovisorRoot(im.cfg.Home), staging.TempPrefix+"import-bin-")
	if err != nil {
		return "", staging.Install{}, err
	}
	scfg := im.cfg
	scfg.Home, scfg.AllowDownload, scfg.AllowFileURLs = scratch, true, true
	inst, err := staging.Fetch(ctx, scfg, p, im.log)
	if err != nil {
		os.RemoveAll(scratch)
		return "", inst, err
	}
	return scratch, inst, nil
}

// installUpgrade is stageAndRecord with the lock already held: verify into a
// scratch home, move into place, record for the real plan when known.
func (im importer) installUpgrade(ctx context.Context, b unpacked) error {
	home, daemon := im.cfg.Home, im.cfg.DaemonName
	synth := staging.Plan{Name: b.Name, Height: b.Height, Info: planInfo(fileSource(b))}
	plan := synth
	if im.plan != nil {
		if p := im.plan(ctx, b.Name); p != nil {
			plan = *p
		}
	}
	fmt.Fprintf(im.out, "verifying the binary for %q ...\n", b.Name)
	scratch, _, err := im.verifyInScratch(ctx, synth)
	if err != nil {
		return fmt.Errorf("importing %q: %w", b.Name, err)
	}
	defer os.RemoveAll(scratch)
	if err := place(home, daemon, b.Name, scratch); err != nil {
		return fmt.Errorf("importing %q: %w", b.Name, err)
	}
	rcfg := im.cfg
	rcfg.AllowFileURLs = true // to compare with the checksum of the synthetic file:// plan
	final, err := staging.Fetch(ctx, rcfg, plan, im.log)
	if err != nil {
		return fmt.Errorf("placed %s, but recording it for plan %q failed: %w", staging.BinPath(home, daemon, b.Name), b.Name, err)
	}
	if final.SHA256 != b.SHA256 {
		return fmt.Errorf("upgrade %q: recorded sha256 %s, the bundle's is %s", b.Name, final.SHA256, b.SHA256)
	}
	fmt.Fprintf(im.out, "staged %q: %s\n  sha256 %s, %d bytes; preflight: %s\n", b.Name, final.Path, final.SHA256, final.Size, final.Record.Preflight)
	return nil
}

// installGenesis verifies the genesis binary like an upgrade binary (checksum,
// header check, preflight) and links it to gen, which must not exist.
func (im importer) installGenesis(ctx context.Context, b unpacked, gen string) error {
	fmt.Fprintln(im.out, "verifying the genesis binary ...")
	p := staging.Plan{Name: genesisEntryName, Info: planInfo(fileSource(b))}
	scratch, inst, err := im.verifyInScratch(ctx, p)
	if err != nil {
		return fmt.Errorf("importing the genesis binary: %w", err)
	}
	defer os.RemoveAll(scratch)
	if inst.SHA256 != b.SHA256 {
		return fmt.Errorf("genesis binary: verified sha256 %s, the bundle's is %s", inst.SHA256, b.SHA256)
	}
	if err := os.MkdirAll(filepath.Dir(gen), 0o755); err != nil {
		return err
	}
	// A hard link never replaces an existing file; the scratch name goes with RemoveAll.
	if err := os.Link(inst.Path, gen); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("genesis binary %s appeared during import; it is left as it is", gen)
		}
		return fmt.Errorf("genesis binary: %w", err)
	}
	if d, err := os.Open(filepath.Dir(gen)); err == nil {
		_ = d.Sync()
		d.Close()
	}
	fmt.Fprintf(im.out, "genesis binary: %s\n  sha256 %s, %d bytes; preflight: %s\n", gen, inst.SHA256, inst.Size, inst.Record.Preflight)
	return nil
}

// checkFileSum hashes f and rewinds it.
func checkFileSum(f *os.File, want staging.Checksum) error {
	h := newHash(want.Algo)
	if _, err := io.Copy(h, f); err != nil {
		return err
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != want.Hex {
		return fmt.Errorf("%s is %s:%s, --checksum says %s: %w", f.Name(), want.Algo, got, want, staging.ErrChecksumMismatch)
	}
	_, err := f.Seek(0, io.SeekStart)
	return err
}

func newHash(algo string) hash.Hash {
	if algo == "sha512" {
		return sha512.New()
	}
	return sha256.New()
}

func redactURL(s string) string {
	u, err := url.Parse(s)
	if err != nil || u.User == nil {
		return s
	}
	u.User = url.User("REDACTED")
	return u.String()
}

// downloadBundle fetches an http(s) bundle to file with staging's URL and checksum
// policy (staging.ParseSource), its timeouts and CA file, a size cap, and redirects
// limited to http(s) without https->http.
func downloadBundle(ctx context.Context, cfg staging.Config, raw string, insecure bool, file string, maxBytes int64, out io.Writer) error {
	pcfg := cfg
	pcfg.AllowFileURLs, pcfg.RequireChecksum = false, !insecure
	src, err := staging.ParseSource(raw, pcfg)
	if err != nil {
		if errors.Is(err, staging.ErrNoChecksum) {
			return fmt.Errorf("%w; export prints the URL suffix ?checksum=sha256:<hex> to use, or pass --insecure-no-checksum", err)
		}
		return err
	}
	if src.Checksum == nil {
		fmt.Fprintln(out, "warning: the bundle URL is not pinned (--insecure-no-checksum); the binaries are checked only against its own manifest")
	} else if !src.Checksum.Strong() {
		return fmt.Errorf("bundle URL pinned with %s, which is too weak; use sha256 or sha512", src.Checksum.Algo)
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.Proxy = http.ProxyFromEnvironment
	tr.ResponseHeaderTimeout = cfg.ResponseHeaderTimeout
	if cfg.CAFile != "" {
		pem, err := os.ReadFile(cfg.CAFile)
		if err != nil {
			return fmt.Errorf("CA file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return fmt.Errorf("CA file %s holds no PEM certificate", cfg.CAFile)
		}
		tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	client := &http.Client{Transport: tr, CheckRedirect: func(req *http.Request, via []*http.Request) error {
		if len(via) >= 10 {
			return errors.New("too many redirects")
		}
		if req.URL.Scheme != "http" && req.URL.Scheme != "https" {
			return fmt.Errorf("redirect to scheme %q refused", req.URL.Scheme)
		}
		if via[len(via)-1].URL.Scheme == "https" && req.URL.Scheme != "https" {
			return errors.New("redirect from https to http refused")
		}
		return nil
	}}
	if cfg.Deadline > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, cfg.Deadline)
		defer cancel()
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, src.URL.String(), nil)
	if err != nil {
		return err
	}
	if cfg.UserAgent != "" {
		req.Header.Set("User-Agent", cfg.UserAgent)
	}
	shown := redactURL(src.URL.String())
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("%w: bundle %s: %w", staging.ErrDownload, shown, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%w: bundle %s: HTTP %s", staging.ErrDownload, shown, resp.Status)
	}
	if maxBytes > 0 && resp.ContentLength > maxBytes {
		return fmt.Errorf("bundle %s is %d bytes, more than %d: %w", shown, resp.ContentLength, maxBytes, staging.ErrTooLarge)
	}
	f, err := os.OpenFile(file, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	defer f.Close()
	var h hash.Hash = sha256.New()
	if src.Checksum != nil {
		h = newHash(src.Checksum.Algo)
	}
	// Stall watchdog: no byte for IdleTimeout cancels the transfer.
	idle := cfg.IdleTimeout
	if idle <= 0 {
		idle = staging.DefaultIdleTimeout
	}
	stall := time.AfterFunc(idle, func() { cancel(fmt.Errorf("no data for %s", idle)) })
	defer stall.Stop()
	body := io.Reader(resp.Body)
	if maxBytes > 0 {
		body = io.LimitReader(body, maxBytes+1)
	}
	buf := make([]byte, 1<<20)
	var n int64
	for {
		k, rerr := body.Read(buf)
		if k > 0 {
			stall.Reset(idle)
			n += int64(k)
			if maxBytes > 0 && n > maxBytes {
				return fmt.Errorf("bundle %s is more than %d bytes: %w", shown, maxBytes, staging.ErrTooLarge)
			}
			h.Write(buf[:k])
			if _, err := f.Write(buf[:k]); err != nil {
				return err
			}
		}
		if errors.Is(rerr, io.EOF) {
			break
		}
		if rerr != nil {
			if c := context.Cause(ctx); c != nil {
				rerr = c
			}
			return fmt.Errorf("%w: bundle %s: %w", staging.ErrDownload, shown, rerr)
		}
	}
	if resp.ContentLength >= 0 && n != resp.ContentLength {
		return fmt.Errorf("%w: bundle %s: got %d of %d bytes", staging.ErrDownload, shown, n, resp.ContentLength)
	}
	if src.Checksum != nil {
		if got := hex.EncodeToString(h.Sum(nil)); got != src.Checksum.Hex {
			return fmt.Errorf("bundle %s is %s:%s, the URL pins %s (wrong file or tampering); nothing was installed: %w",
				shown, src.Checksum.Algo, got, src.Checksum, staging.ErrChecksumMismatch)
		}
	}
	fmt.Fprintf(out, "downloaded %s: %d bytes\n", shown, n)
	return f.Close()
}
