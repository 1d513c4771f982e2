package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/invisor/invisor/example-app/localnet"
)

// escapedName is the example chain's second name for the upgrade to v2
// (app.EscapedUpgrade): upper case, "/", a space, quotes and non-ASCII.
const escapedName = `V2/Ünï "q"`

// escapedDir is the directory cosmovisor v1.5.0 uses for it: lower-cased, then
// url.PathEscape. Spelled out here so the test does not share the rule it checks.
const escapedDir = "v2%2F%C3%BCn%C3%AF%20%22q%22"

// serve copies bin under the file server as www/<sub>/exampled and returns its
// plan info and sha256.
func (c *faultChain) serve(sub, bin string) (info, sha string) {
	c.t.Helper()
	dst := filepath.Join(c.srv.Dir, sub, localnet.DaemonName)
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		c.t.Fatal(err)
	}
	data, err := os.ReadFile(bin)
	if err != nil {
		c.t.Fatal(err)
	}
	if err := os.WriteFile(dst, data, 0o755); err != nil {
		c.t.Fatal(err)
	}
	sha, err = localnet.SHA256File(dst)
	if err != nil {
		c.t.Fatal(err)
	}
	return localnet.PlanInfo(runtime.GOOS, runtime.GOARCH, c.srv.URL+"/"+sub+"/"+localnet.DaemonName, sha), sha
}

// pass passes a plan named name delay blocks from now and returns its height.
func (c *faultChain) pass(name string, delay int64, info string) int64 {
	c.t.Helper()
	now, err := c.node.AppInfo(c.ctx)
	if err != nil {
		c.t.Fatal(err)
	}
	h := now.Height + delay
	if err := c.node.PassUpgrade(c.ctx, name, h, info); err != nil {
		c.t.Fatal(err)
	}
	return h
}

// TestFault33EscapedNameUpgradesInPlace: a plan whose name needs case handling
// and escaping is staged into cosmovisor's directory for it, recognised at the
// halt and switched in place like any other.
func TestFault33EscapedNameUpgradesInPlace(t *testing.T) {
	t.Parallel() // a one-node chain that mostly waits for blocks: runs beside another (make test-e2e: -parallel 2)
	c := newFaultChain(t, []string{"DAEMON_ALLOW_DOWNLOAD_BINARIES=true"})
	r, err := localnet.RunUpgrade(c.ctx, c.node, localnet.UpgradeSpec{
		Name: escapedName, Binary: filepath.Join(c.dir, "exampled-v2"), Server: c.srv,
		Progress: func(s string) { t.Log(s) },
	})
	if err != nil {
		t.Fatalf("%v\n%s", err, r.Summary())
	}
	want := filepath.Join(c.node.Home, "cosmovisor", "upgrades", escapedDir, "bin", localnet.DaemonName)
	if r.ExeAfter != want || r.VersionAfter != "v2.0.0" || r.PIDAfter != r.PIDBefore {
		t.Fatalf("after the upgrade: PID %d->%d, %s, exe %s; want the same PID on v2.0.0 from %s", r.PIDBefore, r.PIDAfter, r.VersionAfter, r.ExeAfter, want)
	}
	if link, _ := os.Readlink(filepath.Join(c.node.Home, "cosmovisor", "current")); link != filepath.Join(c.node.Home, "cosmovisor", "upgrades", escapedDir) {
		t.Errorf("current -> %q, want the absolute upgrades/%s (cosmovisor uses the link text as is)", link, escapedDir)
	}
}

// cosmovisorBin is cosmovisor v1.5.0 as built by the Makefile from the module
// proxy (bench/cosmovisor/go.mod pins it).
func cosmovisorBin(t *testing.T) string {
	t.Helper()
	p := os.Getenv("COSMOVISOR_BIN")
	if p == "" {
		if os.Getenv("CI") == "true" {
			t.Fatal("COSMOVISOR_BIN is not set under CI: make test-e2e builds cosmovisor v1.5.0 and sets it")
		}
		t.Skip("COSMOVISOR_BIN is not set: run `make test-e2e`, which builds cosmovisor v1.5.0 from the module proxy")
	}
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("COSMOVISOR_BIN: %v", err)
	}
	return p
}

