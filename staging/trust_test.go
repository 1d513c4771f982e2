package staging

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/invisor/invisor/internal/home"
)

// Tests of the trust bar for binaries found at the install path without a record
// for the plan in force (doc.go, "Binaries placed by the operator"), of replaced
// plans (FAULTS.md rows 15, 34, 35, 36), hostile names (17, 33), crash leftovers
// (19) and the preflight sandbox.

// placedCase is one binary found at the install path of plan "v2".
type placedCase struct {
	name   string
	placed func() []byte // nil: a symlink is placed instead
	mode   os.FileMode   // 0: 0755
	info   func(t *testing.T, srv *blobServer) string
	mutate func(*Config)
	// outcome
	source   home.Source // "" means refused
	want     error       // errors.Is target when refused
	substr   []string    // in the error, or in the Warn log when accepted
	requests map[string]int
}

func runPlaced(t *testing.T, tc placedCase) {
	t.Helper()
	cfg := testConfig(t)
	if tc.mutate != nil {
		tc.mutate(&cfg)
	}
	srv := newServer(t)
	log := &testLogger{t: t}
	p := Plan{Name: "v2", Height: 42, Info: tc.info(t, srv)}
	bin := binOf(t, cfg, "v2")
	var body []byte
	if tc.placed == nil {
		os.MkdirAll(filepath.Dir(bin), 0o755)
		os.Symlink("/bin/true", bin)
	} else {
		body = tc.placed()
		placeBin(t, cfg, "v2", body)
		if tc.mode != 0 {
			os.Chmod(bin, tc.mode)
		}
	}
	inst, err := Fetch(context.Background(), cfg, p, log)
	for path, n := range tc.requests {
		if got := srv.count(path); got != n {
			t.Errorf("requests of %s = %d, want %d", path, got, n)
		}
	}
	assertNoTemp(t, cfg)
	if body != nil {
		if got, rerr := os.ReadFile(bin); rerr != nil || !bytes.Equal(got, body) {
			t.Errorf("the operator's file was changed or removed (%v)", rerr)
		}
	}
	if tc.source == "" {
		if err == nil {
			t.Fatalf("trusted (%s), want refused", inst.Record.Source)
		}
		t.Logf("refused: %v", err)
		if !errors.Is(err, tc.want) {
			t.Errorf("error %q is not %v", err, tc.want)
		}
		for _, s := range tc.substr {
			if !strings.Contains(err.Error(), s) {
				t.Errorf("error %q does not say %q", err, s)
			}
		}
		if fileExists(bin + home.RecordSuffix) {
			t.Error("a record was written for a binary that is not trusted")
		}
		if _, err := trusted(t, cfg, p); err == nil {
			t.Error("the proof accepts a refused binary")
		}
		if tc.mode != 0 {
			if fi, _ := os.Lstat(bin); fi.Mode().Perm() != tc.mode {
				t.Errorf("a refused file was made %v", fi.Mode().Perm())
			}
		}
		return
	}
	if err != nil {
		t.Fatalf("refused, want %s: %v", tc.source, err)
	}
	rec := inst.Record
	if rec.Source != tc.source || rec.SHA256 != sha(body) || rec.Plan != p.Name || rec.Height != p.Height ||
		rec.InfoHash != p.InfoHash() || rec.Format != home.RecordFormat || !strings.HasPrefix(rec.Preflight, "v2.0.0-test") {
		t.Errorf("record = %+v, want source %s", rec, tc.source)
	}
	if v, err := layoutOf(t, cfg).Open(context.Background(), p); err != nil {
		t.Errorf("home.Layout.Open: %v", err)
	} else {
		if v.Rehashed && v.Stamp().Valid {
			t.Error("the recorded stamp is not the file's: the proof re-hashed it")
		}
		v.Close()
	}
	if fi, _ := os.Lstat(bin); fi.Mode().Perm() != 0o755 {
		t.Errorf("mode %v, want 0755", fi.Mode().Perm())
	}
	for _, s := range tc.substr {
		if len(log.logged("WARN", s)) == 0 {
			t.Errorf("no warning saying %q; logged %v", s, log.lines)
		}
	}
	// Nothing from an archive was installed beside the operator's binary.
	if ents, _ := os.ReadDir(dirOf(t, cfg, "v2")); len(ents) != 1 {
		t.Errorf("upgrade dir holds %v, want only bin/", ents)
	}
}

// hotfix is a third build, neither good nor other.
func hotfix() []byte { return append(append([]byte(nil), testBins.good...), "hotfix"...) }

func archiveOf(t testing.TB, bin []byte) []byte {
	return gz(makeTar(t, []tarEntry{{Name: "bin/exampled", Body: bin}, {Name: "lib/libx.so", Body: []byte("lib")}}))
}

