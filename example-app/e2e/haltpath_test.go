package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/invisor/invisor/example-app/localnet"
)

// storesReport is the file exampled's pre-upgrade appends to
// (EXAMPLED_PRE_UPGRADE_STORES): one line per run saying whether any process
// held the node's LevelDB stores open.
func storesReport(t *testing.T) (path, env string) {
	t.Helper()
	path = filepath.Join(t.TempDir(), "stores")
	return path, "EXAMPLED_PRE_UPGRADE_STORES=" + path
}

// assertStoresClosed checks that pre-upgrade ran want times, each time with no
// store held open by any process.
func assertStoresClosed(t *testing.T, who, report string, want int) {
	t.Helper()
	b, err := os.ReadFile(report)
	if err != nil {
		t.Errorf("%s: pre-upgrade never reported the stores: %v", who, err)
		return
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) != want {
		t.Errorf("%s: pre-upgrade ran %d times, want %d:\n%s", who, len(lines), want, b)
	}
	for _, l := range lines {
		if !strings.Contains(l, "stores=closed") {
			t.Errorf("%s: pre-upgrade ran beside open stores: %s", who, l)
		}
	}
}

// assertHaltPath checks the node logged the halt path and state it should have
// taken, count times.
func assertHaltPath(t *testing.T, who, log, path, state string, count int) {
	t.Helper()
	n := 0
	for _, l := range strings.Split(log, "\n") {
		if strings.Contains(l, "invisor: upgrade halt; path chosen from CometBFT's state") {
			if !strings.Contains(l, "path="+path) || !strings.Contains(l, "node_state="+state) {
				t.Errorf("%s: halt took another path than %s (%s): %s", who, path, state, l)
			}
			n++
		}
	}
	if n != count {
		t.Errorf("%s: %d halt paths logged, want %d", who, n, count)
	}
}

// TestHaltReplayedAtHandshake: the block x/upgrade halts in is executed by the
// handshake when the node restarts after a crash that left it stored but not
// applied (here: the node halted in consensus with optimistic execution off,
// was stopped, and upgrade-info.json was removed, as a crash before x/upgrade
// wrote it leaves the home). CometBFT has not started, its failed start would
// leave its stores open: invisor re-execs, and the new image's boot backs up,
// runs pre-upgrade and switches with no store open. The PID stays.
func TestHaltReplayedAtHandshake(t *testing.T) {
	t.Parallel() // a one-node chain that mostly waits for blocks: runs beside another (make test-e2e: -parallel 2)
	report, reportEnv := storesReport(t)
	c := newFaultChain(t, []string{"DAEMON_ALLOW_DOWNLOAD_BINARIES=false", "EXAMPLED_OPTIMISTIC_EXECUTION=false", reportEnv})
	sc := c.schedule("v2", 25)
	c.waitHalted()
	// Halted in consensus (optimistic execution off): the clean-stop path, waiting for the binary.
	for !strings.Contains(c.node.LogTail(1<<22), "binary not ready") {
		if c.ctx.Err() != nil {
			t.Fatal("the halted node never said it waits for the binary")
		}
		time.Sleep(50 * time.Millisecond)
	}
	assertHaltPath(t, "at the halt", c.node.LogTail(1<<22), "clean-stop", "in-consensus", 1)
	if err := c.node.Stop(15 * time.Second); err != nil {
		t.Fatal(err)
	}
	v1, v2 := filepath.Join(c.dir, "exampled-v1"), filepath.Join(c.dir, "exampled-v2")
	if out, errOut, err := run(c.ctx, v1, nil, "invisor", "stage", "v2", "--file", v2, "--home", c.node.Home); err != nil {
		t.Fatalf("invisor stage v2: %v\n%s%s", err, out, errOut)
	}
	if _, _, ok := localnet.Staged(c.node.Home, "v2"); !ok {
		t.Fatal("stage did not record v2 for the plan")
	}
	if err := os.Remove(filepath.Join(c.node.Home, "data", "upgrade-info.json")); err != nil {
		t.Fatal(err)
	}
	if err := c.node.Start(); err != nil {
		t.Fatal(err)
	}
	pid := c.node.Pid()
	info, err := c.node.WaitHeight(c.ctx, sc.Height+2)
	if err != nil {
		t.Fatal(err)
	}
	if info.Version != "v2.0.0" || c.node.Pid() != pid || c.exe() != c.stagedPath("v2") {
		t.Fatalf("after the handshake halt: %+v, PID %d (started %d), exe %s", info, c.node.Pid(), pid, c.exe())
	}
	// From the second start on (the first boot of the restart, before its re-exec).
	log := c.node.LogTail(1 << 22)
	const boot = "invisor: watching upgrade plans"
	first := strings.Index(log, boot)
	second := strings.Index(log[first+len(boot):], boot)
	if first < 0 || second < 0 {
		t.Fatal("the restart's boot is not in the log")
	}
	restart := log[first+len(boot)+second:]
	assertHaltPath(t, "at the handshake", restart, "re-exec", "not-started", 1)
	for _, want := range []string{"re-executing this binary", "re-executed at the upgrade halt", "invisor: current link flipped"} {
		if !strings.Contains(restart, want) {
			t.Errorf("the restart did not log %q", want)
		}
	}
	assertStoresClosed(t, "handshake", report, 1)
}

