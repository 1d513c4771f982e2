package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/invisor/invisor/example-app/localnet"
	"github.com/invisor/invisor/internal/history"
)

// TestScheduledUpgradeAtHeight is an emergency upgrade without governance on a
// chain of four validators of equal power running exampled-v2: every operator
// runs `invisor stage v3 --height H --file exampled-v3` and restarts the node
// (invisor sets the SDK's halt-height when it starts the node). Then:
//   - val0 halts at H in consensus and switches in place (same PID);
//   - val1 is SIGKILLed the moment its block store holds H (at its halt, before
//     or during the switch) and restarted with v2;
//   - val2 is stopped at app height H-1 and restarted with v2: its boot sees
//     CometBFT's state at H-1 and switches before the app is built;
//   - val3 is down across H and restarted with v2 afterwards: it block-syncs to
//     H, where v2 cannot go on, and (restarted like systemd would if it exits)
//     ends on v3.
//
// All four end on v3 past H, each from its staged v3 binary, and the chain goes
// on; block H was refused by v2 (no node ran it with v2: v3's app hash at H is
// the one all four agree on, or the chain would not pass H).
func TestScheduledUpgradeAtHeight(t *testing.T) {
	dir := builds(t)
	v2, v3 := filepath.Join(dir, "exampled-v2"), filepath.Join(dir, "exampled-v3")
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	net, err := localnet.NewTestnet(ctx, v2, t.TempDir(), 4, 0, localnet.Settings{ChainID: "invisor-e2e-height"})
	if err != nil {
		t.Fatal(err)
	}
	vals := net.Validators
	for _, n := range vals {
		n.Env = []string{"UNSAFE_SKIP_BACKUP=true"}
	}
	stopOnCleanup(t, net)
	for _, n := range vals {
		if err := n.Start(); err != nil {
			t.Fatal(err)
		}
	}
	start, err := vals[0].WaitHeight(ctx, 3)
	if err != nil {
		t.Fatal(err)
	}

	// Every operator schedules v3 at H on its node while it runs.
	h := start.Height + 80
	var mu sync.Mutex
	outs := map[string]string{}
	if err := localnet.Parallel(len(vals), func(i int) error {
		out, err := vals[i].CLI(ctx, "invisor", "stage", "v3", "--height", strconv.FormatInt(h, 10), "--file", v3)
		mu.Lock()
		outs[vals[i].Name] = string(out)
		mu.Unlock()
		return err
	}); err != nil {
		t.Fatal(err)
	}
	for name, out := range outs {
		if !strings.Contains(out, fmt.Sprintf("scheduled %q at height %d", "v3", h)) || !strings.Contains(out, "restart it before height") {
			t.Errorf("%s: stage --height said:\n%s", name, out)
		}
	}
	// The running nodes were started before: the schedule says so.
	if views := scheduledOf(ctx, t, vals[0]); len(views) != 1 || !strings.HasPrefix(views[0].InForce, "NOT IN FORCE") || !views[0].Trusted {
		t.Errorf("val0 before its restart: scheduled %+v, want v3 at %d, trusted, not in force", views, h)
	}
	// Refusals: a height already passed, a second upgrade at the same height.
	if out, err := vals[0].CLI(ctx, "invisor", "stage", "v4", "--height", "2", "--file", v3); err == nil || !strings.Contains(err.Error(), "the chain is at") {
		t.Errorf("stage at a passed height: err %v, out %s", err, out)
	}
	if out, err := vals[0].CLI(ctx, "invisor", "stage", "v4", "--height", strconv.FormatInt(h, 10), "--file", v3); err == nil || !strings.Contains(err.Error(), "one upgrade per height") {
		t.Errorf("stage at a scheduled height: err %v, out %s", err, out)
	}

	// Restarts apply it, one node at a time, each back in the chain before the
	// next stops (a rolling restart); val3 stays down.
	for _, n := range vals {
		before, err := n.AppInfo(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := n.Stop(15 * time.Second); err != nil {
			t.Fatal(err)
		}
		if n == vals[3] {
			continue
		}
		if err := n.Start(); err != nil {
			t.Fatal(err)
		}
		if _, err := n.WaitHeight(ctx, before.Height+2); err != nil {
			t.Fatalf("%s after its restart: %v", n.Name, err)
		}
	}
	if _, err := vals[0].WaitHeight(ctx, start.Height+5); err != nil {
		t.Fatal(err)
	}
	if views := scheduledOf(ctx, t, vals[0]); len(views) != 1 || !strings.HasPrefix(views[0].InForce, "halts here") {
		t.Errorf("val0 after its restart: scheduled %+v, want v3 at %d in force", views, h)
	}
	if cur, _ := vals[0].AppInfo(ctx); cur.Height > h-10 {
		t.Fatalf("the chain is at %d already, too near the scheduled height %d for the test to restart its nodes in time (machine too slow?)", cur.Height, h)
	}
	pid0 := vals[0].Pid()

	// val2: stopped at H-1, restarted: switched at boot.
	if info, err := vals[2].WaitHeight(ctx, h-1); err != nil {
		t.Fatal(err)
	} else if info.Height != h-1 {
		t.Errorf("val2 at app height %d when waited for %d: the halt-height is %d", info.Height, h-1, h)
	}
	if err := vals[2].Stop(15 * time.Second); err != nil {
		t.Fatal(err)
	}
	if err := vals[2].Start(); err != nil {
		t.Fatal(err)
	}

	// val1: SIGKILLed at its halt (block H in its store), restarted.
	for {
		bh, err := vals[1].BlockHeight(ctx)
		if err == nil && bh >= h {
			break
		}
		if done, exitErr := vals[1].Exited(); done {
			t.Fatalf("val1 exited before H: %v", exitErr)
		}
		if ctx.Err() != nil {
			t.Fatal(ctx.Err())
		}
		time.Sleep(10 * time.Millisecond)
	}
	vals[1].Kill()
	if err := vals[1].Start(); err != nil {
		t.Fatal(err)
	}

	// The chain goes on past H on v3; then val3 comes back.
	for _, n := range vals[:3] {
		if _, err := n.WaitHeight(ctx, h+2); err != nil {
			t.Fatalf("%s: %v", n.Name, err)
		}
	}
	if err := vals[3].Start(); err != nil {
		t.Fatal(err)
	}
	restarted := false
	for {
		info, err := vals[3].AppInfo(ctx)
		if err == nil && info.Height >= h+2 {
			break
		}
		if done, exitErr := vals[3].Exited(); done {
			if restarted {
				t.Fatalf("val3 exited twice: %v", exitErr)
			}
			// CometBFT's block sync exits the process at the block the old
			// binary refuses; a process manager starts it again.
			t.Logf("val3 exited at the halt in block sync (%v); starting it again, as systemd would", exitErr)
			restarted = true
			if err := vals[3].Start(); err != nil {
				t.Fatal(err)
			}
		}
		if ctx.Err() != nil {
			t.Fatalf("val3 at %d, want %d: %v", info.Height, h+2, ctx.Err())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if _, err := vals[0].WaitHeight(ctx, h+3); err != nil {
		t.Fatal(err)
	}

	for _, n := range vals {
		info, err := n.AppInfo(ctx)
		exe, _ := n.Exe()
		switch {
		case err != nil:
			t.Errorf("%s: %v", n.Name, err)
		case info.Version != "v3.0.0" || info.Height < h+2:
			t.Errorf("%s: %s at height %d, want v3.0.0 past %d", n.Name, info.Version, info.Height, h)
		}
		if want := filepath.Join(n.Home, "cosmovisor", "upgrades", "v3", "bin", "exampled"); exe != want {
			t.Errorf("%s: PID %d executes %s, want %s", n.Name, n.Pid(), exe, want)
		}
		ui, ok, err := localnet.Layout(n.Home).ReadUpgradeInfo()
		if err != nil || !ok || ui.Name != "v3" || ui.Height != h {
			t.Errorf("%s: data/upgrade-info.json %+v (%v, %v), want v3 at %d", n.Name, ui, ok, err, h)
		}
	}
	if vals[0].Pid() != pid0 {
		t.Errorf("val0: PID %d, was %d: the switch at the halt must be in place", vals[0].Pid(), pid0)
	}
	if !strings.Contains(vals[0].LogTail(1<<20), "the node halted at the height of an upgrade scheduled without governance") {
		t.Errorf("val0 did not log its halt at the scheduled height")
	}
	if !strings.Contains(vals[2].LogTail(1<<20), "the chain's state is at the block before a scheduled upgrade") {
		t.Errorf("val2 did not switch at boot from CometBFT's state height")
	}
	// The applied upgrade leaves the schedule, and the history says what happened.
	for _, n := range vals[:3] {
		deadline := time.Now().Add(10 * time.Second)
		for {
			s, err := localnet.Layout(n.Home).Schedule()
			if err == nil && len(s) == 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Errorf("%s: schedule %+v (%v) after H, want empty", n.Name, s, err)
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	events := map[string]bool{}
	hist, err := history.Read(vals[0].Home)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range hist {
		if e.Upgrade == "v3" && e.Height == h {
			events[e.Event] = true
		}
	}
	for _, ev := range []string{history.EventScheduled, history.EventHalt, history.EventSwitched, history.EventScheduledApplied} {
		if !events[ev] {
			t.Errorf("val0 history has no %q entry for v3 at %d: %+v", ev, h, hist)
		}
	}
	// No v2 process ran block H anywhere: v2 never committed it (each node's
	// own v3 did, and they agreed, or the chain would not be past H).
	if rec, err := localnet.Layout(vals[0].Home).ReadRecord("v3"); err != nil || rec.Height != h {
		t.Errorf("val0: record of v3: %+v, %v; want a record for height %d", rec, err, h)
	}
}

// scheduledOf is `invisor scheduled -o json` on n's home.
func scheduledOf(ctx context.Context, t *testing.T, n *localnet.Node) []struct {
	Upgrade string `json:"upgrade"`
	Height  int64  `json:"height"`
	Trusted bool   `json:"trusted"`
	InForce string `json:"in_force"`
} {
	t.Helper()
	out, err := n.CLI(ctx, "invisor", "scheduled", "-o", "json")
	if err != nil {
		t.Fatalf("%s: invisor scheduled: %v", n.Name, err)
	}
	var v []struct {
		Upgrade string `json:"upgrade"`
		Height  int64  `json:"height"`
		Trusted bool   `json:"trusted"`
		InForce string `json:"in_force"`
	}
	if err := json.Unmarshal(out, &v); err != nil {
		t.Fatalf("%s: invisor scheduled -o json: %v: %s", n.Name, err, out)
	}
	return v
}

// keyLines keeps the lines of a node log that say what invisor, consensus and
// the node did (invisor's lines, errors, panics, starts), the last max of them.
// stopOnCleanup stops every node of net when the test ends, and on failure logs
// each validator's invisor lines and errors.
func stopOnCleanup(t *testing.T, net *localnet.Testnet) {
	t.Cleanup(func() {
		if err := net.Stop(15 * time.Second); err != nil {
			t.Error(err)
		}
		if t.Failed() {
			for _, n := range net.Validators {
				t.Logf("---- %s: invisor's lines and errors ----\n%s", n.Name, keyLines(n.LogTail(8<<20), 120))
			}
		}
	})
}

func keyLines(log string, max int) string {
	var keep []string
	for _, l := range strings.Split(log, "\n") {
		if strings.Contains(l, "invisor") || strings.Contains(l, "ERR") || strings.Contains(l, "panic") ||
			strings.Contains(l, "CONSENSUS") || strings.Contains(l, "Starting Node") || strings.Contains(l, "halt") {
			if strings.Contains(l, "module=p2p") || strings.Contains(l, "module=pex") {
				continue
			}
			keep = append(keep, l)
		}
	}
	if len(keep) > max {
		keep = keep[len(keep)-max:]
	}
	return strings.Join(keep, "\n")
}
