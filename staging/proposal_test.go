package staging

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"

	"github.com/invisor/invisor/internal/home"
)

// Tests of CheckProposal: one synchronous check of a proposal's binary, for this
// node's platform (preflight and probe) or another (checksum and header only).

// otherPlatform is a platform other than this node's whose binary the test can build.
func otherPlatform() (goos, goarch string) {
	if runtime.GOOS == "linux" && runtime.GOARCH == "arm64" {
		return "linux", "amd64"
	}
	return "linux", "arm64"
}

var otherBins struct {
	once sync.Once
	b    []byte
	err  error
}

// otherPlatformBin is the "good" helper built for otherPlatform.
func otherPlatformBin(t testing.TB) []byte {
	t.Helper()
	otherBins.once.Do(func() {
		goos, goarch := otherPlatform()
		out := filepath.Join(testBins.dir, "good-"+goos+"-"+goarch)
		cmd := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w", "-o", out, ".")
		cmd.Dir = testBins.dir
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=-mod=mod", "GOWORK=off", "GOOS="+goos, "GOARCH="+goarch)
		if b, err := cmd.CombinedOutput(); err != nil {
			otherBins.err = fmt.Errorf("building the helper for %s/%s: %v\n%s", goos, goarch, err, b)
			return
		}
		otherBins.b, otherBins.err = os.ReadFile(out)
	})
	if otherBins.err != nil {
		t.Fatal(otherBins.err)
	}
	return otherBins.b
}

// assertNoProposalArea checks that nothing is kept for proposal id and that no
// temp directory or upgrade directory was left.
func assertNoProposalArea(t testing.TB, cfg Config, id uint64, plan string) {
	t.Helper()
	l := layoutOf(t, cfg)
	if fileExists(l.ProposalDir(id)) {
		t.Errorf("proposal area %s exists", l.ProposalDir(id))
	}
	if a := l.ProposalAreas(); len(a) != 0 {
		t.Errorf("proposal areas left: %+v", a)
	}
	if dir := dirOf(t, cfg, plan); fileExists(dir) {
		t.Errorf("a proposal check created the upgrade directory %s", dir)
	}
	assertNoTemp(t, cfg)
}

