package invisor

import (
	"context"
	"fmt"
	"sync/atomic"

	"github.com/spf13/cast"

	"github.com/invisor/invisor/hook"
	"github.com/invisor/invisor/internal/config"
	"github.com/invisor/invisor/internal/history"
	"github.com/invisor/invisor/internal/notify"
	"github.com/invisor/invisor/relauncher"
	"github.com/invisor/invisor/staging"
)

// The edge's part of the notifications (internal/notify sends them): which
// event, when. Every call from the block's path (PlanChanged, Height, Halted)
// hands one Event to Notifier.Notify, which never waits; Height does so at most
// once per plan. n.notifier is nil when webhook-url is empty, and a nil
// Notifier does nothing.

// planWatch is what the notifications know of the plan in force: PlanChanged
// replaces it, watchReady marks it ready, Height reads it in every block.
type planWatch struct {
	plan  staging.Plan
	ready atomic.Bool // watchReady proved its binary
	near  atomic.Bool // Height decided about the not-ready-near-height event
}

// newNotifier builds the webhook's Notifier from the configuration (nil when no
// URL is set). The chain id comes from --chain-id, else from genesis, as the
// SDK finds it; a node whose genesis cannot be read sends documents without one.
func newNotifier(sctx config.Server, cfg config.Config, nodeHome string, logger staging.Logger) (*notify.Notifier, error) {
	nc := cfg.Notify
	if nc.URL == "" {
		return nil, nil
	}
	nc.Home = nodeHome
	nc.Journal = notify.JournalPath(nodeHome)
	nc.ChainID = cast.ToString(sctx.Viper.Get(flagChainID))
	if nc.ChainID == "" {
		nc.ChainID = chainIDFromGenesis(sctx.Comet.GenesisFile())
	}
	n, err := notify.New(nc, logger)
	if err != nil {
		return nil, fmt.Errorf("invisor: webhook-url: %w", err)
	}
	logger.Info("invisor: sending upgrade events to the webhook", "url", staging.Redact(nc.URL), "format", notify.Version)
	return n, nil
}

// closeNotifier gives the webhook its bounded drain (notify.CloseWait): at the
// stop of the node and right before any exec. Later events are dropped.
func closeNotifier(n *notify.Notifier, logger staging.Logger) {
	if n == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), notify.CloseWait)
	defer cancel()
	if err := n.Close(ctx); err != nil {
		logger.Warn("invisor: webhook events lost at shutdown", "err", err)
	}
}

// execAfterDrain is relauncher.OS.Exec: the process image is replaced only
// after the webhook had its bounded drain, so the events before a switch (the
// halt) have their chance to leave.
func execAfterDrain(n *notify.Notifier, logger staging.Logger, exec func(string, []string, []string) error) func(string, []string, []string) error {
	return func(argv0 string, argv, envv []string) error {
		closeNotifier(n, logger)
		return exec(argv0, argv, envv)
	}
}

// notePlan is PlanChanged's part: plan seen, or plan gone (applied when the
// chain reached its height, cancelled before).
func (n *node) notePlan(p *hook.Plan, block int64) {
	prev := n.watch.Load()
	if p == nil {
		n.watch.Store(nil)
		if prev == nil {
			return
		}
		how := "cancelled"
		msg := fmt.Sprintf("upgrade %q at height %d was cancelled (no plan in force at block %d)", prev.plan.Name, prev.plan.Height, block)
		if block >= prev.plan.Height {
			how = "applied"
			msg = fmt.Sprintf("upgrade %q at height %d was applied", prev.plan.Name, prev.plan.Height)
		}
		n.notifier.Notify(notify.Event{Kind: notify.KindPlanGone, Upgrade: prev.plan.Name, Height: prev.plan.Height, Reason: how, Message: msg})
		return
	}
	w := &planWatch{plan: staging.Plan{Name: p.Name, Height: p.Height, Info: p.Info}}
	n.watch.Store(w)
	n.notifier.Notify(notify.Event{Kind: notify.KindPlanSeen, Upgrade: p.Name, Height: p.Height,
		Message: fmt.Sprintf("upgrade %q is planned at height %d (seen at block %d)", p.Name, p.Height, block)})
}

// noteReady is watchReady's part: the plan's binary is staged and proven.
func (n *node) noteReady(plan staging.Plan, sha256 string) {
	if w := n.watch.Load(); w != nil && w.plan == plan {
		w.ready.Store(true)
	}
	n.notifier.Notify(notify.Event{Kind: notify.KindBinaryReady, Upgrade: plan.Name, Height: plan.Height, SHA256: sha256,
		Message: fmt.Sprintf("the binary for upgrade %q at height %d is staged and verified", plan.Name, plan.Height)})
}

