package relauncher

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/invisor/invisor/internal/home"
)

// Helper-process pattern: the test binary re-executes itself as a real child. The
// child, as the "old binary", calls Switch for real; the "new binary" is a copy of
// the test binary that recognises itself by the exec generation marker and records
// what it sees.
const (
	envHelper    = "INVISOR_TEST_HELPER"
	envHelperOut = "INVISOR_TEST_OUT"
	envHelperHom = "INVISOR_TEST_HOME"
	envHelperVar = "INVISOR_TEST_MYVAR"
	// envHelperOverlap makes the old binary run pre-upgrade overlapped with the exec.
	envHelperOverlap = "INVISOR_TEST_OVERLAP"
	// envHelperLock makes the old binary take the home lock and hand it over, and
	// the new one check that the home stayed locked and adopt the lock.
	envHelperLock = "INVISOR_TEST_LOCK"
	// envHelperTryLock makes the helper only try the home lock: exit 0 if another
	// process holds it, 1 if it got it, 2 on another error.
	envHelperTryLock = "INVISOR_TEST_TRYLOCK"
)

func TestMain(m *testing.M) {
	if os.Getenv(envHelperTryLock) == "1" {
		os.Exit(tryLockMain())
	}
	if os.Getenv(envHelper) == "1" {
		os.Exit(helperMain())
	}
	os.Exit(m.Run())
}

func helperLayout() home.Layout {
	l, err := home.New(os.Getenv(envHelperHom), daemon, home.Options{})
	if err != nil {
		panic(err)
	}
	return l
}

func tryLockMain() int {
	lk, err := helperLayout().Acquire(nil)
	if err == nil {
		lk.Release()
		return 1
	}
	if errors.As(err, new(*home.LockedError)) {
		return 0
	}
	return 2
}

// otherProcessLocked runs a process (not a child that inherited anything of
// interest: it opens the lock file itself) that tries the home lock.
func otherProcessLocked() (refused bool, err error) {
	self, err := os.Executable()
	if err != nil {
		return false, err
	}
	cmd := exec.Command(self)
	cmd.Env = append(preUpgradeEnv(os.Environ()), envHelperTryLock+"=1")
	err = cmd.Run()
	if err == nil {
		return true, nil
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) && ee.ExitCode() == 1 {
		return false, nil
	}
	return false, err
}

type procReport struct {
	Pid        int
	Args       []string
	Cwd        string
	Exe        string
	MyVar      string
	Generation string
	ExecedFrom string
	Err        string

	// pre-upgrade (the child) and the new binary's AwaitPreUpgrade.
	Ppid           int
	SawMarker      bool
	EndNs          int64
	AwaitedRuns    int
	AwaitedFlipped string
	AwaitedErr     string
	AwaitedAtNs    int64

	// The home lock, seen by the new binary.
	LockEnv           string
	LockedBeforeAdopt bool
	Adopted           bool
	AdoptErr          string
	LockedAfterAdopt  bool
	HolderPID         int
}

func writeReport(name string, rep procReport) {
	b, _ := json.Marshal(rep)
	_ = os.WriteFile(filepath.Join(os.Getenv(envHelperOut), name), b, 0o644)
}

func selfReport() procReport {
	cwd, _ := os.Getwd()
	exe, _ := os.Executable()
	return procReport{
		Pid: os.Getpid(), Args: os.Args, Cwd: cwd, Exe: exe, MyVar: os.Getenv(envHelperVar),
		Generation: os.Getenv(EnvExecGeneration), ExecedFrom: os.Getenv(EnvExecedFrom),
	}
}

func helperMain() int {
	if len(os.Args) > 1 && os.Args[1] == "pre-upgrade" {
		rep := selfReport()
		rep.Ppid = os.Getppid()
		_, rep.SawMarker = os.LookupEnv(EnvExecPreUpgrade)
		time.Sleep(300 * time.Millisecond) // the old binary execs meanwhile
		rep.EndNs = time.Now().UnixNano()
		writeReport("pre.json", rep)
		return 0
	}
	if os.Getenv(EnvExecGeneration) != "" { // the new binary, after the exec
		rep := selfReport()
		if os.Getenv(envHelperLock) != "" {
			rep.LockEnv = os.Getenv(home.EnvLock)
			refused, err := otherProcessLocked()
			rep.LockedBeforeAdopt = refused && err == nil
			lk, err := helperLayout().Acquire(os.Environ())
			if err != nil {
				rep.AdoptErr = err.Error()
			} else {
				rep.Adopted = true
				refused, err = otherProcessLocked()
				rep.LockedAfterAdopt = refused && err == nil
				rep.HolderPID, _ = helperLayout().HolderPID()
				defer lk.Release()
			}
		}
		if o := AwaitPreUpgrade(os.Environ()); o != nil {
			rep.AwaitedAtNs = time.Now().UnixNano()
			rep.AwaitedRuns, rep.AwaitedFlipped = len(o.Runs), o.Flipped
			if o.Err != nil {
				rep.AwaitedErr = o.Err.Error()
			}
		}
		writeReport("new.json", rep)
		return 0
	}
	rep := selfReport()
	writeReport("old.json", rep)
	l := helperLayout()
	var lk *home.Lock
	if os.Getenv(envHelperLock) != "" {
		var err error
		if lk, err = l.Acquire(os.Environ()); err != nil {
			rep.Err = err.Error()
			writeReport("err.json", rep)
			return 3
		}
	}
	overlap := os.Getenv(envHelperOverlap) != ""
	v := VerifierFunc(func(ctx context.Context, p home.Plan) (Binary, error) {
		b, err := LayoutVerifier(l).Verify(ctx, p)
		b.AwaitsPreUpgrade = overlap
		return b, err
	})
	cfg := DefaultConfig()
	cfg.Home, cfg.DaemonName, cfg.Backup, cfg.RunPreUpgrade = l.Home(), daemon, false, overlap
	r, err := New(cfg, v, nil, OS{Lock: lk})
	if err == nil {
		err = r.Switch("v2") // returns only on failure
	}
	rep.Err = err.Error()
	writeReport("err.json", rep)
	return 3
}

