package comet

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"testing"

	cmtjson "github.com/cometbft/cometbft/libs/json"
	ctypes "github.com/cometbft/cometbft/rpc/core/types"
	rpctypes "github.com/cometbft/cometbft/rpc/jsonrpc/types"
)

// statusServer answers CometBFT's JSON-RPC "status" the way CometBFT encodes it.
func statusServer(t *testing.T, catchingUp bool, height int64) *httptest.Server {
	t.Helper()
	return httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var req rpctypes.RPCRequest
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil || req.Method != "status" {
			http.Error(w, "want the status method", http.StatusBadRequest)
			return
		}
		res := &ctypes.ResultStatus{SyncInfo: ctypes.SyncInfo{CatchingUp: catchingUp, LatestBlockHeight: height}}
		b, err := cmtjson.Marshal(res)
		if err != nil {
			t.Error(err)
			return
		}
		resp := rpctypes.RPCResponse{JSONRPC: "2.0", ID: req.ID, Result: b}
		_ = json.NewEncoder(w).Encode(resp)
	}))
}

func TestStatusReadsCatchingUp(t *testing.T) {
	for _, catching := range []bool{true, false} {
		srv := statusServer(t, catching, 42)
		laddr := "tcp://" + srv.Listener.Addr().String()
		got, err := Status(context.Background(), laddr)
		srv.Close()
		if err != nil {
			t.Fatalf("catching_up=%v: %v", catching, err)
		}
		if got.CatchingUp != catching || got.LatestHeight != 42 {
			t.Fatalf("got %+v, want catching_up=%v height 42", got, catching)
		}
	}
}

func TestStatusNamesWhyItCannotAsk(t *testing.T) {
	if _, err := Status(context.Background(), ""); !errors.Is(err, ErrNoRPC) {
		t.Errorf("empty laddr: %v", err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close() // nothing listens there now
	if _, err := Status(context.Background(), "tcp://"+addr); !errors.Is(err, ErrNotListening) {
		t.Errorf("closed port: %v", err)
	}
	sock := filepath.Join(t.TempDir(), "rpc.sock")
	if _, err := Status(context.Background(), "unix://"+sock); !errors.Is(err, ErrNotListening) {
		t.Errorf("missing unix socket: %v", err)
	}
	// A server that answers something else is an error, not "not listening".
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		http.Error(w, "nope", http.StatusInternalServerError)
	}))
	defer srv.Close()
	if _, err := Status(context.Background(), "tcp://"+srv.Listener.Addr().String()); err == nil || errors.Is(err, ErrNotListening) {
		t.Errorf("broken server: %v", err)
	}
}