// TestFault34PlacedBinaryMismatchNeverTrusted: a binary the operator placed is
// trusted only as far as the plan confirms it (3a checksum, 3b archive, 3d no
// binary for this platform), or on the explicit override (3e).
func TestFault34PlacedBinaryMismatchNeverTrusted(t *testing.T) {
	good := func() []byte { return testBins.good }
	plain := func(body []byte) func(*testing.T, *blobServer) string {
		return func(t *testing.T, srv *blobServer) string { return infoJSON(pinned(srv.blob("/exampled", body), body)) }
	}
	archive := func(body []byte) func(*testing.T, *blobServer) string {
		return func(t *testing.T, srv *blobServer) string {
			a := archiveOf(t, body)
			return infoJSON(pinned(srv.blob("/v2.tar.gz", a), a))
		}
	}
	noDownload := func(c *Config) { c.AllowDownload = false }
	override := func(c *Config) { c.TrustPlacedBinaries = true }
	cases := []placedCase{
		{name: "3a plain binary, checksum matches", placed: good, info: plain(testBins.good), mutate: noDownload,
			source: home.SourcePlanChecksum, requests: map[string]int{"/exampled": 0}},
		{name: "3a plain binary, sha512 matches", placed: good, source: home.SourcePlanChecksum,
			info: func(t *testing.T, srv *blobServer) string {
				return infoJSON(srv.blob("/exampled", testBins.good) + "?checksum=sha512:" + hexSum(testBins.good, Checksum{Algo: "sha512"}))
			}},
		{name: "3a plain binary for any platform, checksum matches", placed: good, source: home.SourcePlanChecksum,
			info: func(t *testing.T, srv *blobServer) string {
				return fmt.Sprintf(`{"binaries":{"any":%q}}`, pinned(srv.blob("/exampled", testBins.good), testBins.good))
			}},
		{name: "3a not executable, checksum matches: made 0755", placed: good, mode: 0o644, info: plain(testBins.good),
			source: home.SourcePlanChecksum},
		{name: "3a checksum mismatch", placed: other, mode: 0o644, info: plain(testBins.good), want: ErrChecksumMismatch,
			substr: []string{sha(testBins.good), sha(other()), "remove it or replace it"}, requests: map[string]int{"/exampled": 0}},
		{name: "3a checksum mismatch is ErrNotTrusted", placed: other, info: plain(testBins.good), want: ErrNotTrusted},
		{name: "3e checksum mismatch, override", placed: other, info: plain(testBins.good), mutate: override,
			source: home.SourceOverride, substr: []string{"UNSAFE", sha(other()), "v2"}},
		{name: "3b archive, binary matches", placed: good, info: archive(testBins.good),
			source: home.SourcePlanArchive, requests: map[string]int{"/v2.tar.gz": 1}},
		{name: "3b archive, binary differs", placed: other, info: archive(testBins.good), want: ErrChecksumMismatch,
			substr: []string{sha(testBins.good), sha(other()), "archive"}, requests: map[string]int{"/v2.tar.gz": 1}},
		{name: "3e archive, binary differs, override", placed: other, info: archive(testBins.good), mutate: override,
			source: home.SourceOverride, substr: []string{"UNSAFE"}},
		{name: "3b archive, downloads disabled", placed: good, info: archive(testBins.good), mutate: noDownload, want: ErrNotTrusted,
			substr:   []string{"names an archive", "allow downloads", daemon + " invisor stage v2 --url", "/v2.tar.gz", "--file", "unsafe-trust-placed-binaries"},
			requests: map[string]int{"/v2.tar.gz": 0}},
		{name: "3e archive, downloads disabled, override", placed: good, info: archive(testBins.good),
			mutate: func(c *Config) { noDownload(c); override(c) }, source: home.SourceOverride, requests: map[string]int{"/v2.tar.gz": 0}},
		{name: "3b archive does not match its pin", placed: good, want: ErrChecksumMismatch, substr: []string{"not trusted until"},
			info: func(t *testing.T, srv *blobServer) string {
				return infoJSON(pinned(srv.blob("/v2.tar.gz", archiveOf(t, testBins.good)), []byte("another archive")))
			}},
		{name: "3b archive server down", placed: good, want: ErrDownload, substr: []string{"503", "retried"},
			info: func(t *testing.T, srv *blobServer) string {
				return infoJSON(pinned(srv.handle("/v2.tar.gz", func(w http.ResponseWriter, r *http.Request) {
					http.Error(w, "down", http.StatusServiceUnavailable)
				}), archiveOf(t, testBins.good)))
			}},
		{name: "3d empty info", placed: good, mutate: noDownload, source: home.SourceOperatorWord, substr: []string{"operator's word"},
			info: func(*testing.T, *blobServer) string { return "" }},
		{name: "3d free text info", placed: other, source: home.SourceOperatorWord, substr: []string{"operator's word", "neither"},
			info: func(*testing.T, *blobServer) string { return "upgrade to v2, see https://forum.example.com/t/42" }},
		{name: "3d JSON without binaries", placed: good, source: home.SourceOperatorWord, substr: []string{"operator's word"},
			info: func(*testing.T, *blobServer) string { return `{"note":"build from tag v2.0.0"}` }},
		{name: "3d binaries map without this platform", placed: good, source: home.SourceOperatorWord, substr: []string{"plan9/mips"},
			info: func(*testing.T, *blobServer) string {
				return `{"binaries":{"plan9/mips":"https://example.invalid/x?checksum=sha256:` + sha(nil) + `"}}`
			}},
		{name: "3a placed binary fails preflight", placed: func() []byte { return testBins.bad }, info: plain(testBins.bad),
			want: ErrPreflight, substr: []string{"libwasmvm"}},
		{name: "placed binary for another architecture", placed: func() []byte { return wrongArch(testBins.good) },
			info: func(*testing.T, *blobServer) string { return "" }, want: ErrNotExecutable},
		{name: "placed HTML page", placed: func() []byte { return []byte("<html>404</html>") },
			info: func(*testing.T, *blobServer) string { return "" }, want: ErrNotExecutable, substr: []string{"HTML"}},
		{name: "placed symlink", info: func(*testing.T, *blobServer) string { return "" }, want: ErrNotTrusted, substr: []string{"symlink"}},
		{name: "plan URL unpinned under RequireChecksum cannot verify", placed: good, want: ErrNoChecksum, substr: []string{"cannot verify"},
			info: func(t *testing.T, srv *blobServer) string { return infoJSON(srv.blob("/exampled", testBins.good)) }},
		{name: "plan URL unpinned, RequireChecksum off: compared with its download", placed: good, source: home.SourcePlanArchive,
			mutate: func(c *Config) { c.RequireChecksum = false }, requests: map[string]int{"/exampled": 1},
			info: func(t *testing.T, srv *blobServer) string { return infoJSON(srv.blob("/exampled", testBins.good)) }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			runPlaced(t, tc)
		})
	}
}

