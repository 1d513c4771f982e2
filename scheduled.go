package invisor

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/cast"

	"github.com/invisor/invisor/hook"
	"github.com/invisor/invisor/internal/comet"
	"github.com/invisor/invisor/internal/config"
	"github.com/invisor/invisor/internal/history"
	"github.com/invisor/invisor/internal/home"
)

// Upgrades at a height without governance (`invisor stage NAME --height H`)
//
// The schedule (home.Layout.Schedule) is read at every boot, before the boot
// redirect and before the app is built, against CometBFT's state height S (the
// last block applied, read from its state store with the node stopped):
//   - an upgrade at H <= S is behind the chain: it is removed from the schedule;
//   - the upgrade due at H = S+1 (the chain's next block needs its binary; the
//     old binary would halt there): data/upgrade-info.json is written for it, as
//     x/upgrade writes it at a governance halt, so the boot redirect switches to
//     its binary now, and a restart of either binary later keeps running it;
//   - the first upgrade after that: the SDK's halt-height is set to its height
//     on the node this process starts (flagHaltHeight in the app options;
//     a lower halt-height the operator set stays in force). BaseApp then refuses
//     block H in FinalizeBlock, as x/upgrade refuses a planned one, and the node
//     halts: in consensus CometBFT stops and the process idles, in block sync the
//     process exits and its restart boots into the switch above.
//
// In consensus the halt is seen from CometBFT: once the hook passed H-1, a watcher
// asks CometBFT's /status until block H is in its block store (the app applied
// H-1 and refused H), writes data/upgrade-info.json and takes the halt path of a
// governance halt (clean stop, Switch).

// haltWatchTick is how often the halt watcher asks CometBFT once the node has
// passed the block before a scheduled height.
const haltWatchTick = 50 * time.Millisecond

// applySchedule does the boot's part (above) and returns the upgrade whose height
// this node now halts at, if any.
func (n *node) applySchedule(sctx config.Server) error {
	sched, err := n.layout.Schedule()
	if err != nil || len(sched) == 0 {
		return err
	}
	last, err := comet.StateHeight(sctx.Comet)
	if err != nil {
		return fmt.Errorf("invisor: %d upgrade(s) scheduled at a height, but CometBFT's state height cannot be read to place them: %w; "+
			"`invisor scheduled` lists them, `invisor cancel NAME` removes one", len(sched), err)
	}
	due, next, past := home.ScheduleAt(sched, last)
	for _, p := range past {
		if _, _, err := n.layout.RemoveScheduled(p.Plan.Name); err != nil {
			n.log.Error("invisor: could not remove a scheduled upgrade the chain is past", "upgrade", p.Plan.Name, "err", err)
			continue
		}
		n.log.Info("invisor: scheduled upgrade behind the chain; removed from the schedule",
			"upgrade", p.Plan.Name, "height", p.Plan.Height, "chain_state_height", last)
	}
	if due != nil {
		if err := n.dueNow(*due, last); err != nil {
			return err
		}
	}
	if next != nil {
		n.haltAt(sctx, *next, last)
	}
	return nil
}

// dueNow makes sure data/upgrade-info.json names the scheduled upgrade whose
// height is the chain's next block, so the boot redirect runs its binary.
func (n *node) dueNow(d home.Scheduled, last int64) error {
	n.due = &d
	ui, ok, err := n.layout.ReadUpgradeInfo()
	switch {
	case err != nil:
		return fmt.Errorf("invisor: %w", err)
	case ok && ui.Name == d.Plan.Name && ui.Height == d.Plan.Height:
		return nil
	case ok && ui.Height >= d.Plan.Height:
		n.log.Error("invisor: the scheduled upgrade collides with the upgrade the chain halted for; running the chain's, not the scheduled one",
			"scheduled", d.Plan.Name, "scheduled_height", d.Plan.Height, "upgrade_info", ui.Name, "upgrade_info_height", ui.Height,
			"what_to_do", "cancel the scheduled upgrade (invisor cancel "+d.Plan.Name+")")
		n.due = nil
		return nil
	}
	if err := n.layout.WriteUpgradeInfo(d.Plan); err != nil {
		return fmt.Errorf("invisor: the chain's state is at %d, the block before the scheduled upgrade %q at %d, but %s cannot be written: %w",
			last, d.Plan.Name, d.Plan.Height, n.layout.UpgradeInfo(), err)
	}
	n.log.Info("invisor: the chain's state is at the block before a scheduled upgrade; its binary runs the next block",
		"upgrade", d.Plan.Name, "height", d.Plan.Height, "chain_state_height", last, "wrote", n.layout.UpgradeInfo())
	return nil
}

// haltAt sets the SDK's halt-height for s on the node this process starts.
func (n *node) haltAt(sctx config.Server, s home.Scheduled, last int64) {
	if op := cast.ToInt64(sctx.Viper.Get(flagHaltHeight)); op > 0 && op < s.Plan.Height {
		n.log.Warn("invisor: the operator's halt-height comes before the scheduled upgrade; it stays in force, and the node halts there without switching",
			"halt_height", op, "upgrade", s.Plan.Name, "height", s.Plan.Height)
		return
	}
	sctx.Viper.Set(flagHaltHeight, uint64(s.Plan.Height))
	n.halt = &s
	n.log.Info("invisor: upgrade scheduled at a height; the node halts there (halt-height) and switches to its binary",
		"upgrade", s.Plan.Name, "height", s.Plan.Height, "chain_state_height", last, "source", s.Source)
	if n.rpcLaddr == "" {
		n.log.Warn("invisor: rpc.laddr is empty, so invisor cannot see the halt at the scheduled height: the node will halt there and idle; restart it then and it switches at boot",
			"upgrade", s.Plan.Name, "height", s.Plan.Height)
	}
}

