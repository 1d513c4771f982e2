package staging

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/invisor/invisor/internal/home"
)

// State is the phase of the plan a Stager works on.
type State string

const (
	StateIdle        State = "idle"        // no plan has been offered
	StatePending     State = "pending"     // a plan is known; an attempt is about to start
	StateDownloading State = "downloading" // resolving info and transferring bytes
	StateVerifying   State = "verifying"   // unpacking, header check, preflight, install
	StateReady       State = "ready"       // a trusted install exists for the plan
	StateFailed      State = "failed"      // the last attempt failed; a retry is scheduled
	StateCancelled   State = "cancelled"   // the plan was withdrawn (Offer(nil)); work stopped
	// StateUnmappable: the plan name cannot be mapped to a directory (see
	// home.DirName); nothing is retried for this plan, Status.Err says what the
	// operator can do.
	StateUnmappable State = "unmappable"
	// StateRefused: the binary answered the probe that it has no upgrade handler
	// for the plan (ErrMissingHandler), so it would halt the chain again at the
	// height; nothing is recorded and Status.Err says what to stage instead. The
	// same bytes would be refused again, so nothing is retried until the plan
	// changes or a file is placed, replaced or removed at the install path (an
	// operator re-staging with `invisor stage`); a restart tries once more.
	StateRefused State = "refused"
)

// Status is a snapshot of a Stager.
type Status struct {
	State      State
	Plan       *Plan // plan in force (nil when none)
	BytesDone  int64
	BytesTotal int64   // -1 when unknown
	Rate       float64 // bytes per second of the current download
	Attempt    int     // attempts made for this plan
	NextRetry  time.Time
	Err        string // last error, with cause and remedy
	Install    *Install
	Since      time.Time // when State was entered
	Hurried    bool      // Hurry was called for this plan: writes are not paced
	// Proposals are the checks of the proposals last offered with
	// OfferProposals, one per proposal, sorted by ID.
	Proposals []ProposalCheck
}

// Stager stages the binary for the latest offered plan in the background. There is
// one per home, created while the caller holds the home lock (home.Layout.Acquire).
type Stager struct {
	cfg Config
	l   home.Layout
	log Logger

	slot    atomic.Pointer[Plan] // latest offered plan; written by Offer only
	wake    chan struct{}        // capacity 1: "the slot changed"
	running atomic.Bool
	hurry   atomic.Bool // Hurry was called for the plan in the slot: no pacing of writes
	// height is the last block height the node observed (ObserveHeight); 0 before the first.
	height atomic.Int64

	props     atomic.Pointer[[]Proposal] // latest OfferProposals list, sorted by ID; nil before the first
	work      proposalWork               // Run's goroutine only
	propGrace time.Duration              // proposalAreaGrace; tests shorten it

	mu      sync.Mutex
	st      Status
	changed chan struct{} // closed and replaced on every status change
	dlStart time.Time
	checks  map[uint64]ProposalCheck // the worker's proposal checks, by ID (publishChecks)
}

// New validates cfg (including that Config.CAFile loads), checks that <home>/cosmovisor
// is writable, that temp directories and upgrades/ share a filesystem and that
// upgrades/ is not mounted noexec, and removes the temp names a crashed attempt left
// (temp directories under <home>/cosmovisor, record temps beside binaries). It takes
// no lock: the caller must hold the home lock (home.Layout.Acquire) from before New
// until the Stager is no longer used, or the removal could hit a live attempt of
// another process.
func New(cfg Config, log Logger) (*Stager, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if log == nil {
		log = NopLogger{}
	}
	if _, err := loadRoots(cfg); err != nil {
		return nil, err
	}
	l, err := cfg.Layout()
	if err != nil {
		return nil, fmt.Errorf("staging: %w", err)
	}
	if err := os.MkdirAll(l.UpgradesRoot(), 0o755); err != nil {
		return nil, fmt.Errorf("staging: %s is not writable (cannot create %s: %w); check that the node home is writable by this user and not mounted read-only",
			l.Root(), l.UpgradesRoot(), err)
	}
	if err := removeLeftovers(l, log); err != nil {
		return nil, err
	}
	if err := checkHome(l); err != nil {
		return nil, err
	}
	return &Stager{
		cfg: cfg, l: l, log: log,
		wake:    make(chan struct{}, 1),
		changed: make(chan struct{}),
		st:      Status{State: StateIdle, Since: time.Now(), BytesTotal: -1},
		work:    newProposalWork(), propGrace: proposalAreaGrace,
	}, nil
}

