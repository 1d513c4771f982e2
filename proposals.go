package invisor

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/invisor/invisor/internal/comet"
	"github.com/invisor/invisor/internal/notify"
	"github.com/invisor/invisor/internal/proposals"
	"github.com/invisor/invisor/staging"
)

// The edge's part of the proposal checks: it reads the software-upgrade
// proposals in their voting period from the node's committed state (the app's
// x/gov answer to an ABCI query on rpc.laddr: off the block's path, and only
// what the chain committed), hands them to the Stager, which checks each
// binary in the background (staging.Stager.OfferProposals), and says each
// result once: in the log, in words a validator can act on, and to the webhook.
// `invisor status` shows them from the status file.

// proposalsEvery is how often the proposals in voting are read, at most, and only
// after a new block: a voting period lasts days on a real chain, and one query
// a few seconds apart costs the node nothing measurable.
const proposalsEvery = 2 * time.Second

// watchProposals runs for the node's life when check-proposals is on.
func (n *node) watchProposals(ctx context.Context) {
	c, err := comet.NewClient(n.rpcLaddr)
	if err != nil {
		n.log.Info("invisor: proposals in their voting period are not checked: the node's RPC is not configured (config.toml rpc.laddr)", "err", err)
		return
	}
	tick := time.NewTicker(proposalsEvery)
	defer tick.Stop()
	var asked int64 = -1 // height of the last read
	var failing string   // the read's error last logged, so a down RPC is said once
	said := map[uint64]string{}
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		if h := n.stager.Height(); h > 0 && h != asked {
			ps, err := proposals.Voting(ctx, c)
			switch {
			case err == nil:
				asked, failing = h, ""
				n.stager.OfferProposals(ps)
			case ctx.Err() != nil:
				return
			case !errors.Is(err, comet.ErrNotListening) && err.Error() != failing:
				// The RPC not listening yet is the start-up; anything else is worth one line.
				failing = err.Error()
				n.log.Info("invisor: could not read the proposals in their voting period; trying again", "err", err)
			}
		}
		n.sayChecks(n.stager.Status().Proposals, said)
	}
}

// sayChecks logs and notifies each check that reached a result, once per
// proposal, plan and result; said remembers what was said (and forgets the
// proposals no longer checked).
func (n *node) sayChecks(checks []staging.ProposalCheck, said map[uint64]string) {
	live := make(map[uint64]bool, len(checks))
	for _, c := range checks {
		live[c.ID] = true
		if c.State == staging.CheckQueued || c.State == staging.CheckRunning {
			continue
		}
		// Not the error's text: a transient fault retried with other words
		// (a byte count) is the same result for a validator.
		key := fmt.Sprint(c.Plan.Name, "\x00", c.Plan.Height, "\x00", c.Plan.InfoHash(), "\x00", c.State, "\x00", c.SHA256)
		if said[c.ID] == key {
			continue
		}
		said[c.ID] = key
		kv := []any{"proposal", c.ID, "upgrade", c.Plan.Name, "height", c.Plan.Height, "state", string(c.State)}
		if c.SHA256 != "" {
			kv = append(kv, "sha256", c.SHA256)
		}
		if !c.VotingEnd.IsZero() {
			kv = append(kv, "voting_ends", c.VotingEnd.Format(time.RFC3339))
		}
		switch c.State {
		case staging.CheckVerified, staging.CheckSkipped:
			n.log.Info("invisor: "+c.Summary(), kv...)
		default:
			n.log.Error("invisor: "+c.Summary(), append(kv, "err", c.Err)...)
		}
		n.notifier.Notify(notify.Event{Kind: notify.KindProposalChecked, Upgrade: c.Plan.Name, Height: c.Plan.Height,
			SHA256: c.SHA256, Reason: checkReason(c), Message: c.Summary()})
	}
	for id := range said {
		if !live[id] {
			delete(said, id)
		}
	}
}

// checkReason is the event's Reason: the state, and the error when there is one.
func checkReason(c staging.ProposalCheck) string {
	if c.Err == "" {
		return fmt.Sprintf("proposal %d: %s", c.ID, c.State)
	}
	return fmt.Sprintf("proposal %d: %s: %s", c.ID, c.State, c.Err)
}