// TestFault34OverrideWithdrawn: a binary trusted on the override is trusted only
// while the override is set; without it, it is verified again and refused.
func TestFault34OverrideWithdrawn(t *testing.T) {
	cfg := testConfig(t)
	cfg.TrustPlacedBinaries = true
	srv := newServer(t)
	log := &testLogger{t: t}
	p := Plan{Name: "v2", Height: 3, Info: infoJSON(pinned(srv.blob("/exampled", testBins.good), testBins.good))}
	bin := placeBin(t, cfg, "v2", other())
	inst, err := Fetch(context.Background(), cfg, p, log)
	if err != nil || inst.Record.Source != home.SourceOverride {
		t.Fatalf("with the override: %+v, %v", inst.Record, err)
	}
	if _, err := Fetch(context.Background(), cfg, p, log); err != nil || len(log.logged("WARN", "UNSAFE")) != 2 {
		t.Errorf("an override record is not warned about each time it is used: %v, %v", err, log.lines)
	}
	cfg.TrustPlacedBinaries = false
	if _, err := Fetch(context.Background(), cfg, p, log); !errors.Is(err, ErrChecksumMismatch) {
		t.Fatalf("after the override was withdrawn: %v", err)
	}
	if fileExists(bin+home.RecordSuffix) || !fileExists(bin) {
		t.Error("the override record survived, or the operator's file was removed")
	}
}

