// Package comettest serves CometBFT's JSON-RPC on the loopback for tests, with
// CometBFT's own types and encoding, so that the code under test talks to it
// through CometBFT's own client exactly as it talks to a node.
package comettest

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"

	cmtjson "github.com/cometbft/cometbft/libs/json"
	ctypes "github.com/cometbft/cometbft/rpc/core/types"
	rpctypes "github.com/cometbft/cometbft/rpc/jsonrpc/types"
)

// Answer returns the result of a JSON-RPC method called with params, or an
// *RPCError (use MethodNotFound for a method the fake node does not serve).
type Answer func(method string, params map[string]json.RawMessage) (any, *rpctypes.RPCError)

// MethodNotFound is CometBFT's error for a method it does not serve.
func MethodNotFound(method string) *rpctypes.RPCError {
	return &rpctypes.RPCError{Code: -32601, Message: "Method not found", Data: method}
}

// Handler answers CometBFT's JSON-RPC the way CometBFT encodes it (cmtjson
// results in an RPCResponse); a request that does not decode is a 400.
func Handler(t testing.TB, answer Answer) http.Handler {
	t.Helper()
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var req rpctypes.RPCRequest
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		var params map[string]json.RawMessage
		if err := json.Unmarshal(req.Params, &params); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		resp := rpctypes.RPCResponse{JSONRPC: "2.0", ID: req.ID}
		res, rpcErr := answer(req.Method, params)
		if rpcErr != nil {
			resp.Error = rpcErr
		} else if b, err := cmtjson.Marshal(res); err != nil {
			t.Errorf("%s result: %v", req.Method, err)
			return
		} else {
			resp.Result = b
		}
		_ = json.NewEncoder(w).Encode(resp)
	})
}

// Server serves answer on the loopback until the test ends and returns its
// address as CometBFT's rpc.laddr spells it (tcp://127.0.0.1:port).
func Server(t testing.TB, answer Answer) string {
	t.Helper()
	srv := httptest.NewServer(Handler(t, answer))
	t.Cleanup(srv.Close)
	return "tcp://" + srv.Listener.Addr().String()
}

// Status answers only "status", with catching_up and the latest height given.
func Status(catchingUp bool, height int64) Answer {
	return func(method string, _ map[string]json.RawMessage) (any, *rpctypes.RPCError) {
		if method != "status" {
			return nil, MethodNotFound(method)
		}
		return &ctypes.ResultStatus{SyncInfo: ctypes.SyncInfo{CatchingUp: catchingUp, LatestBlockHeight: height}}, nil
	}
}
