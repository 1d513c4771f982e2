package staging

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"net"
	"net/http"
	"os"
	"sync/atomic"
	"syscall"
	"time"
)

// copyBufSize is the one buffer a transfer or a hash pass streams through. 1 MiB keeps
// syscalls per byte low (loopback and disk) while memory stays flat for any file size.
const copyBufSize = 1 << 20

// loadRoots returns the root CAs of Config.CAFile, or nil for the system roots.
func loadRoots(cfg Config) (*x509.CertPool, error) {
	if cfg.CAFile == "" {
		return nil, nil
	}
	pem, err := os.ReadFile(cfg.CAFile)
	if err != nil {
		return nil, fmt.Errorf("staging: Config.CAFile: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("staging: Config.CAFile %s holds no PEM certificate", cfg.CAFile)
	}
	return pool, nil
}

// newHTTPClient builds a client for one attempt. Timeouts: ResponseHeaderTimeout per
// request; the body is watched for stalls by watchBody; the whole attempt is bounded
// by the caller's context (Deadline). Certificates are always verified. Redirects may
// only go to http(s) and never downgrade https to http.
func newHTTPClient(cfg Config) (*http.Client, error) {
	roots, err := loadRoots(cfg)
	if err != nil {
		return nil, err
	}
	tr := &http.Transport{
		Proxy: http.ProxyFromEnvironment,
		DialContext: (&net.Dialer{
			Timeout:   cfg.ResponseHeaderTimeout,
			KeepAlive: 30 * time.Second,
		}).DialContext,
		TLSClientConfig:       &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: roots},
		TLSHandshakeTimeout:   cfg.ResponseHeaderTimeout,
		ResponseHeaderTimeout: cfg.ResponseHeaderTimeout,
		ExpectContinueTimeout: time.Second,
		ForceAttemptHTTP2:     true,
		MaxIdleConns:          4,
		IdleConnTimeout:       30 * time.Second,
		// Ask for identity so Content-Length and the checksum refer to the same bytes.
		DisableCompression: true,
	}
	return &http.Client{
		Transport: tr,
		CheckRedirect: func(req *http.Request, via []*http.Request) error {
			if len(via) >= 10 {
				return fmt.Errorf("stopped after 10 redirects")
			}
			if req.URL.Scheme != "http" && req.URL.Scheme != "https" {
				return fmt.Errorf("redirect to scheme %q (%s) refused", req.URL.Scheme, redact(req.URL.String()))
			}
			if via[len(via)-1].URL.Scheme == "https" && req.URL.Scheme == "http" {
				return fmt.Errorf("redirect from https to http (%s) refused", redact(req.URL.String()))
			}
			return nil
		},
	}, nil
}

// transfer is one streaming download: bytes go through the size cap and the hashes to
// w in a single pass with one copyBufSize buffer.
type transfer struct {
	cfg      Config
	client   *http.Client
	src      Source
	limit    int64
	field    string // Config field of limit, for the error
	what     string // "download" or "info"
	progress func(done, total int64)
	log      Logger
	plan     string
	// spaceDir, when set, is where w writes: a body of known length that does not fit
	// in the free space there is refused before it is read.
	spaceDir string
	// hint is what an HTTP error status tells the operator to do; "" says to check
	// the URL in the plan info, where Fetch's URLs come from.
	hint string
}

type transferResult struct {
	N        int64
	SHA256   string
	Verified bool // the plan checksum matched
}

var errStalled = errors.New("stalled")

func (t *transfer) run(ctx context.Context, w io.Writer) (transferResult, error) {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)

	body, total, err := t.open(ctx)
	if err != nil {
		return transferResult{}, err
	}
	defer body.Close()
	if total > t.limit {
		return transferResult{}, &SizeError{What: fmt.Sprintf("%s of %s (Content-Length %d)", t.what, redact(t.src.URL.String()), total), Limit: t.limit, Field: t.field}
	}
	if t.spaceDir != "" && total > 0 {
		if avail, ok := freeBytes(t.spaceDir); ok && avail < total {
			return transferResult{}, &SpaceError{Dir: t.spaceDir, What: fmt.Sprintf("%s of %s", t.what, redact(t.src.URL.String())), Need: total, Avail: avail}
		}
	}

	var done atomic.Int64
	stopWatch := watchBody(ctx, cancel, &done, t.cfg)
	defer stopWatch()

	sha := sha256.New()
	var planHash hash.Hash
	hashes := []io.Writer{sha, w}
	if t.src.Checksum != nil && t.src.Checksum.Algo != "sha256" {
		planHash = t.src.Checksum.newHash()
		hashes = append(hashes, planHash)
	}
	out := io.MultiWriter(hashes...)
	buf := make([]byte, copyBufSize)
	start := time.Now()
	lastLog := start
	var n int64
	for {
		m, rerr := body.Read(buf)
		if m > 0 {
			n += int64(m)
			if n > t.limit {
				return transferResult{}, &SizeError{What: fmt.Sprintf("%s of %s", t.what, redact(t.src.URL.String())), Limit: t.limit, Field: t.field}
			}
			if _, werr := out.Write(buf[:m]); werr != nil {
				return transferResult{}, diskFull(fmt.Errorf("%w: writing %s: %w", ErrDownload, t.what, werr), t.what, t.spaceDir)
			}
			done.Store(n)
			if t.progress != nil {
				t.progress(n, total)
			}
			if now := time.Now(); t.log != nil && now.Sub(lastLog) >= t.cfg.ProgressInterval {
				lastLog = now
				t.log.Info("staging: downloading", progressKV(t.plan, n, total, now.Sub(start))...)
			}
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			if cause := context.Cause(ctx); cause != nil {
				rerr = cause
			}
			return transferResult{}, fmt.Errorf("%w: reading %s after %d bytes: %w; a fresh download is started on retry", ErrDownload, redact(t.src.URL.String()), n, rerr)
		}
	}
	if total >= 0 && n != total {
		return transferResult{}, fmt.Errorf("%w: %s truncated: got %d of %d bytes", ErrDownload, redact(t.src.URL.String()), n, total)
	}
	res := transferResult{N: n, SHA256: hex.EncodeToString(sha.Sum(nil))}
	if c := t.src.Checksum; c != nil {
		actual := res.SHA256
		if planHash != nil {
			actual = hex.EncodeToString(planHash.Sum(nil))
		}
		if actual != c.Hex {
			return transferResult{}, &ChecksumError{URL: t.src.URL.String(), Algo: c.Algo, Expected: c.Hex, Actual: actual}
		}
		res.Verified = true
	}
	return res, nil
}