// Layout is the home layout the Stager works in.
func (s *Stager) Layout() home.Layout { return s.l }

// removeLeftovers deletes the temp names of attempts that did not finish (crash,
// SIGKILL): temp directories under <home>/cosmovisor (this release's TempPrefix,
// and the .staging-tmp-* of earlier ones, proposal checks' included), record
// temps beside binaries, and proposal areas without a valid record (a check that
// did not finish). Valid proposal areas stay: the chain reader offers their
// proposals again. Only a dead process can own them while the caller holds the
// home lock.
func removeLeftovers(l home.Layout, log Logger) error {
	var matches []string
	for _, prefix := range []string{TempPrefix, legacyTempPrefix} {
		m, err := filepath.Glob(filepath.Join(l.Root(), prefix+"*"))
		if err != nil {
			return err
		}
		matches = append(matches, m...)
	}
	for _, m := range matches {
		if err := os.RemoveAll(m); err != nil {
			return fmt.Errorf("staging: cannot remove leftover temp %s: %w", m, err)
		}
		log.Info("staging: removed a leftover temp from an interrupted attempt", "path", m)
	}
	ups, err := os.ReadDir(l.UpgradesRoot())
	if err != nil {
		return err
	}
	for _, u := range ups {
		if u.IsDir() {
			if err := home.RemoveStaleTemps(filepath.Join(l.UpgradesRoot(), u.Name(), home.BinDir)); err != nil {
				return fmt.Errorf("staging: cannot remove leftover temps under %s: %w", u.Name(), err)
			}
		}
	}
	removed, err := l.RemoveStaleProposalAreas()
	for _, r := range removed {
		log.Info("staging: removed a proposal area without a valid record (a check that did not finish)", "path", r)
	}
	if err != nil {
		return fmt.Errorf("staging: cannot clean up the proposal area %s: %w; it must be a directory of the home, remove it (it is only a cache of checked binaries)", l.ProposalsRoot(), err)
	}
	return nil
}

// checkHome fails at boot, not at the upgrade height: the temp root must be writable
// and on the same filesystem as upgrades/ (so the install is an atomic rename), and
// upgrades/ must allow exec.
func checkHome(l home.Layout) error {
	root, upgrades := l.Root(), l.UpgradesRoot()
	tmp, err := os.MkdirTemp(root, TempPrefix)
	if err != nil {
		return fmt.Errorf("staging: %s is not writable: %w", root, err)
	}
	defer os.RemoveAll(tmp)
	var a, b syscall.Stat_t
	if err := syscall.Stat(tmp, &a); err != nil {
		return err
	}
	if err := syscall.Stat(upgrades, &b); err != nil {
		return err
	}
	if a.Dev != b.Dev {
		return fmt.Errorf("staging: %s and %s are on different filesystems, so installs could not be atomic; do not mount or symlink upgrades/ elsewhere", root, upgrades)
	}
	return checkExecMount(upgrades)
}

// Hurry lifts the pacing of staging's disk writes (Config.DiskShare) for the plan
// in force, including a download in flight, until another plan is offered: call it
// when the upgrade is near or the chain has halted and waits for the binary, when
// finishing soon matters more than the node's fsyncs.
func (s *Stager) Hurry() {
	if s.hurry.Swap(true) {
		return
	}
	if st := s.Status().State; st == StateDownloading || st == StateVerifying {
		s.log.Info("staging: writing at full speed from now on (the chain waits for the binary)", "state", st)
	}
}

