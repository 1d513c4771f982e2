package invisor

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	cmtcfg "github.com/cometbft/cometbft/config"

	"github.com/invisor/invisor/hook"
	"github.com/invisor/invisor/internal/comet"
	"github.com/invisor/invisor/internal/health"
	"github.com/invisor/invisor/internal/notify"
	"github.com/invisor/invisor/internal/status"
)

// The health gate after a switch (internal/health decides; this is the edge).
//
// It is armed at boot when data/upgrade-info.json names an upgrade at H and
// CometBFT's state store says the chain's state is at H-1 (this binary applies
// H next) or at H (an earlier process of it applied H; H+1 is not committed).
// A process that boots long after the upgrade (state past H) or far behind it
// (state below H-1: block sync of history) arms nothing. One goroutine owns the
// gate; the hook feeds it from the block's path through atomics and a one-slot
// wake channel, without allocating: applied (PlanChanged(nil, H)), failed
// (hook.FailureSink), committed (Height(H+2), or CometBFT's block store past H
// in the poll), and the old binary's halt at H
// (this process is not the upgrade's binary: the gate disarms). While armed it
// asks the node's CometBFT every healthPoll with one client: /status (validator
// or not), /commit of the heights after H (this validator's first signature),
// and, once H+1 is late, /dump_consensus_state (who votes at H+1). It stops at
// healthy and at the node's stop, after a last step without the RPC, so a
// handler failure in the handshake (which ends the process right after) is
// still logged and sent.

var _ hook.FailureSink = (*node)(nil)

// healthPoll is how often the gate asks CometBFT while it is armed.
const healthPoll = 500 * time.Millisecond

// commitsPerStep bounds the /commit asks of one step (a node that catches up
// many blocks at once is searched over a few steps).
const commitsPerStep = 10

// upgradeFailure is what hook.FailureSink said.
type upgradeFailure struct {
	at  time.Time
	err string
}

// healthGate is the edge's side of one gate.
type healthGate struct {
	cfg    health.Config
	arm    health.Arm
	client *comet.Client // nil: no RPC to ask
	now    func() time.Time

	// Fed from the block's path.
	appliedAt, committedAt atomic.Int64 // unix nanoseconds; 0: not yet
	failed                 atomic.Pointer[upgradeFailure]
	oldBinary              atomic.Bool
	wake                   chan struct{}

	// Owned by run.
	address []byte // this validator's, from /status

	report  atomic.Pointer[health.Report] // the latest, for the status reporter
	tick    <-chan time.Time              // nil: a healthPoll ticker
	stepped func(health.Report)           // tests: called after every step
	cancel  context.CancelFunc
	done    chan struct{}
}

// armHealth arms the gate if this boot runs the upgrade binary of the upgrade
// data/upgrade-info.json names, before H+1 (see above); call it at boot,
// before the node opens CometBFT's stores. Nothing it cannot read stops the boot.
func (n *node) armHealth(cmt *cmtcfg.Config, cfg health.Config) {
	ui, ok, err := n.layout.ReadUpgradeInfo()
	if err != nil || !ok || ui.Height <= 0 {
		return
	}
	last, err := comet.StateHeight(cmt)
	switch {
	case err != nil && n.switched == nil:
		n.log.Info("invisor: health gate not armed: CometBFT's state height cannot be read", "upgrade", ui.Name, "height", ui.Height, "err", err)
		return
	case err != nil:
		last = ui.Height - 1 // a switch led to this boot
	case last < ui.Height-1 || last > ui.Height:
		return
	}
	arm := health.Arm{Upgrade: ui.Name, Height: ui.Height, Booted: time.Now(), AppliedBefore: last == ui.Height, Daemon: n.layout.Daemon()}
	var client *comet.Client
	if c, err := comet.NewClient(n.rpcLaddr); err == nil {
		client, arm.RPC = c, true
	} else {
		n.log.Warn("invisor: the health gate cannot ask CometBFT (rpc.laddr); it reports the block after the upgrade, not this validator's signing nor why it is late",
			"upgrade", ui.Name, "err", err)
	}
	n.startHealth(newHealthGate(cfg, arm, client, time.Now))
}

func newHealthGate(cfg health.Config, arm health.Arm, client *comet.Client, now func() time.Time) *healthGate {
	return &healthGate{cfg: cfg, arm: arm, client: client, now: now, wake: make(chan struct{}, 1), done: make(chan struct{})}
}

