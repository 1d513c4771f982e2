package cli

import (
	"context"
	"fmt"
	"time"

	"github.com/invisor/invisor/internal/comet"
	"github.com/invisor/invisor/internal/wire"
	"github.com/invisor/invisor/staging"
)

const flagNode = "node"

// nodeClient asks a node's CometBFT what the operator commands show, through
// comet.Client, invisor's one CometBFT RPC client.
type nodeClient struct {
	c    *comet.Client
	base string // the URL asked, as the operator sees it
}

func newNodeClient(laddr string) (*nodeClient, error) {
	c, err := comet.NewClient(laddr)
	if err != nil {
		return nil, err
	}
	return &nodeClient{c: c, base: c.URL()}, nil
}

// NodeView is what the node's RPC says.
type NodeView struct {
	RPC             string    `json:"rpc"`
	Reachable       bool      `json:"reachable"`
	Error           string    `json:"error,omitempty"`
	Network         string    `json:"network,omitempty"`
	Height          int64     `json:"height"` // app height (last committed block)
	AppVersion      string    `json:"app_version,omitempty"`
	LatestBlockTime time.Time `json:"latest_block_time,omitempty"`
	CatchingUp      bool      `json:"catching_up"`
	AvgBlockSeconds float64   `json:"avg_block_seconds,omitempty"`
}

func (n *nodeClient) view(ctx context.Context) NodeView {
	v := NodeView{RPC: n.base}
	st, err := n.c.Status(ctx)
	if err != nil {
		v.Error = err.Error()
		return v
	}
	v.Reachable = true
	v.Network, v.CatchingUp, v.LatestBlockTime = st.NodeInfo.Network, st.SyncInfo.CatchingUp, st.SyncInfo.LatestBlockTime
	v.Height = st.SyncInfo.LatestBlockHeight
	// The app's last committed height, when the app answers, is the height the
	// upgrade plan is compared with; the block store may be one block ahead.
	if ai, err := n.c.ABCIInfo(ctx); err == nil {
		v.AppVersion = ai.Response.Version
		if ai.Response.LastBlockHeight > 0 {
			v.Height = ai.Response.LastBlockHeight
		}
	}
	if avg, err := n.avgBlockTime(ctx, v.Height); err == nil {
		v.AvgBlockSeconds = avg
	}
	return v
}

// avgBlockTime averages the interval of up to the last 20 blocks (the most
// CometBFT's /blockchain returns at once).
func (n *nodeClient) avgBlockTime(ctx context.Context, h int64) (float64, error) {
	if h < 2 {
		return 0, fmt.Errorf("too few blocks")
	}
	r, err := n.c.BlockchainInfo(ctx, max(1, h-19), h)
	if err != nil {
		return 0, err
	}
	var pts []blockPoint
	for _, m := range r.BlockMetas {
		if m != nil {
			pts = append(pts, blockPoint{m.Header.Height, m.Header.Time})
		}
	}
	return averageBlockSeconds(pts)
}

type blockPoint struct {
	height int64
	time   time.Time
}

// averageBlockSeconds is the mean block interval between the lowest and highest
// of pts.
func averageBlockSeconds(pts []blockPoint) (float64, error) {
	if len(pts) < 2 {
		return 0, fmt.Errorf("need two blocks, have %d", len(pts))
	}
	lo, hi := pts[0], pts[0]
	for _, p := range pts[1:] {
		if p.height < lo.height {
			lo = p
		}
		if p.height > hi.height {
			hi = p
		}
	}
	if hi.height == lo.height || !hi.time.After(lo.time) {
		return 0, fmt.Errorf("no time elapsed between blocks %d and %d", lo.height, hi.height)
	}
	return hi.time.Sub(lo.time).Seconds() / float64(hi.height-lo.height), nil
}

// currentPlan asks x/upgrade for the plan in force (nil when none) over an ABCI query.
func (n *nodeClient) currentPlan(ctx context.Context) (*staging.Plan, error) {
	// QueryCurrentPlanRequest has no fields: its encoding is empty.
	r, err := n.c.ABCIQuery(ctx, wire.PathCurrentPlan, nil)
	if err != nil {
		return nil, err
	}
	if r.Response.Code != 0 {
		return nil, fmt.Errorf("query CurrentPlan: code %d: %s", r.Response.Code, r.Response.Log)
	}
	p, err := wire.DecodeCurrentPlanResponse(r.Response.Value)
	if err != nil {
		return nil, fmt.Errorf("query CurrentPlan: %w", err)
	}
	if p == nil || p.Name == "" {
		return nil, nil
	}
	return &staging.Plan{Name: p.Name, Height: p.Height, Info: p.Info}, nil
}
