package staging

import (
	"context"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Rows of ../shared/FAULTS.md that concern fetching and installing, and where they are
// tested. Tests and table cases carry the row in their name (TestFault25..., "fault07
// ..."), so `go test -v ./staging/ | grep -i 'fault[0-9]'` lists them all.
//
//	 1 checksum mismatch        TestFetchRejects/fault01_*, TestFault01ChecksumMismatchRetried
//	 2 no checksum, md5/sha1    TestFetchRejects/fault02_*, TestFetchInstalls/fault02_*
//	 3 truncated, reset         TestFetchRejects/fault03_*, TestFault03TruncatedThenFreshDownload
//	 4 transient 5xx then 200   TestFetchRejects/fault04_*, TestFault04StagerRetries5xxThenReady
//	 5 hang, trickle, deadline  TestFetchRejects/fault05_*
//	 6 endless/oversized body   TestFetchRejects/fault06_*
//	 7 "..", absolute entries   TestFetchRejects/fault07_*, FuzzExtract
//	 8 links, planted symlink   TestFetchRejects/fault08_*, TestFault08PlantedSymlinkRefused, FuzzExtract
//	 9 setuid, world-writable   TestFetchInstalls/fault09_*, FuzzExtract
//	10 bombs, entry counts      TestFetchRejects/fault10_*, FuzzExtract
//	11 other OS/arch            TestFetchRejects/fault11_*
//	12 HTML, script, empty      TestFetchRejects/fault12_*
//	13 missing lib, noexec      TestFetchRejects/fault13_*, TestFault13NoexecMount (Linux, needs mount), TestPreflightSandboxUnwritableHOME
//	14 cancelled mid-download   TestFault14StagerCancelMidDownload, TestFault14StagerWithdrawnPlanInstallRemoved
//	15 plan replaced            TestFault15StagerPlanReplaced, TestFault15ReplacedPlanStagedAnew
//	17 hostile plan name        TestFault17HostileNames, FuzzPlanName
//	18 info URL unpinned etc.   TestFetchRejects/fault18_*, FuzzParseInfo
//	19 crash during download    TestFault19SIGKILLDuringDownload, TestFault19CrashLeftovers, TestFault28ModifiedAfterVerification
//	25 disk full                TestFault25DiskFull (Linux, needs mount)
//	26 home unwritable, 2 fs    TestFault26HomeUnusable (Linux, needs mount), TestPreflightSandboxUnwritableHOME
//	28 modified after verify    TestFault28ModifiedAfterVerification, TestFault28ModifiedDuringPreflight
//	29 other scheme, bad TLS    TestFetchRejects/fault29_*, TestFault29TLS
//	31 concurrent staging       TestFault31StagerConcurrentUse (and -race over the package)
//	33 names cosmovisor maps    TestFault17HostileNames (recase, escaping, unmappable reported once), FuzzPlanName
//	34 placed binary mismatch   TestFault34PlacedBinaryMismatchNeverTrusted, TestFault34LegacyRecordsReverified, TestFault34OverrideWithdrawn
//	35 same name replaced       TestFault35SameNameReplacedNeverInherits, TestFault15ReplacedPlanStagedAnew
//	36 plan info unreachable    TestFault36InfoUnreachableNotTrusted, TestFault34PlacedBinaryMismatchNeverTrusted/3b_archive_server_down
//
// Row 27 (two supervisors on one home) is the home lock's (internal/home), taken by
// the process edge; staging takes no lock.

func TestFault29TLS(t *testing.T) {
	good := testBins.good
	var plainHits atomic.Int32
	plain := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		plainHits.Add(1)
		w.Write(good)
	}))
	t.Cleanup(plain.Close)
	var mu sync.Mutex
	tlsHits := map[string]int{}
	tlsSrv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		tlsHits[r.URL.Path]++
		mu.Unlock()
		switch r.URL.Path {
		case "/downgrade":
			http.Redirect(w, r, plain.URL+"/exampled", http.StatusFound)
		default:
			w.Write(good)
		}
	}))
	tlsSrv.Config.ErrorLog = log.New(io.Discard, "", 0) // the refused handshake is expected
	tlsSrv.StartTLS()
	t.Cleanup(tlsSrv.Close)
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: tlsSrv.Certificate().Raw}), 0o644)

	cases := []struct {
		name   string
		path   string
		caFile string
		want   error
		substr string
	}{
		{name: "untrusted certificate", path: "/exampled", want: ErrDownload, substr: "TLS verification failed"},
		{name: "https to http redirect", path: "/downgrade", caFile: caFile, want: ErrDownload, substr: "redirect from https to http"},
		{name: "trusted through CAFile", path: "/exampled", caFile: caFile},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testConfig(t)
			cfg.CAFile = tc.caFile
			p := Plan{Name: "v2", Info: infoJSON(pinned(tlsSrv.URL+tc.path, good))}
			_, err := Fetch(context.Background(), cfg, p, nil)
			if tc.want == nil {
				if err != nil {
					t.Fatalf("Fetch over trusted TLS: %v", err)
				}
				return
			}
			t.Logf("error: %v", err)
			if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.substr) {
				t.Fatalf("err = %v, want %v naming %q", err, tc.want, tc.substr)
			}
			assertNothingInstalled(t, cfg, "v2")
		})
	}
	mu.Lock()
	defer mu.Unlock()
	if tlsHits["/exampled"] != 1 {
		t.Errorf("requests over TLS = %d, want only the trusted one (an untrusted handshake must not send the request)", tlsHits["/exampled"])
	}
	if plainHits.Load() != 0 {
		t.Error("the http target of an https redirect was requested")
	}
	t.Run("CAFile without certificates refused", func(t *testing.T) {
		cfg := testConfig(t)
		cfg.CAFile = filepath.Join(t.TempDir(), "empty.pem")
		os.WriteFile(cfg.CAFile, []byte("not pem"), 0o644)
		if _, err := New(cfg, nil); err == nil || !strings.Contains(err.Error(), "CAFile") {
			t.Fatalf("New: %v", err)
		}
	})
}

