package comet

import (
	"context"
	"errors"
)

// ErrNoRPC: the node's rpc.laddr is empty, so CometBFT cannot be asked.
var ErrNoRPC = errors.New("comet: rpc.laddr is empty: the node serves no RPC to ask")

// ErrNotListening: nothing listens at the node's rpc.laddr: the node is not
// running, or CometBFT has not started its services yet. For the node's own
// address, asked from inside the node process, it is the latter: CometBFT
// starts the RPC server in OnStart, after the handshake with the app.
var ErrNotListening = errors.New("comet: nothing listens at the node's RPC address (the node is not running, or CometBFT has not started its services)")

// Sync is what CometBFT's /status says about the node's progress.
type Sync struct {
	// CatchingUp is CometBFT's sync_info.catching_up: the consensus reactor
	// waits for block sync (or state sync) to finish, so blocks are applied by
	// the block-sync reactor, not by consensus.
	CatchingUp bool
	// LatestHeight is the height of the latest block in the block store.
	LatestHeight int64
}

// Status asks the CometBFT of the node listening at laddr (config.toml
// rpc.laddr) for its sync state, through Client. An empty laddr is ErrNoRPC; a
// refused connection (or a missing unix socket) is ErrNotListening; any other
// failure is returned as it is.
func Status(ctx context.Context, laddr string) (Sync, error) {
	c, err := NewClient(laddr)
	if err != nil {
		return Sync{}, err
	}
	st, err := c.Status(ctx)
	if err != nil {
		return Sync{}, err
	}
	return Sync{CatchingUp: st.SyncInfo.CatchingUp, LatestHeight: st.SyncInfo.LatestBlockHeight}, nil
}
