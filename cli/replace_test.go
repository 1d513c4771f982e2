package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/invisor/invisor/internal/config"
	"github.com/invisor/invisor/internal/home"
	"github.com/invisor/invisor/internal/status"
	"github.com/invisor/invisor/staging"
)

// Tests of `stage NAME --replace`: a patch release is verified like any staged
// binary, must carry the upgrade's handler by its own probe answer, and replaces
// only the binary of an upgrade already applied or staged, keeping the one it
// replaces.

// patchHelperSrc is a chain binary as far as staging can tell: it prints its
// version on `version` and answers invisor's probe (internal/probe) saying it
// carries the handlers in handles (comma-separated); mode "none" gives no
// answer, "unknown" answers without handlers (it could not tell).
const patchHelperSrc = `package main

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"
)

var version, handles, mode = "dev", "", "answer"

func main() {
	if len(os.Args) > 1 && os.Args[1] == "version" {
		fmt.Println(version)
		return
	}
	if os.Getenv("INVISOR_PROBE") == "1" && mode != "none" {
		var plans []string
		json.Unmarshal([]byte(os.Getenv("INVISOR_PROBE_PLANS")), &plans)
		h := map[string]bool{}
		for _, p := range plans {
			h[p] = strings.Contains(","+handles+",", ","+p+",")
		}
		ans := map[string]any{"probe": 1, "invisor_version": "v0.0.0-test", "protocols": []string{}, "handlers": h}
		if mode == "unknown" {
			delete(ans, "handlers")
		}
		b, _ := json.Marshal(ans)
		fmt.Printf("INVISOR_PROBE_ANSWER %s\n", b)
		return
	}
	fmt.Println("usage")
}
`

var patchBins struct {
	once sync.Once
	dir  string
	err  error
}

// patchBin returns a build of patchHelperSrc: version, the handlers it carries,
// and its probe mode.
func patchBin(t *testing.T, version, handles, mode string) string {
	t.Helper()
	patchBins.once.Do(func() {
		helperBin(t, "dev") // makes helperBins.dir, which TestMain removes
		patchBins.dir = filepath.Join(helperBins.dir, "patch")
		if patchBins.err = os.MkdirAll(patchBins.dir, 0o755); patchBins.err != nil {
			return
		}
		os.WriteFile(filepath.Join(patchBins.dir, "main.go"), []byte(patchHelperSrc), 0o644)
		os.WriteFile(filepath.Join(patchBins.dir, "go.mod"), []byte("module patchhelper\n\ngo 1.22\n"), 0o644)
	})
	if patchBins.err != nil {
		t.Fatal(patchBins.err)
	}
	out := filepath.Join(patchBins.dir, fmt.Sprintf("appd-%s-%s-%s", version, strings.ReplaceAll(handles, ",", "+"), mode))
	if _, err := os.Stat(out); err == nil {
		return out
	}
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags",
		fmt.Sprintf("-s -w -X main.version=%s -X main.handles=%s -X main.mode=%s", version, handles, mode), "-o", out, ".")
	cmd.Dir = patchBins.dir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=-mod=mod", "GOWORK=off")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building a patch helper binary: %v\n%s", err, b)
	}
	return out
}

// replaceEnv is the env of a `stage` command on home h.
func replaceEnv(h string) (*env, *bytes.Buffer) {
	var out bytes.Buffer
	return &env{home: h, opts: config.Options{DaemonName: testDaemon}, cfg: config.Config{Enabled: true, Staging: testStagingConfig(h)},
		out: &out, errOut: &bytes.Buffer{}}, &out
}

// replace runs `stage name --replace --file bin` on h.
func replace(t *testing.T, h, name, bin string) (string, error) {
	t.Helper()
	e, out := replaceEnv(h)
	src, err := sourceURL("", bin, "")
	if err != nil {
		t.Fatal(err)
	}
	err = stageReplace(context.Background(), e, name, src, true, 0)
	return out.String(), err
}