// startHealth runs hg for the node's life; n.health is set before the hook
// sees the node.
func (n *node) startHealth(hg *healthGate) {
	ctx, cancel := context.WithCancel(n.runCtx)
	hg.cancel = cancel
	n.health = hg
	n.log.Info("invisor: health gate armed: reporting once the block after the upgrade height is committed",
		"upgrade", hg.arm.Upgrade, "height", hg.arm.Height, "deadline", hg.cfg.Deadline.String(), "applied_before_boot", hg.arm.AppliedBefore)
	go hg.run(ctx, n)
}

// stopHealth ends the gate after its last step; call it before the rest of the
// node stops (the status reporter's last write and the webhook's drain follow).
func (n *node) stopHealth() {
	if hg := n.health; hg != nil {
		hg.cancel()
		<-hg.done
	}
}

// healthReport is the status reporter's source (status.Reporter.SetHealth).
func (n *node) healthReport() *status.Health {
	if hg := n.health; hg != nil {
		return hg.report.Load()
	}
	return nil
}

// healthHeight is Height's part: block h >= H+2 runs only once the network
// committed H+1. Not H+1 itself: with optimistic execution BaseApp runs a
// proposed block from ProcessProposal, before (and whether or not) the network
// commits it, so a PreBlocker at H+1 proves nothing; a proposal for H+2 exists
// only on top of a committed H+1. (CometBFT's block store, asked in ask, usually
// says it a block earlier.) It allocates nothing.
func (n *node) healthHeight(h int64) {
	if hg := n.health; hg != nil && h > hg.arm.Height+1 && hg.committedAt.Load() == 0 && hg.committedAt.CompareAndSwap(0, hg.now().UnixNano()) {
		hg.poke()
	}
}

// healthPlan is PlanChanged's part: no plan in force in block H is x/upgrade
// having applied it (this binary has the handler, and it succeeded).
func (n *node) healthPlan(p *hook.Plan, block int64) {
	if hg := n.health; hg != nil && p == nil && block == hg.arm.Height && hg.appliedAt.CompareAndSwap(0, hg.now().UnixNano()) {
		hg.poke()
	}
}

// UpgradeFailed implements hook.FailureSink: the upgrade handler failed.
func (n *node) UpgradeFailed(p hook.Plan, height int64, err error) {
	if hg := n.health; hg != nil && p.Name == hg.arm.Upgrade && p.Height == hg.arm.Height && height == p.Height {
		hg.failed.CompareAndSwap(nil, &upgradeFailure{at: hg.now(), err: err.Error()})
		hg.poke()
	}
}

// healthHalted is Halted's part: a halt at H means this process is the old
// binary (cosmovisor, or a start by hand, has not switched yet).
func (n *node) healthHalted(height int64) {
	if hg := n.health; hg != nil && height == hg.arm.Height {
		hg.oldBinary.Store(true)
		hg.poke()
	}
}

func (hg *healthGate) poke() {
	select {
	case hg.wake <- struct{}{}:
	default:
	}
}

// run owns the gate until healthy, the old binary's halt, or ctx's end.
func (hg *healthGate) run(ctx context.Context, n *node) {
	defer close(hg.done)
	tick := hg.tick
	if tick == nil {
		t := time.NewTicker(healthPoll)
		defer t.Stop()
		tick = t.C
	}
	g := health.New(hg.cfg, hg.arm)
	hg.publish(g)
	for {
		stopping := ctx.Err() != nil
		hg.feed(g)
		if hg.oldBinary.Load() {
			hg.report.Store(nil)
			n.log.Info("invisor: health gate disarmed: this binary halted at the upgrade height, so it is not the upgrade's", "upgrade", hg.arm.Upgrade)
			return
		}
		now := hg.now()
		if !stopping && hg.client != nil {
			hg.ask(ctx, g, now)
		}
		ev := g.Step(now)
		hg.publish(g)
		hg.say(n, ev, g.Report())
		if hg.stepped != nil {
			hg.stepped(g.Report())
		}
		if stopping || g.Done() {
			return
		}
		select {
		case <-ctx.Done():
		case <-hg.wake:
		case <-tick:
		}
	}
}

