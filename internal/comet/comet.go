// Package comet is invisor's one way to reach a node's CometBFT RPC from the same
// host: it turns the address CometBFT listens on (config.toml rpc.laddr) into a
// base URL and an HTTP client that can reach it.
//
// It only talks to the node; it reads no configuration of its own and leaves
// nothing on disk.
package comet

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"time"
)

// Timeout bounds each request of the client BaseURL returns: the node is local,
// and a node that does not answer within it is reported as unreachable.
const Timeout = 3 * time.Second

// BaseURL turns CometBFT's rpc.laddr (tcp://0.0.0.0:26657, unix:///path) into an
// HTTP base URL and a client that can reach it from this host. A wildcard listen
// address is reached on the loopback.
func BaseURL(laddr string) (string, *http.Client, error) {
	u, err := url.Parse(laddr)
	if err != nil {
		return "", nil, fmt.Errorf("rpc.laddr %q: %w", laddr, err)
	}
	client := &http.Client{Timeout: Timeout}
	switch u.Scheme {
	case "tcp", "http", "":
		host, port, err := net.SplitHostPort(u.Host)
		if err != nil {
			return "", nil, fmt.Errorf("rpc.laddr %q: %w", laddr, err)
		}
		if host == "" || host == "0.0.0.0" || host == "::" {
			host = "127.0.0.1"
		}
		return "http://" + net.JoinHostPort(host, port), client, nil
	case "unix":
		sock := u.Path
		client.Transport = &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		}}
		return "http://unix", client, nil
	default:
		return "", nil, fmt.Errorf("rpc.laddr %q: scheme %q not supported; use tcp://host:port or unix:///path", laddr, u.Scheme)
	}
}
