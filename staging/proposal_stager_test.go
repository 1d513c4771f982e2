package staging

import (
	"context"
	"net/http"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// Tests of a Stager's proposal checks: offered with OfferProposals, run by the
// worker in the background whenever the plan in force needs nothing.

// startStagerWith is startStager with setup applied before Run starts.
func startStagerWith(t *testing.T, cfg Config, setup func(*Stager)) *Stager {
	t.Helper()
	s, err := New(cfg, &testLogger{t: t})
	if err != nil {
		t.Fatal(err)
	}
	setup(s)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return s
}

// proposalState is the check of proposal id in st, and whether there is one.
func proposalState(st Status, id uint64) (ProposalCheck, bool) {
	for _, c := range st.Proposals {
		if c.ID == id {
			return c, true
		}
	}
	return ProposalCheck{}, false
}

// waitFor polls cond (for a state outside the Status, such as a file) until it
// holds or 15 s pass.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatalf("timed out waiting for %s", what)
}

func TestStagerChecksOfferedProposals(t *testing.T) {
	cfg := probeConfig(t)
	srv := newServer(t)
	good := probeBin(t, "answer")
	var n atomic.Int32
	flaky := srv.handle("/flaky", func(w http.ResponseWriter, r *http.Request) {
		if n.Add(1) <= 2 {
			http.Error(w, "try later", http.StatusBadGateway)
			return
		}
		w.Write(good)
	})
	p1 := Proposal{ID: 1, Title: "to v5", Plan: Plan{Name: "v5", Height: 120, Info: infoJSON(pinned(srv.blob("/good", good), good))}}
	p2 := Proposal{ID: 2, Plan: Plan{Name: "v6", Height: 130, Info: infoJSON(pinned(srv.blob("/bad", other()), testBins.good))}}
	p3 := Proposal{ID: 3, Plan: Plan{Name: "v7", Height: 140, Info: infoJSON(pinned(flaky, good))}}
	s, _ := startStager(t, cfg)
	s.OfferProposals([]Proposal{p3, p2, p1})
	s.OfferProposals([]Proposal{p1, p3, p2}) // the same list: nothing changes
	st := waitStatus(t, s, "the three checks done", func(st Status) bool {
		c1, _ := proposalState(st, 1)
		c2, _ := proposalState(st, 2)
		c3, _ := proposalState(st, 3)
		return c1.State == CheckVerified && c2.State == CheckFailed && c3.State == CheckVerified
	})
	if len(st.Proposals) != 3 || st.Proposals[0].ID != 1 || st.Proposals[1].ID != 2 || st.Proposals[2].ID != 3 {
		t.Fatalf("proposals not one per offered, by ID: %+v", st.Proposals)
	}
	l := layoutOf(t, cfg)
	c1 := st.Proposals[0]
	if c1.Title != "to v5" || c1.Handler != HandlerYes || c1.Kept != l.ProposalBin(1) || !fileExists(c1.Kept) {
		t.Errorf("proposal 1: %+v", c1)
	}
	if c2 := st.Proposals[1]; !strings.Contains(c2.Err, "checksum mismatch: expected sha256 "+sha(testBins.good)) || c2.Kept != "" || fileExists(l.ProposalDir(2)) {
		t.Errorf("proposal 2: %+v", c2)
	}
	// Checks run in ID order, so a retry of proposal 2 would have come before
	// each retry of proposal 3: a mismatch is not retried, a 5xx is.
	if got := srv.count("/bad"); got != 1 {
		t.Errorf("the mismatching binary was fetched %d times, want 1", got)
	}
	if got := srv.count("/flaky"); got != 3 {
		t.Errorf("the flaky binary was fetched %d times, want 3", got)
	}
	if st.State != StateIdle || st.Plan != nil {
		t.Errorf("a proposal check changed the plan's state: %s %+v", st.State, st.Plan)
	}
	assertNoTemp(t, cfg)
}

// A plan offered while a check downloads cancels the check (the check goes back
// to queued), is staged first, and the check runs again once the plan is ready.
func TestStagerPlanPreemptsProposalCheck(t *testing.T) {
	cfg := probeConfig(t)
	cfg.IdleTimeout = 10 * time.Second
	srv := newServer(t)
	body := probeBin(t, "answer")
	release, planRelease := make(chan struct{}), make(chan struct{})
	var cancelled, planCancelled atomic.Int32
	slow := srv.handle("/proposal", slowBody(body, release, &cancelled))
	planURL := srv.handle("/plan", slowBody(testBins.good, planRelease, &planCancelled))
	s, _ := startStager(t, cfg)
	s.OfferProposals([]Proposal{{ID: 9, Plan: Plan{Name: "v6", Height: 200, Info: infoJSON(pinned(slow, body))}}})
	waitStatus(t, s, "the check downloading", func(st Status) bool {
		c, _ := proposalState(st, 9)
		return c.State == CheckRunning && srv.count("/proposal") == 1
	})

	plan := Plan{Name: "v5", Height: 100, Info: infoJSON(pinned(planURL, testBins.good))}
	s.Offer(&plan)
	st := waitStatus(t, s, "the check pre-empted by the plan's download", func(st Status) bool {
		c, _ := proposalState(st, 9)
		return cancelled.Load() == 1 && c.State == CheckQueued && st.State == StateDownloading && st.BytesDone > 0
	})
	if c, _ := proposalState(st, 9); !strings.Contains(c.Err, "interrupted") || !strings.Contains(c.Err, `"v5"`) {
		t.Errorf("queued check says %q", c.Err)
	}
	close(planRelease)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if _, err := s.WaitReady(ctx, plan); err != nil {
		t.Fatal(err)
	}
	waitStatus(t, s, "the check resumed", func(st Status) bool {
		c, _ := proposalState(st, 9)
		return c.State == CheckRunning && srv.count("/proposal") == 2
	})
	close(release)
	st = waitStatus(t, s, "the check verified", func(st Status) bool {
		c, _ := proposalState(st, 9)
		return c.State == CheckVerified
	})
	if c, _ := proposalState(st, 9); c.Kept == "" || c.SHA256 != sha(body) || c.Err != "" {
		t.Errorf("check %+v", c)
	}
	if st.State != StateReady || planCancelled.Load() != 0 {
		t.Errorf("the plan: %s, its download cancelled %d times", st.State, planCancelled.Load())
	}
}

