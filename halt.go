package invisor

import (
	"os"
	"os/signal"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/invisor/invisor/hook"
	"github.com/invisor/invisor/internal/home"
)

// inConsensus tells whether the halting block is being executed by CometBFT's
// consensus state machine. There, x/upgrade's error is recovered, consensus
// stops and the process idles, so invisor stops the node cleanly (the SIGTERM
// path) and switches after. Anywhere else — block sync, or a replay — the same
// error panics a goroutine without recovery and the process dies, so invisor
// must switch from inside the halting call, before that happens.
//
// The call stack is the only in-process signal that needs no extra wiring; it
// is read once per upgrade, at the halt.
func inConsensus() bool {
	buf := make([]byte, 64<<10)
	stack := string(buf[:runtime.Stack(buf, false)])
	return strings.Contains(stack, "cometbft/consensus.(*State)")
}

// switchInPlace is the halt outside consensus (block sync, replay): wait for
// the trusted binary, then exec it from here. The databases are not closed:
// every write of the last committed block has already reached the kernel, the
// halting block was never applied, and exec drops the file locks (all files
// are close-on-exec), so the new process opens the stores exactly as it would
// after the crash this prevents. It returns only if the switch failed; the
// caller then lets the halt error end the process, and a restart goes through
// the boot redirect.
func (n *node) switchInPlace(p hook.Plan, height int64) {
	name := p.Name
	plan := home.Plan{Name: p.Name, Height: p.Height, Info: p.Info}
	n.log.Info("invisor: halted outside consensus (block sync or replay); switching from here, without a restart",
		"upgrade", name, "height", height)
	// While this call waits, block sync cannot stop (its reactor waits for this
	// goroutine), so the SDK's clean shutdown on SIGTERM would hang. A stop
	// request ends the process here instead: nothing of the halting block was
	// applied and every earlier write is in the kernel, which is the state a
	// crash leaves and the next start (boot redirect) handles.
	stopReq := make(chan os.Signal, 1)
	signal.Notify(stopReq, syscall.SIGTERM, os.Interrupt)
	defer signal.Stop(stopReq)
	start, lastLog := time.Now(), time.Time{}
	for {
		if b, err := n.verifier.Verify(n.runCtx, plan); err == nil {
			b.Close() // Switch proves it again right before running it
			break
		} else if time.Since(lastLog) >= 5*time.Second {
			lastLog = time.Now()
			n.log.Error("invisor: waiting for the upgrade binary before switching; block sync resumes once it is staged",
				"upgrade", name, "height", height, "waited", time.Since(start).Round(time.Second), "missing", err)
		}
		select {
		case sig := <-stopReq:
			n.log.Error("invisor: stop requested while block sync waits for the upgrade binary; exiting now (block sync cannot stop cleanly while it waits). The next start runs the binary once it is staged",
				"upgrade", name, "height", height, "signal", sig.String(), "binary", n.expectedBinary(name))
			os.Exit(128 + int(sig.(syscall.Signal)))
		case <-time.After(200 * time.Millisecond):
		}
	}
	n.cancel()
	err := n.rl.Switch(name)
	n.log.Error("invisor: could not switch to the upgrade binary; the node will stop and a restart goes through the boot redirect",
		"upgrade", name, "err", err)
}

// expectedBinary is where the binary for upgrade name goes, for log lines.
func (n *node) expectedBinary(name string) string {
	p, err := n.layout.UpgradeBin(name)
	if err != nil {
		return err.Error()
	}
	return p
}
