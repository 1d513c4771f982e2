package comet

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"strings"
	"syscall"

	rpchttp "github.com/cometbft/cometbft/rpc/client/http"
)

// ErrNoRPC: the node's rpc.laddr is empty, so CometBFT cannot be asked.
var ErrNoRPC = errors.New("comet: rpc.laddr is empty: the node serves no RPC to ask")

// ErrNotListening: nothing listens at the node's rpc.laddr. For the node's own
// address, asked from inside the node process, that means CometBFT has not
// started its services yet: it starts the RPC server in OnStart, after the
// handshake with the app.
var ErrNotListening = errors.New("comet: nothing listens at the node's RPC address (CometBFT has not started its services)")

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
// rpc.laddr) for its sync state, with CometBFT's own RPC client. An empty laddr
// is ErrNoRPC; a refused connection (or a missing unix socket) is
// ErrNotListening; any other failure is returned as it is.
func Status(ctx context.Context, laddr string) (Sync, error) {
	if strings.TrimSpace(laddr) == "" {
		return Sync{}, ErrNoRPC
	}
	base, client, err := BaseURL(laddr)
	if err != nil {
		return Sync{}, err
	}
	c, err := rpchttp.NewWithClient(base, "/websocket", client)
	if err != nil {
		return Sync{}, fmt.Errorf("comet: client for %s: %w", laddr, err)
	}
	st, err := c.Status(ctx)
	if err != nil {
		if errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, fs.ErrNotExist) {
			return Sync{}, fmt.Errorf("%w: %s: %v", ErrNotListening, laddr, err)
		}
		return Sync{}, fmt.Errorf("comet: /status at %s: %w", laddr, err)
	}
	return Sync{CatchingUp: st.SyncInfo.CatchingUp, LatestHeight: st.SyncInfo.LatestBlockHeight}, nil
}