func TestCheckProposal(t *testing.T) {
	answer, missing := probeBin(t, "answer"), probeBin(t, "missing")
	ogoos, ogoarch := otherPlatform()
	otherBuild := other()
	other := ogoos + "/" + ogoarch
	host := platform()
	infoFor := func(key, u string) string { return fmt.Sprintf(`{"binaries":{%q:%q}}`, key, u) }
	cases := []struct {
		name     string
		platform string
		noDL     bool
		info     func(srv *blobServer) string
		state    CheckState
		handler  string
		sha      []byte   // the SHA256 the check reports, nil: none
		err      []string // substrings of Err
		summary  string   // substring of Summary
		requests int      // requests to /bin
	}{
		{name: "verified with handler", info: func(srv *blobServer) string { return infoJSON(pinned(srv.blob("/bin", answer), answer)) },
			state: CheckVerified, handler: HandlerYes, sha: answer, requests: 1,
			summary: fmt.Sprintf(`proposal 12 "v5": %s binary verified (sha256 %s…), has handler "v5"`, host, sha(answer)[:12])},
		{name: "verified via any, no probe answer", info: func(srv *blobServer) string {
			return infoFor("any", pinned(srv.blob("/bin", testBins.good), testBins.good))
		},
			state: CheckVerified, handler: HandlerNotAsked, sha: testBins.good, requests: 1, summary: "gave no probe answer"},
		{name: "checksum mismatch", info: func(srv *blobServer) string { return infoJSON(pinned(srv.blob("/bin", otherBuild), testBins.good)) },
			state: CheckFailed, requests: 1,
			err:     []string{"checksum mismatch: expected sha256 " + sha(testBins.good), "got " + sha(otherBuild)},
			summary: fmt.Sprintf(`proposal 12 "v5": %s binary checksum mismatch: expected sha256 %s, got %s`, host, sha(testBins.good), sha(otherBuild))},
		{name: "no handler: refused", info: func(srv *blobServer) string { return infoJSON(pinned(srv.blob("/bin", missing), missing)) },
			state: CheckRefused, handler: HandlerNo, sha: missing, requests: 1,
			err:     []string{`has no upgrade handler "v5"`, "height 120"},
			summary: fmt.Sprintf(`proposal 12 "v5": %s binary has no upgrade handler "v5": it would halt the chain again at height 120`, host)},
		{name: "no binary for the platform", info: func(srv *blobServer) string {
			return infoFor(other, pinned(srv.blob("/bin", testBins.good), testBins.good))
		},
			state: CheckFailed,
			err:   []string{fmt.Sprintf(`the plan names no binary for %s and no "any"; validators on %s would have to build or fetch it themselves`, host, host), other}},
		{name: "no info", info: func(*blobServer) string { return "" }, state: CheckFailed,
			err: []string{"the plan has no info, so it names no binary for " + host}},
		{name: "unpinned", info: func(srv *blobServer) string { return infoJSON(srv.blob("/bin", testBins.good)) }, state: CheckFailed,
			err: []string{"no acceptable checksum", "checksum=sha256"}},
		{name: "info URL", info: func(srv *blobServer) string {
			body := []byte(infoJSON(pinned(srv.blob("/bin", answer), answer)))
			return pinned(srv.blob("/info.json", body), body)
		}, state: CheckVerified, handler: HandlerYes, sha: answer, requests: 1},
		{name: "another platform: header only", platform: other,
			info: func(srv *blobServer) string {
				b := otherPlatformBin(t)
				return infoFor(other, pinned(srv.blob("/bin", b), b))
			},
			state: CheckVerified, handler: HandlerNotAsked, requests: 1, summary: "its preflight and probe cannot run on " + host},
		{name: "another platform: wrong arch under its key", platform: other,
			info: func(srv *blobServer) string {
				return infoFor(other, pinned(srv.blob("/bin", testBins.good), testBins.good))
			},
			state: CheckFailed, requests: 1, sha: testBins.good, err: []string{"not an executable for this platform", "not for " + other}},
		{name: "downloads disabled: skipped", noDL: true, info: func(srv *blobServer) string { return infoJSON(pinned(srv.blob("/bin", answer), answer)) },
			state: CheckSkipped, err: []string{"downloads are disabled", "/bin?checksum=sha256%3A" + sha(answer), "exampled version"}},
		{name: "bad platform", platform: "linux", info: func(*blobServer) string { return "" }, state: CheckFailed, err: []string{`"os/arch"`}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			cfg := probeConfig(t)
			cfg.AllowDownload = !tc.noDL
			srv := newServer(t)
			p := Proposal{ID: 12, Title: "upgrade to v5", Plan: Plan{Name: "v5", Height: 120, Info: tc.info(srv)}}
			c := CheckProposal(context.Background(), cfg, p, tc.platform, false, &testLogger{t: t})
			if c.State != tc.state {
				t.Fatalf("state %s, want %s; check %+v", c.State, tc.state, c)
			}
			if c.ID != 12 || c.Plan != p.Plan || c.Title != p.Title {
				t.Errorf("check names %d %q %+v", c.ID, c.Title, c.Plan)
			}
			if want := tc.platform; want != "linux" && c.Platform != map[bool]string{true: host, false: want}[want == ""] {
				t.Errorf("platform %q", c.Platform)
			}
			if c.Handler != tc.handler {
				t.Errorf("handler %q, want %q", c.Handler, tc.handler)
			}
			if tc.sha != nil && c.SHA256 != sha(tc.sha) {
				t.Errorf("sha256 %s, want %s", c.SHA256, sha(tc.sha))
			}
			for _, s := range tc.err {
				if !strings.Contains(c.Err, s) {
					t.Errorf("error %q does not contain %q", c.Err, s)
				}
			}
			if len(tc.err) == 0 && c.Err != "" {
				t.Errorf("error %q on a good check", c.Err)
			}
			if s := c.Summary(); !strings.Contains(s, tc.summary) || strings.Contains(s, "\n") {
				t.Errorf("summary %q does not contain %q", s, tc.summary)
			}
			if c.State == CheckVerified {
				if c.Checked.IsZero() || c.Key == "" || !strings.Contains(c.URL, "/bin") {
					t.Errorf("verified check without time, key or URL: %+v", c)
				}
				if (tc.platform == "") != (c.Version != "") {
					t.Errorf("version %q: preflight runs only on this node's platform", c.Version)
				}
			}
			if n := srv.count("/bin"); n != tc.requests {
				t.Errorf("%d requests for the binary, want %d", n, tc.requests)
			}
			if c.Kept != "" {
				t.Errorf("keep=false kept %s", c.Kept)
			}
			assertNoProposalArea(t, cfg, 12, "v5")
		})
	}
}

