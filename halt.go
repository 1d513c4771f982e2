package invisor

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/invisor/invisor/hook"
	"github.com/invisor/invisor/internal/comet"
	"github.com/invisor/invisor/internal/home"
	"github.com/invisor/invisor/relauncher"
)

// haltAskTimeout bounds the question to CometBFT at a halt; without an answer
// the halt takes the path that is safe in every state.
const haltAskTimeout = 2 * time.Second

// nodeState asks the node's own CometBFT (its RPC at rpc.laddr, served in this
// process) whether it is catching up, which decides what x/upgrade's halt error
// does to the process (see relauncher.NodeState), and says how it was learnt.
// /status takes no consensus lock, so it answers while the halting block holds
// consensus.
func (n *node) nodeState() (relauncher.NodeState, string) {
	ctx, cancel := context.WithTimeout(context.Background(), haltAskTimeout)
	defer cancel()
	s, err := comet.Status(ctx, n.rpcLaddr)
	switch {
	case err == nil && s.CatchingUp:
		return relauncher.NodeCatchingUp, fmt.Sprintf("CometBFT /status at %s: catching_up=true: block sync applies this block", n.rpcLaddr)
	case err == nil:
		return relauncher.NodeInConsensus, fmt.Sprintf("CometBFT /status at %s: catching_up=false: consensus executes this block", n.rpcLaddr)
	case errors.Is(err, comet.ErrNotListening):
		return relauncher.NodeNotStarted, fmt.Sprintf("CometBFT's RPC at %s is not listening: CometBFT starts it after the handshake, so this block is replayed by the handshake", n.rpcLaddr)
	default:
		return relauncher.NodeStateUnknown, fmt.Sprintf("cannot ask CometBFT (%v); taking the path that is safe in every state", err)
	}
}

// peersAtHalt is relauncher.OS.PeersAtHalt for the node whose RPC listens at
// laddr: its CometBFT says, from its consensus reactor's view of each peer,
// which have the halting block's commit.
// One client serves every poll of the wait (every 20 ms, up to 2 s).
func peersAtHalt(laddr string) func(ctx context.Context, height int64) (int, int, []string, error) {
	c, err := comet.NewClient(laddr)
	return func(ctx context.Context, height int64) (int, int, []string, error) {
		if err != nil {
			return 0, 0, nil, err
		}
		ctx, cancel := context.WithTimeout(ctx, haltAskTimeout)
		defer cancel()
		return c.PeersAtHalt(ctx, height)
	}
}

// ExitUpgradeHalt is the exit code of a node that stopped at an upgrade halt
// for an orchestrator to swap the binary (on-halt = "exit" or "exit-always");
// see relauncher.ExitUpgradeHalt.
const ExitUpgradeHalt = relauncher.ExitUpgradeHalt

// HaltReport is what a node leaving an upgrade halt with ExitUpgradeHalt writes
// for its orchestrator (home.HaltReport, at home.Layout.HaltReport).
type HaltReport = home.HaltReport

// HaltBinary is the verified upgrade binary a HaltReport names.
type HaltBinary = home.HaltBinary

// haltReportTimeout bounds the proof of the staged binary for the report; a
// stamp unchanged since staging makes it a stat.
const haltReportTimeout = 30 * time.Second

// exitAtHalt is Halted for on-halt = "exit"/"exit-always": it writes the halt
// report and leaves the process with ExitUpgradeHalt, without waiting for any
// binary (the orchestrator brings its own). In consensus the node stops
// cleanly (SIGTERM, as the switch does) and `start`'s wrapper exits once every
// store is closed; in every other state, where CometBFT cannot stop while the
// halting block is held, the process exits from the block, as the re-exec path
// execs from it: the block was not applied and earlier writes are in the
// kernel. It runs once per process; later calls (x/upgrade refusing the block
// again) do nothing.
func (n *node) exitAtHalt(p hook.Plan, height int64, state relauncher.NodeState, why string) {
	if !n.exiting.CompareAndSwap(false, true) {
		return
	}
	path := relauncher.PathFor(state)
	rep := n.haltReport(p, height, state, path)
	file := n.layout.HaltReport()
	if err := n.layout.WriteHaltReport(rep); err != nil {
		n.log.Error("invisor: could not write the halt report; the orchestrator has the exit code and data/upgrade-info.json", "file", file, "err", err)
	}
	kv := []any{"upgrade", p.Name, "height", height, "exit_code", ExitUpgradeHalt, "report", file, "node_state", state.String(), "why", why}
	if rep.Binary != nil {
		kv = append(kv, "verified_binary", rep.Binary.Path, "sha256", rep.Binary.SHA256)
	} else {
		kv = append(kv, "verified_binary", "none", "binary_missing", rep.BinaryMissing)
	}
	if path == relauncher.PathCleanStop {
		n.log.Info("invisor: on-halt is "+string(n.onHalt)+": stopping the node cleanly; it exits for the orchestrator to start the upgrade's binary", kv...)
		// Off the consensus path: the peers' wait needs the halted block's
		// lock released, as for a switch (relauncher.AwaitPeers).
		go func() {
			n.rl.AwaitPeers(n.runCtx, height)
			if err := n.stopSelf(); err != nil {
				n.log.Error("invisor: could not stop the node; stop it (SIGTERM) and start the upgrade's binary", "err", err)
			}
		}()
		return
	}
	n.log.Info("invisor: on-halt is "+string(n.onHalt)+": CometBFT cannot stop cleanly while it holds the halting block; exiting from it for the orchestrator to start the upgrade's binary", kv...)
	n.exit(ExitUpgradeHalt)
}

// haltReport is the report of the halt of upgrade p at height.
func (n *node) haltReport(p hook.Plan, height int64, state relauncher.NodeState, path relauncher.HaltPath) HaltReport {
	rep := HaltReport{Upgrade: p.Name, Height: height, Info: p.Info, ExitCode: ExitUpgradeHalt, Time: time.Now().UTC(),
		PID: os.Getpid(), NodeState: state.String(), Stop: "clean-stop"}
	if path != relauncher.PathCleanStop {
		rep.Stop = "exit-in-block"
	}
	rep.Executable, _ = os.Executable()
	ctx, cancel := context.WithTimeout(context.Background(), haltReportTimeout)
	defer cancel()
	v, err := n.layout.Open(ctx, home.Plan{Name: p.Name, Height: p.Height, Info: p.Info})
	if err != nil {
		rep.BinaryMissing = err.Error()
		return rep
	}
	defer v.Close()
	rep.Binary = &HaltBinary{Path: v.Path, SHA256: v.Record.SHA256, Size: v.Record.Size, Source: string(v.Record.Source)}
	return rep
}
