package cli

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"time"

	upgradetypes "github.com/cosmos/cosmos-sdk/x/upgrade/types"

	"github.com/invisor/invisor/internal/comet"
	"github.com/invisor/invisor/staging"
)

const flagNode = "node"

// nodeClient talks to a node's CometBFT RPC.
type nodeClient struct {
	base   string
	client *http.Client
}

func newNodeClient(laddr string) (*nodeClient, error) {
	base, c, err := comet.BaseURL(laddr)
	if err != nil {
		return nil, err
	}
	return &nodeClient{base: base, client: c}, nil
}

func (n *nodeClient) get(ctx context.Context, path string, q url.Values, v any) error {
	u := n.base + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return err
	}
	resp, err := n.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var env struct {
		Result json.RawMessage `json:"result"`
		Error  json.RawMessage `json:"error"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&env); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	if len(env.Error) > 0 && string(env.Error) != "null" {
		return fmt.Errorf("%s: %s", path, env.Error)
	}
	return json.Unmarshal(env.Result, v)
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
	var st struct {
		NodeInfo struct {
			Network string `json:"network"`
		} `json:"node_info"`
		SyncInfo struct {
			LatestBlockHeight string    `json:"latest_block_height"`
			LatestBlockTime   time.Time `json:"latest_block_time"`
			CatchingUp        bool      `json:"catching_up"`
		} `json:"sync_info"`
	}
	if err := n.get(ctx, "/status", nil, &st); err != nil {
		v.Error = err.Error()
		return v
	}
	v.Reachable = true
	v.Network, v.CatchingUp, v.LatestBlockTime = st.NodeInfo.Network, st.SyncInfo.CatchingUp, st.SyncInfo.LatestBlockTime
	v.Height, _ = strconv.ParseInt(st.SyncInfo.LatestBlockHeight, 10, 64)
	var ai struct {
		Response struct {
			Version         string `json:"version"`
			LastBlockHeight string `json:"last_block_height"`
		} `json:"response"`
	}
	if err := n.get(ctx, "/abci_info", nil, &ai); err == nil {
		v.AppVersion = ai.Response.Version
		if h, err := strconv.ParseInt(ai.Response.LastBlockHeight, 10, 64); err == nil && h > 0 {
			v.Height = h
		}
	}
	if avg, err := n.avgBlockTime(ctx, v.Height); err == nil {
		v.AvgBlockSeconds = avg
	}
	return v
}

// avgBlockTime averages the interval of up to the last 20 blocks.
func (n *nodeClient) avgBlockTime(ctx context.Context, h int64) (float64, error) {
	if h < 2 {
		return 0, fmt.Errorf("too few blocks")
	}
	q := url.Values{"minHeight": {strconv.FormatInt(max(1, h-19), 10)}, "maxHeight": {strconv.FormatInt(h, 10)}}
	var r struct {
		BlockMetas []struct {
			Header struct {
				Height string    `json:"height"`
				Time   time.Time `json:"time"`
			} `json:"header"`
		} `json:"block_metas"`
	}
	if err := n.get(ctx, "/blockchain", q, &r); err != nil {
		return 0, err
	}
	var pts []blockPoint
	for _, m := range r.BlockMetas {
		hh, err := strconv.ParseInt(m.Header.Height, 10, 64)
		if err == nil {
			pts = append(pts, blockPoint{hh, m.Header.Time})
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
	req, _ := (&upgradetypes.QueryCurrentPlanRequest{}).Marshal()
	q := url.Values{"path": {`"/cosmos.upgrade.v1beta1.Query/CurrentPlan"`}}
	if len(req) > 0 {
		q.Set("data", fmt.Sprintf("0x%x", req))
	}
	var r struct {
		Response struct {
			Code  uint32 `json:"code"`
			Log   string `json:"log"`
			Value string `json:"value"`
		} `json:"response"`
	}
	if err := n.get(ctx, "/abci_query", q, &r); err != nil {
		return nil, err
	}
	if r.Response.Code != 0 {
		return nil, fmt.Errorf("query CurrentPlan: code %d: %s", r.Response.Code, r.Response.Log)
	}
	b, err := base64.StdEncoding.DecodeString(r.Response.Value)
	if err != nil {
		return nil, fmt.Errorf("query CurrentPlan: %w", err)
	}
	var resp upgradetypes.QueryCurrentPlanResponse
	if err := resp.Unmarshal(b); err != nil {
		return nil, fmt.Errorf("query CurrentPlan: %w", err)
	}
	if resp.Plan == nil || resp.Plan.Name == "" {
		return nil, nil
	}
	return &staging.Plan{Name: resp.Plan.Name, Height: resp.Plan.Height, Info: resp.Plan.Info}, nil
}
