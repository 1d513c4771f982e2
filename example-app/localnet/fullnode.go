package localnet

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// NodeID returns the CometBFT node ID of n.
func (n *Node) NodeID(ctx context.Context) (string, error) {
	out, err := n.CLI(ctx, "comet", "show-node-id")
	return strings.TrimSpace(string(out)), err
}

// P2PAddress is the node's persistent-peer address.
func (n *Node) P2PAddress(ctx context.Context) (string, error) {
	id, err := n.NodeID(ctx)
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("%s@127.0.0.1:%d", id, n.P2PPort), nil
}

// NewFullNode initialises a non-validator node in home that follows peer's chain
// (same genesis, peer as persistent peer). bin is the binary it will start with.
func NewFullNode(ctx context.Context, name, bin, home string, peer *Node) (*Node, error) {
	ports, err := FreePorts(5)
	if err != nil {
		return nil, err
	}
	n := &Node{Name: name, Home: home, Bin: bin, CLIBin: peer.CLIBin, Settings: peer.Settings,
		RPCPort: ports[0], P2PPort: ports[1], GRPCPort: ports[2], APIPort: ports[3], PromPort: ports[4],
		LogPath: filepath.Join(filepath.Dir(home), filepath.Base(home)+".log")}
	if _, err := n.CLI(ctx, "init", name, "--chain-id", peer.Settings.ChainID); err != nil {
		return nil, err
	}
	if err := n.configure(); err != nil {
		return nil, err
	}
	// The peer's genesis, byte for byte.
	gen, err := os.ReadFile(filepath.Join(peer.Home, "config", "genesis.json"))
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(home, "config", "genesis.json"), gen, 0o644); err != nil {
		return nil, err
	}
	addr, err := peer.P2PAddress(ctx)
	if err != nil {
		return nil, err
	}
	return n, editFile(filepath.Join(home, "config", "config.toml"), []edit{
		{`(?m)^persistent_peers = .*$`, fmt.Sprintf(`persistent_peers = "%s"`, addr)},
	})
}
