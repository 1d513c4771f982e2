package comet

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	ctypes "github.com/cometbft/cometbft/rpc/core/types"
	rpctypes "github.com/cometbft/cometbft/rpc/jsonrpc/types"
	"github.com/cometbft/cometbft/types"

	"github.com/invisor/invisor/internal/comet/comettest"
)

func TestRoundVotesCountsWhoVotedInTheLatestRounds(t *testing.T) {
	set, pvs := comettest.Validators(t, 10, 20, 30, 40)
	pv, pc := comettest.Prevote, comettest.Precommit
	for _, tc := range []struct {
		name  string
		round int32
		votes []comettest.Vote
		voted []bool
	}{
		{"none", 0, nil, []bool{false, false, false, false}},
		{"prevotes and a nil precommit in round 0", 0, []comettest.Vote{pv(0, 0, false), pv(3, 0, true), pc(3, 0, true)}, []bool{true, false, false, true}},
		{"round 1 and the round before it", 1, []comettest.Vote{pv(1, 0, false), pc(2, 1, true)}, []bool{false, true, true, false}},
		{"a round two behind no longer counts", 2, []comettest.Vote{pv(1, 0, false), pv(2, 1, false), pv(0, 2, false)}, []bool{true, false, true, false}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rs := comettest.RoundState(t, set, pvs, 41, tc.round, tc.votes...)
			laddr := comettest.Server(t, func(method string, _ map[string]json.RawMessage) (any, *rpctypes.RPCError) {
				if method != "dump_consensus_state" {
					return nil, comettest.MethodNotFound(method)
				}
				return &ctypes.ResultDumpConsensusState{RoundState: rs, Peers: []ctypes.PeerStateInfo{}}, nil
			})
			c, err := NewClient(laddr)
			if err != nil {
				t.Fatal(err)
			}
			got, err := c.RoundVotes(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if got.Height != 41 || got.Round != tc.round || len(got.Validators) != 4 {
				t.Fatalf("round votes %+v, want height 41 round %d and 4 validators", got, tc.round)
			}
			for i, v := range got.Validators {
				if v.Voted != tc.voted[i] || v.Power != set.Validators[i].VotingPower || v.Address.String() != set.Validators[i].Address.String() {
					t.Errorf("validator %d: %+v, want voted=%v power %d address %s", i, v, tc.voted[i], set.Validators[i].VotingPower, set.Validators[i].Address)
				}
			}
		})
	}
}

func TestParseRoundVotesRefusesWhatIsNoRoundState(t *testing.T) {
	for _, raw := range []string{``, `null`, `[]`, `{"height":"5"}`, `{"height":5,"validators":{"validators":[]}}`, `{"validators":{"validators":[{"voting_power":1}]},"votes":{}}`} {
		if rv, err := ParseRoundVotes(json.RawMessage(raw)); err == nil {
			t.Errorf("%q read as %+v", raw, rv)
		}
	}
}

func FuzzParseRoundVotes(f *testing.F) {
	f.Add([]byte(`{"height":"41","round":1,"validators":{"validators":[{"address":"AB","voting_power":"10"}]},"votes":[{"round":1,"prevotes":["nil-Vote","Vote{}"],"precommits":[]}]}`))
	f.Add([]byte(`{"height":"-1","round":-7,"validators":{"validators":[{"voting_power":"1"}]},"votes":[{"round":-2147483648}]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		rv, err := ParseRoundVotes(b)
		if err == nil && len(rv.Validators) == 0 {
			t.Fatalf("no error and no validators for %q", b)
		}
	})
}

func TestCommitAndSignedBy(t *testing.T) {
	mine := []byte{0xAA, 1, 2, 3}
	at := time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC)
	commits := map[string]*types.Commit{
		`"12"`: {Height: 12, Signatures: []types.CommitSig{
			{BlockIDFlag: types.BlockIDFlagCommit, ValidatorAddress: []byte{9}, Timestamp: at},
			{BlockIDFlag: types.BlockIDFlagNil, ValidatorAddress: mine, Timestamp: at},
		}},
		`"13"`: {Height: 13, Signatures: []types.CommitSig{
			{BlockIDFlag: types.BlockIDFlagAbsent},
			{BlockIDFlag: types.BlockIDFlagCommit, ValidatorAddress: mine, Timestamp: at},
		}},
	}
	laddr := comettest.Server(t, func(method string, p map[string]json.RawMessage) (any, *rpctypes.RPCError) {
		cm, ok := commits[string(p["height"])]
		if method != "commit" || !ok {
			return nil, &rpctypes.RPCError{Code: -32603, Message: "Internal error", Data: "height is not available"}
		}
		return &ctypes.ResultCommit{SignedHeader: types.SignedHeader{Header: &types.Header{Height: cm.Height}, Commit: cm}, CanonicalCommit: cm.Height == 12}, nil
	})
	c, err := NewClient(laddr)
	if err != nil {
		t.Fatal(err)
	}
	r12, err := c.Commit(context.Background(), 12)
	if err != nil {
		t.Fatal(err)
	}
	if !r12.CanonicalCommit || r12.Commit.Height != 12 {
		t.Fatalf("commit 12: %+v", r12)
	}
	if _, ok := SignedBy(r12.Commit, mine); ok {
		t.Error("a precommit for nil counted as signing the block")
	}
	r13, err := c.Commit(context.Background(), 13)
	if err != nil {
		t.Fatal(err)
	}
	if got, ok := SignedBy(r13.Commit, mine); !ok || !got.Equal(at) {
		t.Errorf("commit 13: signed %v at %v, want at %v", ok, got, at)
	}
	if _, ok := SignedBy(r13.Commit, nil); ok {
		t.Error("no address signed")
	}
	if _, err := c.Commit(context.Background(), 99); err == nil {
		t.Error("a height the node does not have gave no error")
	}
}
