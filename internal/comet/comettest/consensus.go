package comettest

import (
	"encoding/json"
	"testing"
	"time"

	cstypes "github.com/cometbft/cometbft/consensus/types"
	cmtjson "github.com/cometbft/cometbft/libs/json"
	cmtproto "github.com/cometbft/cometbft/proto/tendermint/types"
	"github.com/cometbft/cometbft/types"
)

// ChainID is the chain the votes of RoundState are signed for.
const ChainID = "comettest"

// Validators returns a validator set with the given powers and their signers,
// in the set's order (a vote's validator index).
func Validators(t testing.TB, powers ...int64) (*types.ValidatorSet, []types.PrivValidator) {
	t.Helper()
	vals := make([]*types.Validator, len(powers))
	pvs := map[string]types.PrivValidator{}
	for i, p := range powers {
		pv := types.NewMockPV()
		pk, err := pv.GetPubKey()
		if err != nil {
			t.Fatal(err)
		}
		vals[i] = types.NewValidator(pk, p)
		pvs[pk.Address().String()] = pv
	}
	set := types.NewValidatorSet(vals)
	ordered := make([]types.PrivValidator, set.Size())
	for i, v := range set.Validators {
		ordered[i] = pvs[v.Address.String()]
	}
	return set, ordered
}

// Vote is a vote the fake node holds: the validator's index in the set, the
// round, prevote or precommit, and whether it is for nil.
type Vote struct {
	Val   int
	Round int32
	Type  cmtproto.SignedMsgType
	Nil   bool
}

// RoundState is the round_state of /dump_consensus_state as CometBFT encodes it
// (GetRoundStateJSON) for consensus at height and round holding votes, each
// signed by its validator and added to CometBFT's own HeightVoteSet.
func RoundState(t testing.TB, set *types.ValidatorSet, pvs []types.PrivValidator, height int64, round int32, votes ...Vote) json.RawMessage {
	t.Helper()
	hvs := cstypes.NewExtendedHeightVoteSet(ChainID, height, set)
	hvs.SetRound(round)
	block := types.BlockID{Hash: make([]byte, 32), PartSetHeader: types.PartSetHeader{Total: 1, Hash: make([]byte, 32)}}
	block.Hash[0], block.PartSetHeader.Hash[0] = 1, 2
	for _, v := range votes {
		id := block
		if v.Nil {
			id = types.BlockID{}
		}
		vt, err := types.MakeVote(pvs[v.Val], ChainID, int32(v.Val), height, v.Round, v.Type, id, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		if added, err := hvs.AddVote(vt, "", true); err != nil || !added {
			t.Fatalf("vote %+v not added: %v", v, err)
		}
	}
	rs := cstypes.RoundState{Height: height, Round: round, Step: cstypes.RoundStepPrevoteWait, Validators: set, Votes: hvs,
		LockedRound: -1, ValidRound: -1, CommitRound: -1}
	b, err := cmtjson.Marshal(rs)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// Prevote is validator val's prevote in round, for nil if forNil.
func Prevote(val int, round int32, forNil bool) Vote {
	return Vote{Val: val, Round: round, Type: cmtproto.PrevoteType, Nil: forNil}
}

// Precommit is validator val's precommit in round, for nil if forNil.
func Precommit(val int, round int32, forNil bool) Vote {
	return Vote{Val: val, Round: round, Type: cmtproto.PrecommitType, Nil: forNil}
}
