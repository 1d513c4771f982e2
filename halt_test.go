package invisor

import (
	"net"
	"strings"
	"testing"

	"github.com/invisor/invisor/internal/comet/comettest"
	"github.com/invisor/invisor/relauncher"
)

// The halt path comes from what CometBFT says at the node's rpc.laddr, and the
// reason names where it came from.
func TestNodeStateFromCometBFT(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := "tcp://" + l.Addr().String()
	l.Close()
	for _, tc := range []struct {
		name, laddr string
		want        relauncher.NodeState
		why         string
	}{
		{"in consensus", comettest.Server(t, comettest.Status(false, 7)), relauncher.NodeInConsensus, "catching_up=false"},
		{"block sync", comettest.Server(t, comettest.Status(true, 7)), relauncher.NodeCatchingUp, "catching_up=true"},
		{"handshake", closed, relauncher.NodeNotStarted, "not listening"},
		{"rpc disabled", "", relauncher.NodeStateUnknown, "safe in every state"},
	} {
		n := &node{rpcLaddr: tc.laddr}
		got, why := n.nodeState()
		if got != tc.want || !strings.Contains(why, tc.why) {
			t.Errorf("%s: %s (%q), want %s (%q)", tc.name, got, why, tc.want, tc.why)
		}
		if path := relauncher.PathFor(got); (path == relauncher.PathCleanStop) != (tc.want == relauncher.NodeInConsensus) {
			t.Errorf("%s: path %s", tc.name, path)
		}
	}
}