// feed hands the gate what the hook reported since the last step.
func (hg *healthGate) feed(g *health.Gate) {
	if t := hg.appliedAt.Load(); t != 0 {
		g.Applied(time.Unix(0, t))
	}
	if f := hg.failed.Load(); f != nil {
		g.Failed(f.at, f.err)
	}
	if t := hg.committedAt.Load(); t != 0 {
		g.Committed(time.Unix(0, t))
	}
}

// ask reads what the gate needs from CometBFT.
func (hg *healthGate) ask(ctx context.Context, g *health.Gate, now time.Time) {
	c := hg.client
	st, err := c.Status(ctx)
	if err != nil {
		g.Polled(health.Node{Err: err})
		return
	}
	g.Polled(health.Node{CatchingUp: st.SyncInfo.CatchingUp, LatestHeight: st.SyncInfo.LatestBlockHeight, Validator: st.ValidatorInfo.VotingPower > 0})
	if st.SyncInfo.LatestBlockHeight > hg.arm.Height {
		// CometBFT stores a block once +2/3 precommitted it: H+1 is committed
		// (seen now, at the answer; within one poll of the commit).
		g.Committed(hg.now())
	}
	hg.address = st.ValidatorInfo.Address
	if from, ok := g.NeedsSignature(); ok {
		for h := from; h <= st.SyncInfo.LatestBlockHeight && h < from+commitsPerStep; h++ {
			cm, err := c.Commit(ctx, h)
			if err != nil {
				break
			}
			if at, ok := comet.SignedBy(cm.Commit, hg.address); ok {
				g.Signed(h, at)
				break
			}
			if !cm.CanonicalCommit {
				break // the latest commit, as this node saw it: the block after carries the final one
			}
			g.Checked(h)
		}
	}
	if g.NeedsVotes(now) {
		rv, err := c.RoundVotes(ctx)
		v := health.Votes{Err: err, Height: rv.Height, Round: rv.Round}
		for _, val := range rv.Validators {
			v.Validators = append(v.Validators, health.Vote{Power: val.Power, Voted: val.Voted})
		}
		g.ReadVotes(now, v)
	}
}

func (hg *healthGate) publish(g *health.Gate) {
	r := g.Report()
	hg.report.Store(&r)
}

// say logs and sends what the step changed.
func (hg *healthGate) say(n *node, ev health.Event, r health.Report) {
	switch ev {
	case health.EventHealthy:
		kv := []any{"upgrade", r.Upgrade, "height", r.Height, "applied_at", timeText(r.AppliedAt), "applied_before_boot", r.AppliedBefore,
			"committed_height", r.Height + 1, "committed_at", timeText(r.CommittedAt), "seconds_after_switch", fmt.Sprintf("%.3f", r.CommittedSeconds),
			"validator", r.Validator}
		if r.SignedHeight > 0 {
			kv = append(kv, "signed_height", r.SignedHeight, "signed_at", timeText(r.SignedAt))
		}
		n.log.Info("invisor: upgrade healthy", append(kv, "detail", r.Message)...)
		n.notifier.Notify(notify.Event{Kind: notify.KindHealthy, Upgrade: r.Upgrade, Height: r.Height, Message: r.Message})
	case health.EventStalled, health.EventStallChanged:
		kv := []any{"upgrade", r.Upgrade, "height", r.Height, "cause", string(r.Cause), "detail", r.Message, "what_to_do", r.Advice}
		if o := r.Online; o != nil {
			kv = append(kv, "online_validators", o.Validators, "validators", o.Of, "online_power_fraction", fmt.Sprintf("%.3f", o.Fraction), "round", o.Round)
		}
		msg := "invisor: upgrade stalled"
		if ev == health.EventStallChanged {
			msg = "invisor: upgrade still stalled"
		}
		switch r.Cause {
		case health.CauseNetwork, health.CauseCatchingUp:
			n.log.Warn(msg, kv...)
		default:
			n.log.Error(msg, kv...)
		}
		if ev == health.EventStalled {
			n.notifier.Notify(notify.Event{Kind: notify.KindStalled, Upgrade: r.Upgrade, Height: r.Height, Reason: string(r.Cause),
				Message: r.Message + "; " + r.Advice})
		}
	}
}

func timeText(t *time.Time) string {
	if t == nil {
		return ""
	}
	return t.UTC().Format(time.RFC3339Nano)
}
