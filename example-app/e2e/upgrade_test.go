// Package e2e runs real exampled processes on a real chain on 127.0.0.1.
package e2e

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/invisor/invisor/example-app/localnet"
)

// builds returns the directory holding exampled-v1, -v2 and -v3 (make build).
func builds(t *testing.T) string {
	t.Helper()
	dir := os.Getenv("EXAMPLED_BUILD")
	if dir == "" {
		t.Skip("EXAMPLED_BUILD is not set: run `make test` or `make test-e2e`, which build exampled-v1..v3 first")
	}
	for _, v := range []string{"v1", "v2", "v3"} {
		if _, err := os.Stat(filepath.Join(dir, "exampled-"+v)); err != nil {
			t.Fatalf("missing %s: %v (run make build)", "exampled-"+v, err)
		}
	}
	return dir
}

// TestUpgradeTwiceInPlace starts a fresh chain with plain `exampled-v1 start`
// and passes two governance upgrades, v1 to v2 and v2 to v3. Each time invisor
// must stage the binary before the height, keep the PID, exec the staged binary
// at the height, and the new handler must run; the chain must reach H+5.
// A full node without invisor follows the chain and is upgraded by hand at each
// halt: it can only go past H if its app hash at H matches the one invisor's
// node committed. Then a fresh full node with only v1 and downloads allowed
// syncs from genesis (block sync) and crosses both upgrades on its own, in one
// process.
func TestUpgradeTwiceInPlace(t *testing.T) {
	t.Parallel() // a one-node chain that mostly waits for blocks: runs beside another (make test-e2e: -parallel 2)
	dir := builds(t)
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	work := t.TempDir()

	node, err := localnet.NewSingle(ctx, filepath.Join(dir, "exampled-v1"), filepath.Join(work, "node0"),
		localnet.Settings{ChainID: "invisor-e2e-1"})
	if err != nil {
		t.Fatal(err)
	}
	report, reportEnv := storesReport(t)
	node.Env = []string{"DAEMON_ALLOW_DOWNLOAD_BINARIES=true", reportEnv}
	t.Cleanup(func() {
		if err := node.Stop(15 * time.Second); err != nil {
			t.Error(err)
		}
		if t.Failed() {
			t.Logf("---- node log tail ----\n%s", node.LogTail(8000))
		}
	})

	srv, err := localnet.ServeDir(filepath.Join(work, "www"))
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()

	byHand, err := localnet.NewFullNode(ctx, "byhand", filepath.Join(dir, "exampled-v1"), filepath.Join(work, "byhand"), node)
	if err != nil {
		t.Fatal(err)
	}
	byHand.Env = []string{"INVISOR_ENABLED=false"}
	t.Cleanup(func() {
		_ = byHand.Stop(15 * time.Second)
		if t.Failed() {
			t.Logf("---- by-hand node log tail ----\n%s", byHand.LogTail(4000))
		}
	})

	if err := node.Start(); err != nil {
		t.Fatal(err)
	}
	if _, err := node.WaitHeight(ctx, 2); err != nil {
		t.Fatal(err)
	}
	if err := byHand.Start(); err != nil {
		t.Fatal(err)
	}

	var pid int
	for i, up := range []struct{ name, bin string }{{"v2", "exampled-v2"}, {"v3", "exampled-v3"}} {
		r, err := localnet.RunUpgrade(ctx, node, localnet.UpgradeSpec{
			Name: up.name, Binary: filepath.Join(dir, up.bin), Server: srv,
			Progress: func(s string) { t.Log(s) },
		})
		if err != nil {
			t.Fatalf("upgrade %s: %v\n%s", up.name, err, r.Summary())
		}
		// The operator's way: the node halted at H (or died there, in block
		// sync); stop it, start the new binary.
		if _, err := byHand.WaitHeight(ctx, r.PlanHeight-1); err != nil {
			if done, _ := byHand.Exited(); !done {
				t.Fatalf("by-hand node: %v", err)
			}
		}
		if err := byHand.Stop(15 * time.Second); err != nil {
			t.Fatal(err)
		}
		byHand.Bin = filepath.Join(dir, up.bin)
		if err := byHand.Start(); err != nil {
			t.Fatal(err)
		}
		if info, err := byHand.WaitHeight(ctx, r.PlanHeight+2); err != nil || info.Version != r.VersionAfter {
			t.Fatalf("node upgraded by hand did not follow past %d (app hash mismatch?): %+v %v", r.PlanHeight, info, err)
		}
		t.Logf("\n%s", r.Summary())
		if r.SeenBlock == 0 || r.SeenBlock > r.StagedAtHeight {
			t.Errorf("upgrade %s: plan seen in block %d, staged at %d: the hook must notice the plan before staging ends", up.name, r.SeenBlock, r.StagedAtHeight)
		}
		if i == 0 {
			pid = r.PIDBefore
		}
		if r.PIDAfter != pid {
			t.Errorf("upgrade %s: PID %d, want the original %d", up.name, r.PIDAfter, pid)
		}
		if want := "v" + up.name[1:] + ".0.0"; r.VersionAfter != want {
			t.Errorf("upgrade %s: app version %q, want %q", up.name, r.VersionAfter, want)
		}
		link, err := os.Readlink(filepath.Join(node.Home, "cosmovisor", "current"))
		if err != nil || filepath.Base(link) != up.name {
			t.Errorf("upgrade %s: cosmovisor/current -> %q (%v), want upgrades/%s", up.name, link, err, up.name)
		}
		if _, err := os.Stat(filepath.Join(node.Home, "data", "upgrade-info.json")); err != nil {
			t.Errorf("upgrade %s: data/upgrade-info.json must stay for the new binary: %v", up.name, err)
		}
		// The staged binary was scanned while the chain ran, so pre-upgrade
		// overlapped the new binary's start-up, which waited for it.
		log := node.LogTail(64 << 20)
		if n := strings.Count(log, overlapLine); n != i+1 {
			t.Errorf("upgrade %s: %d overlapped pre-upgrades logged, want %d", up.name, n, i+1)
		} else if after := log[strings.LastIndex(log, overlapLine):]; !strings.Contains(after, "invisor: pre-upgrade ran") ||
			!strings.Contains(after, "invisor: current link flipped") {
			t.Errorf("upgrade %s: the new binary did not report the pre-upgrade it waited for", up.name)
		}
	}

	// In consensus, with optimistic execution on (the block executed on a
	// goroutine of its own): the clean stop, and pre-upgrade with every store closed.
	assertHaltPath(t, "validator", node.LogTail(64<<20), "clean-stop", "in-consensus", 2)
	assertStoresClosed(t, "validator", report, 2)

	// The late joiner: v1 only, downloads allowed, block sync from genesis.
	head, err := node.AppInfo(ctx)
	if err != nil {
		t.Fatal(err)
	}
	late, err := localnet.NewFullNode(ctx, "late", filepath.Join(dir, "exampled-v1"), filepath.Join(work, "late"), node)
	if err != nil {
		t.Fatal(err)
	}
	lateReport, lateReportEnv := storesReport(t)
	late.Env = []string{"DAEMON_ALLOW_DOWNLOAD_BINARIES=true", "UNSAFE_SKIP_BACKUP=true", lateReportEnv}
	if err := late.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := late.Stop(15 * time.Second); err != nil {
			t.Error(err)
		}
		if t.Failed() {
			t.Logf("---- late joiner log tail ----\n%s", late.LogTail(8000))
		}
	})
	latePID := late.Pid()
	got, err := late.WaitHeight(ctx, head.Height+3)
	if err != nil {
		t.Fatalf("late joiner did not catch up through both upgrades: %v", err)
	}
	exe, _ := late.Exe()
	t.Logf("late joiner: PID %d, at height %d with %s (%s)", late.Pid(), got.Height, got.Version, exe)
	if late.Pid() != latePID || got.Version != "v3.0.0" || exe != filepath.Join(late.Home, "cosmovisor", "upgrades", "v3", "bin", "exampled") {
		t.Errorf("late joiner: PID %d (started as %d), version %s, exe %s; want the same PID running the staged v3", late.Pid(), latePID, got.Version, exe)
	}
	// Block sync applied both halting blocks: each time the re-exec, whose boot
	// ran pre-upgrade with no store open.
	lateLog := late.LogTail(64 << 20)
	assertHaltPath(t, "late joiner", lateLog, "re-exec", "catching-up", 2)
	if n := strings.Count(lateLog, "re-executed at the upgrade halt"); n != 2 {
		t.Errorf("late joiner: %d boots after a re-exec at a halt, want 2", n)
	}
	assertStoresClosed(t, "late joiner", lateReport, 2)
}
