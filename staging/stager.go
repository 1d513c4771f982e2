package staging

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
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
}

// Stager stages the binary for the latest offered plan in the background. There is
// one per home; New takes a file lock under <home>/cosmovisor.
type Stager struct {
	cfg  Config
	log  Logger
	lock *os.File

	slot    atomic.Pointer[Plan] // latest offered plan; written by Offer only
	wake    chan struct{}        // capacity 1: "the slot changed"
	running atomic.Bool
	hurry   atomic.Bool // Hurry was called for the plan in the slot: no pacing of writes

	mu        sync.Mutex
	st        Status
	changed   chan struct{} // closed and replaced on every status change
	dlStart   time.Time
	closeOnce sync.Once
	closeErr  error
}

// New validates cfg (including that Config.CAFile loads), checks that <home>/cosmovisor
// is writable, that temp directories and upgrades/ share a filesystem and that
// upgrades/ is not mounted noexec, takes the lock (ErrLocked if another Stager holds it) and removes temp directories left by a
// crash. Close releases the lock.
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
	root := CosmovisorRoot(cfg.Home)
	upgrades := filepath.Join(root, UpgradesDir)
	if err := os.MkdirAll(upgrades, 0o755); err != nil {
		return nil, fmt.Errorf("staging: cannot create %s: %w; check that the node home is writable by this user", upgrades, err)
	}
	lock, err := takeLock(filepath.Join(root, LockName))
	if err != nil {
		return nil, err
	}
	ok := false
	defer func() {
		if !ok {
			lock.Close()
		}
	}()
	if err := removeLeftovers(root, log); err != nil {
		return nil, err
	}
	if err := checkHome(root, upgrades); err != nil {
		return nil, err
	}
	s := &Stager{
		cfg: cfg, log: log, lock: lock,
		wake:    make(chan struct{}, 1),
		changed: make(chan struct{}),
		st:      Status{State: StateIdle, Since: time.Now(), BytesTotal: -1},
	}
	ok = true
	return s, nil
}

func takeLock(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|syscall.O_NOFOLLOW, 0o644)
	if err != nil {
		return nil, fmt.Errorf("staging: %s is not writable (lock file: %w); check that the node home is writable by this user and not mounted read-only",
			filepath.Dir(path), err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			holder, _ := os.ReadFile(path)
			return nil, fmt.Errorf("%w: %s is held (pid %s); another invisor or stager is staging into this home, stop it first",
				ErrLocked, path, string(holder))
		}
		return nil, fmt.Errorf("staging: lock %s: %w", path, err)
	}
	f.Truncate(0)
	f.WriteAt([]byte(strconv.Itoa(os.Getpid())), 0)
	return f, nil
}

// removeLeftovers deletes temp directories of attempts that did not finish (crash,
// SIGKILL). It runs under the lock, so no live attempt owns them.
func removeLeftovers(root string, log Logger) error {
	matches, err := filepath.Glob(filepath.Join(root, TempPrefix+"*"))
	if err != nil {
		return err
	}
	for _, m := range matches {
		if err := os.RemoveAll(m); err != nil {
			return fmt.Errorf("staging: cannot remove leftover temp dir %s: %w", m, err)
		}
		log.Info("staging: removed leftover temp dir from an interrupted attempt", "dir", m)
	}
	return nil
}

