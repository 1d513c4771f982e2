package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/invisor/invisor/example-app/localnet"
	"github.com/invisor/invisor/internal/history"
	"github.com/invisor/invisor/relauncher"
)

// failLine is what exampled-v2-bad logs when its v2 upgrade handler fails.
const failLine = "example-app: upgrade handler failing on purpose"

// TestRollbackFailedUpgrade is a governance upgrade whose binary fails in its
// upgrade handler, undone with `invisor rollback` and redone with a fixed build.
// A validator on v1 with backups on stages exampled-v2-bad for plan v2 (the
// plan's own binary) and switches to it at H, where its handler fails: the chain
// does not get past H. The operator stops the node, runs `exampled invisor
// rollback` (data as it was at the switch, `current` back at genesis) and
// `exampled invisor stage v2 --replace --file exampled-v2`, and starts the v1
// path again: the boot redirect switches to the good v2, which applies the
// upgrade at H, and the chain goes on. A full node without invisor, given the
// good v2 by hand at its halt, follows past H: the app hash at H is the one a
// node that never ran the bad build computes. The replaced data is kept aside,
// the history has the rollback, and the restored data carries the live
// priv_validator_state.json, not the backup's.
func TestRollbackFailedUpgrade(t *testing.T) {
	t.Parallel() // a one-node chain that mostly waits for blocks: runs beside another (make test-e2e: -parallel 2)
	dir := builds(t)
	ph := newPhases(t)
	v1, v2, bad := filepath.Join(dir, "exampled-v1"), filepath.Join(dir, "exampled-v2"), filepath.Join(dir, "exampled-v2-bad")
	if _, err := os.Stat(bad); err != nil {
		t.Fatalf("missing %s: %v (run make build)", bad, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	work := t.TempDir()

	node, err := localnet.NewSingle(ctx, v1, filepath.Join(work, "node0"), localnet.Settings{ChainID: "invisor-rollback-1"})
	if err != nil {
		t.Fatal(err)
	}
	// Backups on: the default (no UNSAFE_SKIP_BACKUP), into the node home.
	node.Env = []string{"DAEMON_ALLOW_DOWNLOAD_BINARIES=true"}
	t.Cleanup(func() {
		if err := node.Stop(15 * time.Second); err != nil {
			t.Error(err)
		}
		if t.Failed() {
			t.Logf("---- validator log tail ----\n%s", node.LogTail(12000))
		}
	})
	byHand, err := localnet.NewFullNode(ctx, "byhand", v1, filepath.Join(work, "byhand"), node)
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
	srv, err := localnet.ServeDir(filepath.Join(work, "www"))
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()

	ph.step(t, "starting the validator and the by-hand full node")
	if err := node.Start(); err != nil {
		t.Fatal(err)
	}
	if _, err := node.WaitHeight(ctx, 2); err != nil {
		t.Fatal(err)
	}
	if err := byHand.Start(); err != nil {
		t.Fatal(err)
	}

	// Plan v2 names the bad build (its checksum): invisor stages it before H.
	ph.step(t, "passing plan v2 (naming exampled-v2-bad)")
	sc, err := node.ScheduleUpgrade(ctx, srv, "v2", bad, 45)
	if err != nil {
		t.Fatal(err)
	}
	h := sc.Height
	t.Logf("plan v2 at height %d names exampled-v2-bad (sha256 %.12s...)", h, sc.SHA256)
	ph.step(t, "waiting for exampled-v2-bad to be staged before height %d", h)
	for {
		if rec, _, ok := localnet.Staged(node.Home, "v2"); ok && rec.SHA256 == sc.SHA256 {
			break
		}
		info, err := node.AppInfo(ctx)
		if err == nil && info.Height >= h-1 {
			t.Fatalf("exampled-v2-bad not staged before height %d (at %d)", h, info.Height)
		}
		if done, exitErr := node.Exited(); done {
			t.Fatalf("the validator exited before exampled-v2-bad was staged: %v", exitErr)
		}
		if ctx.Err() != nil {
			t.Fatal(ctx.Err())
		}
		time.Sleep(100 * time.Millisecond)
	}

	// At H invisor switches to the bad build; its handler fails and the chain stops at H-1.
	ph.step(t, "waiting for the switch to exampled-v2-bad at %d and its handler's failure", h)
	for !strings.Contains(node.LogTail(1<<20), failLine) {
		if done, exitErr := node.Exited(); done && !strings.Contains(node.LogTail(1<<20), failLine) {
			t.Fatalf("the validator exited without running the bad build's handler: %v", exitErr)
		}
		if ctx.Err() != nil {
			t.Fatalf("the bad build's handler never ran: %v", ctx.Err())
		}
		time.Sleep(100 * time.Millisecond)
	}
	exited, _ := node.Exited()
	t.Logf("the v2 handler of exampled-v2-bad failed at height %d (process exited: %v)", h, exited)
	if info, err := node.AppInfo(ctx); err == nil && info.Height >= h {
		t.Fatalf("the chain got past the failed upgrade: app at %d (%s)", info.Height, info.Version)
	}
	ph.step(t, "stopping the validator after the failed handler")
	if err := node.Stop(15 * time.Second); err != nil {
		t.Fatal(err)
	}
	backups, err := relauncher.ListBackups(node.Home)
	if err != nil || len(backups) != 1 || backups[0].Upgrade != "v2" || backups[0].Height != h ||
		backups[0].Previous != localnet.Layout(node.Home).GenesisTarget() {
		t.Fatalf("backups after the switch: %+v, %v; want the one taken at the switch to v2 at %d, genesis before", backups, err, h)
	}
	taken := backups[0]

	// The backup's signing state stands for an older one (a backup taken before
	// the node signed more blocks): the rollback must keep the live one.
	live, err := os.ReadFile(filepath.Join(node.Home, "data", relauncher.ValidatorStateFile))
	if err != nil {
		t.Fatal(err)
	}
	older := []byte(`{"height":"1","round":0,"step":0}` + "\n")
	if err := os.WriteFile(filepath.Join(taken.Path, relauncher.ValidatorStateFile), older, 0o600); err != nil {
		t.Fatal(err)
	}

	ph.step(t, "invisor rollback")
	out, err := node.CLI(ctx, "invisor", "rollback")
	t.Logf("invisor rollback:\n%s", out)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(out), "invisor stage v2 --replace --file") {
		t.Errorf("rollback does not name the next step:\n%s", out)
	}
	if got, err := os.ReadFile(filepath.Join(node.Home, "data", relauncher.ValidatorStateFile)); err != nil || !bytes.Equal(got, live) {
		t.Fatalf("restored %s = %s (%v), want the live %s (the backup's is %s)", relauncher.ValidatorStateFile, got, err, live, older)
	}
	if _, err := os.Stat(filepath.Join(node.Home, "data", relauncher.BackupManifestFile)); !os.IsNotExist(err) {
		t.Errorf("the backup's manifest is in the restored data: %v", err)
	}
	aside, _ := filepath.Glob(filepath.Join(node.Home, "data-rolledback-*-v2"))
	if len(aside) != 1 {
		t.Fatalf("moved-aside data: %v, want one data-rolledback-*-v2 in the home", aside)
	}
	if _, err := os.Stat(filepath.Join(aside[0], "application.db")); err != nil {
		t.Errorf("the moved-aside data is not the replaced data directory: %v", err)
	}
	if got, _ := os.ReadFile(filepath.Join(aside[0], relauncher.ValidatorStateFile)); !bytes.Equal(got, live) {
		t.Errorf("moved-aside signing state %s, want %s", got, live)
	}
	if cur, _, _ := localnet.Layout(node.Home).CurrentDir(); cur != localnet.Layout(node.Home).GenesisTarget() {
		t.Errorf("current -> %s after the rollback, want genesis", cur)
	}

	ph.step(t, "invisor stage v2 --replace --file exampled-v2")
	out, err = node.CLI(ctx, "invisor", "stage", "v2", "--replace", "--file", v2)
	t.Logf("invisor stage v2 --replace:\n%s", out)
	if err != nil {
		t.Fatal(err)
	}

	// The v1 path again: redirected to the good v2, which applies the upgrade at H.
	ph.step(t, "restarting the validator from v1: the good v2 must apply the upgrade at %d and reach %d", h, h+3)
	if err := node.Start(); err != nil {
		t.Fatal(err)
	}
	info, err := node.WaitHeight(ctx, h+3)
	if err != nil || info.Version != "v2.0.0" {
		t.Fatalf("after the rollback the chain did not continue on v2.0.0 to %d: %+v %v", h+3, info, err)
	}
	if exe, _ := node.Exe(); exe != localnet.StagedBin(node.Home, "v2") {
		t.Errorf("the node runs %s, want the staged %s", exe, localnet.StagedBin(node.Home, "v2"))
	}
	if tr, _ := node.TraceDescription(ctx, localnet.TraceDenom); !strings.Contains(tr, fmt.Sprintf("upgrade handler v2 ran at height %d", h)) {
		t.Errorf("the good v2 handler left no trace at %d: %q", h, tr)
	}

	// The node that never ran the bad build: v1, then the good v2 by hand at its halt.
	ph.step(t, "the by-hand node reaching %d on v1", h-1)
	if _, err := byHand.WaitHeight(ctx, h-1); err != nil {
		if done, _ := byHand.Exited(); !done {
			t.Fatalf("by-hand node: %v", err)
		}
	}
	if err := byHand.Stop(15 * time.Second); err != nil {
		t.Fatal(err)
	}
	byHand.Bin = v2
	ph.step(t, "the by-hand node on the good v2 following past %d", h)
	if err := byHand.Start(); err != nil {
		t.Fatal(err)
	}
	if info, err := byHand.WaitHeight(ctx, h+2); err != nil || info.Version != "v2.0.0" {
		t.Fatalf("the node upgraded by hand did not follow past %d (app hash mismatch?): %+v %v", h, info, err)
	}
	ph.step(t, "comparing app hashes and the history")
	a, errA := appHashAfter(ctx, node, h)
	b, errB := appHashAfter(ctx, byHand, h)
	if errA != nil || errB != nil || a == "" || a != b {
		t.Errorf("app hash of height %d: validator %q (%v), node that never ran the bad build %q (%v)", h, a, errA, b, errB)
	}

	hist, err := history.Read(node.Home)
	if err != nil {
		t.Fatal(err)
	}
	var events []string
	for _, e := range hist {
		events = append(events, e.Event+":"+e.Upgrade)
	}
	var rb *history.Entry
	for i := range hist {
		if hist[i].Event == history.EventRollback {
			rb = &hist[i]
		}
	}
	if rb == nil || rb.Upgrade != "v2" || rb.Height != h || rb.Backup != taken.Path || rb.MovedAside != aside[0] {
		t.Errorf("history %v: want a rollback of v2 at %d from %s, moved aside to %v", events, h, taken.Path, aside)
	}
	if n := len(hist); n == 0 || hist[n-1].Event != history.EventSwitched || !hist[n-1].AfterRollback {
		t.Errorf("history %v: want the switch to the good v2 after the rollback last", events)
	}
	t.Logf("history: %v", events)
}

// appHashAfter is the app hash of height h as block h+1 carries it on n.
func appHashAfter(ctx context.Context, n *localnet.Node, h int64) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("http://127.0.0.1:%d/block?height=%d", n.RPCPort, h+1), nil)
	if err != nil {
		return "", err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	var r struct {
		Result struct {
			Block struct {
				Header struct {
					AppHash string `json:"app_hash"`
				} `json:"header"`
			} `json:"block"`
		} `json:"result"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		return "", err
	}
	return r.Result.Block.Header.AppHash, nil
}
