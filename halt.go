package invisor

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/invisor/invisor/internal/comet"
	"github.com/invisor/invisor/relauncher"
)

// haltAskTimeout bounds the question to CometBFT at a halt; without an answer
// the halt takes the path that is safe in every state.
const haltAskTimeout = 2 * time.Second

// nodeState asks the node's own CometBFT (its RPC at rpc.laddr, served in this
// process) whether it is catching up, which decides what x/upgrade's halt error
// does to the process (see relauncher.NodeState), and says how it was learnt.
// /status takes no consensus lock, so it answers while the halting block holds
// consensus.
func (n *node) nodeState() (relauncher.NodeState, string) {
	ctx, cancel := context.WithTimeout(context.Background(), haltAskTimeout)
	defer cancel()
	s, err := comet.Status(ctx, n.rpcLaddr)
	switch {
	case err == nil && s.CatchingUp:
		return relauncher.NodeCatchingUp, fmt.Sprintf("CometBFT /status at %s: catching_up=true: block sync applies this block", n.rpcLaddr)
	case err == nil:
		return relauncher.NodeInConsensus, fmt.Sprintf("CometBFT /status at %s: catching_up=false: consensus executes this block", n.rpcLaddr)
	case errors.Is(err, comet.ErrNotListening):
		return relauncher.NodeNotStarted, fmt.Sprintf("CometBFT's RPC at %s is not listening: CometBFT starts it after the handshake, so this block is replayed by the handshake", n.rpcLaddr)
	default:
		return relauncher.NodeStateUnknown, fmt.Sprintf("cannot ask CometBFT (%v); taking the path that is safe in every state", err)
	}
}