func runHelper(t *testing.T, h *testHome, args []string, env ...string) (cmdPid int, out string, exitErr error) {
	t.Helper()
	self, err := os.Executable()
	must(t, err)
	out = t.TempDir()
	cwd := t.TempDir()
	cmd := exec.Command(self, args...)
	cmd.Dir = cwd
	cmd.Env = append(os.Environ(), envHelper+"=1", envHelperOut+"="+out, envHelperHom+"="+h.home, envHelperVar+"=hello world")
	cmd.Env = append(cmd.Env, env...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	must(t, cmd.Start())
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err = <-done:
	case <-time.After(30 * time.Second):
		_ = cmd.Process.Kill()
		t.Fatal("helper timed out")
	}
	return cmd.Process.Pid, out, err
}

func readReport(t *testing.T, dir, name string) (procReport, bool) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, name))
	if os.IsNotExist(err) {
		return procReport{}, false
	}
	must(t, err)
	var r procReport
	must(t, json.Unmarshal(b, &r))
	return r, true
}

// newSelfUpgradeHome is a home halted for upgrade v2 whose staged binary is a
// copy of the test binary, so the real exec lands in the helper process.
func newSelfUpgradeHome(t *testing.T) *testHome {
	t.Helper()
	h := newTestHome(t)
	self, err := os.Executable()
	must(t, err)
	_, err = home.CopyFile(self, h.v2, 0o755)
	must(t, err)
	h.haltAndStage(123, "")
	return h
}

func TestRealExecSwitch(t *testing.T) {
	if testing.Short() {
		t.Skip("real exec")
	}
	h := newSelfUpgradeHome(t)
	self, err := os.Executable()
	must(t, err)
	args := []string{"start", "--home", h.home, "arg with space", ""}

	pid, out, err := runHelper(t, h, args)
	if err != nil {
		e, _ := readReport(t, out, "err.json")
		t.Fatalf("helper: %v (switch error: %s)", err, e.Err)
	}
	oldR, ok1 := readReport(t, out, "old.json")
	newR, ok2 := readReport(t, out, "new.json")
	if !ok1 || !ok2 {
		t.Fatalf("reports: old %v new %v", ok1, ok2)
	}
	if oldR.Pid != pid || newR.Pid != pid {
		t.Errorf("pid: child %d, old %d, new %d", pid, oldR.Pid, newR.Pid)
	}
	if !reflect.DeepEqual(newR.Args, oldR.Args) || newR.Args[0] != self {
		t.Errorf("argv: old %q new %q", oldR.Args, newR.Args)
	}
	if newR.Cwd != oldR.Cwd {
		t.Errorf("cwd: old %q new %q", oldR.Cwd, newR.Cwd)
	}
	if newR.MyVar != "hello world" {
		t.Errorf("env var = %q", newR.MyVar)
	}
	if newR.Exe != h.v2 {
		t.Errorf("new exe = %q, want %q", newR.Exe, h.v2)
	}
	if newR.Generation != "1" || newR.ExecedFrom != self {
		t.Errorf("markers: generation %q from %q", newR.Generation, newR.ExecedFrom)
	}
	if h.current() != "upgrades/v2" {
		t.Errorf("current -> %q", h.current())
	}
	if _, err := os.Stat(h.l.UpgradeInfo()); err != nil {
		t.Errorf("upgrade-info.json gone: %v", err)
	}
}

// TestRealExecFailure execs, for real, a trusted file the kernel cannot run and
// checks the typed error names the errno.
func TestRealExecFailure(t *testing.T) {
	if testing.Short() {
		t.Skip("real exec")
	}
	tests := []struct {
		name    string
		content string
		errno   syscall.Errno
	}{
		{"garbage", "\x00\x01\x02 not a program", syscall.ENOEXEC},
		{"missing interpreter", "#!/nonexistent/interpreter\n", syscall.ENOENT},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := newTestHome(t)
			h.writeExec(h.v2, tc.content)
			h.haltAndStage(5, "")
			_, out, err := runHelper(t, h, []string{"start"})
			if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 3 {
				t.Fatalf("helper exit: %v", err)
			}
			e, ok := readReport(t, out, "err.json")
			if !ok || !strings.Contains(e.Err, tc.errno.Error()) || !strings.Contains(e.Err, "exec") {
				t.Fatalf("switch error %q does not name %v", e.Err, tc.errno)
			}
			if _, ok := readReport(t, out, "new.json"); ok {
				t.Fatal("new binary ran")
			}
			// The flip happened before the exec: a restart goes through Boot.
			if h.current() != "upgrades/v2" {
				t.Fatalf("current -> %q", h.current())
			}
		})
	}
}

