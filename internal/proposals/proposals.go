// Package proposals reads software-upgrade proposals from a node's committed
// state: the x/gov proposals whose messages carry a MsgSoftwareUpgrade (or, for
// chains that still accept them, a legacy SoftwareUpgradeProposal wrapped in
// MsgExecLegacyContent), asked through CometBFT's ABCI query of the node
// (internal/comet), so nothing runs in the block's path.
//
// It decodes; it decides nothing. What a plan's binary is worth for this node is
// staging's question (staging.CheckProposal, Stager.OfferProposals).
package proposals

import (
	"context"
	"errors"
	"fmt"
	"time"

	ctypes "github.com/cometbft/cometbft/rpc/core/types"

	"github.com/invisor/invisor/internal/wire"
	"github.com/invisor/invisor/staging"
)

// ErrNotUpgrade is returned by Get for a proposal that schedules no upgrade.
var ErrNotUpgrade = errors.New("the proposal carries no software upgrade")

// Querier is the part of internal/comet's Client this package asks.
type Querier interface {
	ABCIQuery(ctx context.Context, path string, data []byte) (*ctypes.ResultABCIQuery, error)
}

// pageLimit bounds one page of the proposals query; a chain rarely has more
// than a handful in voting at once.
const pageLimit = 100

// maxPages bounds the pages read in one Voting call.
const maxPages = 50

// Voting returns the software-upgrade proposals in their voting period, in ID
// order. Proposals in voting that schedule no upgrade are left out.
func Voting(ctx context.Context, c Querier) ([]staging.Proposal, error) {
	var out []staging.Proposal
	var key []byte
	for range maxPages {
		b, err := ask(ctx, c, wire.PathProposals, wire.EncodeProposalsRequest(wire.StatusVotingPeriod, key, pageLimit))
		if err != nil {
			return nil, err
		}
		props, next, err := wire.DecodeProposalsResponse(b)
		if err != nil {
			return nil, fmt.Errorf("%s: decoding the answer: %w", wire.PathProposals, err)
		}
		for _, p := range props {
			if sp, ok := upgradeOf(p); ok {
				out = append(out, sp)
			}
		}
		if len(next) == 0 {
			return out, nil
		}
		key = next
	}
	return out, nil
}

// Status is a proposal's x/gov status in words (voting, passed, rejected, ...).
type Status string

// Get returns proposal id's upgrade and its status. A proposal that schedules
// no upgrade is ErrNotUpgrade; one that does not exist is an error that says so.
func Get(ctx context.Context, c Querier, id uint64) (staging.Proposal, Status, error) {
	b, err := ask(ctx, c, wire.PathProposal, wire.EncodeProposalRequest(id))
	if err != nil {
		return staging.Proposal{}, "", err
	}
	p, err := wire.DecodeProposalResponse(b)
	if err != nil {
		return staging.Proposal{}, "", fmt.Errorf("%s: decoding the answer: %w", wire.PathProposal, err)
	}
	if p == nil {
		return staging.Proposal{}, "", fmt.Errorf("proposal %d: the node returned no proposal", id)
	}
	st := statusOf(p.Status)
	sp, ok := upgradeOf(*p)
	if !ok {
		return staging.Proposal{}, st, fmt.Errorf("proposal %d (%q): %w", id, p.Title, ErrNotUpgrade)
	}
	return sp, st, nil
}

func statusOf(s wire.ProposalStatus) Status {
	switch s {
	case wire.StatusDepositPeriod:
		return "deposit period"
	case wire.StatusVotingPeriod:
		return "voting period"
	case wire.StatusPassed:
		return "passed"
	case wire.StatusRejected:
		return "rejected"
	case wire.StatusFailed:
		return "failed"
	}
	return Status(fmt.Sprintf("status %d", s))
}

// ask runs one gRPC method over ABCI query and returns the answer's bytes.
func ask(ctx context.Context, c Querier, path string, req []byte) ([]byte, error) {
	r, err := c.ABCIQuery(ctx, path, req)
	if err != nil {
		return nil, err
	}
	if q := r.Response; q.Code != 0 {
		return nil, fmt.Errorf("%s: the app answered code %d: %s", path, q.Code, q.Log)
	}
	return r.Response.Value, nil
}

// upgradeOf is the upgrade proposal p schedules, if it schedules one. With more
// than one upgrade message the last one is what the chain would keep (a plan
// overwrites the plan before it).
func upgradeOf(p wire.Proposal) (staging.Proposal, bool) {
	var plan *wire.Plan
	for _, m := range p.Messages {
		if pl := planOf(m); pl != nil {
			plan = pl
		}
	}
	if plan == nil {
		return staging.Proposal{}, false
	}
	return staging.Proposal{ID: p.ID, Title: p.Title, VotingEnd: p.VotingEnd,
		Plan: staging.Plan{Name: plan.Name, Height: plan.Height, Info: plan.Info}}, true
}

// planOf decodes the plan of an upgrade message (nil for any other message, or
// one that does not decode: that proposal's check would have nothing to check).
func planOf(m wire.Any) *wire.Plan {
	switch m.TypeURL {
	case wire.TypeMsgSoftwareUpgrade:
		p, err := wire.DecodeMsgSoftwareUpgrade(m.Value)
		if err != nil || p == nil {
			return nil
		}
		return p
	case wire.TypeExecLegacyContent:
		c, err := wire.DecodeMsgExecLegacyContent(m.Value)
		if err != nil || c == nil || c.TypeURL != wire.TypeLegacyProposal {
			return nil
		}
		p, err := wire.DecodeSoftwareUpgradeProposal(c.Value)
		if err != nil || p == nil {
			return nil
		}
		return p
	}
	return nil
}

// VotingLeft is how long p's voting period has left at now (0 when unknown or over).
func VotingLeft(p staging.Proposal, now time.Time) time.Duration {
	if p.VotingEnd.IsZero() || !now.Before(p.VotingEnd) {
		return 0
	}
	return p.VotingEnd.Sub(now)
}
