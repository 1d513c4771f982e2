package e2e

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/invisor/invisor/example-app/localnet"
)

// faultChain is a fresh one-validator chain of exampled-v1, and a
// loopback server for upgrade binaries.
type faultChain struct {
	t    *testing.T
	ctx  context.Context
	dir  string // build directory
	work string
	node *localnet.Node
	srv  *localnet.FileServer
}

// newStoppedFaultChain is a fresh one-validator chain with exampled-v1, not started yet.
func newStoppedFaultChain(t *testing.T, env []string) *faultChain {
	t.Helper()
	dir := builds(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	t.Cleanup(cancel)
	work := t.TempDir()
	node, err := localnet.NewSingle(ctx, filepath.Join(dir, "exampled-v1"), filepath.Join(work, "node0"),
		localnet.Settings{ChainID: "invisor-fault-1"})
	if err != nil {
		t.Fatal(err)
	}
	node.Env = env
	srv, err := localnet.ServeDir(filepath.Join(work, "www"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := node.Stop(15 * time.Second); err != nil {
			t.Error(err)
		}
		srv.Close()
		if t.Failed() {
			t.Logf("---- node log tail ----\n%s", node.LogTail(8000))
		}
	})
	return &faultChain{t: t, ctx: ctx, dir: dir, work: work, node: node, srv: srv}
}

// newFaultChain is newStoppedFaultChain, started.
func newFaultChain(t *testing.T, env []string, startArgs ...string) *faultChain {
	t.Helper()
	c := newStoppedFaultChain(t, env)
	c.start(startArgs...)
	return c
}

// start starts the node and waits for height 2.
func (c *faultChain) start(args ...string) {
	c.t.Helper()
	if err := c.node.Start(args...); err != nil {
		c.t.Fatal(err)
	}
	if _, err := c.node.WaitHeight(c.ctx, 2); err != nil {
		c.t.Fatal(err)
	}
}

func (c *faultChain) schedule(name string, delay int64) localnet.Scheduled {
	c.t.Helper()
	sc, err := c.node.ScheduleUpgrade(c.ctx, c.srv, name, filepath.Join(c.dir, "exampled-"+name), delay)
	if err != nil {
		c.t.Fatal(err)
	}
	return sc
}

func (c *faultChain) waitStaged(name string, before int64) {
	c.t.Helper()
	for {
		if _, _, ok := localnet.Staged(c.node.Home, name); ok {
			break
		}
		info, _ := c.node.AppInfo(c.ctx)
		if info.Height >= before || c.ctx.Err() != nil {
			c.t.Fatalf("%s not staged before height %d (at %d)", name, before, info.Height)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// waitHalted waits until x/upgrade wrote upgrade-info.json for the plan.
func (c *faultChain) waitHalted() {
	c.t.Helper()
	p := filepath.Join(c.node.Home, "data", "upgrade-info.json")
	for {
		if _, err := os.Stat(p); err == nil {
			return
		}
		if c.ctx.Err() != nil {
			c.t.Fatal("the chain never halted for the upgrade")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (c *faultChain) exe() string {
	exe, _ := c.node.Exe()
	return exe
}

func (c *faultChain) current() string {
	// Relative to the cosmovisor root; the link itself is absolute, as
	// cosmovisor writes (and needs) it.
	root := filepath.Join(c.node.Home, "cosmovisor")
	link, _ := os.Readlink(filepath.Join(root, "current"))
	if rel, err := filepath.Rel(root, link); err == nil && filepath.IsAbs(link) {
		return rel
	}
	return link
}

func (c *faultChain) stagedPath(name string) string {
	return filepath.Join(c.node.Home, "cosmovisor", "upgrades", name, "bin", localnet.DaemonName)
}

// Row 20 of FAULTS.md: the node dies (SIGKILL) after the clean stop at the halt
// and before the exec. Started again with the OLD binary, it must exec the
// staged one before opening any store, and the chain must go on.
func TestFaultKilledBetweenHaltAndExec(t *testing.T) {
	marker := filepath.Join(t.TempDir(), "pre-upgrade-ran")
	c := newFaultChain(t, []string{"DAEMON_ALLOW_DOWNLOAD_BINARIES=true",
		"EXAMPLED_PRE_UPGRADE_MARKER=" + marker, "EXAMPLED_PRE_UPGRADE_SLEEP=60s"})
	sc := c.schedule("v2", 40)
	c.waitStaged("v2", sc.Height)
	// pre-upgrade runs after the node stopped cleanly and before `current` is
	// flipped; overlapped, the PID may already be the new binary waiting for it.
	for {
		if _, err := os.Stat(marker); err == nil {
			break
		}
		if done, err := c.node.Exited(); done || c.ctx.Err() != nil {
			t.Fatalf("node never reached pre-upgrade (exited %v, %v)", done, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	c.node.Kill()
	if info, err := c.node.AppInfo(c.ctx); err == nil {
		t.Fatalf("node still answers after SIGKILL: %+v", info)
	}
	if link := c.current(); link != "genesis" {
		t.Fatalf("current -> %q while pre-upgrade was still running, want genesis", link)
	}

	c.node.Env = []string{"DAEMON_ALLOW_DOWNLOAD_BINARIES=true"}
	if err := c.node.Start(); err != nil {
		t.Fatal(err)
	}
	pid := c.node.Pid()
	info, err := c.node.WaitHeight(c.ctx, sc.Height+3)
	if err != nil {
		t.Fatal(err)
	}
	if c.node.Pid() != pid || c.exe() != c.stagedPath("v2") || info.Version != "v2.0.0" {
		t.Fatalf("after restart with v1: PID %d (started %d), exe %s, version %s; want v1 to exec the staged v2",
			c.node.Pid(), pid, c.exe(), info.Version)
	}
	// The redirect must come before any store is opened in the restarted process.
	log := c.node.LogTail(1 << 22)
	restart := strings.LastIndex(log, "invisor: this executable is not the binary the chain needs; redirecting")
	if restart < 0 {
		t.Fatal("no boot redirect logged after the restart")
	}
	after := log[restart:]
	execAt, storesAt := strings.Index(after, "invisor: exec"), strings.Index(after, "ABCI Handshake")
	if execAt < 0 || (storesAt >= 0 && storesAt < execAt) {
		t.Fatalf("the restarted v1 opened the stores before exec'ing v2 (exec at %d, handshake at %d)", execAt, storesAt)
	}
}

// The plan is cancelled by governance before its height: no switch.
func TestFaultPlanCancelled(t *testing.T) {
	t.Parallel() // a one-node chain that mostly waits for blocks: runs beside another (make test-e2e: -parallel 2)
	c := newFaultChain(t, []string{"DAEMON_ALLOW_DOWNLOAD_BINARIES=true"})
	pid, exe := c.node.Pid(), c.exe()
	sc := c.schedule("v2", 45)
	c.waitStaged("v2", sc.Height)
	if err := c.node.CancelUpgrade(c.ctx); err != nil {
		t.Fatal(err)
	}
	if info, _ := c.node.AppInfo(c.ctx); info.Height >= sc.Height {
		t.Fatalf("cancel passed too late (height %d, plan %d)", info.Height, sc.Height)
	}
	info, err := c.node.WaitHeight(c.ctx, sc.Height+3)
	if err != nil {
		t.Fatal(err)
	}
	if c.node.Pid() != pid || c.exe() != exe || info.Version != "v1.0.0" {
		t.Fatalf("after a cancelled plan: PID %d/%d exe %s version %s; want no switch", c.node.Pid(), pid, c.exe(), info.Version)
	}
	if _, err := os.Stat(filepath.Join(c.node.Home, "data", "upgrade-info.json")); err == nil {
		t.Fatal("upgrade-info.json written for a cancelled plan")
	}
	if _, err := os.Stat(filepath.Join(c.node.Home, "cosmovisor", "upgrades", "v2")); err == nil {
		t.Fatal("the downloaded binary of the cancelled plan is still installed")
	}
	if plan, _ := c.node.UpgradePlan(c.ctx); plan != "" && !strings.Contains(plan, "null") && strings.Contains(plan, "v2") {
		t.Fatalf("plan still in force: %s", plan)
	}
}

// The plan is replaced by one for a later height: the switch happens at the
// new height only.
func TestFaultPlanRescheduled(t *testing.T) {
	t.Parallel() // a one-node chain that mostly waits for blocks: runs beside another (make test-e2e: -parallel 2)
	c := newFaultChain(t, []string{"DAEMON_ALLOW_DOWNLOAD_BINARIES=true"})
	pid := c.node.Pid()
	first := c.schedule("v2", 40)
	second := c.schedule("v2", 45) // replaces the first plan; its height is later
	if second.Height <= first.Height {
		t.Fatalf("second plan height %d not after the first %d", second.Height, first.Height)
	}
	info, err := c.node.WaitHeight(c.ctx, first.Height+1)
	if err != nil {
		t.Fatal(err)
	}
	if info.Version != "v1.0.0" || c.exe() != filepath.Join(c.dir, "exampled-v1") {
		t.Fatalf("switched at the replaced height %d: version %s exe %s", first.Height, info.Version, c.exe())
	}
	info, err = c.node.WaitHeight(c.ctx, second.Height+3)
	if err != nil {
		t.Fatal(err)
	}
	if c.node.Pid() != pid || info.Version != "v2.0.0" || c.exe() != c.stagedPath("v2") {
		t.Fatalf("at the new height: PID %d/%d version %s exe %s", c.node.Pid(), pid, info.Version, c.exe())
	}
	if trace, _ := c.node.TraceDescription(c.ctx, localnet.TraceDenom); !strings.Contains(trace, "height "+itoa(second.Height)) {
		t.Fatalf("handler trace %q, want it at height %d", trace, second.Height)
	}
}

// Row 16: the plan height is in the node's skip list: no switch.
func TestFaultSkipHeight(t *testing.T) {
	t.Parallel() // a one-node chain that mostly waits for blocks: runs beside another (make test-e2e: -parallel 2)
	const skip = 40
	c := newFaultChain(t, []string{"DAEMON_ALLOW_DOWNLOAD_BINARIES=true"}, "--unsafe-skip-upgrades", itoa(skip))
	pid, exe := c.node.Pid(), c.exe()
	// The plan at exactly the skip height (not "now + delay": the chain moves
	// while the binary is copied to the server).
	planInfo, _ := c.serve("v2", filepath.Join(c.dir, "exampled-v2"))
	if err := c.node.PassUpgrade(c.ctx, "v2", skip, planInfo); err != nil {
		t.Fatal(err)
	}
	info, err := c.node.WaitHeight(c.ctx, skip+3)
	if err != nil {
		t.Fatal(err)
	}
	if c.node.Pid() != pid || c.exe() != exe || info.Version != "v1.0.0" {
		t.Fatalf("at a skip height: PID %d/%d exe %s version %s; want no switch", c.node.Pid(), pid, c.exe(), info.Version)
	}
}

// Row 28: the staged binary is modified after verification: it is never
// execed; the node stays halted and says why.
func TestFaultStagedBinaryModified(t *testing.T) {
	t.Parallel() // a one-node chain that mostly waits for blocks: runs beside another (make test-e2e: -parallel 2)
	c := newFaultChain(t, []string{"DAEMON_ALLOW_DOWNLOAD_BINARIES=true"})
	sc := c.schedule("v2", 40)
	c.waitStaged("v2", sc.Height)
	f, err := os.OpenFile(c.stagedPath("v2"), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write([]byte("tampered")); err != nil {
		t.Fatal(err)
	}
	f.Close()
	c.waitHalted()
	time.Sleep(3 * time.Second)
	if done, err := c.node.Exited(); done {
		t.Logf("node exited: %v", err)
	} else if exe := c.exe(); exe == c.stagedPath("v2") {
		sum, _ := localnet.SHA256File(c.stagedPath("v2"))
		if sum != sc.SHA256 {
			t.Fatalf("the modified binary was execed (sha256 %s)", sum)
		}
	}
	if info, err := c.node.AppInfo(c.ctx); err == nil && info.Height >= sc.Height {
		t.Fatalf("the chain went past the upgrade height with a tampered binary: %+v", info)
	}
	log := c.node.LogTail(1 << 20)
	if !strings.Contains(log, "sha256") && !strings.Contains(log, "checksum") && !strings.Contains(log, "changed") {
		t.Fatal("no log line says the staged binary does not match")
	}
}

// The binary is not ready at the halt (downloads off); the operator places it
// by hand; invisor verifies it and switches right after.
func TestFaultBinaryPlacedAfterHalt(t *testing.T) {
	t.Parallel() // a one-node chain that mostly waits for blocks: runs beside another (make test-e2e: -parallel 2)
	c := newFaultChain(t, nil)
	pid := c.node.Pid()
	sc := c.schedule("v2", 25)
	c.waitHalted()
	time.Sleep(2 * time.Second)
	if info, _ := c.node.AppInfo(c.ctx); info.Height != sc.Height-1 {
		t.Fatalf("halted node at height %d, want %d", info.Height, sc.Height-1)
	}
	if !strings.Contains(c.node.LogTail(1<<20), "binary not ready") {
		t.Fatal("the halted node does not say what is missing")
	}
	// The operator places the binary (atomically, as `cp` to a temp name + `mv`).
	bin := c.stagedPath("v2")
	if err := os.MkdirAll(filepath.Dir(bin), 0o755); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(filepath.Join(c.dir, "exampled-v2"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin+".tmp", data, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(bin+".tmp", bin); err != nil {
		t.Fatal(err)
	}
	placed := time.Now()
	info, err := c.node.WaitHeight(c.ctx, sc.Height)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("switched %s after the binary was placed", time.Since(placed).Round(time.Millisecond))
	if c.node.Pid() != pid || info.Version != "v2.0.0" || c.exe() != bin {
		t.Fatalf("PID %d/%d version %s exe %s; want the placed v2 in the same process", c.node.Pid(), pid, info.Version, c.exe())
	}
}

// overlapLine is what the old binary logs when it leaves pre-upgrade running
// and execs the new binary, which waits for it before reading its configuration.
const overlapLine = "invisor: pre-upgrade started; the new binary waits for it before reading its configuration"

// startLine is the SDK's first line after `start`'s PreRunE (invisor's boot),
// long after the configuration was read.
const startLine = "starting node with ABCI CometBFT in-process"

// The old binary starts pre-upgrade and execs without waiting for it; the new
// binary's start-up overlaps pre-upgrade, but it reads its configuration and
// starts the node only after pre-upgrade ended.
func TestPreUpgradeOverlapsStart(t *testing.T) {
	const sleep = 2 * time.Second
	marker := filepath.Join(t.TempDir(), "pre-upgrade-ran")
	c := newFaultChain(t, []string{"DAEMON_ALLOW_DOWNLOAD_BINARIES=true",
		"EXAMPLED_PRE_UPGRADE_MARKER=" + marker, "EXAMPLED_PRE_UPGRADE_SLEEP=" + sleep.String()})
	pid := c.node.Pid()
	sc := c.schedule("v2", 40)
	c.waitStaged("v2", sc.Height)
	var fi os.FileInfo
	for {
		var err error
		if fi, err = os.Stat(marker); err == nil {
			break
		}
		if done, err := c.node.Exited(); done || c.ctx.Err() != nil {
			t.Fatalf("node never reached pre-upgrade (exited %v, %v)", done, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	// pre-upgrade ends no earlier than its marker's mtime + sleep. Shortly before,
	// the new node must not have started yet, though its binary is already running.
	time.Sleep(time.Until(fi.ModTime().Add(sleep - 200*time.Millisecond)))
	log := c.node.LogTail(1 << 22)
	at := strings.LastIndex(log, overlapLine)
	if at < 0 {
		t.Fatal("the switch did not overlap pre-upgrade with the new binary's start-up (no log line)")
	}
	if strings.Contains(log[at:], startLine) {
		t.Fatalf("the new node started %s after pre-upgrade began, before it ended", time.Since(fi.ModTime()))
	}
	if exe := c.exe(); exe != c.stagedPath("v2") {
		t.Errorf("while pre-upgrade runs the process executes %s, want the new binary already", exe)
	}
	if link := c.current(); link != "genesis" {
		t.Errorf("current -> %q before pre-upgrade ended", link)
	}

	info, err := c.node.WaitHeight(c.ctx, sc.Height+2)
	if err != nil {
		t.Fatal(err)
	}
	if c.node.Pid() != pid || c.exe() != c.stagedPath("v2") || info.Version != "v2.0.0" || c.current() != "upgrades/v2" {
		t.Fatalf("PID %d/%d exe %s version %s current %s; want the staged v2 in the same process",
			c.node.Pid(), pid, c.exe(), info.Version, c.current())
	}
	after := c.node.LogTail(1 << 22)[at:]
	ran, flipped, started := strings.Index(after, "invisor: pre-upgrade ran"), strings.Index(after, "invisor: current link flipped"), strings.Index(after, startLine)
	if ran < 0 || flipped < ran || started < flipped {
		t.Fatalf("new binary's log out of order: pre-upgrade ran at %d, flipped at %d, node started at %d", ran, flipped, started)
	}
	var lines []string
	for _, l := range strings.Split(after[:started+len(startLine)], "\n") {
		if strings.Contains(l, "invisor:") || strings.Contains(l, startLine) {
			lines = append(lines, l)
		}
	}
	t.Logf("pre-upgrade began %s, the node started after it:\n%s", fi.ModTime().Format("15:04:05.000"), strings.Join(lines, "\n"))
}

// A pre-upgrade that fails (exit 30) while the new binary waits for it: the
// node exits non-zero without starting, and `current` still points to the old
// binary, so a restart goes through the boot redirect.
func TestPreUpgradeFailsWhileNewBinaryWaits(t *testing.T) {
	t.Parallel() // a one-node chain that mostly waits for blocks: runs beside another (make test-e2e: -parallel 2)
	c := newFaultChain(t, []string{"DAEMON_ALLOW_DOWNLOAD_BINARIES=true", "EXAMPLED_PRE_UPGRADE_EXIT=30"})
	sc := c.schedule("v2", 40)
	c.waitStaged("v2", sc.Height)
	var exitErr error
	for {
		done, err := c.node.Exited()
		if done {
			exitErr = err
			break
		}
		if c.ctx.Err() != nil {
			t.Fatal("the node did not exit after its pre-upgrade failed")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if exitErr == nil {
		t.Fatal("the node exited with status 0 after its pre-upgrade failed")
	}
	if link := c.current(); link != "genesis" {
		t.Fatalf("current -> %q after a failed pre-upgrade, want genesis", link)
	}
	log := c.node.LogTail(1 << 22)
	at := strings.LastIndex(log, overlapLine)
	if at < 0 {
		t.Fatal("the switch did not overlap pre-upgrade (no log line)")
	}
	after := log[at:]
	if !strings.Contains(after, "exit code 30") || strings.Contains(after, startLine) {
		t.Fatalf("want the new binary to report exit code 30 and not start the node; log after the switch:\n%s", after)
	}
	ents, _ := os.ReadDir(filepath.Join(c.node.Home, "cosmovisor"))
	for _, e := range ents {
		if strings.Contains(e.Name(), ".invisor-tmp-") {
			t.Errorf("pre-upgrade output left in the cosmovisor root: %s", e.Name())
		}
	}
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

// A full node that block-syncs across the upgrade height without the binary
// (downloads off) waits inside block sync, where the SDK's clean shutdown would
// hang: block sync's reactor waits for the halting call. SIGTERM must end the
// process at once, saying why, and a restart with the binary in place must
// switch and catch up.
func TestBlockSyncWaitEndsOnSIGTERM(t *testing.T) {
	c := newFaultChain(t, []string{"DAEMON_ALLOW_DOWNLOAD_BINARIES=true", "UNSAFE_SKIP_BACKUP=true"})
	sc := c.schedule("v2", 40)
	c.waitStaged("v2", sc.Height)
	if _, err := c.node.WaitHeight(c.ctx, sc.Height+3); err != nil {
		t.Fatal(err)
	}

	syncer, err := localnet.NewFullNode(c.ctx, "syncer", filepath.Join(c.dir, "exampled-v1"), filepath.Join(c.work, "syncer"), c.node)
	if err != nil {
		t.Fatal(err)
	}
	syncer.Env = []string{"DAEMON_ALLOW_DOWNLOAD_BINARIES=false", "UNSAFE_SKIP_BACKUP=true"}
	t.Cleanup(func() {
		_ = syncer.Stop(15 * time.Second)
		if t.Failed() {
			t.Logf("---- syncer log tail ----\n%s", syncer.LogTail(8000))
		}
	})
	if err := syncer.Start(); err != nil {
		t.Fatal(err)
	}
	const waiting = "invisor: chain halted for upgrade; binary not ready"
	for !strings.Contains(syncer.LogTail(1<<20), waiting) {
		if exited, _ := syncer.Exited(); exited || c.ctx.Err() != nil {
			t.Fatalf("the syncer never waited in block sync for the missing binary (exited %v)", exited)
		}
		time.Sleep(100 * time.Millisecond)
	}
	pid := syncer.Pid()
	start := time.Now()
	if err := syncer.Stop(10 * time.Second); err != nil {
		t.Fatalf("SIGTERM while block sync waits for the binary: %v", err)
	}
	took := time.Since(start)
	log := syncer.LogTail(1 << 20)
	assertHaltPath(t, "syncer", log, "re-exec", "catching-up", 1)
	if !strings.Contains(log, "stop requested while the halted block waits for the upgrade binary") {
		t.Fatalf("the syncer (pid %d) stopped after %s without saying why", pid, took)
	}
	t.Logf("syncer stopped %s after SIGTERM", took.Round(time.Millisecond))

	// The operator stages the binary as the stop line says and starts the node
	// again with v1: the boot redirect execs v2 and block sync carries on.
	v1, v2 := filepath.Join(c.dir, "exampled-v1"), filepath.Join(c.dir, "exampled-v2")
	if out, errOut, err := run(c.ctx, v1, nil, "invisor", "stage", "v2", "--file", v2, "--home", syncer.Home); err != nil {
		t.Fatalf("invisor stage v2 on the stopped syncer: %v\n%s%s", err, out, errOut)
	}
	if err := syncer.Start(); err != nil {
		t.Fatal(err)
	}
	head, err := c.node.AppInfo(c.ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := syncer.WaitHeight(c.ctx, head.Height+2); err != nil {
		t.Fatalf("the syncer did not catch up after the restart with the binary in place: %v", err)
	}
}