// checkHome fails at boot, not at the upgrade height: the temp root must be writable
// and on the same filesystem as upgrades/ (so the install is an atomic rename), and
// upgrades/ must allow exec.
func checkHome(root, upgrades string) error {
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

// Close releases the lock. It does not stop Run; cancel Run's context first.
func (s *Stager) Close() error {
	s.closeOnce.Do(func() {
		syscall.Flock(int(s.lock.Fd()), syscall.LOCK_UN)
		s.closeErr = s.lock.Close()
	})
	return s.closeErr
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

// WaitReady blocks until plan name has a trusted install, or ctx is done. It also
// notices an install made outside this Stager (a previous run, or a binary placed by
// hand and adopted), polling every PollInterval.
func (s *Stager) WaitReady(ctx context.Context, name string) (Install, error) {
	if _, err := SafeName(name); err != nil {
		return Install{}, err
	}
	t := time.NewTicker(s.cfg.PollInterval)
	defer t.Stop()
	for {
		s.mu.Lock()
		st, ch := s.st, s.changed
		s.mu.Unlock()
		if st.State == StateReady && st.Install != nil && st.Install.Name == name {
			return *st.Install, nil
		}
		if st.Plan == nil || st.Plan.Name != name {
			if _, err := os.Lstat(RecordPath(s.cfg.Home, s.cfg.DaemonName, name)); err == nil {
				if inst, err := Trusted(s.cfg.Home, s.cfg.DaemonName, name); err == nil {
					return inst, nil
				}
			}
		}
		select {
		case <-ch:
		case <-t.C:
		case <-ctx.Done():
			return Install{}, fmt.Errorf("waiting for plan %q to be staged: %w (state %s; last error: %s)", name, context.Cause(ctx), st.State, st.Err)
		}
	}
}

// Run is the worker loop. It retries with exponential backoff and jitter until the
// plan in force is ready, switches at once when Offer changes the plan (cancelling
// the attempt and removing its temp directory before starting the next), and returns
// nil when ctx is done. Only one Run may be active per Stager.
func (s *Stager) Run(ctx context.Context) error {
	if !s.running.CompareAndSwap(false, true) {
		return errors.New("staging: Run is already active on this Stager")
	}
	defer s.running.Store(false)

	var cur *Plan // plan being worked on
	ready := false
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
			select {
			case <-ctx.Done():
				return nil
			case <-s.wake:
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

// sleep waits for delay, returning early (true) when the plan changes or a binary
// appears at the install path (placed by hand), and false when ctx is done.
func (s *Stager) sleep(ctx context.Context, p *Plan, delay time.Duration) bool {
	timer := time.NewTimer(delay)
	defer timer.Stop()
	poll := time.NewTicker(s.cfg.PollInterval)
	defer poll.Stop()
	bin := BinPath(s.cfg.Home, s.cfg.DaemonName, p.Name)
	for {
		select {
		case <-ctx.Done():
			return false
		case <-timer.C:
			return true
		case <-s.wake:
			if !samePlan(s.slot.Load(), p) {
				return true // Run's loop reads the new plan from the slot
			}
		case <-poll.C:
			if _, err := os.Lstat(bin); !errors.Is(err, fs.ErrNotExist) {
				return true
			}
		}
	}
}

// discard removes the install of a withdrawn plan (cancelled by governance, or
// skipped) that this node downloaded, so that nothing is left that a later run
// could adopt for a plan no longer in force. A binary placed by hand stays (the
// operator put it there), and so does an install that the chain's state
// (data/upgrade-info.json) or cosmovisor's current link points at.
func (s *Stager) discard(ctx context.Context, p *Plan) {
	home, daemon := s.cfg.Home, s.cfg.DaemonName
	rec, err := readRecord(RecordPath(home, daemon, p.Name))
	if err != nil || rec.Source != "download" || rec.Plan != p.Name {
		return
	}
	dir := UpgradeDir(home, p.Name)
	if cur, err := filepath.EvalSymlinks(filepath.Join(CosmovisorRoot(home), "current")); err == nil {
		if d, err := filepath.EvalSymlinks(dir); err == nil && d == cur {
			return
		}
	}
	if b, err := os.ReadFile(filepath.Join(home, "data", "upgrade-info.json")); err == nil {
		var ui struct {
			Name string `json:"name"`
		}
		if json.Unmarshal(b, &ui) == nil && ui.Name == p.Name {
			return
		}
	}
	if err := removeInstall(home, dir, newPacer(ctx, s.cfg.DiskShare, &s.hurry)); err != nil {
		s.log.Warn("staging: could not remove the install of a withdrawn plan", "plan", p.Name, "dir", dir, "err", err)
		return
	}
	s.log.Info("staging: removed the install of the withdrawn plan", "plan", p.Name, "dir", dir)
}