// scheduledHeight is Sink.Height's part: it starts the halt watcher once the
// node has passed the block before the height it halts at, and removes the due
// upgrade from the schedule once its block ran. It allocates nothing per block.
func (n *node) scheduledHeight(h int64) {
	if s := n.halt; s != nil && n.rpcLaddr != "" && h >= s.Plan.Height-1 && n.haltWatch.CompareAndSwap(false, true) {
		go n.watchHalt(n.runCtx, *s)
	}
	if d := n.due; d != nil && h >= d.Plan.Height && n.dueDone.CompareAndSwap(false, true) {
		go n.scheduledApplied(*d, h)
	}
}

// watchHalt waits until CometBFT has block s's height in its block store while
// the app stays below it (the halt-height refused it), then takes the halt path.
func (n *node) watchHalt(ctx context.Context, s home.Scheduled) {
	// One client for the whole wait: its connection is kept between the asks.
	c, err := comet.NewClient(n.rpcLaddr)
	if err != nil {
		n.log.Error("invisor: cannot ask CometBFT for the halt at the scheduled height; restart the node at the halt and it switches at boot",
			"upgrade", s.Plan.Name, "height", s.Plan.Height, "err", err)
		return
	}
	t := time.NewTicker(haltWatchTick)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		st, err := c.Status(ctx)
		if err == nil && st.SyncInfo.LatestBlockHeight >= s.Plan.Height {
			break
		}
	}
	n.scheduledHalt(s)
}

// scheduledHalt: the node halted at s's height. The app applied the block before
// it and refused s's block, so data/upgrade-info.json now names s, and the halt
// is a governance halt's.
func (n *node) scheduledHalt(s home.Scheduled) {
	if sched, err := n.layout.Schedule(); err == nil && !scheduled(sched, s) {
		n.log.Error("invisor: the node halted at the height of an upgrade that was cancelled after it started; restart the node to go on with this binary",
			"upgrade", s.Plan.Name, "height", s.Plan.Height)
		return
	}
	if err := n.layout.WriteUpgradeInfo(s.Plan); err != nil {
		n.log.Error("invisor: halted at a scheduled upgrade, but data/upgrade-info.json cannot be written; restart the node and it switches at boot",
			"upgrade", s.Plan.Name, "height", s.Plan.Height, "err", err)
		return
	}
	n.log.Info("invisor: the node halted at the height of an upgrade scheduled without governance (halt-height)",
		"upgrade", s.Plan.Name, "height", s.Plan.Height)
	n.Halted(hook.Plan{Name: s.Plan.Name, Height: s.Plan.Height, Info: s.Plan.Info}, s.Plan.Height)
}

// scheduledApplied removes the due upgrade from the schedule once the block at
// its height ran on this binary.
func (n *node) scheduledApplied(d home.Scheduled, block int64) {
	if _, ok, err := n.layout.RemoveScheduled(d.Plan.Name); err != nil {
		n.log.Error("invisor: could not remove the applied scheduled upgrade from the schedule; the next boot does", "upgrade", d.Plan.Name, "err", err)
		return
	} else if !ok {
		return
	}
	if err := history.Append(n.layout.Home(), history.Entry{Event: history.EventScheduledApplied, Upgrade: d.Plan.Name,
		Height: d.Plan.Height, Time: time.Now().UTC()}); err != nil {
		n.log.Error("invisor: could not record the applied scheduled upgrade in the history", "err", err)
	}
	n.log.Info("invisor: scheduled upgrade applied; removed from the schedule", "upgrade", d.Plan.Name, "height", d.Plan.Height, "block", block)
}

func scheduled(sched []home.Scheduled, s home.Scheduled) bool {
	for _, c := range sched {
		if c.Plan == s.Plan {
			return true
		}
	}
	return false
}

// scheduleCollides warns, in the block's path (no I/O: the schedule was read at
// boot), when a governance plan takes a height or name an upgrade is scheduled at.
func (n *node) scheduleCollides(p *hook.Plan) {
	for _, s := range []*home.Scheduled{n.halt, n.due} {
		if s == nil || p == nil {
			continue
		}
		if s.Plan.Height == p.Height || home.CanonicalName(s.Plan.Name) == home.CanonicalName(p.Name) {
			n.log.Error("invisor: a governance plan collides with an upgrade scheduled at a height; the governance plan wins at its height",
				"plan", p.Name, "plan_height", p.Height, "scheduled", s.Plan.Name, "scheduled_height", s.Plan.Height,
				"what_to_do", "cancel the scheduled upgrade (invisor cancel "+s.Plan.Name+") and restart the node")
		} else if p.Height < s.Plan.Height {
			n.log.Warn("invisor: a governance plan comes before an upgrade scheduled at a height; check the scheduled binary is still the right one after it",
				"plan", p.Name, "plan_height", p.Height, "scheduled", s.Plan.Name, "scheduled_height", s.Plan.Height)
		}
	}
}
