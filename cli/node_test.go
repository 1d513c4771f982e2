package cli

import (
	"context"
	"encoding/json"
	"net"
	"strings"
	"testing"
	"time"

	abci "github.com/cometbft/cometbft/abci/types"
	"github.com/cometbft/cometbft/p2p"
	ctypes "github.com/cometbft/cometbft/rpc/core/types"
	rpctypes "github.com/cometbft/cometbft/rpc/jsonrpc/types"
	cmttypes "github.com/cometbft/cometbft/types"
	upgradetypes "github.com/cosmos/cosmos-sdk/x/upgrade/types"

	"github.com/invisor/invisor/internal/comet"
	"github.com/invisor/invisor/internal/comet/comettest"
	"github.com/invisor/invisor/staging"
)

// fakeNode answers CometBFT's JSON-RPC on the loopback with CometBFT's own
// types: answer returns the result for a method and its params, or nil for a
// method the node does not know.
func fakeNode(t *testing.T, answer func(method string, params map[string]json.RawMessage) any) *nodeClient {
	t.Helper()
	laddr := comettest.Server(t, func(method string, p map[string]json.RawMessage) (any, *rpctypes.RPCError) {
		if res := answer(method, p); res != nil {
			return res, nil
		}
		return nil, comettest.MethodNotFound(method)
	})
	nc, err := newNodeClient(laddr)
	if err != nil {
		t.Fatal(err)
	}
	return nc
}

func TestNodeViewFromCometBFT(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	latest := t0.Add(40 * time.Second)
	nc := fakeNode(t, func(method string, p map[string]json.RawMessage) any {
		switch method {
		case "status":
			return &ctypes.ResultStatus{
				NodeInfo: p2p.DefaultNodeInfo{Network: "example-1"},
				SyncInfo: ctypes.SyncInfo{LatestBlockHeight: 31, LatestBlockTime: latest, CatchingUp: true},
			}
		case "abci_info":
			return &ctypes.ResultABCIInfo{Response: abci.ResponseInfo{Version: "v1.2.3", LastBlockHeight: 30}}
		case "blockchain":
			// The last 20 blocks below the app height: 11 to 30, 2s apart.
			if string(p["minHeight"]) != `"11"` || string(p["maxHeight"]) != `"30"` {
				return nil
			}
			return &ctypes.ResultBlockchainInfo{LastHeight: 31, BlockMetas: []*cmttypes.BlockMeta{
				{Header: cmttypes.Header{Height: 30, Time: t0.Add(38 * time.Second)}},
				{Header: cmttypes.Header{Height: 20, Time: t0.Add(18 * time.Second)}},
				{Header: cmttypes.Header{Height: 11, Time: t0}},
			}}
		}
		return nil
	})
	got := nc.view(context.Background())
	want := NodeView{RPC: nc.base, Reachable: true, Network: "example-1", Height: 30, AppVersion: "v1.2.3",
		LatestBlockTime: latest, CatchingUp: true, AvgBlockSeconds: 2}
	if !got.LatestBlockTime.Equal(want.LatestBlockTime) {
		t.Errorf("latest block time %v, want %v", got.LatestBlockTime, want.LatestBlockTime)
	}
	got.LatestBlockTime = want.LatestBlockTime
	if got != want {
		t.Fatalf("view = %+v\nwant   %+v", got, want)
	}
}

func TestNodeViewWithoutABCIInfoUsesTheBlockStoreHeight(t *testing.T) {
	nc := fakeNode(t, func(method string, _ map[string]json.RawMessage) any {
		if method == "status" {
			return &ctypes.ResultStatus{SyncInfo: ctypes.SyncInfo{LatestBlockHeight: 7}}
		}
		return nil
	})
	got := nc.view(context.Background())
	if !got.Reachable || got.Height != 7 || got.AppVersion != "" || got.AvgBlockSeconds != 0 || got.Error != "" {
		t.Fatalf("view = %+v", got)
	}
}

func TestNodeViewOfAStoppedNode(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close() // nothing listens there now
	nc, err := newNodeClient("tcp://" + addr)
	if err != nil {
		t.Fatal(err)
	}
	got := nc.view(context.Background())
	if got.Reachable || got.RPC != "http://"+addr || !strings.HasPrefix(got.Error, comet.ErrNotListening.Error()) {
		t.Fatalf("view = %+v", got)
	}
}

func TestCurrentPlanOverABCIQuery(t *testing.T) {
	const path = "/cosmos.upgrade.v1beta1.Query/CurrentPlan"
	query := func(resp abci.ResponseQuery) *nodeClient {
		return fakeNode(t, func(method string, p map[string]json.RawMessage) any {
			var got string
			if method != "abci_query" || json.Unmarshal(p["path"], &got) != nil || got != path {
				return nil
			}
			return &ctypes.ResultABCIQuery{Response: resp}
		})
	}
	value, err := (&upgradetypes.QueryCurrentPlanResponse{Plan: &upgradetypes.Plan{Name: "v2", Height: 120, Info: `{"binaries":{}}`}}).Marshal()
	if err != nil {
		t.Fatal(err)
	}
	p, err := query(abci.ResponseQuery{Value: value}).currentPlan(context.Background())
	if err != nil || p == nil || *p != (staging.Plan{Name: "v2", Height: 120, Info: `{"binaries":{}}`}) {
		t.Fatalf("plan in force: %+v, %v", p, err)
	}
	if p, err := query(abci.ResponseQuery{}).currentPlan(context.Background()); p != nil || err != nil {
		t.Fatalf("no plan: %+v, %v", p, err)
	}
	_, err = query(abci.ResponseQuery{Code: 6, Log: "unknown query path"}).currentPlan(context.Background())
	if err == nil || !strings.Contains(err.Error(), "code 6: unknown query path") {
		t.Fatalf("app refuses the query: %v", err)
	}
}