// TestCosmovisorHomePickedUpUnchanged: a home laid out by cosmovisor v1.5.0
// (`cosmovisor init`, then `cosmovisor add-upgrade` for a name that needs case
// handling and escaping) is used as it is: invisor verifies the binary
// cosmovisor placed against the plan's checksum and switches to it in place at
// the halt. Then the operator moves back: `cosmovisor run start` on the same home
// runs the upgraded binary and the chain goes on.
func TestCosmovisorHomePickedUpUnchanged(t *testing.T) {
	t.Parallel() // a one-node chain that mostly waits for blocks: runs beside another (make test-e2e: -parallel 2)
	cv := cosmovisorBin(t)
	dir := builds(t)
	v1, v2 := filepath.Join(dir, "exampled-v1"), filepath.Join(dir, "exampled-v2")
	c := newStoppedFaultChain(t, []string{"DAEMON_ALLOW_DOWNLOAD_BINARIES=false"})
	cvEnv := []string{"DAEMON_HOME=" + c.node.Home, "DAEMON_NAME=" + localnet.DaemonName}
	for _, args := range [][]string{{"init", v1}, {"add-upgrade", escapedName, v2}} {
		if out, errOut, err := run(c.ctx, cv, cvEnv, args...); err != nil {
			t.Fatalf("cosmovisor %s: %v\n%s%s", strings.Join(args, " "), err, out, errOut)
		}
	}
	placed := filepath.Join(c.node.Home, "cosmovisor", "upgrades", escapedDir, "bin", localnet.DaemonName)
	if _, err := os.Stat(placed); err != nil {
		t.Fatalf("cosmovisor did not place the binary where this test expects it: %v", err)
	}
	c.start()
	pid := c.node.Pid()
	info, _ := c.serve("v2", v2)
	h := c.pass(escapedName, 25, info)
	got, err := c.node.WaitHeight(c.ctx, h+2)
	if err != nil {
		t.Fatal(err)
	}
	if c.node.Pid() != pid || got.Version != "v2.0.0" || c.exe() != placed {
		t.Fatalf("PID %d/%d, version %s, exe %s; want the same PID running cosmovisor's %s", c.node.Pid(), pid, got.Version, c.exe(), placed)
	}
	ents, _ := os.ReadDir(filepath.Join(c.node.Home, "cosmovisor", "upgrades"))
	if len(ents) != 1 || ents[0].Name() != escapedDir {
		t.Fatalf("upgrades/ holds %v; want cosmovisor's %s alone, unchanged", ents, escapedDir)
	}
	trace, _ := c.node.TraceDescription(c.ctx, localnet.TraceDenom)
	if !strings.Contains(trace, "upgrade handler "+escapedName+" ran at height "+strconv.FormatInt(h, 10)) {
		t.Fatalf("handler trace %q", trace)
	}

	// And back to cosmovisor, on the same home.
	if err := c.node.Stop(15 * time.Second); err != nil {
		t.Fatal(err)
	}
	cmd := exec.CommandContext(c.ctx, cv, "run", "start", "--home", c.node.Home, "--log_no_color")
	cmd.Env = append(os.Environ(), append(cvEnv, "DAEMON_RESTART_AFTER_UPGRADE=true", "UNSAFE_SKIP_BACKUP=true")...)
	logf, err := os.OpenFile(c.node.LogPath, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		_ = cmd.Process.Signal(os.Interrupt)
		select {
		case <-exited:
		case <-time.After(15 * time.Second):
			_ = cmd.Process.Kill()
		}
	}()
	for {
		got, err := c.node.AppInfo(c.ctx)
		if err == nil && got.Height >= h+5 {
			if got.Version != "v2.0.0" {
				t.Fatalf("under cosmovisor after invisor's upgrade: %+v", got)
			}
			break
		}
		select {
		case err := <-exited:
			t.Fatalf("cosmovisor exited (%v) at %+v", err, got)
		case <-c.ctx.Done():
			t.Fatalf("under cosmovisor after invisor's upgrade: stuck at %+v", got)
		case <-time.After(50 * time.Millisecond):
		}
	}
	if log := c.node.LogTail(1 << 20); !strings.Contains(log, "invisor: running under cosmovisor") {
		t.Error("the binary under cosmovisor did not say it leaves the switch to cosmovisor")
	}
}

