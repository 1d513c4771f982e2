package wire

import (
	"bytes"
	"errors"
	"testing"
	"time"

	gogoany "github.com/cosmos/gogoproto/types/any"

	"github.com/cosmos/cosmos-sdk/types/query"
	govv1 "github.com/cosmos/cosmos-sdk/x/gov/types/v1"
	upgradetypes "github.com/cosmos/cosmos-sdk/x/upgrade/types"
)

// The SDK's own generated types encode; this package decodes. These tests are
// what ties the field numbers here to cosmos.gov.v1 and cosmos.upgrade.v1beta1.

func mustMarshal(t testing.TB, m interface{ Marshal() ([]byte, error) }) []byte {
	t.Helper()
	b, err := m.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func sdkPlan(name string, height int64, info string) upgradetypes.Plan {
	return upgradetypes.Plan{Name: name, Height: height, Info: info}
}

func TestCurrentPlanResponse(t *testing.T) {
	for _, tc := range []struct {
		name string
		resp upgradetypes.QueryCurrentPlanResponse
		want *Plan
	}{
		{"no plan", upgradetypes.QueryCurrentPlanResponse{}, nil},
		{"plan", upgradetypes.QueryCurrentPlanResponse{Plan: &upgradetypes.Plan{Name: "v2", Height: 1 << 40, Info: `{"binaries":{}}`}},
			&Plan{Name: "v2", Height: 1 << 40, Info: `{"binaries":{}}`}},
		{"empty plan", upgradetypes.QueryCurrentPlanResponse{Plan: &upgradetypes.Plan{}}, &Plan{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := DecodeCurrentPlanResponse(mustMarshal(t, &tc.resp))
			if err != nil {
				t.Fatal(err)
			}
			if (got == nil) != (tc.want == nil) || got != nil && *got != *tc.want {
				t.Fatalf("decoded %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestProposalsRoundTrip(t *testing.T) {
	end := time.Date(2026, 12, 1, 22, 3, 4, 5060708, time.UTC)
	msg := upgradetypes.MsgSoftwareUpgrade{Authority: "gov", Plan: sdkPlan("v2", 110, "info-v2")}
	//lint:ignore SA1019 the legacy content old proposals carry
	legacy := upgradetypes.SoftwareUpgradeProposal{Title: "t", Description: "d", Plan: sdkPlan("v3", 310, "info-v3")}
	exec := govv1.MsgExecLegacyContent{Content: &gogoany.Any{TypeUrl: TypeLegacyProposal, Value: mustMarshal(t, &legacy)}, Authority: "gov"}
	props := []*govv1.Proposal{
		{Id: 12, Title: "upgrade to v2", Status: govv1.StatusVotingPeriod, VotingEndTime: &end, Summary: "s", Proposer: "p", Expedited: true,
			Messages: []*gogoany.Any{{TypeUrl: TypeMsgSoftwareUpgrade, Value: mustMarshal(t, &msg)}}},
		{Id: 1 << 33, Title: "legacy", Status: govv1.StatusFailed,
			Messages: []*gogoany.Any{{TypeUrl: TypeExecLegacyContent, Value: mustMarshal(t, &exec)}, {TypeUrl: "/other.Msg", Value: []byte{0x08, 0x01}}}},
	}
	resp := govv1.QueryProposalsResponse{Proposals: props, Pagination: &query.PageResponse{NextKey: []byte("next"), Total: 9}}
	got, next, err := DecodeProposalsResponse(mustMarshal(t, &resp))
	if err != nil {
		t.Fatal(err)
	}
	if string(next) != "next" || len(got) != 2 {
		t.Fatalf("next key %q, %d proposals; want \"next\", 2", next, len(got))
	}
	p := got[0]
	if p.ID != 12 || p.Title != "upgrade to v2" || p.Status != StatusVotingPeriod || !p.VotingEnd.Equal(end) || len(p.Messages) != 1 || p.Messages[0].TypeURL != TypeMsgSoftwareUpgrade {
		t.Fatalf("proposal 12 decoded as %+v", p)
	}
	plan, err := DecodeMsgSoftwareUpgrade(p.Messages[0].Value)
	if err != nil || plan == nil || *plan != (Plan{Name: "v2", Height: 110, Info: "info-v2"}) {
		t.Fatalf("its plan: %+v %v", plan, err)
	}
	q := got[1]
	if q.ID != 1<<33 || q.Status != StatusFailed || !q.VotingEnd.IsZero() || len(q.Messages) != 2 {
		t.Fatalf("proposal 2^33 decoded as %+v", q)
	}
	content, err := DecodeMsgExecLegacyContent(q.Messages[0].Value)
	if err != nil || content == nil || content.TypeURL != TypeLegacyProposal {
		t.Fatalf("legacy content: %+v %v", content, err)
	}
	lp, err := DecodeSoftwareUpgradeProposal(content.Value)
	if err != nil || lp == nil || *lp != (Plan{Name: "v3", Height: 310, Info: "info-v3"}) {
		t.Fatalf("legacy plan: %+v %v", lp, err)
	}

	// One proposal.
	one, err := DecodeProposalResponse(mustMarshal(t, &govv1.QueryProposalResponse{Proposal: props[0]}))
	if err != nil || one == nil || one.ID != 12 {
		t.Fatalf("QueryProposalResponse: %+v %v", one, err)
	}
	none, err := DecodeProposalResponse(mustMarshal(t, &govv1.QueryProposalResponse{}))
	if err != nil || none != nil {
		t.Fatalf("QueryProposalResponse without a proposal: %+v %v", none, err)
	}
}

// The requests encoded here are what the SDK decodes.
func TestRequestsDecodeInTheSDK(t *testing.T) {
	var req govv1.QueryProposalsRequest
	if err := req.Unmarshal(EncodeProposalsRequest(StatusVotingPeriod, []byte("k"), 100)); err != nil {
		t.Fatal(err)
	}
	if req.ProposalStatus != govv1.StatusVotingPeriod || req.Pagination == nil || string(req.Pagination.Key) != "k" || req.Pagination.Limit != 100 {
		t.Fatalf("the SDK read %+v (pagination %+v)", req, req.Pagination)
	}
	var first govv1.QueryProposalsRequest
	if err := first.Unmarshal(EncodeProposalsRequest(StatusVotingPeriod, nil, 100)); err != nil || first.Pagination == nil || len(first.Pagination.Key) != 0 {
		t.Fatalf("first page: %+v %v", first, err)
	}
	var one govv1.QueryProposalRequest
	if err := one.Unmarshal(EncodeProposalRequest(1 << 40)); err != nil || one.ProposalId != 1<<40 {
		t.Fatalf("QueryProposalRequest: %+v %v", one, err)
	}
}

func TestMalformed(t *testing.T) {
	good := mustMarshal(t, &upgradetypes.QueryCurrentPlanResponse{Plan: &upgradetypes.Plan{Name: "v2", Height: 5}})
	for _, tc := range []struct {
		name string
		b    []byte
		is   error
	}{
		{"truncated", good[:len(good)-1], nil},
		{"name as varint", []byte{0x0a, 0x02, 0x08, 0x01}, ErrWireType}, // Plan field 1 (name) sent as a varint
		{"height as bytes", []byte{0x0a, 0x03, 0x1a, 0x01, 'x'}, ErrWireType},
		{"bad tag", []byte{0x0a, 0x01, 0x00}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := DecodeCurrentPlanResponse(tc.b)
			if err == nil {
				t.Fatal("decoded without an error")
			}
			if tc.is != nil && !errors.Is(err, tc.is) {
				t.Fatalf("error %v, want %v", err, tc.is)
			}
		})
	}
	// Unknown fields of every wire type are skipped.
	unknown := []byte{0x0a, 0x0d, 0x0a, 0x02, 'v', '2', 0x3d, 1, 2, 3, 4, 0x41, 1, 2, 3, 4, 5, 6, 7, 8, 0x98, 0x01, 0x07}
	unknown[1] = byte(len(unknown) - 2)
	p, err := DecodeCurrentPlanResponse(unknown)
	if err != nil || p == nil || p.Name != "v2" {
		t.Fatalf("with unknown fixed32/fixed64/varint fields: %+v %v", p, err)
	}
}

// FuzzDecodeProposal: whatever the SDK's own Unmarshal accepts as a Proposal,
// this package decodes to the same id, status, title, voting end and messages.
// (It may accept more: it skips fields the SDK checks and it does not read.)
func FuzzDecodeProposal(f *testing.F) {
	end := time.Date(2030, 1, 2, 3, 4, 5, 6, time.UTC)
	msg := upgradetypes.MsgSoftwareUpgrade{Plan: sdkPlan("v9", 9, "i")}
	f.Add(mustMarshal(f, &govv1.Proposal{Id: 7, Title: "x", Status: govv1.StatusPassed, VotingEndTime: &end,
		Messages: []*gogoany.Any{{TypeUrl: TypeMsgSoftwareUpgrade, Value: mustMarshal(f, &msg)}}}))
	f.Add([]byte{0x08, 0x01})
	f.Fuzz(func(t *testing.T, b []byte) {
		got, err := DecodeProposal(b)
		var want govv1.Proposal
		if want.Unmarshal(b) != nil {
			return
		}
		if err != nil {
			t.Fatalf("the SDK decodes %x, this package says %v", b, err)
		}
		if got.ID != want.Id || got.Title != want.Title || int32(got.Status) != int32(want.Status) || len(got.Messages) != len(want.Messages) {
			t.Fatalf("decoded %+v, the SDK %+v", got, want)
		}
		if want.VotingEndTime != nil && !got.VotingEnd.Equal(*want.VotingEndTime) || want.VotingEndTime == nil && !got.VotingEnd.IsZero() {
			t.Fatalf("voting end %v, the SDK %v", got.VotingEnd, want.VotingEndTime)
		}
		for i, m := range want.Messages {
			if m == nil {
				continue
			}
			if got.Messages[i].TypeURL != m.TypeUrl || !bytes.Equal(got.Messages[i].Value, m.Value) {
				t.Fatalf("message %d: %+v, the SDK %+v", i, got.Messages[i], m)
			}
		}
	})
}