// TestFault36InfoUnreachableNotTrusted: while the plan's info URL cannot be fetched,
// a placed binary is not trusted (never on its preflight alone); the check is
// retried with backoff and succeeds once the info server answers.
func TestFault36InfoUnreachableNotTrusted(t *testing.T) {
	cfg := testConfig(t)
	cfg.AllowDownload = false // the info is fetched anyway; the binary is not
	srv := newServer(t)
	bins := []byte(infoJSON(pinned(srv.URL+"/exampled", testBins.good)))
	var down atomic.Bool
	down.Store(true)
	u := srv.handle("/info.json", func(w http.ResponseWriter, r *http.Request) {
		if down.Load() {
			http.Error(w, "maintenance", http.StatusServiceUnavailable)
			return
		}
		w.Write(bins)
	})
	if !strings.HasPrefix(u, "http://127.0.0.1:") {
		t.Fatalf("info server at %s, want loopback", u)
	}
	bin := placeBin(t, cfg, "v2", testBins.good)
	p := Plan{Name: "v2", Height: 77, Info: pinned(u, bins)}

	_, err := Fetch(context.Background(), cfg, p, nil)
	if !errors.Is(err, ErrNotTrusted) || !errors.Is(err, ErrDownload) || !strings.Contains(err.Error(), "503") {
		t.Fatalf("Fetch with the info server down: %v", err)
	}
	if fileExists(bin + home.RecordSuffix) {
		t.Fatal("recorded while the plan info was unreachable")
	}

	s, _ := startStager(t, cfg)
	s.Offer(&p)
	st := waitStatus(t, s, "two failed attempts", func(st Status) bool { return st.State == StateFailed && st.Attempt >= 2 })
	if !strings.Contains(st.Err, "503") || !strings.Contains(st.Err, "not trusted") || st.NextRetry.IsZero() {
		t.Errorf("status = %+v", st)
	}
	if _, err := trusted(t, cfg, p); err == nil || fileExists(bin+home.RecordSuffix) {
		t.Fatal("trusted while the plan info was unreachable")
	}
	down.Store(false)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	inst, err := s.WaitReady(ctx, p)
	if err != nil || inst.Record.Source != home.SourcePlanChecksum {
		t.Fatalf("after the info server came back: %+v, %v", inst.Record, err)
	}
	if srv.count("/exampled") != 0 {
		t.Error("the binary was downloaded although it was placed and downloads are disabled")
	}

	t.Run("override", func(t *testing.T) {
		cfg := testConfig(t)
		cfg.TrustPlacedBinaries = true
		placeBin(t, cfg, "v2", testBins.good)
		down.Store(true)
		inst, err := Fetch(context.Background(), cfg, p, nil)
		if err != nil || inst.Record.Source != home.SourceOverride {
			t.Fatalf("override with the info server down: %+v, %v", inst.Record, err)
		}
	})
}

// TestFault35SameNameReplacedNeverInherits: a plan replaced under the same name
// (other height or info) never gets the earlier plan's file: a download is
// removed, an operator's install is moved to <dir>#replaced-<unix>, and the new
// plan is staged anew.
func TestFault35SameNameReplacedNeverInherits(t *testing.T) {
	type stage func(t *testing.T, cfg Config, srv *blobServer) Plan
	downloaded := func(t *testing.T, cfg Config, srv *blobServer) Plan {
		p := Plan{Name: "v2", Height: 10, Info: infoJSON(pinned(srv.blob("/old", testBins.good), testBins.good))}
		if inst, err := Fetch(context.Background(), cfg, p, nil); err != nil || inst.Record.Source != home.SourceDownload {
			t.Fatalf("staging the old plan: %+v, %v", inst.Record, err)
		}
		return p
	}
	placed := func(info func(srv *blobServer) string, want home.Source) stage {
		return func(t *testing.T, cfg Config, srv *blobServer) Plan {
			placeBin(t, cfg, "v2", testBins.good)
			p := Plan{Name: "v2", Height: 10, Info: info(srv)}
			if inst, err := Fetch(context.Background(), cfg, p, nil); err != nil || inst.Record.Source != want {
				t.Fatalf("recording the placed binary for the old plan: %+v, %v", inst.Record, err)
			}
			return p
		}
	}
	oldChecksum := func(srv *blobServer) string { return infoJSON(pinned(srv.blob("/old", testBins.good), testBins.good)) }
	noInfo := func(*blobServer) string { return "" }
	newPlan := func(srv *blobServer, height int64) Plan {
		return Plan{Name: "v2", Height: height, Info: infoJSON(pinned(srv.blob("/new", other()), other()))}
	}
	operatorOverDownload := func(t *testing.T, cfg Config, srv *blobServer) Plan {
		p := downloaded(t, cfg, srv)
		bin := binOf(t, cfg, "v2")
		os.WriteFile(bin+".new", hotfix(), 0o755)
		os.Rename(bin+".new", bin)
		return p
	}
	cases := []struct {
		name     string
		old      stage
		height   int64 // of the new plan
		noDL     bool  // downloads disabled for the new plan
		replaced bool  // the old install survives under #replaced-
		survivor []byte
	}{
		{name: "download the operator overwrote is moved aside, not deleted", old: operatorOverDownload, height: 20, replaced: true, survivor: hotfix()},
		{name: "download replaced at another height", old: downloaded, height: 20},
		{name: "download replaced with other info at the same height", old: downloaded, height: 10},
		{name: "operator file (plan checksum) replaced", old: placed(oldChecksum, home.SourcePlanChecksum), height: 20, replaced: true},
		{name: "operator file (operator's word) replaced", old: placed(noInfo, home.SourceOperatorWord), height: 10, replaced: true},
		{name: "operator file replaced, downloads disabled", old: placed(noInfo, home.SourceOperatorWord), height: 20, noDL: true, replaced: true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			cfg := testConfig(t)
			srv := newServer(t)
			log := &testLogger{t: t}
			old := tc.old(t, cfg, srv)
			np := newPlan(srv, tc.height)
			if tc.noDL {
				cfg.AllowDownload = false
			}
			inst, err := Fetch(context.Background(), cfg, np, log)
			if _, terr := trusted(t, cfg, old); terr == nil {
				t.Error("the old plan's install is still trusted under the name")
			}
			moved, _ := filepath.Glob(dirOf(t, cfg, "v2") + ReplacedMarker + "*")
			if tc.replaced {
				if len(moved) != 1 {
					t.Fatalf("operator's install moved aside to %v, want one %s dir", moved, ReplacedMarker)
				}
				want := testBins.good
				if tc.survivor != nil {
					want = tc.survivor
				}
				if b, err := os.ReadFile(filepath.Join(moved[0], home.BinDir, daemon)); err != nil || !bytes.Equal(b, want) {
					t.Errorf("the operator's file did not survive under %s: %v", moved[0], err)
				}
				if len(log.logged("WARN", "moved aside")) != 1 {
					t.Errorf("no warning about the move; logged %v", log.lines)
				}
			} else if len(moved) != 0 {
				t.Errorf("a download was kept under %v", moved)
			}
			if tc.noDL {
				if !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), binOf(t, cfg, "v2")) {
					t.Fatalf("new plan with downloads disabled: %+v, %v", inst, err)
				}
				if fileExists(binOf(t, cfg, "v2")) {
					t.Fatal("a file is at the install path of the new plan")
				}
				// The operator places the new build: it is verified for the new plan.
				placeBin(t, cfg, "v2", other())
				inst, err = Fetch(context.Background(), cfg, np, log)
				if err != nil || inst.Record.Source != home.SourcePlanChecksum || inst.SHA256 != sha(other()) {
					t.Fatalf("placed for the new plan: %+v, %v", inst.Record, err)
				}
				return
			}
			if err != nil {
				t.Fatalf("staging the new plan: %v", err)
			}
			if inst.SHA256 != sha(other()) || inst.Record.Source != home.SourceDownload || srv.count("/new") != 1 || inst.Plan != np {
				t.Errorf("new plan's install = %+v (requests of /new: %d)", inst, srv.count("/new"))
			}
			if _, err := trusted(t, cfg, np); err != nil {
				t.Errorf("new install not proven for the plan in force: %v", err)
			}
			assertNoTemp(t, cfg)
		})
	}
}

