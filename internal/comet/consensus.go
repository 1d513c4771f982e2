package comet

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"time"

	cmtbytes "github.com/cometbft/cometbft/libs/bytes"
	cmtjson "github.com/cometbft/cometbft/libs/json"
	ctypes "github.com/cometbft/cometbft/rpc/core/types"
	"github.com/cometbft/cometbft/types"
)

// Commit is CometBFT's /commit at height: the block's signed header and the
// precommits that committed it. CanonicalCommit is false for the latest height,
// whose commit is the one this node saw, not yet the one the next block carries.
func (c *Client) Commit(ctx context.Context, height int64) (*ctypes.ResultCommit, error) {
	r, err := c.rpc.Commit(ctx, &height)
	return r, c.failed("/commit", err)
}

// DumpConsensusState is CometBFT's /dump_consensus_state: the node's round
// state (height, round, validators, the votes of every round at this height) as
// JSON, and its peers' states. RoundVotes reads the round state.
func (c *Client) DumpConsensusState(ctx context.Context) (*ctypes.ResultDumpConsensusState, error) {
	r, err := c.rpc.DumpConsensusState(ctx)
	return r, c.failed("/dump_consensus_state", err)
}

// SignedBy reports whether commit carries a signature of the validator at
// address for the block (BlockIDFlagCommit: a precommit for nil or an absent
// vote does not count), and the precommit's time.
func SignedBy(commit *types.Commit, address []byte) (time.Time, bool) {
	if commit == nil || len(address) == 0 {
		return time.Time{}, false
	}
	for _, s := range commit.Signatures {
		if s.BlockIDFlag == types.BlockIDFlagCommit && bytes.Equal(s.ValidatorAddress, address) {
			return s.Timestamp, true
		}
	}
	return time.Time{}, false
}

// RoundVotes is who voted in the latest rounds of the height CometBFT's
// consensus works on, read from its round state.
type RoundVotes struct {
	// Height and Round are the round state's: the height consensus works on
	// (the last committed block + 1) and its current round.
	Height int64
	Round  int32
	// Validators is the validator set at Height, in CometBFT's order (the votes'
	// validator index).
	Validators []ValidatorVote
}

// ValidatorVote is one validator of the set and whether CometBFT holds a vote
// of it in the latest rounds.
type ValidatorVote struct {
	Address cmtbytes.HexBytes
	Power   int64
	// Voted: CometBFT holds a prevote or a precommit of this validator (for a
	// block or for nil) in the current round or the one before. A validator
	// that votes runs a binary that can build on the last block.
	Voted bool
}

// VotesRounds is how many of the latest rounds RoundVotes looks at: a round
// just started has few votes yet, and the round before it shows who is online.
const VotesRounds = 2

// nilVote is how CometBFT writes an absent vote in a vote set's list
// (types.Vote.String of nil).
const nilVote = "nil-Vote"

// roundStateJSON is the part of CometBFT's cstypes.RoundState (as
// GetRoundStateJSON encodes it with cmtjson: int64 as strings) that RoundVotes
// reads. The vote lists are HeightVoteSet.MarshalJSON's: one entry per
// validator index, nilVote when absent.
type roundStateJSON struct {
	Height     int64 `json:"height"`
	Round      int32 `json:"round"`
	Validators *struct {
		Validators []struct {
			Address     cmtbytes.HexBytes `json:"address"`
			VotingPower int64             `json:"voting_power"`
		} `json:"validators"`
	} `json:"validators"`
	Votes []struct {
		Round      int32    `json:"round"`
		Prevotes   []string `json:"prevotes"`
		Precommits []string `json:"precommits"`
	} `json:"votes"`
}

// ParseRoundVotes reads the round_state of /dump_consensus_state. It fails on
// JSON that is not a round state (no validator set); it never panics.
func ParseRoundVotes(raw json.RawMessage) (RoundVotes, error) {
	var rs roundStateJSON
	if err := cmtjson.Unmarshal(raw, &rs); err != nil {
		return RoundVotes{}, fmt.Errorf("comet: the round state of /dump_consensus_state does not decode: %w", err)
	}
	if rs.Validators == nil || len(rs.Validators.Validators) == 0 {
		return RoundVotes{}, fmt.Errorf("comet: the round state of /dump_consensus_state at height %d has no validator set", rs.Height)
	}
	out := RoundVotes{Height: rs.Height, Round: rs.Round, Validators: make([]ValidatorVote, len(rs.Validators.Validators))}
	for i, v := range rs.Validators.Validators {
		out.Validators[i] = ValidatorVote{Address: v.Address, Power: v.VotingPower}
	}
	// The latest rounds present, whatever order the list is in.
	latest := int32(-1)
	for _, rv := range rs.Votes {
		if rv.Round > latest {
			latest = rv.Round
		}
	}
	for _, rv := range rs.Votes {
		if rv.Round <= latest-VotesRounds {
			continue
		}
		for _, list := range [][]string{rv.Prevotes, rv.Precommits} {
			for i, s := range list {
				if i < len(out.Validators) && s != nilVote && s != "" {
					out.Validators[i].Voted = true
				}
			}
		}
	}
	return out, nil
}

// RoundVotes asks /dump_consensus_state and reads its round state (ParseRoundVotes).
func (c *Client) RoundVotes(ctx context.Context) (RoundVotes, error) {
	r, err := c.DumpConsensusState(ctx)
	if err != nil {
		return RoundVotes{}, err
	}
	return ParseRoundVotes(r.RoundState)
}
