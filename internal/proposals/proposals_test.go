package proposals

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	abci "github.com/cometbft/cometbft/abci/types"
	ctypes "github.com/cometbft/cometbft/rpc/core/types"
	gogoany "github.com/cosmos/gogoproto/types/any"

	"github.com/cosmos/cosmos-sdk/types/query"
	banktypes "github.com/cosmos/cosmos-sdk/x/bank/types"
	govv1 "github.com/cosmos/cosmos-sdk/x/gov/types/v1"
	upgradetypes "github.com/cosmos/cosmos-sdk/x/upgrade/types"

	"github.com/invisor/invisor/internal/wire"
	"github.com/invisor/invisor/staging"
)

// chain answers the two gov queries from a list of proposals, as the app's gRPC
// router does over ABCI query (pages of one proposal, to exercise pagination).
type chain struct {
	props []*govv1.Proposal
	asked []string
	code  uint32
}

func (c *chain) ABCIQuery(_ context.Context, path string, data []byte) (*ctypes.ResultABCIQuery, error) {
	c.asked = append(c.asked, path)
	if c.code != 0 {
		return &ctypes.ResultABCIQuery{Response: abci.ResponseQuery{Code: c.code, Log: "unknown query path"}}, nil
	}
	var val []byte
	var err error
	switch path {
	case wire.PathProposals:
		var req govv1.QueryProposalsRequest
		if err := req.Unmarshal(data); err != nil {
			return nil, err
		}
		var matching []*govv1.Proposal
		for _, p := range c.props {
			if p.Status == req.ProposalStatus {
				matching = append(matching, p)
			}
		}
		start := 0
		if req.Pagination != nil && len(req.Pagination.Key) > 0 {
			start = int(req.Pagination.Key[0])
		}
		res := govv1.QueryProposalsResponse{Pagination: &query.PageResponse{}}
		if start < len(matching) {
			res.Proposals = matching[start : start+1]
			if start+1 < len(matching) {
				res.Pagination.NextKey = []byte{byte(start + 1)}
			}
		}
		val, err = res.Marshal()
	case wire.PathProposal:
		var req govv1.QueryProposalRequest
		if err := req.Unmarshal(data); err != nil {
			return nil, err
		}
		for _, p := range c.props {
			if p.Id == req.ProposalId {
				val, err = (&govv1.QueryProposalResponse{Proposal: p}).Marshal()
			}
		}
		if val == nil {
			return &ctypes.ResultABCIQuery{Response: abci.ResponseQuery{Code: 2, Log: "proposal 9 doesn't exist: key not found"}}, nil
		}
	}
	return &ctypes.ResultABCIQuery{Response: abci.ResponseQuery{Value: val}}, err
}

func anyOf(t *testing.T, url string, m interface{ Marshal() ([]byte, error) }) *gogoany.Any {
	t.Helper()
	b, err := m.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return &gogoany.Any{TypeUrl: url, Value: b}
}