// TestFault15ReplacedPlanStagedAnew drives a Stager through a plan replaced under
// the same name, after a download and after an operator's binary: the replaced
// plan's binary is downloaded and only it is ever offered for the new plan.
func TestFault15ReplacedPlanStagedAnew(t *testing.T) {
	for _, placedFirst := range []bool{false, true} {
		t.Run(fmt.Sprintf("placed first %v", placedFirst), func(t *testing.T) {
			cfg := testConfig(t)
			srv := newServer(t)
			a := Plan{Name: "v2", Height: 50, Info: infoJSON(pinned(srv.blob("/a", testBins.good), testBins.good))}
			if placedFirst {
				placeBin(t, cfg, "v2", testBins.good)
			}
			s, _ := startStager(t, cfg)
			s.Offer(&a)
			ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
			defer cancel()
			ia, err := s.WaitReady(ctx, a)
			if err != nil {
				t.Fatal(err)
			}
			if want := map[bool]home.Source{false: home.SourceDownload, true: home.SourcePlanChecksum}[placedFirst]; ia.Record.Source != want {
				t.Fatalf("old plan recorded as %s, want %s", ia.Record.Source, want)
			}
			b := Plan{Name: "v2", Height: 60, Info: infoJSON(pinned(srv.blob("/b", other()), other()))}
			s.Offer(&b)
			ib, err := s.WaitReady(ctx, b)
			if err != nil {
				t.Fatal(err)
			}
			if ib.SHA256 != sha(other()) || ib.Record.Source != home.SourceDownload || srv.count("/b") != 1 {
				t.Errorf("replaced plan's install = %+v", ib)
			}
			short, cancel2 := context.WithTimeout(ctx, 3*cfg.PollInterval)
			defer cancel2()
			if _, err := s.WaitReady(short, a); err == nil {
				t.Error("the old plan is still ready under the name")
			}
			moved, _ := filepath.Glob(dirOf(t, cfg, "v2") + ReplacedMarker + "*")
			if placedFirst != (len(moved) == 1) {
				t.Errorf("moved aside: %v", moved)
			}
		})
	}
}

