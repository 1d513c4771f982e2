package staging

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"
)

// The proposal side of a Stager: OfferProposals is a latest-value slot like
// Offer, and Run's one worker checks the offered proposals one at a time, in ID
// order, whenever the plan in force needs nothing (none, ready or unmappable),
// so a check never competes with the staging of a passed plan.

// proposalAreaGrace is how long the area of a proposal that is no longer offered
// is kept before it is removed. In one process the hook offers a passed plan in
// the block that passes it, before the reader (which asks committed state) can
// see the proposal leave its voting period; the grace covers the other orders
// (a restart between the two, a reader that answered late), in which the area is
// what spares that plan's download.
const proposalAreaGrace = 20 * time.Second

// errCheckPreempted: a proposal check gave way to the staging of a plan.
var errCheckPreempted = errors.New("proposal check pre-empted")

// proposalWork is the worker's own record of the proposals; only Run's goroutine
// touches it (Status reads what publishChecks copies out).
type proposalWork struct {
	entries map[uint64]*proposalEntry
	gone    map[uint64]time.Time // areas of proposals no longer offered, since when
}

// proposalEntry is one offered proposal as the worker sees it.
type proposalEntry struct {
	p       Proposal
	check   ProposalCheck
	done    bool      // verified, skipped or a permanent fault: not checked again for this plan
	attempt int       // checks that failed transiently
	next    time.Time // after a transient fault: not before
}

func newProposalWork() proposalWork {
	return proposalWork{entries: map[uint64]*proposalEntry{}, gone: map[uint64]time.Time{}}
}

