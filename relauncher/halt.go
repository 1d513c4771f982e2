package relauncher

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"syscall"
	"time"

	"github.com/invisor/invisor/internal/home"
)

// NodeState is what CometBFT says about the node in the block x/upgrade halted.
// It decides the halt path, because it decides what x/upgrade's halt error does
// to the process: CometBFT's consensus state machine recovers it and idles, the
// block-sync reactor panics on it and the process dies, and the handshake
// returns it and the node's start fails.
type NodeState int

const (
	// NodeStateUnknown: CometBFT could not be asked (its RPC is disabled, or did
	// not answer in time).
	NodeStateUnknown NodeState = iota
	// NodeInConsensus: CometBFT is not catching up; consensus executes the block
	// (directly, through optimistic execution, or ingesting a block from block
	// sync) and recovers the halt error.
	NodeInConsensus
	// NodeCatchingUp: CometBFT is catching up (block sync after a state sync or
	// for a late joiner); the block-sync reactor applies the block and panics on
	// the error, without recovery.
	NodeCatchingUp
	// NodeNotStarted: CometBFT has not started its services yet: the handshake is
	// replaying a stored block; the error fails the node's start, and `start`
	// returns with the app's store closed but CometBFT's block, state and index
	// stores still open (NewNode does not close them when the handshake fails).
	NodeNotStarted
)

func (s NodeState) String() string {
	switch s {
	case NodeInConsensus:
		return "in-consensus"
	case NodeCatchingUp:
		return "catching-up"
	case NodeNotStarted:
		return "not-started"
	default:
		return "unknown"
	}
}

// HaltPath is how the process leaves an upgrade halt.
type HaltPath string

const (
	// PathCleanStop: the node stops (or its start fails) and closes its stores by
	// itself; backup, pre-upgrade, the flip and the exec run after `start`
	// returned (Switch).
	PathCleanStop HaltPath = "clean-stop"
	// PathReexec: the halting call waits for the binary, then execs this same
	// binary (same PID), so that the halt error never ends the process; its Boot,
	// before any store is opened, does backup, pre-upgrade, the flip and the exec
	// (the boot redirect). Nothing runs on open stores.
	PathReexec HaltPath = "re-exec"
)

// PathFor returns the halt path for state: the clean stop only where CometBFT is
// known to survive the halt error and then close every store on a stop (in
// consensus); the re-exec everywhere else, because it is safe in every state:
// the halting block was not applied, every earlier write is in the kernel, the
// exec closes every descriptor, and the next image opens the stores as it would
// after a crash, which CometBFT and the SDK are built for.
func PathFor(s NodeState) HaltPath {
	if s == NodeInConsensus {
		return PathCleanStop
	}
	return PathReexec
}

// ExitUpgradeHalt is the exit code of a node that stopped at an upgrade halt
// so that an orchestrator swaps the binary (the edge's on-halt = "exit" or
// "exit-always"): the process manager, or the orchestrator watching the
// container, tells it from a crash (1), a Go panic or usage error (2), the
// pre-upgrade codes (30, 31), a shell's 126/127 and a death by signal (128+n).
// The edge writes HaltReportFile before it exits with it.
const ExitUpgradeHalt = 10

// HaltReportFile is the file, under <home>/cosmovisor, that a node leaving an
// upgrade halt with ExitUpgradeHalt writes first: the upgrade, its height and
// the verified binary (path, sha256), for the orchestrator that swaps it.
const HaltReportFile = home.HaltReportFile

// EnvReexecHalt is set by the re-exec at a halt to "<height>/<name>"; Boot logs
// that it switches for that halt, and no later exec carries it.
const EnvReexecHalt = "INVISOR_REEXEC_HALT"

type haltReq struct {
	name   string
	height int64
}