// TestStagedBinaryWithoutHandlerRefused: the plan names no binary for this
// platform, so the operator places one by hand, and by mistake places the old
// release, which has no handler for the plan. Asked at staging time, it says so:
// invisor refuses it days before the height, loudly, and at the height the node
// halts and waits for a good binary instead of switching into one that would
// halt again. The operator puts the right release in place and the node switches.
func TestStagedBinaryWithoutHandlerRefused(t *testing.T) {
	t.Parallel() // a one-node chain that mostly waits for blocks: runs beside another (make test-e2e: -parallel 2)
	c := newFaultChain(t, []string{"DAEMON_ALLOW_DOWNLOAD_BINARIES=true", "UNSAFE_SKIP_BACKUP=true"})
	now, err := c.node.AppInfo(c.ctx)
	if err != nil {
		t.Fatal(err)
	}
	height := now.Height + 30
	info := localnet.PlanInfo("plan9", "amd64", c.srv.URL+"/nowhere", strings.Repeat("0", 64))
	id, err := c.node.ProposeUpgrade(c.ctx, "v2", height, info)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.node.Vote(c.ctx, id); err != nil {
		t.Fatal(err)
	}
	if err := c.node.WaitPassed(c.ctx, id); err != nil {
		t.Fatal(err)
	}
	bin := c.stagedPath("v2")
	place := func(src string) {
		t.Helper()
		if err := os.MkdirAll(filepath.Dir(bin), 0o755); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(bin+".tmp", b, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(bin+".tmp", bin); err != nil {
			t.Fatal(err)
		}
	}
	place(filepath.Join(c.dir, "exampled-v1"))
	const refused = "has no upgrade handler named"
	for !strings.Contains(c.node.LogTail(1<<22), refused) {
		info, _ := c.node.AppInfo(c.ctx)
		if info.Height >= height || c.ctx.Err() != nil {
			t.Fatalf("the binary without the handler was not refused before the height (at %d)", info.Height)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if _, _, ok := localnet.Staged(c.node.Home, "v2"); ok {
		t.Fatal("the refused binary has a completion record")
	}
	// The node publishes its state every 2 s; status shows the refusal and why.
	for {
		out, _, err := run(c.ctx, filepath.Join(c.dir, "exampled-v1"), nil, "invisor", "status", "--home", c.node.Home)
		if err == nil && strings.Contains(out, "staging    refused") && strings.Contains(out, refused) {
			break
		}
		if info, _ := c.node.AppInfo(c.ctx); info.Height >= height || c.ctx.Err() != nil {
			t.Fatalf("status never showed the refusal before the height (%v):\n%s", err, out)
		}
		time.Sleep(500 * time.Millisecond)
	}
	c.waitHalted()
	for !strings.Contains(c.node.LogTail(1<<22), "binary not ready") {
		if c.ctx.Err() != nil {
			t.Fatal("the halted node never said it waits for a good binary")
		}
		time.Sleep(50 * time.Millisecond)
	}
	pid := c.node.Pid()
	if exited, _ := c.node.Exited(); exited {
		t.Fatal("the node exited at the halt instead of waiting")
	}
	// The right release, in place of the refused file: the running node's
	// staging sees the new file, proves it for the plan, and the halt waiter
	// switches.
	place(filepath.Join(c.dir, "exampled-v2"))
	got, err := c.node.WaitHeight(c.ctx, height+2)
	if err != nil {
		t.Fatal(err)
	}
	if got.Version != "v2.0.0" || c.node.Pid() != pid {
		t.Fatalf("after the good binary was placed: %+v, PID %d (was %d)", got, c.node.Pid(), pid)
	}
	if n := strings.Count(c.node.LogTail(1<<22), "invisor: exec "); n != 1 {
		t.Errorf("%d execs, want exactly the one into the good binary", n)
	}
}
