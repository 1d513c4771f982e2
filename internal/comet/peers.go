package comet

import (
	"context"
	"fmt"

	cstypes "github.com/cometbft/cometbft/consensus/types"
	cmtjson "github.com/cometbft/cometbft/libs/json"
	ctypes "github.com/cometbft/cometbft/rpc/core/types"
)

// PeerStep is where one peer's consensus stands, as this node's consensus
// reactor last heard from it (its NewRoundStep messages).
type PeerStep struct {
	Address string // the peer's node address (id@host:port)
	Height  int64
	Step    cstypes.RoundStepType
}

// HasCommit reports whether the peer has decided block height: it moved past
// it, or entered the commit step at it (it holds +2/3 precommits for the block,
// so it applies it and halts there too when the block is an upgrade's).
func (p PeerStep) HasCommit(height int64) bool {
	return p.Height > height || p.Height == height && p.Step >= cstypes.RoundStepCommit
}

// peerStateJSON is the part of a peer's state /dump_consensus_state carries
// (consensus.PeerState, marshalled by CometBFT's JSON).
type peerStateJSON struct {
	RoundState struct {
		Height int64                 `json:"height"`
		Step   cstypes.RoundStepType `json:"step"`
	} `json:"round_state"`
}

// ParsePeerSteps reads the peers of a /dump_consensus_state answer.
func ParsePeerSteps(res *ctypes.ResultDumpConsensusState) ([]PeerStep, error) {
	if res == nil {
		return nil, nil
	}
	out := make([]PeerStep, 0, len(res.Peers))
	for _, p := range res.Peers {
		var ps peerStateJSON
		if err := cmtjson.Unmarshal(p.PeerState, &ps); err != nil {
			return nil, fmt.Errorf("/dump_consensus_state: peer %s: %w", p.NodeAddress, err)
		}
		out = append(out, PeerStep{Address: p.NodeAddress, Height: ps.RoundState.Height, Step: ps.RoundState.Step})
	}
	return out, nil
}

// PeersAtHalt reports how many of the node's peers have block height's commit
// (PeerStep.HasCommit), of how many, and the addresses of those that lag.
func (c *Client) PeersAtHalt(ctx context.Context, height int64) (ready, total int, lagging []string, err error) {
	res, err := c.DumpConsensusState(ctx)
	if err != nil {
		return 0, 0, nil, err
	}
	peers, err := ParsePeerSteps(res)
	if err != nil {
		return 0, 0, nil, err
	}
	for _, p := range peers {
		if p.HasCommit(height) {
			ready++
		} else {
			lagging = append(lagging, fmt.Sprintf("%s at %d/%s", p.Address, p.Height, p.Step))
		}
	}
	return ready, len(peers), lagging, nil
}