// Halt is called from the block x/upgrade halted at height for upgrade name, with
// what CometBFT says about the node (state) and how that was learnt (why, for the
// log). It logs the path it takes and why, then:
//   - PathCleanStop: returns at once, as OnHalt: the waiter stops the node once
//     the binary is proven, and the edge calls Switch after `start` returned;
//   - PathReexec: does not return while it waits for the binary (the block cannot
//     go on without it anyway), then execs this same binary (ReexecAtHalt). It
//     returns only if that exec failed or ctx ended, and the caller lets the halt
//     error take its course: a restart goes through Boot. A stop request while
//     it waits ends the process at once (OS.Exit), since a node whose block is
//     held here cannot shut down cleanly.
func (r *Relauncher) Halt(ctx context.Context, name string, height int64, state NodeState, why string) {
	defer func() {
		if p := recover(); p != nil {
			r.log.Error("invisor: the halt path panicked", "panic", fmt.Sprint(p))
		}
	}()
	path := PathFor(state)
	r.log.Info("invisor: upgrade halt; path chosen from CometBFT's state", "upgrade", name, "height", height,
		"path", string(path), "node_state", state.String(), "why", why)
	if path == PathCleanStop {
		r.onHalt(name, height)
		return
	}
	if err := r.ReexecAtHalt(ctx, name, height); err != nil {
		r.log.Error("invisor: could not re-exec at the halt; the node will stop and a restart goes through the boot redirect",
			"upgrade", name, "height", height, "err", err)
	}
}

// OnHalt is Halt for a node in consensus: it never blocks and never panics. It
// records the request and starts (once) the waiter, which polls (the one wait
// loop, awaitProof) until data/upgrade-info.json names the upgrade (at height,
// unless height is 0) and the Verifier proves the binary for the plan that file
// holds; then it keeps the proof open for Switch, arms the Relauncher with name
// and calls OS.Stop (SIGTERM to ourselves by default) so the node shuts down
// cleanly. Repeated calls for the same name do nothing; a call for another name
// before arming replaces the request; calls after arming are ignored. A name that
// no directory can hold is logged, with what the operator can do, and ignored.
func (r *Relauncher) OnHalt(name string, height int64) {
	defer func() {
		if p := recover(); p != nil {
			r.log.Error("invisor: OnHalt panicked", "panic", fmt.Sprint(p))
		}
	}()
	r.onHalt(name, height)
}

func (r *Relauncher) onHalt(name string, height int64) {
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

// Armed reports the upgrade the node was stopped for, once the waiter found its
// binary trusted. The caller, after the start command returned, calls Switch(name).
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

// haltLoop is the waiter goroutine of OnHalt: the wait loop for the request in
// force, then arming and the stop.
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
	current := func() haltReq {
		r.mu.Lock()
		defer r.mu.Unlock()
		return *r.req
	}
	for {
		req, p, b, err := r.awaitProof(ctx, current, r.wake)
		if err != nil {
			return // closed
		}
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
		r.AwaitPeers(ctx, req.height)
		if err := r.os.Stop(); err != nil {
			r.log.Error("invisor: could not stop the node; stop it (SIGTERM) to switch", "upgrade", req.name, "err", err)
		}
		return
	}
}

