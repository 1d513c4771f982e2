package comet

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"testing"

	"github.com/invisor/invisor/internal/comet/comettest"
)

func TestStatusReadsCatchingUp(t *testing.T) {
	for _, catching := range []bool{true, false} {
		laddr := comettest.Server(t, comettest.Status(catching, 42))
		got, err := Status(context.Background(), laddr)
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