// nearHeight is Height's part: once per plan, when the chain comes within
// staging.HurryWithinBlocks of its height and the binary is not ready. It
// allocates nothing in the blocks that do not cross that line.
func (n *node) nearHeight(h int64) {
	w := n.watch.Load()
	if w == nil || w.plan.Height-h > staging.HurryWithinBlocks || h >= w.plan.Height || w.near.Load() || !w.near.CompareAndSwap(false, true) {
		return
	}
	if w.ready.Load() {
		return
	}
	n.notifier.Notify(notify.Event{Kind: notify.KindNotReadyNearHeight, Upgrade: w.plan.Name, Height: w.plan.Height,
		Message: fmt.Sprintf("block %d: %d blocks before upgrade %q, its binary is not staged and verified; see `invisor status`",
			h, w.plan.Height-h, w.plan.Name)})
}

// noteHalted is Halted's part; path is the halt path taken ("cosmovisor" when
// cosmovisor switches) and why how it was chosen.
// The halt is sent once, however often x/upgrade's PreBlocker refuses the block.
func (n *node) noteHalted(p hook.Plan, height int64, path, why string) {
	key := fmt.Sprint(p.Name, "@", height)
	n.haltMu.Lock()
	again := n.haltNoted == key
	n.haltNoted = key
	n.haltMu.Unlock()
	if again {
		return
	}
	n.notifier.Notify(notify.Event{Kind: notify.KindHalted, Upgrade: p.Name, Height: height, Path: path, Reason: why,
		Message: fmt.Sprintf("the chain halted at height %d for upgrade %q; switching by the %s path", height, p.Name, path)})
}

// noteSwitched is the new binary's report of the switch that led to its boot.
func (n *node) noteSwitched(e history.Entry) {
	msg := fmt.Sprintf("the binary of upgrade %q runs, %.1f s after the halt at height %d", e.Upgrade, e.Seconds, e.Height)
	reason := "switched after the halt"
	if e.AfterRollback {
		msg = fmt.Sprintf("the binary of upgrade %q runs again, after a rollback", e.Upgrade)
		reason = "after a rollback"
	}
	n.notifier.Notify(notify.Event{Kind: notify.KindSwitched, Upgrade: e.Upgrade, Height: e.Height, SHA256: e.SHA256, Reason: reason, Message: msg})
}

// haltPath names the path Halted takes, for the halted event.
func haltPath(stageOnly bool, state relauncher.NodeState) string {
	if stageOnly {
		return "cosmovisor"
	}
	return string(relauncher.PathFor(state))
}

// stagingWatcher is the status reporter's staging.Status source with the
// notifications of staging's failures on top: it sees every snapshot the
// reporter takes (status.Interval), so a failure is reported within one
// interval, without a second poller. Only the reporter's goroutine calls it.
type stagingWatcher struct {
	*staging.Stager
	n    *node
	last string // plan, state and error of the last failure reported
}

// Status implements status.Source.
func (s *stagingWatcher) Status() staging.Status {
	st := s.Stager.Status()
	s.observe(st)
	return st
}

// observe reports a failed attempt (once per distinct error, so a receiver is
// not paged at every retry of the same cause) and a refusal (once).
func (s *stagingWatcher) observe(st staging.Status) {
	kind := notify.KindStagingFailed
	switch st.State {
	case staging.StateFailed:
	case staging.StateRefused, staging.StateUnmappable:
		kind = notify.KindStagingRefused
	default:
		return
	}
	if st.Plan == nil {
		return
	}
	key := fmt.Sprint(st.Plan.Name, "\x00", st.Plan.Height, "\x00", st.State, "\x00", st.Err)
	if key == s.last {
		return
	}
	s.last = key
	msg := fmt.Sprintf("staging the binary for upgrade %q at height %d failed (attempt %d); it will be retried", st.Plan.Name, st.Plan.Height, st.Attempt)
	if kind == notify.KindStagingRefused {
		msg = fmt.Sprintf("staging refused the binary for upgrade %q at height %d and will not retry; the operator must act (see reason)", st.Plan.Name, st.Plan.Height)
	}
	s.n.notifier.Notify(notify.Event{Kind: kind, Upgrade: st.Plan.Name, Height: st.Plan.Height, Reason: st.Err, Message: msg})
}