// With keep, a verified binary (with the rest of its archive) stays in the
// proposal area with a record for exactly the plan; asked again, the check
// reports it from there without downloading, while keep=false still downloads.
func TestCheckProposalKeep(t *testing.T) {
	cfg := probeConfig(t)
	srv := newServer(t)
	arch := archiveOf(t, probeBin(t, "answer"))
	p := Proposal{ID: 7, Plan: Plan{Name: "v5", Height: 120, Info: infoJSON(pinned(srv.blob("/v5.tar.gz", arch), arch))}}
	l := layoutOf(t, cfg)
	c := CheckProposal(context.Background(), cfg, p, "", true, nil)
	if c.State != CheckVerified || c.Kept != l.ProposalBin(7) || c.Handler != HandlerYes {
		t.Fatalf("check %+v", c)
	}
	v, err := l.OpenProposal(context.Background(), 7, p.Plan)
	if err != nil {
		t.Fatal(err)
	}
	rec := v.Record
	v.Close()
	if rec.Proposal != 7 || rec.Source != home.SourceDownload || rec.SHA256 != c.SHA256 || rec.Probe == nil || rec.Preflight != c.Version {
		t.Errorf("record %+v", rec)
	}
	if b, err := os.ReadFile(filepath.Join(l.ProposalDir(7), "lib", "libx.so")); err != nil || string(b) != "lib" {
		t.Errorf("the archive's lib/ was not kept: %q, %v", b, err)
	}
	if _, err := l.Open(context.Background(), p.Plan); err == nil {
		t.Error("a proposal's binary is trusted for the plan before the plan is staged")
	}
	if ins := l.Installs(); len(ins) != 0 {
		t.Errorf("the proposal area shows as an upgrade: %+v", ins)
	}
	assertNoTemp(t, cfg)

	again := CheckProposal(context.Background(), cfg, p, "", true, nil)
	if again.State != CheckVerified || again.SHA256 != c.SHA256 || again.Kept != c.Kept || again.Handler != HandlerYes || again.Key != platform() {
		t.Errorf("second check %+v", again)
	}
	if n := srv.count("/v5.tar.gz"); n != 1 {
		t.Errorf("%d downloads, want 1: the kept binary is the check", n)
	}
	if c := CheckProposal(context.Background(), cfg, p, "", false, nil); c.State != CheckVerified || srv.count("/v5.tar.gz") != 2 {
		t.Errorf("keep=false: %+v after %d downloads", c, srv.count("/v5.tar.gz"))
	}

	// The proposal now offered with other info: its area is not for that plan.
	q := p
	q.Plan.Info = infoJSON(pinned(srv.blob("/other", testBins.good), testBins.good))
	if c := CheckProposal(context.Background(), cfg, q, "", true, nil); c.State != CheckVerified || c.SHA256 != sha(testBins.good) {
		t.Fatalf("check of the other plan: %+v", c)
	}
	if _, err := l.OpenProposal(context.Background(), 7, p.Plan); err == nil {
		t.Error("the area still holds the first plan's binary")
	}
	if _, err := l.OpenProposal(context.Background(), 7, q.Plan); err != nil {
		t.Errorf("the area does not hold the second plan's binary: %v", err)
	}
}

