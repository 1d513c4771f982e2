package localnet

import (
	"context"
	"strconv"
)

// BlockHeight returns the height of the latest block in the node's block store
// (/status latest_block_height): at a halt it is the block the app refused, one
// above the app height (AppInfo).
func (n *Node) BlockHeight(ctx context.Context) (int64, error) {
	var r struct {
		SyncInfo struct {
			LatestBlockHeight string `json:"latest_block_height"`
		} `json:"sync_info"`
	}
	if err := n.rpc(ctx, "/status", &r); err != nil {
		return 0, err
	}
	return strconv.ParseInt(r.SyncInfo.LatestBlockHeight, 10, 64)
}
