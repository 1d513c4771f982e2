package staging

import (
	"crypto/md5"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"hash"
	"net/url"
	"path"
	"regexp"
	"runtime"
	"sort"
	"strings"

	getter "github.com/hashicorp/go-getter"
)

// Binaries is the parsed "binaries" map of a plan info: platform key ("linux/amd64"
// or "any") to URL.
type Binaries map[string]string

var platformKey = regexp.MustCompile(`^[a-z0-9_]+/[a-z0-9_]+$`)

// ParseInfo parses inline plan-info JSON in the cosmovisor format
// {"binaries":{"linux/amd64":"https://...?checksum=sha256:...","any":"..."}}.
// Unknown keys are ignored; an absent or empty map, a bad platform key or an empty
// URL is an error. It does not fetch anything and does not check checksums.
func ParseInfo(info string) (Binaries, error) {
	var doc struct {
		Binaries map[string]string `json:"binaries"`
	}
	dec := json.NewDecoder(strings.NewReader(info))
	if err := dec.Decode(&doc); err != nil {
		return nil, fmt.Errorf("%w: plan info is not valid JSON: %w", ErrBadInfo, err)
	}
	if dec.More() {
		return nil, fmt.Errorf("%w: plan info has trailing data after the JSON object", ErrBadInfo)
	}
	if len(doc.Binaries) == 0 {
		return nil, fmt.Errorf(`%w: plan info has no "binaries" entries; expected {"binaries":{"%s/%s":"https://...?checksum=sha256:..."}}`,
			ErrBadInfo, runtime.GOOS, runtime.GOARCH)
	}
	for k, v := range doc.Binaries {
		if k != "any" && !platformKey.MatchString(k) {
			return nil, fmt.Errorf(`%w: plan info key %q is neither "any" nor "os/arch"`, ErrBadInfo, k)
		}
		if strings.TrimSpace(v) == "" {
			return nil, fmt.Errorf("%w: plan info has an empty URL for %q", ErrBadInfo, k)
		}
	}
	return Binaries(doc.Binaries), nil
}

// Pick returns the URL for goos/goarch, falling back to "any".
func (b Binaries) Pick(goos, goarch string) (string, error) {
	u, ok := pick(b, goos, goarch)
	if !ok {
		return "", fmt.Errorf(`%w: plan info has no binary for %s/%s and no "any" entry (has %v); place the binary by hand`,
			ErrNotFound, goos, goarch, sortedKeys(b))
	}
	return u, nil
}

// pick is the entry for goos/goarch in a binaries map, else its "any" entry.
func pick(b map[string]string, goos, goarch string) (string, bool) {
	if u, ok := b[goos+"/"+goarch]; ok {
		return u, true
	}
	u, ok := b["any"]
	return u, ok
}