// TestFault34LegacyRecordsReverified: records of the previous format (source
// "hand-placed", or no format and stamp) are no proof: the file is verified again
// under the bar, the old record removed first.
func TestFault34LegacyRecordsReverified(t *testing.T) {
	legacy := func(plan string, height int64, info, source string, body []byte) []byte {
		b, _ := json.Marshal(map[string]any{"plan": plan, "height": height, "info_sha256": home.InfoHash(info),
			"sha256": sha(body), "size": len(body), "preflight": "v2.0.0-test", "source": source, "time": time.Now()})
		return b
	}
	cases := []struct {
		name    string
		record  func(p Plan) []byte
		placed  []byte
		wantSrc home.Source // "" refused
		newDL   bool        // the plan's binary is downloaded (the old install removed)
	}{
		{name: "hand-placed record for this plan", placed: testBins.good, wantSrc: home.SourcePlanChecksum,
			record: func(p Plan) []byte { return legacy(p.Name, p.Height, p.Info, "hand-placed", testBins.good) }},
		{name: "hand-placed record for a made-up plan (staged ahead)", placed: testBins.good, wantSrc: home.SourcePlanChecksum,
			record: func(p Plan) []byte { return legacy(p.Name, 0, "made up by the operator", "hand-placed", testBins.good) }},
		{name: "hand-placed record, file differs from the plan", placed: other(),
			record: func(p Plan) []byte { return legacy(p.Name, p.Height, p.Info, "hand-placed", other()) }},
		{name: "download record without format or stamp, this plan", placed: testBins.good, wantSrc: home.SourcePlanChecksum,
			record: func(p Plan) []byte { return legacy(p.Name, p.Height, p.Info, "download", testBins.good) }},
		{name: "download record without format, another plan", placed: other(), wantSrc: home.SourceDownload, newDL: true,
			record: func(p Plan) []byte { return legacy(p.Name, 1, "old info", "download", other()) }},
		{name: "current format with an unknown source", placed: testBins.good, wantSrc: home.SourcePlanChecksum,
			record: func(p Plan) []byte {
				b, _ := json.Marshal(home.Record{Format: home.RecordFormat, Plan: p.Name, Height: p.Height, InfoHash: p.InfoHash(),
					Source: "hand-placed", SHA256: sha(testBins.good), Size: int64(len(testBins.good))})
				return b
			}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			cfg := testConfig(t)
			srv := newServer(t)
			p := Plan{Name: "v2", Height: 9, Info: infoJSON(pinned(srv.blob("/exampled", testBins.good), testBins.good))}
			bin := placeBin(t, cfg, "v2", tc.placed)
			os.WriteFile(bin+home.RecordSuffix, tc.record(p), 0o644)
			if _, err := trusted(t, cfg, p); err == nil && tc.name != "download record without format or stamp, this plan" {
				// (home.Layout.Open accepts a format-0 "download" record whose
				// file re-hashes to it; staging still verifies it again.)
				t.Fatal("the proof accepts a legacy record")
			}
			inst, err := Fetch(context.Background(), cfg, p, nil)
			if tc.wantSrc == "" {
				if !errors.Is(err, ErrChecksumMismatch) {
					t.Fatalf("err = %v, want a mismatch", err)
				}
				if fileExists(bin + home.RecordSuffix) {
					t.Error("the legacy record was kept")
				}
				if b, _ := os.ReadFile(bin); !bytes.Equal(b, tc.placed) {
					t.Error("the operator's file was changed")
				}
				return
			}
			if err != nil || inst.Record.Source != tc.wantSrc || inst.Record.Format != home.RecordFormat || inst.SHA256 != sha(testBins.good) {
				t.Fatalf("Fetch = %+v, %v", inst.Record, err)
			}
			if got := srv.count("/exampled"); (got == 1) != tc.newDL {
				t.Errorf("downloads = %d", got)
			}
		})
	}
}

