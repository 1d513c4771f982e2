package e2e

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/invisor/invisor/example-app/localnet"
	invhome "github.com/invisor/invisor/internal/home"
)

// patchLine is what invisor logs, once, when the binary the operator started
// carries the upgrade handler the chain's state needs and becomes the upgrade's
// binary.
const patchLine = "invisor: this executable carries the upgrade handler the chain's state needs (a patch release of the upgrade)"

// TestPatchRelease is a patch release of an applied upgrade, both ways an
// operator puts one in place. After a governance upgrade v1 -> v2 in place:
//   - exampled-v2.0.1 installed at the operator's own path and started there
//     runs as started (same home, the chain continues), and is recorded as the
//     upgrade's binary (operator-started), v2.0.0 kept under previous/; a
//     restart of that path runs it as a copy; a start of the v1 path is
//     redirected to v2.0.1, the log saying why;
//   - `invisor stage v2 --replace --file exampled-v2` with the node stopped
//     puts v2.0.0 back (operator-replaced), and a start of the v1 path runs it;
//   - --replace refuses an upgrade neither applied nor staged (v3) and a binary
//     without the upgrade's handler (v1 for v2), changing nothing.
func TestPatchRelease(t *testing.T) {
	t.Parallel() // a one-node chain that mostly waits for blocks: runs beside another (make test-e2e: -parallel 2)
	dir := builds(t)
	v1, v2, v201, v3 := filepath.Join(dir, "exampled-v1"), filepath.Join(dir, "exampled-v2"),
		filepath.Join(dir, "exampled-v2.0.1"), filepath.Join(dir, "exampled-v3")
	if _, err := os.Stat(v201); err != nil {
		t.Fatalf("missing %s: %v (run make build)", v201, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	work := t.TempDir()

	node, err := localnet.NewSingle(ctx, v1, filepath.Join(work, "node0"), localnet.Settings{ChainID: "invisor-patch-1"})
	if err != nil {
		t.Fatal(err)
	}
	node.Env = []string{"DAEMON_ALLOW_DOWNLOAD_BINARIES=true"}
	t.Cleanup(func() {
		if err := node.Stop(15 * time.Second); err != nil {
			t.Error(err)
		}
		if t.Failed() {
			t.Logf("---- node log tail ----\n%s", node.LogTail(12000))
		}
	})
	srv, err := localnet.ServeDir(filepath.Join(work, "www"))
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()

	r, err := localnet.RunUpgrade(ctx, node, localnet.UpgradeSpec{Name: "v2", Binary: v2, Server: srv, Start: true, After: 2,
		Progress: func(s string) { t.Log(s) }})
	if err != nil {
		t.Fatalf("upgrade v2: %v\n%s", err, r.Summary())
	}
	h := r.PlanHeight
	staged := localnet.StagedBin(node.Home, "v2")
	sha200, _ := localnet.SHA256File(v2)
	sha201, _ := localnet.SHA256File(v201)

	// restart stops the node, starts bin and waits until the chain is past height
	// past; it returns the app's version and the executable of the process.
	restart := func(bin string, past int64) (version, exe string) {
		t.Helper()
		if err := node.Stop(15 * time.Second); err != nil {
			t.Fatal(err)
		}
		node.Bin = bin
		start := time.Now()
		if err := node.Start(); err != nil {
			t.Fatal(err)
		}
		info, err := node.WaitHeight(ctx, past+1)
		if err != nil {
			t.Fatalf("start of %s: %v", bin, err)
		}
		exe, _ = node.Exe()
		t.Logf("started %s: %s at height %d after %s (executes %s)", bin, info.Version, info.Height, time.Since(start).Round(time.Millisecond), exe)
		return info.Version, exe
	}
	height := func() int64 {
		t.Helper()
		info, err := node.AppInfo(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return info.Height
	}

	// 1. The operator installs v2.0.1 at the path the unit starts, and restarts.
	opPath := filepath.Join(work, "bin", "exampled")
	if err := os.MkdirAll(filepath.Dir(opPath), 0o755); err != nil {
		t.Fatal(err)
	}
	copyExec(t, v201, opPath)
	if version, exe := restart(opPath, max(height(), h+3)); version != "v2.0.1" || exe != opPath {
		t.Fatalf("v2.0.1 at the operator's path: version %q, executes %s; want v2.0.1 run as started", version, exe)
	}
	rec, _, ok := localnet.Staged(node.Home, "v2")
	if !ok || rec.SHA256 != sha201 || rec.Source != invhome.SourceOperatorStarted || rec.File != opPath {
		t.Fatalf("upgrade v2's record after the patch: %+v (ok %v), want v2.0.1 (%s) started by the operator", rec, ok, sha201)
	}
	prev, err := localnet.Layout(node.Home).Previous("v2")
	if err != nil || len(prev) != 1 || prev[0].Record.SHA256 != sha200 {
		t.Fatalf("v2.0.0 not kept under previous/: %+v, %v", prev, err)
	}
	if got, _ := localnet.SHA256File(prev[0].Bin); got != sha200 {
		t.Fatalf("kept binary %s has sha256 %s, want v2.0.0's %s", prev[0].Bin, got, sha200)
	}
	if link, err := os.Readlink(filepath.Join(node.Home, "cosmovisor", "current")); err != nil || filepath.Base(link) != "v2" {
		t.Fatalf("current -> %q (%v), want upgrades/v2", link, err)
	}
	log := node.LogTail(64 << 20)
	line := lineWith(log, patchLine)
	t.Logf("invisor logged:\n%s", line)
	for _, want := range []string{opPath, sha201, staged, sha200, prev[0].Bin} {
		if !strings.Contains(line, want) {
			t.Errorf("the patch line does not name %s:\n%s", want, line)
		}
	}
	if out, errOut, err := run(ctx, v201, nil, "invisor", "verify", "v2", "--home", node.Home); err != nil ||
		!strings.HasPrefix(out, "ok") || !strings.Contains(out, sha201) || !strings.Contains(out, "v2.0.1") ||
		!strings.Contains(out, "probe: invisor") || !strings.Contains(out, "has the upgrade handler") {
		t.Errorf("invisor verify v2 after the patch: %v\n%s%s", err, out, errOut)
	}
	st := statusStaged(t, ctx, v201, node.Home)
	if b := st["v2"]; b.Origin != string(invhome.SourceOperatorStarted) || b.SHA256 != sha201 {
		t.Errorf("status shows v2 as %+v, want operator-started %s", b, sha201)
	}

	// 2. A restart of the same path: the recorded binary's copy, installed once.
	if version, _ := restart(opPath, height()); version != "v2.0.1" {
		t.Fatalf("restart of the operator's path: version %q", version)
	}
	// 3. A start of the v1 path: redirected to v2.0.1, saying why.
	if version, exe := restart(v1, height()); version != "v2.0.1" || exe != staged {
		t.Fatalf("start of the v1 path: version %q, executes %s; want v2.0.1 at %s", version, exe, staged)
	}
	log = node.LogTail(64 << 20)
	if n := strings.Count(log, patchLine); n != 1 {
		t.Errorf("the patch was logged %d times, want once", n)
	}
	// Every boot after the one that recorded it reports it as unconfirmed by the plan.
	if !strings.Contains(lineWith(log, "a staged binary is a patch release the operator started or put in place"), "source=operator-started") {
		t.Error("the boot does not report the patch as unconfirmed by the plan's checksum")
	}
	if !strings.Contains(log, "running a copy of the binary the chain needs") {
		t.Error("the restart of the operator's path did not log that it runs a copy of the recorded binary")
	}
	if l := lineWith(log, "redirecting"); !strings.Contains(l, `lacks the upgrade handler \"v2\" that the chain's state needs`) &&
		!strings.Contains(l, `lacks the upgrade handler "v2" that the chain's state needs`) {
		t.Errorf("the redirect of v1 does not say why:\n%s", l)
	}
	if prev, _ := localnet.Layout(node.Home).Previous("v2"); len(prev) != 1 {
		t.Errorf("%d binaries kept after the restarts, want 1", len(prev))
	}

	// 4. The other way: `stage v2 --replace` with the node stopped (here: back to
	// v2.0.0), then a start of the v1 path runs it.
	before := height()
	if err := node.Stop(15 * time.Second); err != nil {
		t.Fatal(err)
	}
	out, errOut, err := run(ctx, v2, nil, "invisor", "stage", "v2", "--replace", "--file", v2, "--home", node.Home)
	t.Logf("stage v2 --replace --file exampled-v2:\n%s%s", out, errOut)
	if err != nil || !strings.Contains(out, `replaced the binary of upgrade "v2"`) || !strings.Contains(out, sha200) || !strings.Contains(out, sha201) {
		t.Fatalf("stage --replace: %v", err)
	}
	if rec, _, ok := localnet.Staged(node.Home, "v2"); !ok || rec.SHA256 != sha200 || rec.Source != invhome.SourceOperatorReplaced {
		t.Fatalf("record after stage --replace: %+v", rec)
	}
	if version, exe := restart(v1, before); version != "v2.0.0" || exe != staged {
		t.Fatalf("start of the v1 path after stage --replace: version %q, executes %s; want v2.0.0 at %s", version, exe, staged)
	}

	// 5. Refusals, with the node running: nothing changes.
	for _, tc := range []struct{ name, bin, want string }{
		{"v3", v3, `upgrade "v3" is neither applied`},
		{"v2", v1, `no upgrade handler "v2"`},
	} {
		out, errOut, err := run(ctx, v2, nil, "invisor", "stage", tc.name, "--replace", "--file", tc.bin, "--home", node.Home)
		t.Logf("stage %s --replace --file %s: %v\n%s", tc.name, filepath.Base(tc.bin), err, lineWith(out+errOut, "refused"))
		if err == nil || !strings.Contains(out+errOut, tc.want) {
			t.Errorf("stage %s --replace --file %s: err %v, want a refusal saying %q\n%s%s", tc.name, filepath.Base(tc.bin), err, tc.want, out, errOut)
		}
	}
	if rec, _, ok := localnet.Staged(node.Home, "v2"); !ok || rec.SHA256 != sha200 {
		t.Errorf("a refused replace changed v2's binary: %+v", rec)
	}
	if _, err := os.Lstat(localnet.StagedBin(node.Home, "v3")); err == nil {
		t.Error("a refused replace placed a v3 binary")
	}
	if _, err := node.WaitHeight(ctx, height()+2); err != nil {
		t.Fatalf("the chain stopped after the refusals: %v", err)
	}
}

// stagedView is the part of a `status -o json` staged entry this test reads.
type stagedView struct {
	Name   string `json:"name"`
	SHA256 string `json:"sha256"`
	Origin string `json:"origin"`
}

// statusStaged returns `invisor status -o json`'s staged binaries by name.
func statusStaged(t *testing.T, ctx context.Context, bin, home string) map[string]stagedView {
	t.Helper()
	out, errOut, err := run(ctx, bin, nil, "invisor", "status", "-o", "json", "--home", home)
	if err != nil {
		t.Fatalf("invisor status: %v\n%s%s", err, out, errOut)
	}
	var s struct {
		Staged []stagedView `json:"staged"`
	}
	if err := json.Unmarshal([]byte(out), &s); err != nil {
		t.Fatalf("invisor status -o json: %v\n%s", err, out)
	}
	m := map[string]stagedView{}
	for _, b := range s.Staged {
		m[b.Name] = b
	}
	return m
}

// lineWith returns the last line of log containing sub, or "".
func lineWith(log, sub string) string {
	i := strings.LastIndex(log, sub)
	if i < 0 {
		return ""
	}
	start := strings.LastIndexByte(log[:i], '\n') + 1
	end := strings.IndexByte(log[i:], '\n')
	if end < 0 {
		return log[start:]
	}
	return log[start : i+end]
}

func copyExec(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o755); err != nil {
		t.Fatal(err)
	}
}