func TestVotingAndGet(t *testing.T) {
	end := time.Date(2026, 12, 3, 10, 0, 0, 0, time.UTC)
	upgrade := func(name string, h int64, info string) *gogoany.Any {
		return anyOf(t, wire.TypeMsgSoftwareUpgrade, &upgradetypes.MsgSoftwareUpgrade{Authority: "gov",
			Plan: upgradetypes.Plan{Name: name, Height: h, Info: info}})
	}
	//lint:ignore SA1019 the legacy content old proposals carry
	legacyContent := anyOf(t, wire.TypeLegacyProposal, &upgradetypes.SoftwareUpgradeProposal{Title: "old",
		Plan: upgradetypes.Plan{Name: "v4", Height: 400, Info: "legacy"}})
	c := &chain{props: []*govv1.Proposal{
		{Id: 1, Status: govv1.StatusPassed, Title: "done", Messages: []*gogoany.Any{upgrade("v1", 10, "")}},
		{Id: 2, Status: govv1.StatusVotingPeriod, Title: "Upgrade v5", VotingEndTime: &end,
			Messages: []*gogoany.Any{upgrade("v5", 120, `{"binaries":{"any":"http://x/b?checksum=sha256:00"}}`)}},
		{Id: 3, Status: govv1.StatusVotingPeriod, Title: "Send", Messages: []*gogoany.Any{
			anyOf(t, "/cosmos.bank.v1beta1.MsgSend", &banktypes.MsgSend{FromAddress: "a", ToAddress: "b"})}},
		{Id: 4, Status: govv1.StatusVotingPeriod, Title: "Two", Messages: []*gogoany.Any{upgrade("v6", 200, "a"), upgrade("v6", 210, "b")}},
		{Id: 5, Status: govv1.StatusVotingPeriod, Title: "Legacy", Messages: []*gogoany.Any{
			anyOf(t, wire.TypeExecLegacyContent, &govv1.MsgExecLegacyContent{Content: legacyContent, Authority: "gov"})}},
		{Id: 6, Status: govv1.StatusVotingPeriod, Title: "Garbled", Messages: []*gogoany.Any{{TypeUrl: wire.TypeMsgSoftwareUpgrade, Value: []byte{0xff, 0xff}}}},
	}}
	got, err := Voting(context.Background(), c)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 3 {
		t.Fatalf("Voting = %+v, want proposals 2, 4 and 5", got)
	}
	if p := got[0]; p.ID != 2 || p.Title != "Upgrade v5" || p.Plan.Name != "v5" || p.Plan.Height != 120 ||
		!strings.Contains(p.Plan.Info, "binaries") || !p.VotingEnd.Equal(end) {
		t.Errorf("proposal 2 = %+v", p)
	}
	if p := got[1]; p.ID != 4 || p.Plan.Height != 210 || p.Plan.Info != "b" {
		t.Errorf("proposal 4 = %+v, want the last upgrade message (210, b): it is the plan the chain keeps", p)
	}
	if p := got[2]; p.ID != 5 || p.Plan.Name != "v4" || p.Plan.Info != "legacy" {
		t.Errorf("proposal 5 (legacy content) = %+v", p)
	}
	if n := strings.Count(strings.Join(c.asked, " "), wire.PathProposals); n != 5 {
		t.Errorf("asked %d pages, want 5 (one proposal a page, every page read)", n)
	}

	p, st, err := Get(context.Background(), c, 2)
	if err != nil || st != "voting period" || p.Plan.Name != "v5" {
		t.Errorf("Get(2) = %+v, %q, %v", p, st, err)
	}
	if _, st, err := Get(context.Background(), c, 1); err != nil || st != "passed" {
		t.Errorf("Get(1) = %q, %v; want passed", st, err)
	}
	if _, _, err := Get(context.Background(), c, 3); !errors.Is(err, ErrNotUpgrade) || !strings.Contains(err.Error(), `"Send"`) {
		t.Errorf("Get(3) err = %v, want ErrNotUpgrade naming the proposal", err)
	}
	if _, _, err := Get(context.Background(), c, 9); err == nil || !strings.Contains(err.Error(), "doesn't exist") {
		t.Errorf("Get(9) err = %v, want the app's answer", err)
	}
	c.code = 6
	if _, err := Voting(context.Background(), c); err == nil || !strings.Contains(err.Error(), "code 6") {
		t.Errorf("Voting with an app error = %v, want the code and log", err)
	}
}

func TestVotingLeft(t *testing.T) {
	now := time.Unix(1000, 0)
	p := stagingProposal(now.Add(90 * time.Second))
	if d := VotingLeft(p, now); d != 90*time.Second {
		t.Errorf("VotingLeft = %v", d)
	}
	if d := VotingLeft(stagingProposal(now.Add(-time.Second)), now); d != 0 {
		t.Errorf("VotingLeft after the end = %v", d)
	}
	if d := VotingLeft(staging.Proposal{}, now); d != 0 {
		t.Errorf("VotingLeft without an end = %v", d)
	}
}

func stagingProposal(end time.Time) staging.Proposal { return staging.Proposal{ID: 1, VotingEnd: end} }
