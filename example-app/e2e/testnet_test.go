package e2e

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/invisor/invisor/example-app/localnet"
	"github.com/invisor/invisor/internal/home"
)

// TestTestnetRehearsal runs the rehearsal of `make testnet` (the same code,
// localnet.Rehearse): four validators and one full node started with plain
// `exampled-v1 start` pass two governance upgrades, v1 to v2 and v2 to v3, with
// val1 SIGKILLed before the first one and restarted with v1 after the halt,
// and val2 (downloads off) staged by hand with `invisor stage` after each halt;
// then a fresh full node with only v1 syncs from genesis across both. The
// outcomes are asserted here again from RPC and /proc, with the nodes still
// running.
func TestTestnetRehearsal(t *testing.T) {
	dir := builds(t)
	ctx, cancel := context.WithTimeout(context.Background(), 12*time.Minute)
	defer cancel()
	start := time.Now()
	r, err := localnet.Rehearse(ctx, localnet.RehearsalConfig{
		Build: dir, Work: t.TempDir(),
		Progress: func(s string) { t.Log(s) },
	})
	t.Cleanup(func() {
		if t.Failed() && r.Net != nil {
			for _, n := range r.Net.Nodes() {
				t.Logf("---- %s log tail ----\n%s", n.Name, n.LogTail(3000))
			}
		}
		if err := r.Close(); err != nil {
			t.Error(err)
		}
	})
	if s := r.Summary(); s != "" {
		t.Logf("\n%s", s)
	}
	if err != nil {
		t.Fatalf("rehearsal: %v", err)
	}
	t.Logf("rehearsal took %s", time.Since(start).Round(time.Second))

	vals, nodes := r.Net.Validators, r.Net.Nodes()
	if len(vals) != 4 || len(nodes) != 6 || len(r.Upgrades) != 2 || r.Late == nil {
		t.Fatalf("%d validators, %d nodes, %d upgrades, late joiner %v; want 4, 6 (with the late joiner), 2", len(vals), len(nodes), len(r.Upgrades), r.Late != nil)
	}
	up2, up3 := r.Upgrades[0], r.Upgrades[1]
	addr := map[string]string{} // consensus address -> node name
	for _, v := range vals {
		a, err := v.ValidatorAddress(ctx)
		if err != nil {
			t.Fatal(err)
		}
		addr[a] = v.Name
	}
	signersOf := func(h int64) []string {
		t.Helper()
		s, err := vals[0].CommitSigners(ctx, h)
		if err != nil {
			t.Fatalf("commit %d: %v", h, err)
		}
		var names []string
		for _, a := range s {
			names = append(names, addr[a])
		}
		return names
	}

	// Every node (the late joiner too) answers on v3.0.0 from its staged v3
	// binary, and the chain is at least 10 blocks past the second upgrade.
	head, err := vals[0].AppInfo(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if head.Height < up3.Height+10 {
		t.Errorf("chain at %d, want >= %d (10 past the upgrade to v3)", head.Height, up3.Height+10)
	}
	for _, n := range nodes {
		info, err := n.AppInfo(ctx)
		exe, _ := n.Exe()
		switch {
		case err != nil:
			t.Errorf("%s: /abci_info: %v", n.Name, err)
		case info.Version != "v3.0.0":
			t.Errorf("%s: version %s, want v3.0.0", n.Name, info.Version)
		case info.Height < up3.Height+5:
			t.Errorf("%s: at height %d, behind the chain (%d)", n.Name, info.Height, head.Height)
		}
		if want := filepath.Join(n.Home, "cosmovisor", "upgrades", "v3", "bin", "exampled"); exe != want {
			t.Errorf("%s: PID %d executes %s, want %s", n.Name, n.Pid(), exe, want)
		}
	}

	// Same PID through both upgrades, except val1 which was SIGKILLed and
	// restarted with v1: then its restarted process switched in place.
	for i, n := range nodes[:5] {
		before, after := up2.Nodes[i].PIDBefore, n.Pid()
		switch {
		case n.Name == "val1":
			if after == before || after != up3.Nodes[i].PIDBefore {
				t.Errorf("val1: PID %d (original %d, restarted %d): want the restarted process to run v3", after, before, up3.Nodes[i].PIDBefore)
			}
		case after != before:
			t.Errorf("%s: PID %d, started as %d: the upgrades must be in place", n.Name, after, before)
		}
	}
	if late := nodes[5]; late.Pid() != r.Late.PID || r.Late.Height < r.Late.StartHeight {
		t.Errorf("late joiner: PID %d (started %d), height %d, chain was at %d when it started", late.Pid(), r.Late.PID, r.Late.Height, r.Late.StartHeight)
	}

	// Block H+1 of each upgrade, the first agreed on the new binary, was
	// signed by 3 of 4 validators without val2, which had no binary yet; then
	// val1 and val2 signed again.
	for _, up := range r.Upgrades {
		s := signersOf(up.Height + 1)
		if len(s) < 3 || hasName(s, "val2") {
			t.Errorf("upgrade %s: block %d signed by %v; want 3 of 4 validators without val2", up.Name, up.Height+1, s)
		}
		if up.WaitingHeight != up.Height-1 || up.ContinuedTo < up.Height+3 {
			t.Errorf("upgrade %s: val2 at %d while the chain reached %d; want it halted at %d while the chain went on", up.Name, up.WaitingHeight, up.ContinuedTo, up.Height-1)
		}
		for _, v := range vals {
			found := false
			for h := up.Height + 1; h <= up.Height+30 && h < head.Height && !found; h++ {
				found = hasName(signersOf(h), v.Name)
			}
			if !found {
				t.Errorf("upgrade %s: %s signed none of the 30 blocks after the upgrade", up.Name, v.Name)
			}
		}
	}
	set, err := vals[0].ValidatorSet(ctx)
	if err != nil || len(set) != 4 {
		t.Fatalf("validator set %v (%v), want 4 validators", set, err)
	}
	for _, v := range set {
		if v.Power != set[0].Power {
			t.Errorf("unequal voting power: %v", set)
		}
	}

	// val2 got both binaries by hand; the others, and the late joiner, downloaded them.
	for _, n := range nodes {
		for _, name := range []string{"v2", "v3"} {
			rec, _, ok := localnet.Staged(n.Home, name)
			want := home.SourceDownload
			if n.Name == "val2" {
				want = home.SourcePlanChecksum // placed with `invisor stage`, equal to the plan's checksum
			}
			if !ok || rec.Source != want {
				t.Errorf("%s: %s staged as %q (staged %v), want %s", n.Name, name, rec.Source, ok, want)
			}
		}
	}
	// The upgrade handlers ran at the plan heights.
	trace, err := vals[0].TraceDescription(ctx, localnet.TraceDenom)
	if err != nil || !strings.Contains(trace, "upgrade handler v3 ran at height "+itoa(up3.Height)) {
		t.Errorf("handler trace %q (%v), want v3 at %d", trace, err, up3.Height)
	}
}

func hasName(s []string, x string) bool {
	for _, v := range s {
		if v == x {
			return true
		}
	}
	return false
}