// Fetch installs the tree a check kept for exactly its plan without a request;
// a tampered one is removed with a warning and the plan downloaded instead.
func TestFetchFromProposalArea(t *testing.T) {
	for _, tamper := range []bool{false, true} {
		t.Run(fmt.Sprintf("tampered=%v", tamper), func(t *testing.T) {
			cfg := probeConfig(t)
			srv := newServer(t)
			arch := archiveOf(t, probeBin(t, "answer"))
			p := Proposal{ID: 3, Plan: Plan{Name: "v5", Height: 120, Info: infoJSON(pinned(srv.blob("/v5.tar.gz", arch), arch))}}
			if c := CheckProposal(context.Background(), cfg, p, "", true, nil); c.State != CheckVerified {
				t.Fatalf("check %+v", c)
			}
			l := layoutOf(t, cfg)
			if tamper {
				f, err := os.OpenFile(l.ProposalBin(3), os.O_WRONLY|os.O_APPEND, 0)
				if err != nil {
					t.Fatal(err)
				}
				f.Write([]byte("evil"))
				f.Close()
			}
			log := &testLogger{t: t}
			inst, err := Fetch(context.Background(), cfg, p.Plan, log)
			if err != nil {
				t.Fatal(err)
			}
			if inst.SHA256 != sha(probeBin(t, "answer")) {
				t.Errorf("installed %s", inst.SHA256)
			}
			v, err := l.Open(context.Background(), p.Plan)
			if err != nil {
				t.Fatal(err)
			}
			rec := v.Record
			v.Close()
			want, wantProposal := 1, uint64(3)
			if tamper {
				want, wantProposal = 2, 0
				if len(log.logged("WARN", "cannot be installed")) != 1 {
					t.Errorf("no warning for the tampered area: %v", log.lines)
				}
			} else if len(log.logged("INFO", "the binary checked while proposal 3 was in its voting period is the plan's; installed without downloading again")) != 1 {
				t.Errorf("the promotion was not logged: %v", log.lines)
			}
			if n := srv.count("/v5.tar.gz"); n != want {
				t.Errorf("%d downloads, want %d", n, want)
			}
			if rec.Proposal != wantProposal || rec.Source != home.SourceDownload || rec.Probe == nil {
				t.Errorf("record %+v", rec)
			}
			if _, err := os.Stat(filepath.Join(dirOf(t, cfg, "v5"), "lib", "libx.so")); err != nil {
				t.Errorf("the archive's lib/ is not installed: %v", err)
			}
			if fileExists(l.ProposalDir(3)) {
				t.Error("the proposal area is left after the install")
			}
			assertNoTemp(t, cfg)
		})
	}
}

// A plan that differs from the proposal's (other info, other height) does not take
// its area: it is downloaded, and the area is left as it was.
func TestFetchProposalAreaOtherPlan(t *testing.T) {
	body := probeBin(t, "answer")
	for _, tc := range []struct {
		name  string
		other func(p Plan, u string) Plan
	}{
		{"other info", func(p Plan, u string) Plan { p.Info = infoJSON(pinned(u, body)); return p }},
		{"other height", func(p Plan, u string) Plan { p.Height++; return p }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := probeConfig(t)
			srv := newServer(t)
			p := Proposal{ID: 4, Plan: Plan{Name: "v5", Height: 120, Info: infoJSON(pinned(srv.blob("/a", body), body))}}
			if c := CheckProposal(context.Background(), cfg, p, "", true, nil); c.State != CheckVerified {
				t.Fatalf("check %+v", c)
			}
			q := tc.other(p.Plan, srv.blob("/b", body))
			inst, err := Fetch(context.Background(), cfg, q, nil)
			if err != nil {
				t.Fatal(err)
			}
			if n := srv.count("/a") + srv.count("/b"); n != 2 || inst.Record.Proposal != 0 {
				t.Errorf("%d requests in all (want the check's and the plan's), record from proposal %d", n, inst.Record.Proposal)
			}
			if _, err := layoutOf(t, cfg).OpenProposal(context.Background(), 4, p.Plan); err != nil {
				t.Errorf("the proposal's area was touched: %v", err)
			}
		})
	}
}

// New removes a proposal area without a valid record (a check that did not
// finish) and keeps a valid one.
func TestNewRemovesStaleProposalAreas(t *testing.T) {
	cfg := probeConfig(t)
	srv := newServer(t)
	body := testBins.good
	p := Proposal{ID: 5, Plan: Plan{Name: "v5", Height: 120, Info: infoJSON(pinned(srv.blob("/a", body), body))}}
	if c := CheckProposal(context.Background(), cfg, p, "", true, nil); c.State != CheckVerified {
		t.Fatalf("check %+v", c)
	}
	l := layoutOf(t, cfg)
	stale := l.ProposalBin(6)
	os.MkdirAll(filepath.Dir(stale), 0o755)
	os.WriteFile(stale, body, 0o755)
	temp := home.TempName(l.ProposalRecordPath(5))
	os.WriteFile(temp, []byte("{"), 0o644)
	foreign := filepath.Join(l.ProposalsRoot(), "notes")
	os.WriteFile(foreign, []byte("mine"), 0o644)
	if _, err := New(cfg, nil); err != nil {
		t.Fatal(err)
	}
	if fileExists(l.ProposalDir(6)) || fileExists(temp) {
		t.Error("the stale area or the record temp survived New")
	}
	if _, err := l.OpenProposal(context.Background(), 5, p.Plan); err != nil {
		t.Errorf("New removed a valid area: %v", err)
	}
	if !fileExists(foreign) {
		t.Error("New removed a file that is not a proposal area")
	}
}