// Offer hands the latest plan to the worker. It never blocks, and it is cheap and
// idempotent when the plan is unchanged, so it can be called every block from the
// consensus path. nil means no plan is in force: in-flight work is cancelled.
func (s *Stager) Offer(p *Plan) {
	if samePlan(s.slot.Load(), p) {
		return
	}
	s.hurry.Store(false) // a new plan is staged in the background again
	var np *Plan
	if p != nil {
		c := *p
		np = &c
	}
	s.slot.Store(np)
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

func samePlan(a, b *Plan) bool {
	if a == nil || b == nil {
		return a == b
	}
	return *a == *b
}

// Status returns a snapshot.
func (s *Stager) Status() Status {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.st
	st.Hurried = s.hurry.Load()
	if st.Plan != nil {
		p := *st.Plan
		st.Plan = &p
	}
	if st.Install != nil {
		i := *st.Install
		st.Install = &i
	}
	if st.State == StateDownloading && !s.dlStart.IsZero() {
		st.Rate = float64(st.BytesDone) / max(time.Since(s.dlStart).Seconds(), 1e-3)
	}
	st.Proposals = s.proposalChecks()
	return st
}

func (s *Stager) update(f func(st *Status)) {
	s.mu.Lock()
	prev := s.st.State
	f(&s.st)
	if s.st.State != prev {
		s.st.Since = time.Now()
		if s.st.State == StateDownloading {
			s.dlStart = time.Now()
			s.st.BytesDone, s.st.BytesTotal = 0, -1
		}
	}
	close(s.changed)
	s.changed = make(chan struct{})
	s.mu.Unlock()
}

func (s *Stager) setState(p *Plan, state State) {
	s.update(func(st *Status) { st.State = state })
	if state == StateDownloading || state == StateVerifying {
		s.log.Info("staging: "+string(state), "plan", p.Name, "height", p.Height)
	}
}

// WaitReady blocks until plan p has a trusted install, or ctx is done. It also
// notices an install made outside this Stager (a previous run, or `invisor stage`
// with the node stopped), proven by home.Layout.Open, polling every PollInterval.
// A plan name that cannot be mapped is an error at once.
func (s *Stager) WaitReady(ctx context.Context, p Plan) (Install, error) {
	if _, err := upgradeDir(s.l, p.Name); err != nil {
		return Install{}, err
	}
	t := time.NewTicker(s.cfg.PollInterval)
	defer t.Stop()
	for {
		s.mu.Lock()
		st, ch := s.st, s.changed
		s.mu.Unlock()
		mine := st.Plan != nil && *st.Plan == p
		if mine && st.State == StateReady && st.Install != nil && st.Install.Plan == p {
			return *st.Install, nil
		}
		if mine && st.State == StateUnmappable {
			return Install{}, errors.New(st.Err)
		}
		if !mine {
			if inst, err := openInstall(ctx, s.l, p); err == nil {
				return inst, nil
			}
		}
		select {
		case <-ch:
		case <-t.C:
		case <-ctx.Done():
			return Install{}, fmt.Errorf("waiting for plan %q to be staged: %w (state %s; last error: %s)", p.Name, context.Cause(ctx), st.State, st.Err)
		}
	}
}

// Run is the worker loop. It retries with exponential backoff and jitter until the
// plan in force is ready, switches at once when Offer changes the plan (cancelling
// the attempt and removing its temp directory before starting the next), and returns
// nil when ctx is done. While the plan in force needs nothing (none, ready, or an
// unmappable name) it checks the proposals OfferProposals handed it. Only one Run
// may be active per Stager.
func (s *Stager) Run(ctx context.Context) error {
	if !s.running.CompareAndSwap(false, true) {
		return errors.New("staging: Run is already active on this Stager")
	}
	defer s.running.Store(false)

	var cur *Plan  // plan being worked on
	ready := false // nothing more to do for cur: ready, or its name is unmappable
	attempt := 0
	for {
		p := s.slot.Load()
		if !samePlan(p, cur) {
			switch {
			case p == nil:
				s.log.Info("staging: plan withdrawn", "plan", cur.Name)
				s.discard(ctx, cur)
				s.update(func(st *Status) {
					st.State, st.Err, st.Install = StateCancelled, ErrPlanCancelled.Error(), nil
				})
			default:
				if cur != nil {
					s.log.Info("staging: plan replaced", "old", cur.Name, "new", p.Name, "height", p.Height)
				} else {
					s.log.Info("staging: new plan", "plan", p.Name, "height", p.Height)
				}
				s.update(func(st *Status) {
					pp := *p
					*st = Status{State: StatePending, Plan: &pp, BytesTotal: -1, Since: st.Since}
				})
			}
			cur, ready, attempt = p, false, 0
		}
		if cur == nil || ready {
			// The plan in force needs nothing: time for the proposals.
			ran, next := s.proposalWork(ctx, cur)
			if ctx.Err() != nil {
				return nil
			}
			if ran {
				continue
			}
			var due <-chan time.Time // nil: nothing falls due
			var timer *time.Timer
			if !next.IsZero() {
				timer = time.NewTimer(max(time.Until(next), 0))
				due = timer.C
			}
			select {
			case <-ctx.Done():
			case <-s.wake:
			case <-due:
			}
			if timer != nil {
				timer.Stop()
			}
			if ctx.Err() != nil {
				return nil
			}
			continue
		}

		attempt++
		inst, err := s.attempt(ctx, cur)
		if ctx.Err() != nil {
			s.update(func(st *Status) { st.State, st.Err = StateCancelled, "stager stopped: "+context.Cause(ctx).Error() })
			return nil
		}
		if errors.Is(err, ErrPlanSuperseded) || errors.Is(err, ErrPlanCancelled) {
			continue // the top of the loop reports the new state
		}
		if errors.Is(err, ErrBadName) {
			// No attempt can succeed for this name: say so once, the day the plan
			// is seen, and wait for another plan instead of retrying.
			ready = true
			s.log.Error("staging: the plan cannot be staged", "plan", cur.Name, "height", cur.Height, "err", err)
			s.update(func(st *Status) {
				st.State, st.Err, st.Install, st.Attempt = StateUnmappable, err.Error(), nil, attempt
			})
			continue
		}
		if errors.Is(err, ErrMissingHandler) {
			// Retrying would fetch the same bytes and get the same answer: report it
			// once, loudly, and wait for the plan or the install path to change.
			s.log.Error("staging: REFUSED the binary for the upgrade: it has no upgrade handler for the plan and would halt the chain again at the height",
				"plan", cur.Name, "height", cur.Height, "attempt", attempt, "err", err)
			s.update(func(st *Status) {
				st.State, st.Err, st.Install, st.Attempt, st.NextRetry = StateRefused, err.Error(), nil, attempt, time.Time{}
			})
			if !s.sleep(ctx, cur, 0) {
				s.update(func(st *Status) { st.State = StateCancelled })
				return nil
			}
			continue
		}
		if err == nil {
			ready = true
			s.log.Info("staging: ready", "plan", cur.Name, "path", inst.Path, "sha256", inst.SHA256, "version", inst.Record.Preflight)
			s.update(func(st *Status) {
				st.State, st.Err, st.Install, st.Attempt = StateReady, "", &inst, attempt
			})
			continue
		}
		delay := s.backoff(attempt, err)
		s.log.Error("staging: attempt failed", "plan", cur.Name, "attempt", attempt, "retry_in", delay.Round(time.Millisecond), "err", err)
		s.update(func(st *Status) {
			st.State, st.Err, st.Attempt, st.NextRetry = StateFailed, err.Error(), attempt, time.Now().Add(delay)
		})
		if !s.sleep(ctx, cur, delay) {
			s.update(func(st *Status) { st.State = StateCancelled })
			return nil
		}
	}
}

// attempt runs one fetch in a goroutine and cancels it at once if the plan changes.
func (s *Stager) attempt(ctx context.Context, p *Plan) (Install, error) {
	actx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	type result struct {
		inst Install
		err  error
	}
	done := make(chan result, 1)
	obs := &observer{
		hurry: &s.hurry,
		state: func(st State) { s.setState(p, st) },
		progress: func(d, t int64) {
			s.mu.Lock()
			s.st.BytesDone, s.st.BytesTotal = d, t
			s.mu.Unlock()
		},
	}
	go func() {
		inst, err := fetch(actx, s.cfg, *p, s.log, obs)
		done <- result{inst, err}
	}()
	for {
		select {
		case r := <-done:
			return r.inst, r.err
		case <-s.wake:
			np := s.slot.Load()
			if samePlan(np, p) {
				continue
			}
			cause := fmt.Errorf("%w: plan %q replaced", ErrPlanSuperseded, p.Name)
			if np == nil {
				cause = fmt.Errorf("%w: plan %q withdrawn", ErrPlanCancelled, p.Name)
			}
			cancel(cause)
			r := <-done // fetch removes its temp dir before returning
			if r.err == nil {
				// It finished just before the cancel: the install is valid for p, but p
				// is no longer in force. Nothing to undo; report the switch.
				s.log.Info("staging: finished for a plan no longer in force", "plan", p.Name)
			}
			s.log.Info("staging: cancelled in-flight work", "plan", p.Name, "reason", cause)
			return Install{}, cause
		}
	}
}

func (s *Stager) backoff(attempt int, err error) time.Duration {
	d := s.cfg.RetryMin
	for i := 1; i < attempt && d < s.cfg.RetryMax; i++ {
		d *= 2
	}
	d = min(d, s.cfg.RetryMax)
	d = time.Duration(float64(d) * (0.8 + 0.4*rand.Float64()))
	return d
}

// sleep waits for delay (without end when delay is 0), returning early (true)
// when the plan changes or the file at the install path changes (the operator
// placed, replaced or removed it), and false when ctx is done. A file that stays
// as it is waits for the backoff.
func (s *Stager) sleep(ctx context.Context, p *Plan, delay time.Duration) bool {
	var expired <-chan time.Time // nil: never
	if delay > 0 {
		timer := time.NewTimer(delay)
		defer timer.Stop()
		expired = timer.C
	}
	poll := time.NewTicker(s.cfg.PollInterval)
	defer poll.Stop()
	bin, _ := s.l.UpgradeBin(p.Name) // "" for an unmappable name, which never sleeps here
	seen := placementAt(bin)
	for {
		select {
		case <-ctx.Done():
			return false
		case <-expired:
			return true
		case <-s.wake:
			if !samePlan(s.slot.Load(), p) {
				return true // Run's loop reads the new plan from the slot
			}
		case <-poll.C:
			if placementAt(bin) != seen {
				return true
			}
		}
	}
}

// placement is what is at an install path, compared between polls.
type placement struct {
	exists bool
	stamp  home.Stamp
	size   int64
	mtime  int64
}

// placementAt is what is at path now.
func placementAt(path string) placement {
	fi, err := os.Lstat(path)
	if err != nil {
		return placement{}
	}
	st, _ := home.StampOf(path)
	return placement{exists: true, stamp: st, size: fi.Size(), mtime: fi.ModTime().UnixNano()}
}

// discard removes the install of a withdrawn plan (cancelled by governance, or
// skipped) that this node downloaded for it, so that nothing is left that a later
// run could adopt for a plan no longer in force. An operator's binary stays (the
// operator put it there), and so does an install that the chain's state
// (data/upgrade-info.json) or the current link points at.
func (s *Stager) discard(ctx context.Context, p *Plan) {
	rec, err := s.l.ReadRecord(p.Name)
	if err != nil || rec.Source != home.SourceDownload || rec.For(*p) != nil {
		return
	}
	dir, err := s.l.UpgradeDir(p.Name)
	if err != nil || s.l.CurrentIs(dir) {
		return
	}
	if bin, _ := s.l.UpgradeBin(p.Name); !stillRecorded(ctx, bin, rec) {
		return // the operator put another file there: theirs to remove
	}
	if ui, ok, err := s.l.ReadUpgradeInfo(); err != nil || (ok && ui.Name == p.Name) {
		return
	}
	if err := removeInstall(s.l, dir, newPacer(ctx, s.cfg.DiskShare, &s.hurry)); err != nil {
		s.log.Warn("staging: could not remove the install of a withdrawn plan", "plan", p.Name, "dir", dir, "err", err)
		return
	}
	s.log.Info("staging: removed the install of the withdrawn plan", "plan", p.Name, "dir", dir)
}
