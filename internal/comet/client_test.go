package comet

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	abci "github.com/cometbft/cometbft/abci/types"
	"github.com/cometbft/cometbft/p2p"
	ctypes "github.com/cometbft/cometbft/rpc/core/types"
	rpctypes "github.com/cometbft/cometbft/rpc/jsonrpc/types"
	"github.com/cometbft/cometbft/types"

	"github.com/invisor/invisor/internal/comet/comettest"
)

func newTestClient(t *testing.T, h http.Handler) *Client {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	c, err := NewClient("tcp://" + srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestClientReadsStatusAndABCIInfo(t *testing.T) {
	latest := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	c := newTestClient(t, comettest.Handler(t, func(method string, _ map[string]json.RawMessage) (any, *rpctypes.RPCError) {
		switch method {
		case "status":
			return &ctypes.ResultStatus{
				NodeInfo: p2p.DefaultNodeInfo{Network: "example-1"},
				SyncInfo: ctypes.SyncInfo{LatestBlockHeight: 41, LatestBlockTime: latest, CatchingUp: true},
			}, nil
		case "abci_info":
			return &ctypes.ResultABCIInfo{Response: abci.ResponseInfo{Version: "v1.2.3", LastBlockHeight: 40}}, nil
		}
		return nil, &rpctypes.RPCError{Code: -32601, Message: "Method not found"}
	}))
	st, err := c.Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if st.NodeInfo.Network != "example-1" || st.SyncInfo.LatestBlockHeight != 41 || !st.SyncInfo.LatestBlockTime.Equal(latest) || !st.SyncInfo.CatchingUp {
		t.Errorf("status = %+v %+v", st.NodeInfo, st.SyncInfo)
	}
	ai, err := c.ABCIInfo(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if ai.Response.Version != "v1.2.3" || ai.Response.LastBlockHeight != 40 {
		t.Errorf("abci_info = %+v", ai.Response)
	}
}

func TestClientBlockchainInfoAsksTheRange(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	c := newTestClient(t, comettest.Handler(t, func(method string, p map[string]json.RawMessage) (any, *rpctypes.RPCError) {
		// CometBFT's client sends int64 params as JSON strings.
		if method != "blockchain" || string(p["minHeight"]) != `"5"` || string(p["maxHeight"]) != `"6"` {
			return nil, &rpctypes.RPCError{Code: -32602, Message: "unexpected " + method}
		}
		return &ctypes.ResultBlockchainInfo{LastHeight: 6, BlockMetas: []*types.BlockMeta{
			{Header: types.Header{Height: 6, Time: t0.Add(2 * time.Second)}},
			{Header: types.Header{Height: 5, Time: t0}},
		}}, nil
	}))
	r, err := c.BlockchainInfo(context.Background(), 5, 6)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.BlockMetas) != 2 || r.BlockMetas[0].Header.Height != 6 || !r.BlockMetas[1].Header.Time.Equal(t0) {
		t.Fatalf("blockchain = %+v", r)
	}
}

func TestClientABCIQuerySendsPathAndData(t *testing.T) {
	const path = "/cosmos.upgrade.v1beta1.Query/CurrentPlan"
	c := newTestClient(t, comettest.Handler(t, func(method string, p map[string]json.RawMessage) (any, *rpctypes.RPCError) {
		var gotPath string
		if err := json.Unmarshal(p["path"], &gotPath); err != nil || method != "abci_query" || gotPath != path || string(p["data"]) != `"0A0B"` {
			return nil, &rpctypes.RPCError{Code: -32602, Message: "unexpected " + method}
		}
		return &ctypes.ResultABCIQuery{Response: abci.ResponseQuery{Code: 0, Value: []byte{1, 2, 3}}}, nil
	}))
	r, err := c.ABCIQuery(context.Background(), path, []byte{0x0a, 0x0b})
	if err != nil {
		t.Fatal(err)
	}
	if r.Response.Code != 0 || !bytes.Equal(r.Response.Value, []byte{1, 2, 3}) {
		t.Fatalf("abci_query = %+v", r.Response)
	}
}

func TestClientErrorsNameEndpointAndAddress(t *testing.T) {
	c := newTestClient(t, comettest.Handler(t, func(string, map[string]json.RawMessage) (any, *rpctypes.RPCError) {
		return nil, &rpctypes.RPCError{Code: -32603, Message: "Internal error", Data: "height 9 is not available"}
	}))
	_, err := c.BlockchainInfo(context.Background(), 8, 9)
	if err == nil || errors.Is(err, ErrNotListening) {
		t.Fatalf("RPC error: %v", err)
	}
	for _, want := range []string{"/blockchain", strings.TrimPrefix(c.URL(), "http://"), "height 9 is not available"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %q", err, want)
		}
	}

	if _, err := NewClient("  "); !errors.Is(err, ErrNoRPC) {
		t.Errorf("blank laddr: %v", err)
	}
	if _, err := NewClient("grpc://127.0.0.1:1"); err == nil || !strings.Contains(err.Error(), "rpc.laddr") {
		t.Errorf("unsupported scheme: %v", err)
	}
}

func TestClientOverUnixSocket(t *testing.T) {
	// A short directory: a unix socket path is limited to about 100 bytes.
	dir, err := os.MkdirTemp("", "comet")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "rpc.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &httptest.Server{Listener: l, Config: &http.Server{Handler: comettest.Handler(t, func(method string, _ map[string]json.RawMessage) (any, *rpctypes.RPCError) {
		return &ctypes.ResultABCIInfo{Response: abci.ResponseInfo{Version: "over-unix"}}, nil
	})}}
	srv.Start()
	t.Cleanup(srv.Close)

	c, err := NewClient("unix://" + sock)
	if err != nil {
		t.Fatal(err)
	}
	if c.URL() != "http://unix" {
		t.Errorf("URL = %q", c.URL())
	}
	ai, err := c.ABCIInfo(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if ai.Response.Version != "over-unix" {
		t.Fatalf("abci_info over the socket = %+v", ai.Response)
	}
}