// TestFault34PlacedBinaryMismatchNeverRuns: downloads are off and the operator put
// the wrong build where the plan's binary goes. At the halt it is not run: the
// node waits and says why; once the operator stages the right file, it switches.
func TestFault34PlacedBinaryMismatchNeverRuns(t *testing.T) {
	t.Parallel() // a one-node chain that mostly waits for blocks: runs beside another (make test-e2e: -parallel 2)
	c := newFaultChain(t, []string{"DAEMON_ALLOW_DOWNLOAD_BINARIES=false"})
	v1 := filepath.Join(c.dir, "exampled-v1")
	wrong := c.stagedPath("v2")
	if err := os.MkdirAll(filepath.Dir(wrong), 0o755); err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(filepath.Join(c.dir, "exampled-v3"))
	if err := os.WriteFile(wrong, data, 0o755); err != nil {
		t.Fatal(err)
	}
	pid := c.node.Pid()
	sc := c.schedule("v2", 25)
	c.waitHalted()
	time.Sleep(3 * time.Second)
	if exe := c.exe(); exe == wrong || c.node.Pid() != pid {
		t.Fatalf("the mismatching binary runs (exe %s, PID %d->%d)", exe, pid, c.node.Pid())
	}
	if info, _ := c.node.AppInfo(c.ctx); info.Height >= sc.Height {
		t.Fatalf("the chain went past %d: %+v", sc.Height, info)
	}
	log := c.node.LogTail(1 << 20)
	if !strings.Contains(log, "checksum mismatch") || !strings.Contains(log, sc.SHA256) {
		t.Fatalf("no log line names the checksum mismatch with the plan's sha256 %s", sc.SHA256)
	}
	// The operator follows the advice: remove it and stage the right file.
	if err := os.Remove(wrong); err != nil {
		t.Fatal(err)
	}
	if out, errOut, err := run(c.ctx, v1, nil, "invisor", "stage", "v2", "--file", filepath.Join(c.dir, "exampled-v2"), "--home", c.node.Home); err != nil {
		t.Fatalf("invisor stage: %v\n%s%s", err, out, errOut)
	}
	info, err := c.node.WaitHeight(c.ctx, sc.Height+1)
	if err != nil || info.Version != "v2.0.0" || c.node.Pid() != pid || c.exe() != wrong {
		t.Fatalf("after staging the right binary: %+v %v, PID %d, exe %s", info, err, c.node.Pid(), c.exe())
	}
}

// TestFault35SameNamePlanReplacedStagedAnew: governance replaces plan "v2" by
// another plan of the same name with another binary after the first one was
// staged. The first binary (a v3 build, which also carries handler v2) must never
// run; the replacement's is downloaded and runs.
func TestFault35SameNamePlanReplacedStagedAnew(t *testing.T) {
	t.Parallel() // a one-node chain that mostly waits for blocks: runs beside another (make test-e2e: -parallel 2)
	c := newFaultChain(t, []string{"DAEMON_ALLOW_DOWNLOAD_BINARIES=true"})
	infoA, _ := c.serve("a", filepath.Join(c.dir, "exampled-v3"))
	hA := c.pass("v2", 60, infoA)
	c.waitStaged("v2", hA)
	infoB, shaB := c.serve("b", filepath.Join(c.dir, "exampled-v2"))
	hB := c.pass("v2", 25, infoB)
	if hB >= hA {
		t.Fatalf("replacement at %d must come before the first plan's %d", hB, hA)
	}
	info, err := c.node.WaitHeight(c.ctx, hB+2)
	if err != nil {
		t.Fatal(err)
	}
	sum, _ := localnet.SHA256File(c.stagedPath("v2"))
	if info.Version != "v2.0.0" || c.exe() != c.stagedPath("v2") || sum != shaB {
		t.Fatalf("after the replaced plan: version %s, exe %s, sha256 %s; want v2.0.0 from the replacement (%s)", info.Version, c.exe(), sum, shaB)
	}
}

