package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/invisor/invisor"
	"github.com/invisor/invisor/example-app/localnet"
	"github.com/invisor/invisor/internal/home"
	"github.com/invisor/invisor/relauncher"
)

// TestContainer runs the node the way a container does, without a container
// runtime (none runs here): PID 1 of its own PID namespace (unshare --pid
// --fork --mount-proc), the image's files bind-mounted read-only, the home on
// its own directory (the volume). The image holds v1 as its command and the
// upgrade binaries under upgrades/<name>/bin (image-dir), and downloads are
// off, so the image is the only source. One chain shows:
//   - staging takes v2 from the image directory (recorded as source "image"),
//     nothing is downloaded, and the node, PID 1, upgrades in place: the same
//     process, still PID 1, runs the home's copy of v2 after the exec;
//   - orphans left in the namespace (a `kubectl exec`-style shell's background
//     job) are reaped by v1 and by v2, and no zombie is left after the
//     pre-upgrade, preflight and probe runs;
//   - a restart from the read-only image's v1 comes back on v2 (boot redirect);
//   - with on-halt = exit the node stops at v3's height and exits with
//     invisor.ExitUpgradeHalt, its halt report naming the verified v3; the
//     orchestrator's restart on the new image's v3 goes on with the chain.
func TestContainer(t *testing.T) {
	t.Parallel() // one single-node chain that mostly waits for blocks
	dir := builds(t)
	if ok, why := localnet.ContainerSupport(); !ok {
		// A root CI with the tools could have run it, unless the kernel or a
		// seccomp profile forbids new namespaces (EPERM): that machine cannot.
		if os.Getenv("CI") == "true" && os.Geteuid() == 0 && !strings.Contains(why, "not permitted") && !strings.Contains(why, "not found") {
			t.Fatalf("CI runs as root but cannot start a PID namespace: %s", why)
		}
		t.Skipf("cannot run a node as PID 1 of its own PID namespace here: %s", why)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	work := t.TempDir()
	start := time.Now()

	// The image: its command's binary and the pre-staged upgrade binaries.
	image, mount := filepath.Join(work, "image"), filepath.Join(work, "image-ro")
	for dst, src := range map[string]string{
		filepath.Join(image, "bin", localnet.DaemonName):                   "exampled-v1",
		filepath.Join(image, "upgrades", "v2", "bin", localnet.DaemonName): "exampled-v2",
		filepath.Join(image, "upgrades", "v3", "bin", localnet.DaemonName): "exampled-v3",
	} {
		copyImageFile(t, filepath.Join(dir, src), dst)
	}
	if err := os.MkdirAll(mount, 0o755); err != nil {
		t.Fatal(err)
	}
	oldImage := filepath.Join(mount, "bin", localnet.DaemonName)

	node, err := localnet.NewSingle(ctx, filepath.Join(dir, "exampled-v1"), filepath.Join(work, "node0"),
		localnet.Settings{ChainID: "invisor-e2e-container"})
	if err != nil {
		t.Fatal(err)
	}
	marker := filepath.Join(work, "pre-upgrade-ran")
	// Full-speed staging: a 120 MB copy paced to a tenth of the disk's time
	// would take most of the blocks before the height on this machine.
	baseEnv := []string{"DAEMON_ALLOW_DOWNLOAD_BINARIES=false", "INVISOR_CHECK_PROPOSALS=false", "INVISOR_STAGING_DISK_SHARE=1",
		"INVISOR_IMAGE_DIR=" + mount, "EXAMPLED_PRE_UPGRADE_MARKER=" + marker}
	node.Env = baseEnv
	t.Cleanup(func() {
		if err := node.StopContainer(15 * time.Second); err != nil {
			t.Error(err)
		}
		if t.Failed() {
			t.Logf("---- node log tail ----\n%s", node.LogTail(12000))
		}
	})
	// Plans name the served binaries' checksums; with downloads off nothing is
	// fetched from here, which Hits shows.
	srv, err := localnet.ServeDir(filepath.Join(work, "www"))
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()

	if err := node.StartContainer(image, mount, oldImage); err != nil {
		t.Fatal(err)
	}
	init := containerInit(t, node)
	if _, err := node.WaitHeight(ctx, 2); err != nil {
		t.Fatal(err)
	}
	if exe := exeOf(t, init); exe != oldImage {
		t.Fatalf("PID 1 runs %s, want the image's %s", exe, oldImage)
	}
	// A background job left by a shell in the container, reaped by v1.
	orphan1, err := localnet.Orphan(init, time.Second)
	if err != nil {
		t.Fatal(err)
	}

	sc, err := node.ScheduleUpgrade(ctx, srv, "v2", filepath.Join(dir, "exampled-v2"), 30)
	if err != nil {
		t.Fatal(err)
	}
	rec := waitStagedFrom(ctx, t, node, "v2", sc.Height)
	if rec.SHA256 != sc.SHA256 {
		t.Errorf("staged v2 sha256 %s, want the plan's %s", rec.SHA256, sc.SHA256)
	}
	if _, err := node.WaitHeight(ctx, sc.Height+2); err != nil {
		t.Fatal(err)
	}
	v2 := localnet.StagedBin(node.Home, "v2")
	assertInit(ctx, t, node, init, v2, "v2.0.0")
	if _, err := os.Stat(marker); err != nil {
		t.Errorf("pre-upgrade did not run before the exec: %v", err)
	}
	// v2's own reaper: an orphan left after the exec.
	orphan2, err := localnet.Orphan(init, 200*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	waitNoZombies(t, init, orphan1, orphan2)
	if n := strings.Count(node.LogTail(16<<20), "invisor: reaped an orphaned child process"); n < 2 {
		t.Errorf("the log shows %d orphans reaped by PID 1, want both (one by v1, one by v2)", n)
	}
	if n := srv.Hits("/v2/" + localnet.DaemonName); n != 0 {
		t.Errorf("the v2 binary was downloaded %d times; the image directory should have been the only source", n)
	}
	t.Logf("upgraded in place as PID 1 at height %d, %s after the start", sc.Height, time.Since(start).Round(time.Second))

	// The container restarts from its image: v1 again, redirected to v2. This
	// time it runs for an orchestrator that swaps the binary itself.
	if err := node.StopContainer(15 * time.Second); err != nil {
		t.Fatal(err)
	}
	before, err := node.AppInfo(ctx)
	if err == nil {
		t.Fatalf("the node still answers after its stop: %+v", before)
	}
	node.Env = append(append([]string(nil), baseEnv...), "INVISOR_ON_HALT=exit")
	if err := node.StartContainer(image, mount, oldImage); err != nil {
		t.Fatal(err)
	}
	init = containerInit(t, node)
	h, err := node.WaitHeight(ctx, sc.Height+4)
	if err != nil {
		t.Fatal(err)
	}
	assertInit(ctx, t, node, init, v2, "v2.0.0")
	if !strings.Contains(node.LogTail(1<<20), "this executable is not the binary the chain needs; redirecting") {
		t.Error("the restart from the image's v1 did not go through the boot redirect")
	}
	t.Logf("restart from the image's v1 came back on v2 at height %d", h.Height)

	// on-halt = exit: stage v3 from the image, then stop at its height.
	sc3, err := node.ScheduleUpgrade(ctx, srv, "v3", filepath.Join(dir, "exampled-v3"), 30)
	if err != nil {
		t.Fatal(err)
	}
	rec3 := waitStagedFrom(ctx, t, node, "v3", sc3.Height)
	select {
	case <-ctx.Done():
		t.Fatal("the node did not exit at the v3 halt")
	case <-waitExit(node):
	}
	_, exitErr := node.Exited()
	var ee *exec.ExitError
	if !errors.As(exitErr, &ee) || ee.ExitCode() != invisor.ExitUpgradeHalt {
		t.Fatalf("the node exited with %v at the halt, want exit code %d", exitErr, invisor.ExitUpgradeHalt)
	}
	b, err := os.ReadFile(localnet.Layout(node.Home).HaltReport())
	if err != nil {
		t.Fatal(err)
	}
	var rep invisor.HaltReport
	if err := json.Unmarshal(b, &rep); err != nil {
		t.Fatalf("halt report: %v: %s", err, b)
	}
	v3 := localnet.StagedBin(node.Home, "v3")
	if rep.Upgrade != "v3" || rep.Height != sc3.Height || rep.ExitCode != invisor.ExitUpgradeHalt || rep.Stop != "clean-stop" ||
		rep.Binary == nil || rep.Binary.Path != v3 || rep.Binary.SHA256 != rec3.SHA256 || rep.Binary.SHA256 != sc3.SHA256 {
		t.Errorf("halt report %s, want upgrade v3 at %d, exit code %d, clean stop, binary %s with sha256 %s", b, sc3.Height, invisor.ExitUpgradeHalt, v3, sc3.SHA256)
	}
	if link, _ := os.Readlink(filepath.Join(node.Home, home.RootDir, "current")); strings.Contains(link, "v3") {
		t.Errorf("current -> %s after an exit for the orchestrator; the swap is the orchestrator's", link)
	}
	st, err := os.ReadFile(filepath.Join(node.Home, home.RootDir, "invisor-status.json"))
	if err != nil || !strings.Contains(string(st), `"v3"`) {
		t.Errorf("status file after the exit does not name v3: %v: %s", err, st)
	}
	t.Logf("exited at the v3 halt (height %d) with code %d; report: %s", sc3.Height, ee.ExitCode(), b)
	// What the operator sees before the orchestrator acts.
	if out, err := node.CLI(ctx, "invisor", "status"); err != nil || !strings.Contains(string(out), fmt.Sprintf("exited     at the halt of %q at height %d", "v3", sc3.Height)) ||
		!strings.Contains(string(out), "verified here: "+v3) {
		t.Errorf("invisor status after the exit for the orchestrator: %v\n%s", err, out)
	}

	// The orchestrator starts the new image's v3: the chain goes on.
	node.Env = baseEnv
	if err := node.StartContainer(image, mount, filepath.Join(mount, "upgrades", "v3", "bin", localnet.DaemonName)); err != nil {
		t.Fatal(err)
	}
	init = containerInit(t, node)
	info, err := node.WaitHeight(ctx, sc3.Height+2)
	if err != nil {
		t.Fatal(err)
	}
	if info.Version != "v3.0.0" {
		t.Errorf("after the orchestrator's swap the app is %s, want v3.0.0", info.Version)
	}
	// The image's v3 is a copy of the verified v3: its boot took the switch's
	// preparation (pre-upgrade, the flip of current) that the exit left out.
	if link, _ := os.Readlink(filepath.Join(node.Home, home.RootDir, "current")); !strings.Contains(link, "v3") {
		t.Errorf("current -> %q after the orchestrator started v3, want upgrades/v3 (prepared at its boot)", link)
	}
	if !strings.Contains(node.LogTail(1<<20), "started without a switch") {
		t.Error("the image's v3 did not say it took the switch's preparation at boot")
	}
	waitNoZombies(t, init)
	t.Logf("container test took %s", time.Since(start).Round(time.Second))
}

// copyImageFile copies the binary src to dst (0555: an image's files are not
// writable), creating dst's directory.
func copyImageFile(t *testing.T, src, dst string) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, 0o555); err != nil {
		t.Fatal(err)
	}
}