// awaitProof is the one wait-for-the-binary loop, for both halt paths: until ctx
// ends, it asks for the proof of the request current returns (read anew each
// round, so a replaced request is followed), logging what is missing on the
// first miss and every HaltLogInterval after, and waits for the next tick
// (OS.After(HaltPollInterval)) or a wake-up. It returns the request it proved.
func (r *Relauncher) awaitProof(ctx context.Context, current func() haltReq, wake <-chan struct{}) (haltReq, home.Plan, Binary, error) {
	logEvery := max(1, int(r.cfg.HaltLogInterval/r.cfg.HaltPollInterval))
	lastName, misses := "", 0
	for {
		req := current()
		p, b, err := r.haltProof(ctx, req)
		if err == nil {
			return req, p, b, nil
		}
		if req.name != lastName {
			lastName, misses = req.name, 0
		}
		if misses%logEvery == 0 {
			r.log.Error("invisor: chain halted for upgrade; binary not ready", "upgrade", req.name, "height", req.height,
				"missing", r.missing(p, err).Error())
		}
		misses++
		select {
		case <-ctx.Done():
			return req, p, Binary{}, context.Cause(ctx)
		case <-wake:
		case <-r.os.After(r.cfg.HaltPollInterval):
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

// ReexecAtHalt is the re-exec path (PathReexec): it waits in the calling
// goroutine until the binary for the halt of upgrade name at height is proven
// (awaitProof), then execs this same process image with the same argv and
// environment (plus EnvReexecHalt and the home lock), so that its Boot, before
// any store is opened, does backup, pre-upgrade, the flip and the exec. Nothing
// is backed up, run or flipped here: the stores are open. A stop request
// (SIGTERM, SIGINT) while it waits ends the process with 128+signal (OS.Exit):
// the node cannot shut down cleanly while its block is held here, and the next
// start switches in its Boot. It returns only on failure or when ctx ends.
func (r *Relauncher) ReexecAtHalt(ctx context.Context, name string, height int64) error {
	if r.unmappable(name, height, "no switch for this halt") {
		return fmt.Errorf("relauncher: upgrade %s cannot be mapped to a directory", quoteName(name))
	}
	sigs, stopSigs := r.os.StopSignals()
	defer stopSigs()
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	go func() {
		select {
		case sig := <-sigs:
			r.log.Error("invisor: stop requested while the halted block waits for the upgrade binary; exiting now (the node cannot stop cleanly while its block is held). The next start runs the binary once it is staged",
				"upgrade", name, "height", height, "signal", sig.String(), "binary", r.missing(home.Plan{Name: name, Height: height}, nil).Path)
			code := 1
			if s, ok := sig.(syscall.Signal); ok {
				code = 128 + int(s)
			}
			r.os.Exit(code)
			cancel(fmt.Errorf("relauncher: stop requested (%s)", sig))
		case <-ctx.Done():
		}
	}()
	req := haltReq{name: name, height: height}
	_, _, b, err := r.awaitProof(ctx, func() haltReq { return req }, nil)
	if err != nil {
		return err
	}
	// The proof only says the switch can go ahead; the Boot of the next image
	// proves the binary again, with no store open, before it runs anything.
	b.Close()
	image, err := r.selfImage()
	if err != nil {
		return err
	}
	self, _ := r.os.Executable()
	env, err := r.execEnv(self, image, false)
	if err != nil {
		return err
	}
	env = append(env, EnvReexecHalt+"="+strconv.FormatInt(height, 10)+"/"+name)
	env, undo, err := r.inherit(nil, env)
	if err != nil {
		return err
	}
	argv := r.os.Args()
	r.log.Info("invisor: binary proven; re-executing this binary so that its boot switches with no store open",
		"upgrade", name, "height", height, "image", image, "executable", self, "pid", r.os.Getpid(), "argv", argv)
	err = r.os.Exec(image, argv, env)
	undo()
	if err == nil {
		return nil // only a fake returns
	}
	return newExecError(image, err)
}

// selfImage is what re-exec runs: on Linux /proc/self/exe, the very image this
// process runs even if its path was replaced since; elsewhere the executable's path.
func (r *Relauncher) selfImage() (string, error) {
	if runtime.GOOS == "linux" {
		if _, err := os.Stat("/proc/self/exe"); err == nil {
			return "/proc/self/exe", nil
		}
	}
	self, err := r.os.Executable()
	if err != nil {
		return "", fmt.Errorf("relauncher: executable: %w", err)
	}
	return self, nil
}

// reexecedFor returns the halt a re-exec at a halt was for ("" when this process
// was not started so).
func (r *Relauncher) reexecedFor() string { return r.getenv(EnvReexecHalt) }

// AwaitPeers holds a clean stop at the upgrade halt at height until every peer
// has what it needs to halt there too (OS.PeersAtHalt: CometBFT's view of each
// peer, past the height or in its commit step), for at most
// Config.HaltGossip. Consensus has stopped at the halt, but the reactor still
// gossips the halting block's votes while the process lives: a node that stops
// at once takes them away from a peer still collecting them, which then halts
// only when the network is back up (a straggler the next block waits for).
// It never fails: a peer that stays behind costs the wait, no more.
func (r *Relauncher) AwaitPeers(ctx context.Context, height int64) {
	if r.os.PeersAtHalt == nil {
		return
	}
	start := time.Now()
	deadline := r.os.After(r.cfg.HaltGossip)
	for {
		ready, total, lagging, err := r.os.PeersAtHalt(ctx, height)
		if err == nil && ready == total {
			r.log.Info("invisor: every peer has the halting block's commit; stopping", "height", height,
				"peers", total, "waited", time.Since(start).Round(time.Millisecond).String())
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-deadline:
			kv := []any{"height", height, "ready", ready, "peers", total, "lagging", lagging, "waited", r.cfg.HaltGossip.String()}
			if err != nil {
				kv = append(kv, "err", err)
			}
			r.log.Warn("invisor: stopping although not every peer has the halting block's commit (they halt once the network is back)", kv...)
			return
		case <-r.os.After(haltGossipPoll):
		}
	}
}