// OfferProposals hands the worker the proposals now in their voting period (the
// whole list each time; nil or empty: none). Latest-value slot like Offer: never
// blocks, cheap and idempotent when the list is unchanged. A proposal is checked
// once per (ID, plan); one that is no longer offered loses its check and, after a
// grace period, its area (unless its plan is the plan in force).
func (s *Stager) OfferProposals(ps []Proposal) {
	list := make([]Proposal, 0, len(ps))
	for _, p := range ps {
		if !slices.ContainsFunc(list, func(q Proposal) bool { return q.ID == p.ID }) {
			list = append(list, p)
		}
	}
	slices.SortFunc(list, func(a, b Proposal) int {
		switch {
		case a.ID < b.ID:
			return -1
		case a.ID > b.ID:
			return 1
		}
		return 0
	})
	if old := s.props.Load(); old != nil && slices.EqualFunc(*old, list, sameProposal) {
		return
	}
	s.props.Store(&list)
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

func sameProposal(a, b Proposal) bool {
	return a.ID == b.ID && a.Title == b.Title && a.Plan == b.Plan && a.VotingEnd.Equal(b.VotingEnd)
}

// offered is the latest offered list; ok is false before the first OfferProposals.
func (s *Stager) offered() ([]Proposal, bool) {
	lp := s.props.Load()
	if lp == nil {
		return nil, false
	}
	return *lp, true
}

// stillOffered reports whether p (its ID with the same plan) is still offered.
func (s *Stager) stillOffered(p Proposal) bool {
	list, _ := s.offered()
	return slices.ContainsFunc(list, func(q Proposal) bool { return q.ID == p.ID && q.Plan == p.Plan })
}

// queuedCheck is the check of a proposal not checked yet.
func queuedCheck(p Proposal) ProposalCheck {
	goos, goarch := hostPlatform()
	return ProposalCheck{ID: p.ID, Title: p.Title, Plan: p.Plan, Platform: goos + "/" + goarch, State: CheckQueued, VotingEnd: p.VotingEnd}
}

// proposalChecks is Status.Proposals: one per offered proposal, sorted by ID.
// s.mu is held.
func (s *Stager) proposalChecks() []ProposalCheck {
	list, _ := s.offered()
	if len(list) == 0 {
		return nil
	}
	out := make([]ProposalCheck, 0, len(list))
	for _, p := range list {
		c, ok := s.checks[p.ID]
		if !ok || c.Plan != p.Plan {
			c = queuedCheck(p)
		}
		c.Title, c.VotingEnd = p.Title, p.VotingEnd
		out = append(out, c)
	}
	return out
}

// publishChecks copies the worker's checks out for Status.
func (s *Stager) publishChecks() {
	m := make(map[uint64]ProposalCheck, len(s.work.entries))
	for id, e := range s.work.entries {
		m[id] = e.check
	}
	s.update(func(*Status) { s.checks = m })
}

// proposalWork brings the worker's entries in line with the offered list,
// removes the areas no longer needed and runs the next due check, if any. ran
// says a check ran (or was pre-empted); otherwise next is when something falls
// due (a retry, an area's grace), zero for never.
func (s *Stager) proposalWork(ctx context.Context, cur *Plan) (ran bool, next time.Time) {
	list, ok := s.offered()
	if !ok {
		return false, time.Time{} // no reader yet: after a restart, keep every valid area
	}
	w := &s.work
	want := make(map[uint64]Proposal, len(list))
	changed := false
	for _, p := range list {
		want[p.ID] = p
		e := w.entries[p.ID]
		if e == nil || e.p.Plan != p.Plan {
			w.entries[p.ID] = &proposalEntry{p: p, check: queuedCheck(p)}
			changed = true
			continue
		}
		e.p = p
	}
	for id := range w.entries {
		if _, ok := want[id]; !ok {
			delete(w.entries, id)
			changed = true
		}
	}
	if changed {
		s.publishChecks()
	}
	next = s.collectAreas(ctx, cur, want)
	now := time.Now()
	for _, p := range list {
		e := w.entries[p.ID]
		switch {
		case e.done:
		case e.next.After(now):
			next = earliest(next, e.next)
		default:
			s.runCheck(ctx, cur, e)
			return true, time.Time{}
		}
	}
	return false, next
}

func earliest(a, b time.Time) time.Time {
	if a.IsZero() || (!b.IsZero() && b.Before(a)) {
		return b
	}
	return a
}

// collectAreas removes the proposal areas nobody needs: one that holds no usable
// binary or a binary for another plan than its proposal's as offered, and, once
// it has not been offered for propGrace, a proposal's that is no longer offered
// (passed, rejected, withdrawn), unless its record is for exactly the plan in
// force, which staging installs from it. It returns when the next grace ends.
func (s *Stager) collectAreas(ctx context.Context, cur *Plan, want map[uint64]Proposal) (next time.Time) {
	w := &s.work
	now := time.Now()
	seen := map[uint64]bool{}
	for _, a := range s.l.ProposalAreas() {
		seen[a.ID] = true
		p, offered := want[a.ID]
		why := ""
		switch {
		case offered && a.Err == nil && a.Record.For(p.Plan) == nil:
			delete(w.gone, a.ID)
			continue // the check's own
		case offered && a.Err != nil:
			why = "it holds no usable binary: " + a.Err.Error()
		case offered:
			why = "it holds the binary of another plan than the proposal's as offered"
		case cur != nil && a.Err == nil && a.Record.For(*cur) == nil:
			continue // the plan in force: staging installs it from there
		default:
			since, ok := w.gone[a.ID]
			if !ok {
				since, w.gone[a.ID] = now, now
				if s.propGrace > 0 {
					s.log.Info("staging: the proposal is no longer offered; its area is kept a while in case its plan passed and is offered next",
						"proposal", a.ID, "dir", a.Dir, "keep", s.propGrace)
				}
			}
			if until := since.Add(s.propGrace); until.After(now) {
				next = earliest(next, until)
				continue
			}
			why = "the proposal is no longer in its voting period"
		}
		if err := removeInstall(s.l, a.Dir, newPacer(ctx, s.cfg.DiskShare, nil)); err != nil {
			s.log.Warn("staging: could not remove a proposal area", "proposal", a.ID, "dir", a.Dir, "err", err)
			continue
		}
		delete(w.gone, a.ID)
		s.log.Info("staging: removed the proposal area", "proposal", a.ID, "dir", a.Dir, "why", why)
	}
	for id := range w.gone {
		if !seen[id] {
			delete(w.gone, id)
		}
	}
	return next
}

// runCheck runs the check of e in a goroutine and cancels it, with a cause, when a
// plan other than cur is offered (its staging goes first; the check goes back to
// queued and runs again later) or e is no longer offered.
func (s *Stager) runCheck(ctx context.Context, cur *Plan, e *proposalEntry) {
	actx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	e.check.State, e.check.Err = CheckRunning, ""
	s.publishChecks()
	type result struct {
		c   ProposalCheck
		err error
	}
	done := make(chan result, 1)
	go func() {
		c, err := checkProposal(actx, s.cfg, e.p, "", true, s.log, nil)
		done <- result{c, err}
	}()
	var (
		r     result
		cause error
	)
wait:
	for {
		select {
		case r = <-done:
			break wait
		case <-s.wake:
			switch np := s.slot.Load(); {
			case !samePlan(np, cur):
				name := "none"
				if np != nil {
					name = np.Name
				}
				cause = fmt.Errorf("%w: the plan in force changed (now %q); its staging goes first", errCheckPreempted, name)
			case !s.stillOffered(e.p):
				cause = fmt.Errorf("%w: proposal %d is no longer offered with this plan", errCheckPreempted, e.p.ID)
			default:
				continue // the wake was for other proposals
			}
			cancel(cause)
			r = <-done // the check removes its temp dir before it returns
			break wait
		}
	}
	if r.err != nil && (cause != nil || ctx.Err() != nil) {
		e.check = queuedCheck(e.p)
		if cause != nil {
			e.check.Err = "interrupted: " + cause.Error() + "; checked again once it is ready"
			s.log.Info("staging: proposal check pre-empted", "proposal", e.p.ID, "reason", cause)
		}
		s.publishChecks()
		return
	}
	c := r.c
	switch {
	case r.err == nil:
		e.done = true
		s.log.Info("staging: proposal check: " + c.Summary())
	case permanentCheckFault(r.err):
		e.done = true
		s.log.Error("staging: proposal check: "+c.Summary(), "state", c.State)
	default:
		e.attempt++
		delay := s.backoff(e.attempt, r.err)
		e.next = time.Now().Add(delay)
		// The same text each attempt (the retry time is in the log), so that
		// whoever reports changes of Err reports a lasting fault once.
		c.Err += "; the check is retried with backoff"
		s.log.Warn("staging: proposal check failed; retried", "proposal", e.p.ID, "attempt", e.attempt, "retry_in", delay.Round(time.Millisecond), "err", r.err)
	}
	e.check = c
	s.publishChecks()
}