// TestFault17HostileNames: plan names that need escaping, case handling or are
// very long go into home.DirName's directory, exactly, or are refused as
// unmappable with the operator's advice, and a Stager reports that once instead
// of retrying.
func TestFault17HostileNames(t *testing.T) {
	srv := newServer(t)
	info := infoJSON(pinned(srv.blob("/exampled", testBins.good), testBins.good))
	cases := []struct {
		name    string
		recase  bool // DisableRecase
		wantDir string
		bad     bool
	}{
		{name: "v2", wantDir: "v2"},
		{name: "V2-Upgrade", wantDir: "v2-upgrade"},
		{name: "V2-Upgrade", recase: true, wantDir: "V2-Upgrade"},
		{name: "a/b", wantDir: "a%2Fb"},
		{name: "../../etc", wantDir: "..%2F..%2Fetc"},
		{name: "a\x00b", wantDir: "a%00b"},
		{name: `"quoted" 'name'`, wantDir: "%22quoted%22%20%27name%27"},
		{name: "v2\u200b", wantDir: "v2%E2%80%8B"},
		{name: "line\nbreak", wantDir: "line%0Abreak"},
		{name: strings.Repeat("a", 255), wantDir: strings.Repeat("a", 255)},
		{name: "..", bad: true},
		{name: ".", bad: true},
		{name: strings.Repeat("a", 256), bad: true},
		{name: strings.Repeat("/", 90), bad: true},
		{name: "\xff\xfe", wantDir: "%EF%BF%BD%EF%BF%BD"},               // strings.ToLower makes each bad byte U+FFFD, as in cosmovisor
		{name: "\xff\xfe", recase: true, wantDir: "%EF%BF%BD%EF%BF%BD"}, // the form upgrade-info.json holds (encoding/json)
	}
	for _, tc := range cases {
		t.Run(fmt.Sprintf("%q recase=%v", tc.name, tc.recase), func(t *testing.T) {
			cfg := testConfig(t)
			cfg.DisableRecase = tc.recase
			l := layoutOf(t, cfg)
			inst, err := Fetch(context.Background(), cfg, Plan{Name: tc.name, Height: 3, Info: info}, nil)
			ents, _ := os.ReadDir(l.UpgradesRoot())
			if tc.bad {
				var u *home.UnmappableNameError
				if !errors.As(err, &u) || !errors.Is(err, ErrBadName) || !strings.Contains(err.Error(), u.Advice()) {
					t.Fatalf("err = %v, want an unmappable name with advice", err)
				}
				if len(ents) != 0 {
					t.Errorf("upgrades/ holds %v", ents)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			want := filepath.Join(l.UpgradesRoot(), tc.wantDir, home.BinDir, daemon)
			if inst.Path != want || len(ents) != 1 || ents[0].Name() != tc.wantDir || inst.Plan.Name != tc.name || inst.Record.Plan != home.CanonicalName(tc.name) {
				t.Errorf("installed at %s (upgrades/ holds %v), want %s", inst.Path, ents, want)
			}
		})
	}

	t.Run("stager reports an unmappable plan once", func(t *testing.T) {
		cfg := testConfig(t)
		log := &testLogger{t: t}
		s, err := New(cfg, log)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- s.Run(ctx) }()
		defer func() { cancel(); <-done }()
		bad := Plan{Name: strings.Repeat("x", 300), Height: 5, Info: info}
		s.Offer(&bad)
		st := waitStatus(t, s, "unmappable", func(st Status) bool { return st.State == StateUnmappable })
		if !strings.Contains(st.Err, "cannot be mapped") || !strings.Contains(st.Err, "halt-height") || !st.NextRetry.IsZero() {
			t.Errorf("status = %+v", st)
		}
		if _, err := s.WaitReady(ctx, bad); !errors.Is(err, ErrBadName) {
			t.Errorf("WaitReady for an unmappable plan: %v", err)
		}
		// Nothing is retried: the worker waits for the next plan (a bounded look
		// at the absence of retries, not a synchronisation).
		time.Sleep(5 * cfg.RetryMax)
		if n := len(log.logged("ERROR", "attempt failed")); n != 0 || len(log.logged("ERROR", "cannot be staged")) != 1 {
			t.Errorf("unmappable plan retried: %v", log.lines)
		}
		good := Plan{Name: "v2", Height: 6, Info: info}
		s.Offer(&good)
		wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
		defer wcancel()
		if _, err := s.WaitReady(wctx, good); err != nil {
			t.Fatalf("the next plan: %v", err)
		}
	})
}

// TestFault19CrashLeftovers: what a crash leaves (temp dirs of this and earlier
// releases, record temps, a binary renamed into place without its record) is
// removed by New or verified again under the bar; nothing of it is trusted as is.
func TestFault19CrashLeftovers(t *testing.T) {
	t.Run("temps removed by New, installs kept", func(t *testing.T) {
		cfg := testConfig(t)
		l := layoutOf(t, cfg)
		var temps []string
		for _, d := range []string{TempPrefix + "123", TempPrefix + "remove-9", legacyTempPrefix + "456"} {
			p := filepath.Join(l.Root(), d, "root", "bin")
			os.MkdirAll(p, 0o755)
			os.WriteFile(filepath.Join(p, daemon), []byte("half"), 0o755)
			temps = append(temps, filepath.Join(l.Root(), d))
		}
		bin := placeBin(t, cfg, "v1", testBins.good)
		recTemp := home.TempName(bin + home.RecordSuffix)
		os.WriteFile(recTemp, []byte(`{"plan":`), 0o600)
		if _, err := New(cfg, nil); err != nil {
			t.Fatal(err)
		}
		for _, p := range append(temps, recTemp) {
			if fileExists(p) {
				t.Errorf("%s survived New", p)
			}
		}
		if !fileExists(bin) {
			t.Error("New removed an install")
		}
	})
	for _, tc := range []struct {
		name   string
		body   func(t *testing.T) []byte // what the plan's URL serves
		path   string
		source home.Source
		reqs   int // requests after the crash
	}{
		{name: "plain download renamed, no record", path: "/exampled", body: func(*testing.T) []byte { return testBins.good },
			source: home.SourcePlanChecksum, reqs: 0},
		{name: "archive download renamed, no record", path: "/v2.tar.gz", body: func(t *testing.T) []byte { return archiveOf(t, testBins.good) },
			source: home.SourcePlanArchive, reqs: 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testConfig(t)
			srv := newServer(t)
			body := tc.body(t)
			p := Plan{Name: "v2", Height: 8, Info: infoJSON(pinned(srv.blob(tc.path, body), body))}
			// The state a crash right after the rename leaves: the binary in place,
			// no record.
			placeBin(t, cfg, "v2", testBins.good)
			if _, err := trusted(t, cfg, p); err == nil {
				t.Fatal("a binary without a record is trusted")
			}
			if _, err := New(cfg, nil); err != nil {
				t.Fatal(err)
			}
			inst, err := Fetch(context.Background(), cfg, p, nil)
			if err != nil || inst.Record.Source != tc.source || srv.count(tc.path) != tc.reqs {
				t.Fatalf("after the crash: %+v, %v (requests %d)", inst.Record, err, srv.count(tc.path))
			}
		})
	}
}