// containerInit returns the host PID of the node's container's PID 1 and
// checks that it is PID 1 in its namespace.
func containerInit(t *testing.T, n *localnet.Node) int {
	t.Helper()
	init, err := n.InitPid(10 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if ns, err := localnet.NSPid(init); err != nil || ns != 1 {
		t.Fatalf("the node (host pid %d) is pid %d in its namespace (%v), want 1", init, ns, err)
	}
	return init
}

func exeOf(t *testing.T, pid int) string {
	t.Helper()
	exe, err := os.Readlink("/proc/" + strconv.Itoa(pid) + "/exe")
	if err != nil {
		t.Fatal(err)
	}
	return exe
}

// assertInit checks that host PID init, PID 1 of its namespace, runs bin and
// the app answers with version.
func assertInit(ctx context.Context, t *testing.T, n *localnet.Node, init int, bin, version string) {
	t.Helper()
	if ns, err := localnet.NSPid(init); err != nil || ns != 1 {
		t.Errorf("host pid %d is pid %d in its namespace (%v), want still 1", init, ns, err)
	}
	if got, _ := n.InitPid(time.Second); got != init {
		t.Errorf("the container's PID 1 is host pid %d, want the same process %d", got, init)
	}
	if exe := exeOf(t, init); exe != bin {
		t.Errorf("PID 1 runs %s, want %s", exe, bin)
	}
	info, err := n.AppInfo(ctx)
	if err != nil || info.Version != version {
		t.Errorf("app version %q (%v), want %s", info.Version, err, version)
	}
}

// waitStagedFrom waits until upgrade name is staged, before height, copied
// from the image directory (source "image") and not downloaded.
func waitStagedFrom(ctx context.Context, t *testing.T, n *localnet.Node, name string, height int64) home.Record {
	t.Helper()
	for {
		if rec, _, ok := localnet.Staged(n.Home, name); ok {
			if rec.Source != home.SourceImage || !strings.HasSuffix(rec.File, filepath.Join("upgrades", name, "bin", localnet.DaemonName)) {
				t.Errorf("%s staged with source %q from %q, want %q from the image directory", name, rec.Source, rec.File, home.SourceImage)
			}
			if h, err := n.AppInfo(ctx); err == nil && h.Height >= height {
				t.Errorf("%s staged only at height %d, the upgrade height %d", name, h.Height, height)
			}
			return rec
		}
		if done, err := n.Exited(); done {
			t.Fatalf("node exited (%v) before %s was staged", err, name)
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%s never staged", name)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// waitNoZombies waits until the namespace of host PID init holds no zombie
// and the given orphans are gone (reaped by PID 1), for a few reap graces.
func waitNoZombies(t *testing.T, init int, orphans ...int) {
	t.Helper()
	deadline := time.Now().Add(5*relauncher.DefaultReapGrace + 5*time.Second)
	for {
		zs, err := localnet.ZombiesInNamespace(init)
		if err != nil {
			t.Fatal(err)
		}
		left := append([]localnet.Zombie(nil), zs...)
		for _, p := range orphans {
			if _, err := os.Stat("/proc/" + strconv.Itoa(p)); err == nil {
				left = append(left, localnet.Zombie{Pid: p, Comm: "orphan still there"})
			}
		}
		if len(left) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("zombies or orphans left in the container's PID namespace: %+v", left)
		}
		time.Sleep(100 * time.Millisecond) // polling /proc: nothing to wait on
	}
}

// waitExit is closed once the node's process exited.
func waitExit(n *localnet.Node) <-chan struct{} {
	c := make(chan struct{})
	go func() {
		defer close(c)
		for {
			if done, _ := n.Exited(); done {
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
	}()
	return c
}
