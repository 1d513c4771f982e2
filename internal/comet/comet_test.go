package comet

import (
	"encoding/json"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
)

func TestBaseURL(t *testing.T) {
	for laddr, want := range map[string]string{
		"tcp://127.0.0.1:26657": "http://127.0.0.1:26657",
		"tcp://0.0.0.0:26657":   "http://127.0.0.1:26657",
		"tcp://[::]:26657":      "http://127.0.0.1:26657",
		"tcp://[::1]:26657":     "http://[::1]:26657",
		"unix:///tmp/rpc.sock":  "http://unix",
	} {
		got, _, err := BaseURL(laddr)
		if err != nil || got != want {
			t.Errorf("BaseURL(%q) = %q, %v; want %q", laddr, got, err, want)
		}
	}
	for _, bad := range []string{"grpc://x:1", "tcp://no-port", "::bad"} {
		if _, _, err := BaseURL(bad); err == nil || !strings.Contains(err.Error(), "rpc.laddr") {
			t.Errorf("BaseURL(%q): %v, want an error naming rpc.laddr", bad, err)
		}
	}
}

// The client of a unix:// address reaches the node over its socket.
func TestBaseURLUnixSocket(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "rpc.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Skipf("no unix sockets here: %v", err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		json.NewEncoder(w).Encode(map[string]string{"path": r.URL.Path})
	})}
	go srv.Serve(ln)
	defer srv.Close()

	base, client, err := BaseURL("unix://" + sock)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := client.Get(base + "/status")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var got map[string]string
	if err := json.NewDecoder(resp.Body).Decode(&got); err != nil || got["path"] != "/status" {
		t.Fatalf("answer %v, %v; want the request for /status", got, err)
	}
}
