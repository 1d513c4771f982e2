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
	gogoany "github.com/cosmos/gogoproto/types/any"

	"github.com/cosmos/cosmos-sdk/types/query"
	govv1 "github.com/cosmos/cosmos-sdk/x/gov/types/v1"
	upgradetypes "github.com/cosmos/cosmos-sdk/x/upgrade/types"

	"github.com/invisor/invisor/staging"
)

// The gRPC methods of x/gov asked over ABCI query.
const (
	pathProposals = "/cosmos.gov.v1.Query/Proposals"
	pathProposal  = "/cosmos.gov.v1.Query/Proposal"
)

// Type URLs of the messages that schedule an upgrade.
const (
	typeMsgSoftwareUpgrade = "/cosmos.upgrade.v1beta1.MsgSoftwareUpgrade"
	typeExecLegacyContent  = "/cosmos.gov.v1.MsgExecLegacyContent"
	typeLegacyProposal     = "/cosmos.upgrade.v1beta1.SoftwareUpgradeProposal"
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
		req := govv1.QueryProposalsRequest{
			ProposalStatus: govv1.StatusVotingPeriod,
			Pagination:     &query.PageRequest{Key: key, Limit: pageLimit},
		}
		var res govv1.QueryProposalsResponse
		if err := ask(ctx, c, pathProposals, &req, &res); err != nil {
			return nil, err
		}
		for _, p := range res.Proposals {
			if sp, ok := upgradeOf(p); ok {
				out = append(out, sp)
			}
		}
		if res.Pagination == nil || len(res.Pagination.NextKey) == 0 {
			return out, nil
		}
		key = res.Pagination.NextKey
	}
	return out, nil
}

// Status is a proposal's x/gov status in words (voting, passed, rejected, ...).
type Status string

// Get returns proposal id's upgrade and its status. A proposal that schedules
// no upgrade is ErrNotUpgrade; one that does not exist is an error that says so.
func Get(ctx context.Context, c Querier, id uint64) (staging.Proposal, Status, error) {
	req := govv1.QueryProposalRequest{ProposalId: id}
	var res govv1.QueryProposalResponse
	if err := ask(ctx, c, pathProposal, &req, &res); err != nil {
		return staging.Proposal{}, "", err
	}
	if res.Proposal == nil {
		return staging.Proposal{}, "", fmt.Errorf("proposal %d: the node returned no proposal", id)
	}
	st := statusOf(res.Proposal.Status)
	sp, ok := upgradeOf(res.Proposal)
	if !ok {
		return staging.Proposal{}, st, fmt.Errorf("proposal %d (%q): %w", id, res.Proposal.Title, ErrNotUpgrade)
	}
	return sp, st, nil
}

func statusOf(s govv1.ProposalStatus) Status {
	switch s {
	case govv1.StatusDepositPeriod:
		return "deposit period"
	case govv1.StatusVotingPeriod:
		return "voting period"
	case govv1.StatusPassed:
		return "passed"
	case govv1.StatusRejected:
		return "rejected"
	case govv1.StatusFailed:
		return "failed"
	}
	return Status(s.String())
}

// message is a proto message of the gogoproto kind the SDK's types are.
type message interface {
	Marshal() ([]byte, error)
	Unmarshal([]byte) error
}

// ask runs one gRPC method over ABCI query.
func ask(ctx context.Context, c Querier, path string, req, res message) error {
	data, err := req.Marshal()
	if err != nil {
		return err
	}
	r, err := c.ABCIQuery(ctx, path, data)
	if err != nil {
		return err
	}
	if q := r.Response; q.Code != 0 {
		return fmt.Errorf("%s: the app answered code %d: %s", path, q.Code, q.Log)
	}
	if err := res.Unmarshal(r.Response.Value); err != nil {
		return fmt.Errorf("%s: decoding the answer: %w", path, err)
	}
	return nil
}

// upgradeOf is the upgrade proposal p schedules, if it schedules one. With more
// than one upgrade message the last one is what the chain would keep (a plan
// overwrites the plan before it).
func upgradeOf(p *govv1.Proposal) (staging.Proposal, bool) {
	var plan *upgradetypes.Plan
	for _, m := range p.Messages {
		if pl := planOf(m); pl != nil {
			plan = pl
		}
	}
	if plan == nil {
		return staging.Proposal{}, false
	}
	sp := staging.Proposal{ID: p.Id, Title: p.Title,
		Plan: staging.Plan{Name: plan.Name, Height: plan.Height, Info: plan.Info}}
	if p.VotingEndTime != nil {
		sp.VotingEnd = p.VotingEndTime.UTC()
	}
	return sp, true
}

// planOf decodes the plan of an upgrade message (nil for any other message, or
// one that does not decode: that proposal's check would have nothing to check).
func planOf(m *gogoany.Any) *upgradetypes.Plan {
	if m == nil {
		return nil
	}
	switch m.TypeUrl {
	case typeMsgSoftwareUpgrade:
		var msg upgradetypes.MsgSoftwareUpgrade
		if msg.Unmarshal(m.Value) != nil {
			return nil
		}
		return &msg.Plan
	case typeExecLegacyContent:
		var msg govv1.MsgExecLegacyContent
		if msg.Unmarshal(m.Value) != nil || msg.Content == nil || msg.Content.TypeUrl != typeLegacyProposal {
			return nil
		}
		//lint:ignore SA1019 the legacy content a chain's old proposals may still carry
		var lp upgradetypes.SoftwareUpgradeProposal
		if lp.Unmarshal(msg.Content.Value) != nil {
			return nil
		}
		return &lp.Plan
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