// appliedHome is a home after the switch to upgrade v2 at height 40: v2.0.0
// staged and recorded for the plan, data/upgrade-info.json naming it, current
// pointing to it.
func appliedHome(t *testing.T) (h string, plan staging.Plan, v200 string) {
	t.Helper()
	h = t.TempDir()
	v200 = patchBin(t, "v2.0.0", "v2", "answer")
	plan = filePlan(t, "v2", v200, 40)
	stageTrusted(t, h, "v2", v200, 40)
	l := bundleLayout(t, h)
	writeUpgradeInfo(t, l, plan)
	dir, _ := l.UpgradeDir("v2")
	if err := os.Symlink(dir, l.Current()); err != nil {
		t.Fatal(err)
	}
	return h, plan, v200
}

func writeUpgradeInfo(t *testing.T, l home.Layout, p staging.Plan) {
	t.Helper()
	b, _ := json.Marshal(p)
	os.MkdirAll(l.DataDir(), 0o755)
	if err := os.WriteFile(l.UpgradeInfo(), b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestStageReplaceApplied: the patch release of an applied upgrade replaces its
// binary, recorded for the same plan (operator-replaced), the previous binary
// kept; the same binary again is nothing to do; the kept one goes back the same
// way; current is untouched.
func TestStageReplaceApplied(t *testing.T) {
	h, plan, v200 := appliedHome(t)
	l := bundleLayout(t, h)
	ctx := context.Background()
	v201 := patchBin(t, "v2.0.1", "v2", "answer")
	oldSHA, newSHA := fileSHA(t, v200), fileSHA(t, v201)

	out, err := replace(t, h, "v2", v201)
	if err != nil {
		t.Fatalf("stage --replace: %v\n%s", err, out)
	}
	v, err := l.Open(ctx, plan)
	if err != nil {
		t.Fatalf("the replaced binary is not proven for the plan in upgrade-info.json: %v", err)
	}
	v.Close()
	rec := v.Record
	if rec.SHA256 != newSHA || rec.Source != home.SourceOperatorReplaced || rec.File != v201 || rec.Preflight != "v2.0.1" {
		t.Fatalf("record %+v", rec)
	}
	if has, known := rec.Probe.HasHandler("v2"); !has || !known {
		t.Fatalf("record's probe answer %+v", rec.Probe)
	}
	prev, _ := l.Previous("v2")
	if len(prev) != 1 || fileSHA(t, prev[0].Bin) != oldSHA || prev[0].Record.SHA256 != oldSHA {
		t.Fatalf("previous binary not kept: %+v", prev)
	}
	for _, want := range []string{"replaced the binary of upgrade \"v2\" (applied", newSHA, oldSHA, prev[0].Bin,
		"to go back: appd invisor stage v2 --replace --file " + prev[0].Bin, "next: start the node as usual; the boot redirect runs this binary"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if dir, _ := l.UpgradeDir("v2"); !l.CurrentIs(dir) {
		t.Fatal("current moved")
	}

	out, err = replace(t, h, "v2", v201)
	if err != nil || !strings.Contains(out, "already has this binary") {
		t.Fatalf("the same binary again: %v\n%s", err, out)
	}
	if prev, _ := l.Previous("v2"); len(prev) != 1 {
		t.Fatalf("the same binary again kept another copy: %d", len(prev))
	}

	// Going back: the kept v2.0.0, by the same command.
	if out, err := replace(t, h, "v2", prev[0].Bin); err != nil {
		t.Fatalf("going back: %v\n%s", err, out)
	}
	if v, err := l.Open(ctx, plan); err != nil || v.Record.SHA256 != oldSHA {
		t.Fatalf("after going back: %+v, %v", v, err)
	} else {
		v.Close()
	}
}

// TestStageReplaceRefuses: what --replace refuses, with the reason, leaving the
// upgrade's binary and record as they were.
func TestStageReplaceRefuses(t *testing.T) {
	h, plan, v200 := appliedHome(t)
	l := bundleLayout(t, h)
	oldSHA := fileSHA(t, v200)
	// v4 staged for a later plan, while the chain halted for v3 (not switched).
	v4 := patchBin(t, "v4.0.0", "v4", "answer")
	stageTrusted(t, h, "v4", v4, 90)

	for _, tc := range []struct {
		name, upgrade, bin string
		setup              func()
		want               string
	}{
		{name: "neither applied nor staged", upgrade: "v3", bin: patchBin(t, "v3.0.0", "v2,v3", "answer"),
			want: `upgrade "v3" is neither applied`},
		{name: "an older release, without the handler", upgrade: "v2", bin: patchBin(t, "v1.0.0", "", "answer"),
			want: `says it has no upgrade handler "v2"`},
		{name: "no probe answer", upgrade: "v2", bin: patchBin(t, "v2.0.1", "v2", "none"),
			want: "gave no probe answer"},
		{name: "cannot tell", upgrade: "v2", bin: patchBin(t, "v2.0.1", "v2", "unknown"),
			want: `could not tell whether it carries the upgrade handler "v2"`},
		{name: "another upgrade's binary", upgrade: "v2", bin: v4,
			want: `says it has no upgrade handler "v2"`},
		{name: "the chain halted for another upgrade", upgrade: "v4", bin: v4,
			setup: func() { writeUpgradeInfo(t, l, staging.Plan{Name: "v3", Height: 60}) },
			want:  `the chain halted for upgrade "v3"`},
		{name: "recorded under another name", upgrade: "V4", bin: v4,
			want: `is recorded for upgrade "v4", not "V4"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.setup != nil {
				tc.setup()
				defer writeUpgradeInfo(t, l, plan)
			}
			out, err := replace(t, h, tc.upgrade, tc.bin)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q\n%s", err, tc.want, out)
			}
			if v, err := l.Open(context.Background(), plan); err != nil || v.Record.SHA256 != oldSHA {
				t.Fatalf("v2's binary changed: %+v, %v", v, err)
			} else {
				v.Close()
			}
			if prev, _ := l.Previous("v2"); len(prev) != 0 {
				t.Fatalf("a refused replace kept %d copies", len(prev))
			}
		})
	}
	// A wrong checksum: refused by the verification itself.
	e, _ := replaceEnv(h)
	src, _ := sourceURL("", patchBin(t, "v2.0.1", "v2", "answer"), "sha256:"+strings.Repeat("ab", 32))
	if err := stageReplace(context.Background(), e, "v2", src, true, 0); err == nil || !errors.Is(err, staging.ErrChecksumMismatch) {
		t.Fatalf("wrong checksum: %v", err)
	}
}

// TestStageReplaceStagedAndRunning: a binary staged ahead of the chain's halt
// is replaced for its own record's plan; with a node running (it holds the home
// lock), the output says the node keeps its binary until it restarts, or, for
// the plan it has in force, that it switches to the new one at the height; a
// staged upgrade that is not the running node's plan in force is refused.
func TestStageReplaceStagedAndRunning(t *testing.T) {
	h := t.TempDir()
	l := bundleLayout(t, h)
	v300 := patchBin(t, "v3.0.0", "v3", "answer")
	v301 := patchBin(t, "v3.0.1", "v3", "answer")
	inst := stageTrusted(t, h, "v3", v300, 90)
	p3 := filePlan(t, "v3", v300, 90)

	out, err := replace(t, h, "v3", v301)
	if err != nil || !strings.Contains(out, "staged for the plan at height 90") || !strings.Contains(out, "switches to this binary at the upgrade height 90") {
		t.Fatalf("replace a staged binary: %v\n%s", err, out)
	}
	v, err := l.Open(context.Background(), p3)
	if err != nil || v.Record.SHA256 != fileSHA(t, v301) || v.Record.InfoHash != inst.Record.InfoHash {
		t.Fatalf("the staged plan's proof after --replace: %+v, %v", v, err)
	}
	v.Close()

	// A running node (this process holds the lock) with plan v3 in force.
	lock, err := l.Acquire(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Release()
	writeNodeStatus(t, h, &p3)
	out, err = replace(t, h, "v3", v300)
	if err != nil || !strings.Contains(out, fmt.Sprintf("the running node (PID %d) switches to this binary at the upgrade height 90", os.Getpid())) {
		t.Fatalf("replace the plan in force with a node running: %v\n%s", err, out)
	}
	// Another upgrade staged, not in force and not applied: refused.
	stageTrusted(t, h, "v4", patchBin(t, "v4.0.0", "v4", "answer"), 120)
	if _, err := replace(t, h, "v4", patchBin(t, "v4.0.1", "v4", "answer")); err == nil || !strings.Contains(err.Error(), `the running node has plan "v3"`) {
		t.Fatalf("replace of a staged upgrade that is not the plan in force: %v", err)
	}

	// An applied upgrade with a node running: it keeps its binary until it restarts.
	writeUpgradeInfo(t, l, p3)
	dir, _ := l.UpgradeDir("v3")
	os.Symlink(dir, l.Current())
	writeNodeStatus(t, h, nil)
	out, err = replace(t, h, "v3", v301)
	if err != nil || !strings.Contains(out, fmt.Sprintf("the running node (PID %d) keeps its binary until its next restart", os.Getpid())) {
		t.Fatalf("replace with a node running: %v\n%s", err, out)
	}
}

func writeNodeStatus(t *testing.T, h string, p *staging.Plan) {
	t.Helper()
	b, _ := json.Marshal(status.Node{PID: os.Getpid(), Plan: p})
	if err := os.WriteFile(status.Path(h), b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestStageReplaceHaltedAndEarlier: at a halt with nothing staged, the binary
// of the upgrade data/upgrade-info.json names is put in place for that plan
// (a halted running node then switches to it); the binary of an upgrade before
// the chain's last one is replaced for its own record's plan, and the output
// says it runs only on a replay.
func TestStageReplaceHaltedAndEarlier(t *testing.T) {
	h := t.TempDir()
	l := bundleLayout(t, h)
	v500 := patchBin(t, "v5.0.0", "v5", "answer")
	halted := pinnedPlan("v5", strings.Repeat("c", 64), 70)
	writeUpgradeInfo(t, l, halted)
	lock, err := l.Acquire(nil)
	if err != nil {
		t.Fatal(err)
	}
	out, err := replace(t, h, "v5", v500)
	lock.Release()
	if err != nil || !strings.Contains(out, "the chain halted for it") || !strings.Contains(out, "halted for the upgrade, switches to this binary once it sees its record") ||
		!strings.Contains(out, "was  no binary") {
		t.Fatalf("replace at a halt: %v\n%s", err, out)
	}
	v, err := l.Open(context.Background(), halted)
	if err != nil || v.Record.Source != home.SourceOperatorReplaced {
		t.Fatalf("the halted plan's proof: %+v, %v", v, err)
	}
	v.Close()

	// v5 applied, then v6: v5's binary is now an earlier upgrade's.
	dir, _ := l.UpgradeDir("v6")
	os.MkdirAll(dir, 0o755)
	os.Symlink(dir, l.Current())
	writeUpgradeInfo(t, l, staging.Plan{Name: "v6", Height: 90})
	out, err = replace(t, h, "v5", patchBin(t, "v5.0.1", "v5", "answer"))
	if err != nil || !strings.Contains(out, `before the chain's last upgrade "v6" at 90`) || !strings.Contains(out, "runs only on a node that replays upgrade \"v5\" at height 70") {
		t.Fatalf("replace of an earlier upgrade: %v\n%s", err, out)
	}
	if v, err := l.Open(context.Background(), halted); err != nil || v.Record.Preflight != "v5.0.1" {
		t.Fatalf("the earlier upgrade's proof: %+v, %v", v, err)
	} else {
		v.Close()
	}
}