// TestRealExecOverlappedPreUpgrade: the old binary starts pre-upgrade and execs
// for real; the new image, in the same PID, waits for the child it inherited,
// then flips `current`.
func TestRealExecOverlappedPreUpgrade(t *testing.T) {
	if testing.Short() {
		t.Skip("real exec")
	}
	h := newSelfUpgradeHome(t)

	pid, out, err := runHelper(t, h, []string{"start"}, envHelperOverlap+"=1")
	if err != nil {
		e, _ := readReport(t, out, "err.json")
		t.Fatalf("helper: %v (switch error: %s)", err, e.Err)
	}
	newR, ok1 := readReport(t, out, "new.json")
	pre, ok2 := readReport(t, out, "pre.json")
	if !ok1 || !ok2 {
		t.Fatalf("reports: new %v pre-upgrade %v", ok1, ok2)
	}
	if newR.Pid != pid || pre.Ppid != pid || pre.Exe != h.v2 {
		t.Errorf("pids: process %d, new %d, pre-upgrade's parent %d (exe %s)", pid, newR.Pid, pre.Ppid, pre.Exe)
	}
	if pre.SawMarker {
		t.Errorf("pre-upgrade got %s", EnvExecPreUpgrade)
	}
	if newR.AwaitedRuns != 1 || newR.AwaitedErr != "" || filepath.Base(newR.AwaitedFlipped) != "v2" || !filepath.IsAbs(newR.AwaitedFlipped) {
		t.Fatalf("awaited: %d runs, flipped %q, err %q", newR.AwaitedRuns, newR.AwaitedFlipped, newR.AwaitedErr)
	}
	if newR.AwaitedAtNs < pre.EndNs {
		t.Errorf("AwaitPreUpgrade returned %s before pre-upgrade ended", time.Duration(pre.EndNs-newR.AwaitedAtNs))
	}
	if h.current() != "upgrades/v2" {
		t.Errorf("current -> %q", h.current())
	}
	noTemps(t, h)
}

// TestRealExecKeepsHomeLock: the old binary holds the home lock and execs for
// real; the new image holds it from its first instruction (another process is
// refused before the new image adopts it) and adopts it (Acquire with the handed
// over descriptor succeeds; another process is still refused).
func TestRealExecKeepsHomeLock(t *testing.T) {
	if testing.Short() {
		t.Skip("real exec")
	}
	h := newSelfUpgradeHome(t)
	pid, out, err := runHelper(t, h, []string{"start"}, envHelperLock+"=1")
	if err != nil {
		e, _ := readReport(t, out, "err.json")
		t.Fatalf("helper: %v (switch error: %s)", err, e.Err)
	}
	newR, ok := readReport(t, out, "new.json")
	if !ok {
		t.Fatal("the new binary did not report")
	}
	if newR.LockEnv == "" {
		t.Errorf("no %s handed to the new image", home.EnvLock)
	}
	if !newR.LockedBeforeAdopt {
		t.Error("another process got the home lock between the exec and the adoption")
	}
	if !newR.Adopted || newR.AdoptErr != "" {
		t.Fatalf("the new image did not adopt the lock: %s", newR.AdoptErr)
	}
	if !newR.LockedAfterAdopt || newR.HolderPID != pid {
		t.Errorf("after adoption: another process refused %v, holder pid %d (want %d)", newR.LockedAfterAdopt, newR.HolderPID, pid)
	}
	if _, held := h.l.HolderPID(); held {
		t.Error("the lock outlived the process")
	}
}

// TestRealExecScript: a wrapper script staged as the upgrade binary still runs
// when exec'd through its verified descriptor (its interpreter reads it again
// through the descriptor's path, so that descriptor survives the exec).
func TestRealExecScript(t *testing.T) {
	if testing.Short() {
		t.Skip("real exec")
	}
	h := newTestHome(t)
	h.writeExec(h.v2, "#!/bin/sh\necho \"$$\" > \"$"+envHelperOut+"/script.txt\"\n")
	h.haltAndStage(5, "")
	pid, out, err := runHelper(t, h, []string{"start"})
	if err != nil {
		e, _ := readReport(t, out, "err.json")
		t.Fatalf("helper: %v (switch error: %s)", err, e.Err)
	}
	b, err := os.ReadFile(filepath.Join(out, "script.txt"))
	if err != nil || strings.TrimSpace(string(b)) != fmt.Sprint(pid) {
		t.Fatalf("script report %q (%v), want pid %d", b, err, pid)
	}
}
