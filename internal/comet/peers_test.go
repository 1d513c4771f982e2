package comet

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"

	cstypes "github.com/cometbft/cometbft/consensus/types"
	cmtjson "github.com/cometbft/cometbft/libs/json"
	ctypes "github.com/cometbft/cometbft/rpc/core/types"
)

// peerState is a peer's state as CometBFT's reactor marshals it
// (consensus.PeerState: its PeerRoundState under "round_state").
func peerState(t *testing.T, height int64, step cstypes.RoundStepType) json.RawMessage {
	t.Helper()
	b, err := cmtjson.Marshal(struct {
		PRS   cstypes.PeerRoundState `json:"round_state"`
		Stats struct{}               `json:"stats"`
	}{PRS: cstypes.PeerRoundState{Height: height, Round: 0, Step: step, ProposalPOLRound: -1, LastCommitRound: -1, CatchupCommitRound: -1}})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestParsePeerStepsAndHasCommit(t *testing.T) {
	const h = 33
	res := &ctypes.ResultDumpConsensusState{Peers: []ctypes.PeerStateInfo{
		{NodeAddress: "a@127.0.0.1:1", PeerState: peerState(t, h, cstypes.RoundStepCommit)},    // halted with us
		{NodeAddress: "b@127.0.0.1:2", PeerState: peerState(t, h, cstypes.RoundStepPrecommit)}, // still collecting precommits
		{NodeAddress: "c@127.0.0.1:3", PeerState: peerState(t, h+1, cstypes.RoundStepNewHeight)},
		{NodeAddress: "d@127.0.0.1:4", PeerState: peerState(t, h-1, cstypes.RoundStepCommit)}, // behind
	}}
	if !strings.Contains(string(res.Peers[0].PeerState), `"height":"33"`) {
		t.Fatalf("fixture is not CometBFT's JSON (int64 as a string): %s", res.Peers[0].PeerState)
	}
	steps, err := ParsePeerSteps(res)
	if err != nil {
		t.Fatal(err)
	}
	var got []bool
	for _, s := range steps {
		got = append(got, s.HasCommit(h))
	}
	if len(steps) != 4 || steps[1].Height != h || steps[1].Step != cstypes.RoundStepPrecommit || !slices.Equal(got, []bool{true, false, true, false}) {
		t.Fatalf("steps %+v, has commit %v; want a and c only", steps, got)
	}
	if _, err := ParsePeerSteps(&ctypes.ResultDumpConsensusState{Peers: []ctypes.PeerStateInfo{{NodeAddress: "x", PeerState: json.RawMessage(`{"round_state":{"height":7}}`)}}}); err == nil {
		t.Error("a height that is not CometBFT's string encoding parsed")
	}
}
