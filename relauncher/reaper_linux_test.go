//go:build linux

package relauncher

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestParseStat(t *testing.T) {
	tail := " 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 4242 0 0" // fields 5..21, then 22: starttime
	for _, tc := range []struct {
		line  string
		want  procStat
		fails bool
	}{
		{line: "12 (sleep) Z 1" + tail, want: procStat{comm: "sleep", state: 'Z', ppid: 1, start: 4242}},
		{line: "13 (a b) (c)) S 7" + tail, want: procStat{comm: "a b) (c)", state: 'S', ppid: 7, start: 4242}},
		{line: "14 sleep Z 1" + tail, fails: true},
		{line: "15 (x) Z 1 0 0", fails: true},
		{line: "16 (x) Z one" + tail, fails: true},
	} {
		got, err := parseStat([]byte(tc.line))
		if tc.fails != (err != nil) || got != tc.want {
			t.Errorf("parseStat(%q) = %+v, %v; want %+v (fails %v)", tc.line, got, err, tc.want, tc.fails)
		}
	}
}

// statOf is the state letter of pid in /proc, or "" when it is gone.
func statOf(pid int) string {
	st, err := readStat(procRoot, pid)
	if err != nil {
		return ""
	}
	return string(st.state)
}

// The Reaper reaps an orphan reparented to this process, and never a child
// this process waits for: exec.Cmd children keep their exit status, and a held
// child stays a zombie until its own Wait, however long.
func TestReaperReapsOrphansOnly(t *testing.T) {
	// This test process stands in for PID 1: as a child subreaper, the orphans
	// of its descendants are reparented to it, as they are to a namespace's init.
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		t.Skipf("PR_SET_CHILD_SUBREAPER: %v", err)
	}
	defer unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)
	const grace = 100 * time.Millisecond
	r := NewReaper(nil, grace)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()

	// A child started now and waited for later, held.
	held, err := os.StartProcess("/bin/sh", []string{"sh", "-c", "exit 5"}, &os.ProcAttr{})
	if err != nil {
		t.Fatal(err)
	}
	release := r.Hold(held.Pid)

	// A shell that leaves a background job and exits: the job is an orphan.
	out, err := exec.Command("/bin/sh", "-c", "sleep 0.2 >/dev/null 2>&1 & echo $!").Output()
	if err != nil {
		t.Fatal(err)
	}
	orphan, err := strconv.Atoi(strings.TrimSpace(string(out)))
	if err != nil {
		t.Fatalf("orphan pid %q: %v", out, err)
	}

	// Meanwhile, children this process waits for at once keep their status.
	var wg sync.WaitGroup
	errs := make(chan error, 40)
	for i := 0; i < 40; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := exec.Command("/bin/sh", "-c", "exit 7").Run()
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() != 7 {
				errs <- fmt.Errorf("exec.Cmd child: %v, want exit status 7", err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}

	// The orphan exits after 0.2 s and is reaped a grace later.
	deadline := time.Now().Add(10 * time.Second)
	for statOf(orphan) != "" {
		if time.Now().After(deadline) {
			t.Fatalf("orphan %d not reaped: state %s", orphan, statOf(orphan))
		}
		time.Sleep(20 * time.Millisecond) // polling /proc: nothing to wait on
	}
	if r.Reaped() < 1 {
		t.Errorf("Reaped() = %d after the orphan went away, want >= 1", r.Reaped())
	}
	// The held child exited long before and is still a zombie for its own Wait.
	if s := statOf(held.Pid); s != "Z" {
		t.Fatalf("held child %d is in state %q, want a zombie left for its Wait", held.Pid, s)
	}
	st, err := held.Wait()
	release()
	if err != nil || st.ExitCode() != 5 {
		t.Fatalf("held child's Wait = %v, %v; want exit status 5", st, err)
	}
}

func TestReaperHoldNil(t *testing.T) {
	var r *Reaper
	r.Hold(1)() // a nil Reaper holds nothing and does not panic
	if !IsInit(1) || IsInit(2) {
		t.Error("IsInit")
	}
}