// TestFault37TwoStartsOnOneHome: a second `start` on a home a node runs on refuses
// at once, naming the holder's PID, and touches nothing; the first node then
// upgrades normally.
func TestFault37TwoStartsOnOneHome(t *testing.T) {
	t.Parallel() // a one-node chain that mostly waits for blocks: runs beside another (make test-e2e: -parallel 2)
	c := newFaultChain(t, []string{"DAEMON_ALLOW_DOWNLOAD_BINARIES=true"})
	v1 := filepath.Join(c.dir, "exampled-v1")
	before, _ := os.ReadDir(filepath.Join(c.node.Home, "cosmovisor"))
	start := time.Now()
	out, errOut, err := run(c.ctx, v1, nil, "start", "--home", c.node.Home)
	if err == nil {
		t.Fatalf("the second start did not refuse:\n%s%s", out, errOut)
	}
	if took := time.Since(start); took > 20*time.Second {
		t.Errorf("the second start took %s to refuse", took)
	}
	if !strings.Contains(errOut+out, "process "+strconv.Itoa(c.node.Pid())+" holds") {
		t.Fatalf("the refusal does not name the holder's PID %d:\n%s%s", c.node.Pid(), out, errOut)
	}
	after, _ := os.ReadDir(filepath.Join(c.node.Home, "cosmovisor"))
	if len(after) != len(before) {
		t.Errorf("the refused start changed cosmovisor/: %v -> %v", before, after)
	}
	r, err := localnet.RunUpgrade(c.ctx, c.node, localnet.UpgradeSpec{Name: "v2", Binary: filepath.Join(c.dir, "exampled-v2"), Server: c.srv, PlanDelay: 25})
	if err != nil {
		t.Fatalf("the first node did not upgrade: %v\n%s", err, r.Summary())
	}
}

// TestFault38RestartAtHaltFetches: the node halts for an upgrade whose binary it
// does not have (downloads off); the operator restarts it with downloads allowed.
// The boot fetches the binary (with the usual checks), then switches to it, and
// the chain goes on.
func TestFault38RestartAtHaltFetches(t *testing.T) {
	t.Parallel() // a one-node chain that mostly waits for blocks: runs beside another (make test-e2e: -parallel 2)
	c := newFaultChain(t, []string{"DAEMON_ALLOW_DOWNLOAD_BINARIES=false"})
	sc := c.schedule("v2", 25)
	c.waitHalted()
	if _, _, ok := localnet.Staged(c.node.Home, "v2"); ok {
		t.Fatal("v2 was staged with downloads off")
	}
	if err := c.node.Stop(15 * time.Second); err != nil {
		t.Fatal(err)
	}
	c.node.Env = []string{"DAEMON_ALLOW_DOWNLOAD_BINARIES=true"}
	if err := c.node.Start(); err != nil {
		t.Fatal(err)
	}
	pid := c.node.Pid()
	info, err := c.node.WaitHeight(c.ctx, sc.Height+1)
	if err != nil {
		t.Fatal(err)
	}
	if info.Version != "v2.0.0" || c.node.Pid() != pid || c.exe() != c.stagedPath("v2") {
		t.Fatalf("after the restart: %+v, PID %d (started %d), exe %s", info, c.node.Pid(), pid, c.exe())
	}
	log := c.node.LogTail(4 << 20)
	if !strings.Contains(log, "fetching the upgrade binary at boot") || !strings.Contains(log, "staging: downloaded") {
		t.Error("the boot did not say it fetched the binary")
	}
}