// TestPreflightSandboxUnwritableHOME (FAULTS.md 13 and 26): the preflight runs with
// its working directory, HOME, XDG and TMPDIR directories and --home in a scratch
// directory of the attempt, removed afterwards. A binary that, like an SDK binary,
// writes its default config under its home even for `version` passes with an
// unwritable $HOME (systemd ProtectHome=, DynamicUser=) and writes nothing there.
func TestPreflightSandboxUnwritableHOME(t *testing.T) {
	t.Setenv("STAGING_TEST_REPORT_ENV", "1")
	notDir := filepath.Join(t.TempDir(), "file")
	os.WriteFile(notDir, []byte("x"), 0o644)
	unwritable := filepath.Join(notDir, "home") // ENOTDIR, whatever the user
	empty := t.TempDir()

	// Without the sandbox the helper fails as an SDK binary would: the test is meaningful.
	helper := filepath.Join(t.TempDir(), daemon)
	os.WriteFile(helper, testBins.good, 0o755)
	cmd := exec.Command(helper, "version")
	cmd.Env = append(os.Environ(), "HOME="+unwritable)
	if out, err := cmd.CombinedOutput(); err == nil {
		t.Fatalf("the helper ran without a writable home: %s", out)
	}

	for _, dir := range []string{unwritable, empty} {
		t.Run(filepath.Base(dir), func(t *testing.T) {
			t.Setenv("HOME", dir)
			t.Setenv("XDG_CONFIG_HOME", filepath.Join(dir, ".config"))
			cfg := testConfig(t)
			srv := newServer(t)
			p := Plan{Name: "v2", Info: infoJSON(pinned(srv.blob("/exampled", testBins.good), testBins.good))}
			inst, err := Fetch(context.Background(), cfg, p, nil)
			if err != nil {
				t.Fatalf("Fetch with HOME=%s: %v", dir, err)
			}
			// "v2.0.0-test same=<cwd, --home, HOME and TMPDIR agree> cwd=<scratch>"
			f := strings.Fields(inst.Record.Preflight)
			if len(f) != 3 {
				t.Fatalf("preflight line %q", inst.Record.Preflight)
			}
			scratch := strings.TrimPrefix(f[2], "cwd=")
			root := layoutOf(t, cfg).Root()
			if !strings.HasPrefix(scratch, filepath.Join(root, TempPrefix)) || f[1] != "same=true" {
				t.Errorf("preflight ran with %q, want everything in a scratch dir under %s", inst.Record.Preflight, root)
			}
			if fileExists(scratch) {
				t.Errorf("scratch dir %s left behind", scratch)
			}
			if ents, _ := os.ReadDir(empty); len(ents) != 0 {
				t.Errorf("the preflight wrote into $HOME: %v", ents)
			}
			assertNoTemp(t, cfg)
		})
	}
}
