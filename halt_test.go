package invisor

import (
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	cmtjson "github.com/cometbft/cometbft/libs/json"
	ctypes "github.com/cometbft/cometbft/rpc/core/types"
	rpctypes "github.com/cometbft/cometbft/rpc/jsonrpc/types"

	"github.com/invisor/invisor/relauncher"
)

// cometStatus serves CometBFT's JSON-RPC "status" with catching_up as given.
func cometStatus(t *testing.T, catchingUp bool) string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var req rpctypes.RPCRequest
		_ = json.NewDecoder(r.Body).Decode(&req)
		b, err := cmtjson.Marshal(&ctypes.ResultStatus{SyncInfo: ctypes.SyncInfo{CatchingUp: catchingUp, LatestBlockHeight: 7}})
		if err != nil {
			t.Error(err)
		}
		_ = json.NewEncoder(w).Encode(rpctypes.RPCResponse{JSONRPC: "2.0", ID: req.ID, Result: b})
	}))
	t.Cleanup(srv.Close)
	return "tcp://" + srv.Listener.Addr().String()
}

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
		{"in consensus", cometStatus(t, false), relauncher.NodeInConsensus, "catching_up=false"},
		{"block sync", cometStatus(t, true), relauncher.NodeCatchingUp, "catching_up=true"},
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
