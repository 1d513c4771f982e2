package relauncher

import (
	"fmt"
	"time"
)

type haltReq struct {
	name   string
	height int64
}

// OnHalt is called from the consensus path when x/upgrade halts at the plan height
// for upgrade name. It never blocks and never panics: it records the request and
// starts (once) a waiter goroutine that polls the Verifier until the binary is
// trusted, logging what is missing every HaltLogInterval, then arms the Relauncher
// with name and calls OS.Stop (SIGTERM to ourselves by default) so the node shuts
// down cleanly. Repeated calls for the same name do nothing; a call for another
// name before arming replaces the request; calls after arming are ignored.
func (r *Relauncher) OnHalt(name string, height int64) {
	defer func() {
		if p := recover(); p != nil {
			r.log.Error("invisor: OnHalt panicked", "panic", fmt.Sprint(p))
		}
	}()
	if err := validUpgradeName(name); err != nil {
		r.log.Error("invisor: halt for an invalid upgrade name ignored", "err", err)
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

		// Stamp the file before hashing it: any change after this point, even
		// during the hash, fails the stamp check Switch makes instead of hashing
		// again after the stop.
		stamp, serr := StampOf(r.ExpectedBinary(req.name))
		bin, err := r.trusted(req.name)
		if err == nil && serr == nil && sameFile(bin.Path, r.ExpectedBinary(req.name)) {
			r.mu.Lock()
			r.verified = &verifiedBinary{bin: bin, stamp: stamp}
			r.mu.Unlock()
		}
		if err == nil {
			r.mu.Lock()
			if r.closed {
				r.mu.Unlock()
				return
			}
			if r.req.name != req.name { // replaced meanwhile
				r.mu.Unlock()
				continue
			}
			r.armed = req.name
			r.mu.Unlock()
			r.log.Info("invisor: binary trusted; stopping the node for the switch", "upgrade", req.name, "height", req.height)
			if err := r.os.Stop(); err != nil {
				r.log.Error("invisor: could not stop the node; stop it (SIGTERM) to switch", "upgrade", req.name, "err", err)
			}
			return
		}
		if req.name != lastName || time.Since(lastLog) >= r.cfg.HaltLogInterval {
			lastName, lastLog = req.name, time.Now()
			r.log.Error("invisor: chain halted for upgrade; binary not ready", "upgrade", req.name, "height", req.height,
				"missing", r.missing(req.name, req.height, err).Error())
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