// open starts the transfer and returns the body and its length (-1 if unknown).
func (t *transfer) open(ctx context.Context) (io.ReadCloser, int64, error) {
	if t.src.URL.Scheme == "file" {
		f, err := os.OpenFile(t.src.URL.Path, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
		if err != nil {
			return nil, 0, fmt.Errorf("%w: %w", ErrDownload, err)
		}
		fi, err := f.Stat()
		if err != nil || !fi.Mode().IsRegular() {
			f.Close()
			return nil, 0, fmt.Errorf("%w: %s is not a regular file", ErrDownload, t.src.URL.Path)
		}
		return ctxReader{ctx, f}, fi.Size(), nil
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, t.src.URL.String(), nil)
	if err != nil {
		return nil, 0, fmt.Errorf("%w: %w", ErrBadInfo, err)
	}
	req.Header.Set("User-Agent", t.cfg.UserAgent)
	req.Header.Set("Accept-Encoding", "identity")
	resp, err := t.client.Do(req)
	if err != nil {
		if cause := context.Cause(ctx); cause != nil && !errors.Is(err, cause) {
			err = fmt.Errorf("%w (%w)", cause, err)
		}
		if isTLSError(err) {
			return nil, 0, fmt.Errorf("%w: GET %s: TLS verification failed: %w; the server's certificate is not trusted by this host (for a private mirror set Config.CAFile); nothing was downloaded",
				ErrDownload, redact(t.src.URL.String()), err)
		}
		return nil, 0, fmt.Errorf("%w: GET %s: %w", ErrDownload, redact(t.src.URL.String()), err)
	}
	if resp.StatusCode != http.StatusOK {
		resp.Body.Close()
		hint := t.hint
		if hint == "" {
			hint = "check the URL in the plan info"
		}
		return nil, 0, fmt.Errorf("%w: GET %s: HTTP %s; %s", ErrDownload, redact(t.src.URL.String()), resp.Status, hint)
	}
	return resp.Body, resp.ContentLength, nil
}

// isTLSError reports a failed certificate verification or handshake.
func isTLSError(err error) bool {
	var (
		verr *tls.CertificateVerificationError
		rerr tls.RecordHeaderError
		aerr x509.UnknownAuthorityError
		herr x509.HostnameError
		ierr x509.CertificateInvalidError
	)
	return errors.As(err, &verr) || errors.As(err, &rerr) || errors.As(err, &aerr) || errors.As(err, &herr) || errors.As(err, &ierr)
}

// watchBody cancels the transfer when fewer than MinThroughput bytes/s (or no bytes at
// all) arrive over an IdleTimeout window. It catches hung and trickling servers that a
// per-read deadline would not.
func watchBody(ctx context.Context, cancel context.CancelCauseFunc, done *atomic.Int64, cfg Config) (stop func()) {
	window := cfg.IdleTimeout
	need := int64(float64(cfg.MinThroughput) * window.Seconds())
	if need < 1 {
		need = 1
	}
	quit := make(chan struct{})
	go func() {
		t := time.NewTicker(window)
		defer t.Stop()
		last := done.Load()
		for {
			select {
			case <-ctx.Done():
				return
			case <-quit:
				return
			case <-t.C:
				cur := done.Load()
				if cur-last < need {
					cancel(fmt.Errorf("%w: %d bytes in the last %v, below the minimum of %d B/s (Config.IdleTimeout, Config.MinThroughput)",
						errStalled, cur-last, window, cfg.MinThroughput))
					return
				}
				last = cur
			}
		}
	}()
	return func() { close(quit) }
}

type ctxReader struct {
	ctx context.Context
	r   io.ReadCloser
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, context.Cause(c.ctx)
	}
	return c.r.Read(p)
}

func (c ctxReader) Close() error { return c.r.Close() }

func progressKV(plan string, done, total int64, elapsed time.Duration) []any {
	rate := float64(done) / max(elapsed.Seconds(), 1e-3)
	kv := []any{"plan", plan, "bytes", done, "rate_bytes_per_s", int64(rate)}
	if total > 0 {
		kv = append(kv, "total", total, "percent", done*100/total)
		if rate > 0 {
			kv = append(kv, "eta", (time.Duration(float64(total-done)/rate) * time.Second).Round(time.Second))
		}
	}
	return kv
}