func TestFault01ChecksumMismatchRetried(t *testing.T) {
	cfg := testConfig(t)
	srv := newServer(t)
	wrong, fixed := untilFixed(func(w http.ResponseWriter, r *http.Request) {
		w.Write(testBins.bad) // a wrong upload
	})
	u := srv.handle("/exampled", wrong)
	s, _ := startStager(t, cfg)
	p := Plan{Name: "v2", Height: 50, Info: infoJSON(pinned(u, testBins.good))}
	s.Offer(&p)
	st := waitStatus(t, s, "two failed attempts", func(st Status) bool { return st.State == StateFailed && st.Attempt >= 2 })
	if !strings.Contains(st.Err, "checksum mismatch") || !strings.Contains(st.Err, sha(testBins.bad)) || !strings.Contains(st.Err, sha(testBins.good)) {
		t.Errorf("status error does not name expected and actual: %q", st.Err)
	}
	if st.NextRetry.IsZero() {
		t.Error("no retry scheduled")
	}
	assertNothingInstalled(t, cfg, "v2")
	fixed.Store(true)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if inst, err := s.WaitReady(ctx, p); err != nil || inst.SHA256 != sha(testBins.good) {
		t.Fatalf("after the server was fixed: %+v, %v", inst, err)
	}
}

func TestFault03TruncatedThenFreshDownload(t *testing.T) {
	cfg := testConfig(t)
	srv := newServer(t)
	var n atomic.Int32
	var ranged atomic.Bool
	good := testBins.good
	u := srv.handle("/exampled", func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Range") != "" || r.Header.Get("If-Range") != "" {
			ranged.Store(true)
		}
		w.Header().Set("Content-Length", fmt.Sprint(len(good)))
		if n.Add(1) == 1 {
			w.Write(good[:len(good)/2])
			w.(http.Flusher).Flush()
			panic(http.ErrAbortHandler) // connection reset mid-body
		}
		w.Write(good)
	})
	s, _ := startStager(t, cfg)
	p := Plan{Name: "v2", Height: 50, Info: infoJSON(pinned(u, good))}
	s.Offer(&p)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	inst, err := s.WaitReady(ctx, p)
	if err != nil || inst.SHA256 != sha(good) {
		t.Fatalf("WaitReady: %+v, %v", inst, err)
	}
	if n.Load() != 2 || ranged.Load() {
		t.Errorf("requests = %d, ranged = %v; want a second full request", n.Load(), ranged.Load())
	}
	assertNoTemp(t, cfg)
}

// TestFault28ModifiedDuringPreflight: the hash of a downloaded binary is taken while it
// is written and trusted only if the file's stamp (inode, size, mtime, ctime) is the
// same after preflight. A binary that replaces itself while it runs `version` (the
// helper does so when STAGING_TEST_REWRITE_SELF is set) must not be recorded.
func TestFault28ModifiedDuringPreflight(t *testing.T) {
	t.Setenv("STAGING_TEST_REWRITE_SELF", "1") // inherited by the preflight process
	cfg := testConfig(t)
	srv := newServer(t)
	good := testBins.good
	p := Plan{Name: "v2", Info: infoJSON(pinned(srv.blob("/exampled", good), good))}
	_, err := Fetch(context.Background(), cfg, p, nil)
	if !errors.Is(err, ErrNotTrusted) || !strings.Contains(err.Error(), "changed while it was verified") {
		t.Fatalf("err = %v", err)
	}
	assertNothingInstalled(t, cfg, "v2")
}