// A proposal that is no longer offered (rejected, withdrawn) loses its check and
// its area.
func TestStagerProposalNoLongerOfferedLosesArea(t *testing.T) {
	cfg := probeConfig(t)
	srv := newServer(t)
	body := probeBin(t, "answer")
	s := startStagerWith(t, cfg, func(s *Stager) { s.propGrace = 0 })
	keep := Proposal{ID: 1, Plan: Plan{Name: "v5", Height: 120, Info: infoJSON(pinned(srv.blob("/a", body), body))}}
	gone := Proposal{ID: 2, Plan: Plan{Name: "v6", Height: 130, Info: infoJSON(pinned(srv.blob("/b", body), body))}}
	s.OfferProposals([]Proposal{keep, gone})
	waitStatus(t, s, "both verified", func(st Status) bool {
		a, _ := proposalState(st, 1)
		b, _ := proposalState(st, 2)
		return a.State == CheckVerified && b.State == CheckVerified
	})
	l := layoutOf(t, cfg)
	if !fileExists(l.ProposalBin(1)) || !fileExists(l.ProposalBin(2)) {
		t.Fatal("no areas kept")
	}
	s.OfferProposals([]Proposal{keep})
	waitFor(t, "the area of proposal 2 removed", func() bool { return !fileExists(l.ProposalDir(2)) })
	if st := s.Status(); len(st.Proposals) != 1 || st.Proposals[0].ID != 1 {
		t.Errorf("proposals %+v", st.Proposals)
	}
	if _, err := l.OpenProposal(context.Background(), 1, keep.Plan); err != nil {
		t.Errorf("the area of the proposal still offered: %v", err)
	}
	s.OfferProposals(nil)
	waitFor(t, "the area of proposal 1 removed", func() bool { return !fileExists(l.ProposalDir(1)) })
	if st := s.Status(); len(st.Proposals) != 0 {
		t.Errorf("proposals %+v", st.Proposals)
	}
	waitFor(t, "the removed areas freed", func() bool {
		m, _ := filepath.Glob(filepath.Join(l.Root(), TempPrefix+"*"))
		return len(m) == 0
	})
}

// The proposal that passes unchanged is installed from its area, with no further
// request to its URL, even when the reader stops offering it before the hook
// offers its plan; a plan that differs (other info) is downloaded and leaves
// the area alone.
func TestStagerPassedProposalInstalledWithoutDownload(t *testing.T) {
	cfg := probeConfig(t)
	srv := newServer(t)
	body := probeBin(t, "answer")
	arch := archiveOf(t, body)
	p := Proposal{ID: 1, Title: "v5", Plan: Plan{Name: "v5", Height: 120, Info: infoJSON(pinned(srv.blob("/v5.tar.gz", arch), arch))}}
	o := Proposal{ID: 2, Title: "v6", Plan: Plan{Name: "v6", Height: 130, Info: infoJSON(pinned(srv.blob("/v6", body), body))}}
	log := &testLogger{t: t}
	s, err := New(cfg, log)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	defer func() { cancel(); <-done }()

	s.OfferProposals([]Proposal{p, o})
	waitStatus(t, s, "both verified", func(st Status) bool {
		a, _ := proposalState(st, 1)
		b, _ := proposalState(st, 2)
		return a.State == CheckVerified && b.State == CheckVerified
	})
	s.OfferProposals([]Proposal{o}) // proposal 1 passed: the reader drops it first
	waitFor(t, "the worker saw proposal 1 go", func() bool { return len(log.logged("INFO", "no longer offered")) > 0 })

	s.Offer(&p.Plan)
	wctx, wcancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer wcancel()
	inst, err := s.WaitReady(wctx, p.Plan)
	if err != nil {
		t.Fatal(err)
	}
	if n := srv.count("/v5.tar.gz"); n != 1 {
		t.Errorf("%d requests for the plan's binary, want only the check's", n)
	}
	l := layoutOf(t, cfg)
	v, err := l.Open(context.Background(), p.Plan)
	if err != nil {
		t.Fatal(err)
	}
	rec := v.Record
	v.Close()
	if rec.Proposal != 1 || rec.SHA256 != sha(body) || rec.Probe == nil || inst.Record.Proposal != 1 {
		t.Errorf("record %+v", rec)
	}
	if fileExists(l.ProposalDir(1)) {
		t.Error("the area is left after the install")
	}

	// Proposal 2's plan passes with other info: downloaded, the area not taken.
	q := o.Plan
	q.Info = infoJSON(pinned(srv.blob("/v6-other", body), body))
	s.Offer(&q)
	inst, err = s.WaitReady(wctx, q)
	if err != nil {
		t.Fatal(err)
	}
	if srv.count("/v6-other") != 1 || inst.Record.Proposal != 0 {
		t.Errorf("plan with other info: %d downloads, record from proposal %d", srv.count("/v6-other"), inst.Record.Proposal)
	}
	if _, err := l.OpenProposal(context.Background(), 2, o.Plan); err != nil {
		t.Errorf("the area of proposal 2 (still offered): %v", err)
	}
}