func sortedKeys(b map[string]string) []string {
	keys := make([]string, 0, len(b))
	for k := range b {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// Checksum is a parsed go-getter style checksum ("sha256:<hex>").
type Checksum struct {
	Algo string // md5, sha1, sha256, sha512
	Hex  string // lower-case
}

func (c Checksum) String() string { return c.Algo + ":" + c.Hex }

// Strong reports whether the algorithm is acceptable when RequireChecksum is set.
func (c Checksum) Strong() bool { return c.Algo == "sha256" || c.Algo == "sha512" }

func (c Checksum) newHash() hash.Hash {
	switch c.Algo {
	case "md5":
		return md5.New()
	case "sha1":
		return sha1.New()
	case "sha512":
		return sha512.New()
	default:
		return sha256.New()
	}
}

var hexLen = map[string]int{"md5": 32, "sha1": 40, "sha256": 64, "sha512": 128}

// ParseChecksum parses "algo:hex" or a bare hex value whose length names the algorithm
// (as go-getter does). "file:" checksum URLs are not supported: pin the hash inline.
func ParseChecksum(v string) (Checksum, error) {
	algo, val, found := strings.Cut(v, ":")
	if !found {
		val = algo
		algo = ""
		for a, n := range hexLen {
			if len(val) == n {
				algo = a
			}
		}
		if algo == "" {
			return Checksum{}, fmt.Errorf("checksum %q: unknown algorithm for a %d-character value", v, len(val))
		}
	}
	algo = strings.ToLower(algo)
	if algo == "file" {
		return Checksum{}, fmt.Errorf("checksum %q: checksum files are not supported; put ?checksum=sha256:<hex> in the URL", v)
	}
	n, ok := hexLen[algo]
	if !ok {
		return Checksum{}, fmt.Errorf("checksum %q: unsupported algorithm %q (use sha256 or sha512)", v, algo)
	}
	val = strings.ToLower(val)
	if len(val) != n {
		return Checksum{}, fmt.Errorf("checksum %q: %s needs %d hex characters, got %d", v, algo, n, len(val))
	}
	if _, err := hex.DecodeString(val); err != nil {
		return Checksum{}, fmt.Errorf("checksum %q: not hex", v)
	}
	return Checksum{Algo: algo, Hex: val}, nil
}

// Source is one resolved download.
type Source struct {
	URL      *url.URL  // request URL, with the checksum and archive parameters removed
	Checksum *Checksum // nil when unpinned (only allowed if RequireChecksum is false)
	Archive  string    // "" for a plain binary, else a go-getter decompressor key ("tar.gz", "zip", "gz", ...)
}

// ParseSource parses a binary or info URL with its ?checksum= and ?archive= parameters
// and applies the scheme and checksum policy of cfg.
func ParseSource(raw string, cfg Config) (Source, error) {
	u, err := url.Parse(strings.TrimSpace(raw))
	if err != nil {
		return Source{}, fmt.Errorf("%w: URL %q does not parse: %w", ErrBadInfo, redact(raw), err)
	}
	switch u.Scheme {
	case "http", "https":
		if u.Host == "" {
			return Source{}, fmt.Errorf("%w: URL %q has no host", ErrBadInfo, redact(raw))
		}
	case "file":
		if !cfg.AllowFileURLs {
			return Source{}, fmt.Errorf("%w: file:// URL %q refused (AllowFileURLs is false)", ErrBadInfo, redact(raw))
		}
	default:
		return Source{}, fmt.Errorf("%w: URL %q: scheme %q not allowed (only https, http%s)", ErrBadInfo, redact(raw), u.Scheme,
			map[bool]string{true: ", file", false: ""}[cfg.AllowFileURLs])
	}
	q := u.Query()
	src := Source{}
	if vs, ok := q["checksum"]; ok {
		if len(vs) != 1 {
			return Source{}, fmt.Errorf("%w: URL %q has %d checksum parameters", ErrBadInfo, redact(raw), len(vs))
		}
		c, err := ParseChecksum(vs[0])
		if err != nil {
			return Source{}, fmt.Errorf("%w: URL %q: %w", ErrBadInfo, redact(raw), err)
		}
		src.Checksum = &c
		q.Del("checksum")
	}
	if cfg.RequireChecksum {
		if src.Checksum == nil {
			return Source{}, fmt.Errorf("%w: URL %q has no ?checksum=sha256:<hex>; ask for a pinned plan, or set DAEMON_DOWNLOAD_MUST_HAVE_CHECKSUM=false (RequireChecksum) to accept it", ErrNoChecksum, redact(raw))
		}
		if !src.Checksum.Strong() {
			return Source{}, fmt.Errorf("%w: URL %q is pinned with %s, which is too weak; use sha256 or sha512, or set RequireChecksum=false", ErrNoChecksum, redact(raw), src.Checksum.Algo)
		}
	}
	archive, explicit := q["archive"]
	q.Del("archive")
	if explicit && len(archive) == 1 {
		switch a := strings.ToLower(archive[0]); {
		case a == "false" || a == "":
			src.Archive = ""
		case decompressorKey(a):
			src.Archive = a
		default:
			return Source{}, fmt.Errorf("%w: URL %q: unknown archive type %q", ErrBadInfo, redact(raw), a)
		}
	} else {
		src.Archive = archiveFromPath(u.Path)
	}
	u.RawQuery = q.Encode()
	u.Fragment = ""
	src.URL = u
	return src, nil
}

// archiveKeys are go-getter's decompressor keys, longest first, so "tar.gz" wins over "gz".
var archiveKeys = func() []string {
	m := getter.LimitedDecompressors(0, 0) // a fresh map; the package global is never touched
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		if len(keys[i]) != len(keys[j]) {
			return len(keys[i]) > len(keys[j])
		}
		return keys[i] < keys[j]
	})
	return keys
}()

func decompressorKey(k string) bool {
	for _, a := range archiveKeys {
		if a == k {
			return true
		}
	}
	return false
}

func archiveFromPath(p string) string {
	base := strings.ToLower(path.Base(p))
	for _, k := range archiveKeys {
		if strings.HasSuffix(base, "."+k) {
			return k
		}
	}
	return ""
}
