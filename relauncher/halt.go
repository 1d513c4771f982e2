package relauncher

import (
	"context"
	"fmt"
	"time"

	"github.com/invisor/invisor/internal/home"
)

type haltReq struct {
	name   string
	height int64
}

// OnHalt is called from the consensus path when x/upgrade halts at the plan height
// for upgrade name. It never blocks and never panics: it records the request and
// starts (once) a waiter goroutine that polls until data/upgrade-info.json names
// the upgrade (at height, unless height is 0) and the Verifier proves the binary
// for the plan that file holds, logging what is missing every HaltLogInterval;
// then it keeps the proof open for Switch, arms the Relauncher with name and calls
// OS.Stop (SIGTERM to ourselves by default) so the node shuts down cleanly.
// Repeated calls for the same name do nothing; a call for another name before
// arming replaces the request; calls after arming are ignored. A name that no
// directory can hold is logged, with what the operator can do, and ignored.
func (r *Relauncher) OnHalt(name string, height int64) {
	defer func() {
		if p := recover(); p != nil {
			r.log.Error("invisor: OnHalt panicked", "panic", fmt.Sprint(p))
		}
	}()
	if r.unmappable(name, height, "no switch for this halt") {
		return
	}
	r.mu.Lock()
	switch {
	case r.closed:
		r.mu.Unlock()
		return
	case r.armed != "":
		if r.armed != name {
			r.log.Warn("invisor: already armed; halt for another upgrade ignored", "armed", r.armed, "halt", name)
		}
		r.mu.Unlock()
		return
	case r.req != nil && r.req.name == name:
		r.mu.Unlock()
		return
	}
	r.req = &haltReq{name: name, height: height}
	if !r.started {
		r.started = true
		go r.haltLoop()
	}
	r.mu.Unlock()
	select {
	case r.wake <- struct{}{}:
	default:
	}
	r.log.Info("invisor: upgrade halt; waiting for the trusted binary before stopping the node", "upgrade", name, "height", height)
}

// Armed reports the upgrade the node was stopped for, once OnHalt found its binary
// trusted. The caller, after the start command returned, calls Switch(name).
func (r *Relauncher) Armed() (name string, ok bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.armed, r.armed != ""
}

// Close stops the halt waiter (if any) and waits for it. It does not disarm.
func (r *Relauncher) Close() error {
	r.mu.Lock()
	started := r.started
	if !r.closed {
		r.closed = true
		close(r.done)
	}
	r.mu.Unlock()
	if started {
		<-r.exited
	}
	return nil
}

func (r *Relauncher) haltLoop() {
	defer close(r.exited)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-r.done:
			cancel()
		case <-ctx.Done():
		}
	}()
	var (
		lastLog  time.Time
		lastName string
		timer    = time.NewTimer(0)
	)
	defer timer.Stop()
	for {
		r.mu.Lock()
		req := *r.req
		r.mu.Unlock()

		p, b, err := r.haltProof(ctx, req)
		if err == nil {
			r.mu.Lock()
			if r.closed {
				r.mu.Unlock()
				b.Close()
				return
			}
			if r.req.name != req.name { // replaced meanwhile
				r.mu.Unlock()
				b.Close()
				continue
			}
			r.armed = req.name
			r.verified = &armedBinary{plan: p, bin: b}
			r.mu.Unlock()
			r.log.Info("invisor: binary trusted; stopping the node for the switch", "upgrade", req.name, "height", req.height,
				"path", b.Verified.Path, "sha256", b.Verified.Record.SHA256)
			if err := r.os.Stop(); err != nil {
				r.log.Error("invisor: could not stop the node; stop it (SIGTERM) to switch", "upgrade", req.name, "err", err)
			}
			return
		}
		if req.name != lastName || time.Since(lastLog) >= r.cfg.HaltLogInterval {
			lastName, lastLog = req.name, time.Now()
			r.log.Error("invisor: chain halted for upgrade; binary not ready", "upgrade", req.name, "height", req.height,
				"missing", r.missing(p, err).Error())
		}
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
		timer.Reset(r.cfg.HaltPollInterval)
		select {
		case <-r.done:
			return
		case <-r.wake:
		case <-timer.C:
		}
	}
}

// haltProof reads the plan x/upgrade halted for and, if it is req's, verifies its
// binary. The plan returned is the file's, or req's while the file does not name it.
func (r *Relauncher) haltProof(ctx context.Context, req haltReq) (home.Plan, Binary, error) {
	want := home.Plan{Name: req.name, Height: req.height}
	p, ok, err := r.layout.ReadUpgradeInfo()
	switch {
	case err != nil:
		return want, Binary{}, err
	case !ok:
		return want, Binary{}, fmt.Errorf("%s does not exist yet (x/upgrade writes it at the halt)", r.layout.UpgradeInfo())
	case p.Name != req.name:
		return want, Binary{}, fmt.Errorf("%w: halt for %q but %s names %q", ErrUpgradeMismatch, req.name, r.layout.UpgradeInfo(), p.Name)
	case req.height > 0 && p.Height != req.height:
		return want, Binary{}, fmt.Errorf("%w: halt for %q at height %d but %s says height %d",
			ErrUpgradeMismatch, req.name, req.height, r.layout.UpgradeInfo(), p.Height)
	}
	b, err := r.verify(ctx, p)
	return p, b, err
}
