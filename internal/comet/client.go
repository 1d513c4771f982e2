package comet

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"strings"
	"syscall"

	cmtbytes "github.com/cometbft/cometbft/libs/bytes"
	rpchttp "github.com/cometbft/cometbft/rpc/client/http"
	ctypes "github.com/cometbft/cometbft/rpc/core/types"
)

// Client asks one node's CometBFT over its RPC with CometBFT's own client, so
// requests and results are encoded exactly as CometBFT encodes them. Each
// request is bounded by Timeout. Its errors name the endpoint and the rpc.laddr
// asked; a refused connection (or a missing unix socket) is ErrNotListening.
type Client struct {
	laddr string
	url   string
	rpc   *rpchttp.HTTP
}

// NewClient returns a Client for the CometBFT listening at laddr (config.toml
// rpc.laddr, or an operator's --node). It connects to nothing yet: a node that
// is not listening shows in the first request. An empty laddr is ErrNoRPC.
func NewClient(laddr string) (*Client, error) {
	if strings.TrimSpace(laddr) == "" {
		return nil, ErrNoRPC
	}
	base, hc, err := BaseURL(laddr)
	if err != nil {
		return nil, err
	}
	rc, err := rpchttp.NewWithClient(base, "/websocket", hc)
	if err != nil {
		return nil, fmt.Errorf("comet: client for %s: %w", laddr, err)
	}
	return &Client{laddr: laddr, url: base, rpc: rc}, nil
}

// URL is the HTTP base URL the client posts to (http://unix for a unix
// socket), which is what an operator can paste into curl.
func (c *Client) URL() string { return c.url }

// Status is CometBFT's /status: node info (network), sync info (latest block
// height and time, catching_up).
func (c *Client) Status(ctx context.Context) (*ctypes.ResultStatus, error) {
	r, err := c.rpc.Status(ctx)
	return r, c.failed("/status", err)
}

// ABCIInfo is CometBFT's /abci_info: the app's version and the height of the
// last block it committed.
func (c *Client) ABCIInfo(ctx context.Context) (*ctypes.ResultABCIInfo, error) {
	r, err := c.rpc.ABCIInfo(ctx)
	return r, c.failed("/abci_info", err)
}

// BlockchainInfo is CometBFT's /blockchain: the metas (headers) of the blocks
// from minHeight to maxHeight, newest first; CometBFT caps the range at 20.
func (c *Client) BlockchainInfo(ctx context.Context, minHeight, maxHeight int64) (*ctypes.ResultBlockchainInfo, error) {
	r, err := c.rpc.BlockchainInfo(ctx, minHeight, maxHeight)
	return r, c.failed("/blockchain", err)
}

// ABCIQuery is CometBFT's /abci_query at the latest height, without proof: the
// app answers path (a gRPC method such as /cosmos.upgrade.v1beta1.Query/CurrentPlan)
// for the request data. A code other than 0 in the response is the app's
// answer, not an error of the client; the caller reads it.
func (c *Client) ABCIQuery(ctx context.Context, path string, data []byte) (*ctypes.ResultABCIQuery, error) {
	r, err := c.rpc.ABCIQuery(ctx, path, cmtbytes.HexBytes(data))
	return r, c.failed("/abci_query "+path, err)
}

// failed classifies err from asking endpoint: nothing listening is
// ErrNotListening, anything else is wrapped with the endpoint and the address.
func (c *Client) failed(endpoint string, err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("%w: %s: %v", ErrNotListening, c.laddr, err)
	default:
		return fmt.Errorf("comet: %s at %s: %w", endpoint, c.laddr, err)
	}
}
