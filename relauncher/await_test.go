package relauncher

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/invisor/invisor/internal/home"
)

func validMarker() preUpgradeMarker {
	return preUpgradeMarker{
		Protocol: markerProtocol, Pid: 1234, Output: "/h/cosmovisor/.pre-upgrade" + home.TempMarker + "123", Path: "/h/cosmovisor/upgrades/v2/bin/appd",
		Attempt: 1, MaxRetries: 2, Timeout: 90 * time.Second, Started: time.Now().UnixNano(), Args: []string{"--x", "a b"},
		Link: "/h/cosmovisor/current", Target: "/h/cosmovisor/upgrades/v2",
	}
}

func TestMarkerRoundTrip(t *testing.T) {
	m := validMarker()
	got, err := decodeMarker(encodeMarker(m))
	if err != nil || !reflect.DeepEqual(got, m) {
		t.Fatalf("round trip: %+v %v, want %+v", got, err, m)
	}
}

func TestMarkerRejected(t *testing.T) {
	edit := func(f func(*preUpgradeMarker)) string {
		m := validMarker()
		f(&m)
		return encodeMarker(m)
	}
	for _, tc := range []struct {
		name, value, wantSub string
	}{
		{"empty", "", "not JSON"},
		{"garbage", "pid=12", "not JSON"},
		{"no protocol", `{"pid":12}`, `protocol ""`},
		{"foreign version", edit(func(m *preUpgradeMarker) { m.Protocol = "invisor-awaits-pre-upgrade/2" }), `"invisor-awaits-pre-upgrade/2"`},
		{"unknown field", strings.Replace(edit(func(*preUpgradeMarker) {}), `{`, `{"extra":1,`, 1), "extra"},
		{"bad pid", edit(func(m *preUpgradeMarker) { m.Pid = 0 }), "pid"},
		{"output outside our temp names", edit(func(m *preUpgradeMarker) { m.Output = "/etc/passwd" }), "output"},
		{"relative path", edit(func(m *preUpgradeMarker) { m.Path = "appd" }), "path"},
		{"attempt 0", edit(func(m *preUpgradeMarker) { m.Attempt = 0 }), "attempt"},
		{"negative retries", edit(func(m *preUpgradeMarker) { m.MaxRetries = -1 }), "max_retries"},
		{"no timeout", edit(func(m *preUpgradeMarker) { m.Timeout = 0 }), "timeout"},
		{"link not current", edit(func(m *preUpgradeMarker) { m.Link = "/h/cosmovisor/other" }), "link"},
		{"target escapes", edit(func(m *preUpgradeMarker) { m.Target = "/h/cosmovisor/upgrades/../../etc" }), "target"},
		{"target not an upgrade", edit(func(m *preUpgradeMarker) { m.Target = "/h/cosmovisor/genesis" }), "target"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := decodeMarker(tc.value)
			if !errors.Is(err, ErrMalformedPreUpgradeMarker) || !strings.Contains(err.Error(), tc.wantSub) {
				t.Fatalf("error %v, want ErrMalformedPreUpgradeMarker mentioning %q", err, tc.wantSub)
			}
			o := AwaitPreUpgrade([]string{"A=1", EnvExecPreUpgrade + "=" + tc.value})
			var pe *PreUpgradeError
			if o == nil || !errors.As(o.Err, &pe) || !errors.Is(o.Err, ErrMalformedPreUpgradeMarker) || o.Flipped != "" {
				t.Fatalf("AwaitPreUpgrade = %+v, want a PreUpgradeError", o)
			}
		})
	}
	if o := AwaitPreUpgrade([]string{"A=1"}); o != nil {
		t.Fatalf("no marker: %+v", o)
	}
}

// preUpgradeScript is a v2 binary whose pre-upgrade counts its runs, checks its
// arguments and environment, prints out-<n>, sleeps sleeps[n-1] and exits with
// codes[n-1] (the last entries repeat).
func preUpgradeScript(counter string, codes []int, sleep string) string {
	var cases strings.Builder
	for i, c := range codes {
		pat := fmt.Sprint(i + 1)
		if i == len(codes)-1 {
			pat = "*"
		}
		fmt.Fprintf(&cases, "  %s) exit %d;;\n", pat, c)
	}
	return fmt.Sprintf(`#!/bin/sh
[ "$1" = pre-upgrade ] || exit 99
[ "$2" = --extra ] || exit 98
[ "$MYVAR" = kept ] || exit 97
[ -z "$%[4]s" ] || exit 96
n=$(cat %[1]q 2>/dev/null || echo 0); n=$((n+1)); echo $n > %[1]q
echo out-$n
sleep %[3]s
case $n in
%[2]sesac
`, counter, cases.String(), sleep, EnvExecPreUpgrade)
}

// overlapSwitch sets up a home whose v2 runs script as pre-upgrade, switches to
// it with the overlap (a fake exec), and returns the exec'd environment.
func overlapSwitch(t *testing.T, h *testHome, script string, maxRetries int, timeout time.Duration, execErr error) (*fakeOS, *testLogger, error) {
	t.Helper()
	h.writeExec(h.v2, script)
	h.haltAndStage(3, "")
	v := &countingVerifier{l: h.l, awaits: true} // as the edge marks a scanned binary
	// A marker left from an earlier overlapped switch must not leak anywhere.
	f := &fakeOS{self: h.genesis, args: []string{"appd", "start"}, execErr: execErr,
		env: []string{"MYVAR=kept", "PATH=" + os.Getenv("PATH"), EnvExecPreUpgrade + "=stale"}}
	c := testConfig(h.home)
	c.RunPreUpgrade, c.PreUpgradeMaxRetries, c.PreUpgradeArgs, c.PreUpgradeTimeout = true, maxRetries, []string{"--extra"}, timeout
	log := &testLogger{}
	r, err := New(c, v, log, f.OS())
	must(t, err)
	return f, log, r.Switch("v2")
}

func markerIn(t *testing.T, env []string) preUpgradeMarker {
	t.Helper()
	var found []string
	for _, kv := range env {
		if k, v, _ := strings.Cut(kv, "="); k == EnvExecPreUpgrade {
			found = append(found, v)
		}
	}
	if len(found) != 1 {
		t.Fatalf("%d %s in the exec'd environment, want 1: %q", len(found), EnvExecPreUpgrade, found)
	}
	m, err := decodeMarker(found[0])
	must(t, err)
	return m
}

func noTemps(t *testing.T, h *testHome) {
	t.Helper()
	ents, err := os.ReadDir(h.l.Root())
	must(t, err)
	for _, e := range ents {
		if strings.Contains(e.Name(), home.TempMarker) {
			t.Errorf("left behind: %s", e.Name())
		}
	}
}

// The switch starts pre-upgrade and execs without waiting or flipping; the new
// binary (here: this test process, the child's parent like the exec'd image
// would be) waits, applies the exit codes, and flips `current` only on success.
func TestAwaitPreUpgrade(t *testing.T) {
	tests := []struct {
		name         string
		codes        []int
		maxRetries   int
		sleep        string
		timeout      time.Duration
		wantErr      bool
		wantCode     int
		wantAttempts int
	}{
		{"ok", []int{0}, 0, "1", time.Minute, false, 0, 1},
		{"not implemented", []int{1}, 0, "0", time.Minute, false, 1, 1},
		{"fail", []int{30}, 3, "0", time.Minute, true, 30, 1},
		{"retry then ok", []int{31, 0}, 1, "0", time.Minute, false, 0, 2},
		{"retry exhausted", []int{31}, 2, "0", time.Minute, true, 31, 3},
		{"retry without retries", []int{31}, 0, "0", time.Minute, true, 31, 1},
		{"other code fails", []int{2}, 1, "0", time.Minute, true, 2, 1},
		{"timeout", []int{0}, 0, "30", 500 * time.Millisecond, true, -1, 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := newTestHome(t)
			counter := filepath.Join(t.TempDir(), "n")
			begin := time.Now()
			f, log, err := overlapSwitch(t, h, preUpgradeScript(counter, tc.codes, tc.sleep), tc.maxRetries, tc.timeout, nil)
			must(t, err)
			if tc.name == "ok" && time.Since(begin) > 800*time.Millisecond {
				t.Errorf("Switch waited for pre-upgrade (%s)", time.Since(begin))
			}
			if h.current() != home.GenesisDir {
				t.Fatalf("the old process flipped current to %q", h.current())
			}
			calls := f.calls()
			if len(calls) != 1 {
				t.Fatalf("%d execs", len(calls))
			}
			m := markerIn(t, calls[0].env)
			if m.Path != h.v2 || m.Attempt != 1 || m.MaxRetries != tc.maxRetries || m.Timeout != tc.timeout ||
				!reflect.DeepEqual(m.Args, []string{"--extra", "--home", h.l.Home()}) || m.Target != filepath.Join(h.l.UpgradesRoot(), "v2") ||
				m.Link != h.l.Current() || filepath.Dir(m.Output) != h.l.Root() {
				t.Errorf("marker %+v", m)
			}
			if !strings.Contains(strings.Join(log.all(), "\n"), "pre-upgrade started") {
				t.Errorf("no log line for the overlap: %q", log.all())
			}

			o := AwaitPreUpgrade(calls[0].env)
			if o == nil || len(o.Runs) != tc.wantAttempts {
				t.Fatalf("outcome %+v, want %d runs", o, tc.wantAttempts)
			}
			if b, _ := os.ReadFile(counter); strings.TrimSpace(string(b)) != fmt.Sprint(tc.wantAttempts) {
				t.Errorf("script ran %s times, want %d", b, tc.wantAttempts)
			}
			last := o.Runs[len(o.Runs)-1]
			if last.ExitCode != tc.wantCode {
				t.Errorf("last exit %d, want %d", last.ExitCode, tc.wantCode)
			}
			for i, run := range o.Runs {
				if run.Attempt != i+1 || (tc.wantCode >= 0 && !strings.Contains(run.Output, fmt.Sprintf("out-%d", i+1))) {
					t.Errorf("run %d: %+v", i, run)
				}
			}
			if _, err := os.Stat(m.Output); !os.IsNotExist(err) {
				t.Errorf("output file %s not removed: %v", m.Output, err)
			}
			noTemps(t, h)
			rl := &testLogger{}
			rerr := o.Report(rl)
			if !strings.Contains(strings.Join(rl.all(), "\n"), "invisor: pre-upgrade ran") {
				t.Errorf("report: %q", rl.all())
			}
			if !tc.wantErr {
				if o.Err != nil || rerr != nil || o.Flipped != filepath.Join(h.l.UpgradesRoot(), "v2") || h.current() != "upgrades/v2" {
					t.Fatalf("err %v, flipped %q, current %q", o.Err, o.Flipped, h.current())
				}
				return
			}
			var pe *PreUpgradeError
			if !errors.As(o.Err, &pe) || !errors.Is(rerr, ErrPreUpgrade) || pe.ExitCode != tc.wantCode || pe.Attempts != tc.wantAttempts {
				t.Fatalf("error %v (%+v), want PreUpgradeError code %d after %d", o.Err, pe, tc.wantCode, tc.wantAttempts)
			}
			if tc.timeout < time.Minute && !errors.Is(o.Err, os.ErrDeadlineExceeded) && !strings.Contains(o.Err.Error(), "timed out") {
				t.Errorf("timeout not named: %v", o.Err)
			}
			if o.Flipped != "" || h.current() != home.GenesisDir {
				t.Fatalf("failed pre-upgrade flipped current to %q", h.current())
			}
		})
	}
}

// An exec that fails after pre-upgrade was started waits for it: no orphan, no
// output file, `current` unflipped.
func TestOverlapExecFailureReapsChild(t *testing.T) {
	h := newTestHome(t)
	counter := filepath.Join(t.TempDir(), "n")
	done := filepath.Join(t.TempDir(), "done")
	script := strings.Replace(preUpgradeScript(counter, []int{0}, "0.3"), "case $n in", "touch "+done+"\ncase $n in", 1)
	f, log, err := overlapSwitch(t, h, script, 0, time.Minute, errors.New("exec failed"))
	var ee *ExecError
	if !errors.As(err, &ee) {
		t.Fatalf("Switch: %v, want ExecError", err)
	}
	if _, serr := os.Stat(done); serr != nil {
		t.Fatalf("Switch returned before pre-upgrade ended: %v", serr)
	}
	m := markerIn(t, f.calls()[0].env)
	if _, serr := os.Stat(m.Output); !os.IsNotExist(serr) {
		t.Errorf("output file left: %v", serr)
	}
	noTemps(t, h)
	if h.current() != home.GenesisDir {
		t.Fatalf("current -> %q", h.current())
	}
	if !strings.Contains(strings.Join(log.all(), "\n"), "invisor: pre-upgrade ran") {
		t.Errorf("the reaped run is not logged: %q", log.all())
	}
}

// A failed exec kills a pre-upgrade that outlives its timeout.
func TestOverlapExecFailureKillsAtTimeout(t *testing.T) {
	h := newTestHome(t)
	counter := filepath.Join(t.TempDir(), "n")
	begin := time.Now()
	_, _, err := overlapSwitch(t, h, preUpgradeScript(counter, []int{0}, "30"), 0, 500*time.Millisecond, errors.New("exec failed"))
	if !errors.Is(err, ErrExecFailed) {
		t.Fatalf("Switch: %v", err)
	}
	if d := time.Since(begin); d > 10*time.Second {
		t.Fatalf("Switch took %s", d)
	}
}

// Without the capability, or on a boot redirect, pre-upgrade runs first and the
// old process flips `current`; no marker is passed on (a stale one is dropped).
func TestNoOverlapWithoutCapabilityOrOnRedirect(t *testing.T) {
	for _, tc := range []struct {
		name     string
		capable  bool
		redirect bool
	}{{"not capable", false, false}, {"boot redirect", true, true}} {
		t.Run(tc.name, func(t *testing.T) {
			h := newTestHome(t)
			counter := filepath.Join(t.TempDir(), "n")
			h.writeExec(h.v2, preUpgradeScript(counter, []int{0}, "0"))
			h.haltAndStage(3, "")
			v := &countingVerifier{l: h.l, awaits: tc.capable}
			f := &fakeOS{self: h.genesis, args: []string{"appd", "start"},
				env: []string{"MYVAR=kept", "PATH=" + os.Getenv("PATH"), EnvExecPreUpgrade + "=stale"}}
			c := testConfig(h.home)
			c.RunPreUpgrade, c.PreUpgradeArgs = true, []string{"--extra"}
			r, err := New(c, v, nil, f.OS())
			must(t, err)
			if tc.redirect {
				err = r.Boot()
			} else {
				err = r.Switch("v2")
			}
			must(t, err)
			if b, _ := os.ReadFile(counter); strings.TrimSpace(string(b)) != "1" {
				t.Fatalf("pre-upgrade ran %q times before the exec, want 1", b)
			}
			if h.current() != "upgrades/v2" || len(f.calls()) != 1 {
				t.Fatalf("current %q, execs %d", h.current(), len(f.calls()))
			}
			if _, ok := envMap(f.calls()[0].env)[EnvExecPreUpgrade]; ok {
				t.Fatalf("%s passed on: %q", EnvExecPreUpgrade, f.calls()[0].env)
			}
		})
	}
}

func TestExecEnvDropsPreUpgradeMarker(t *testing.T) {
	h := newTestHome(t)
	f := &fakeOS{env: []string{"A=1", EnvExecPreUpgrade + `={"protocol":"x"}`, EnvExecGeneration + "=1"}}
	f.env = append(f.env, home.EnvLock+"=5:1:2")
	r, err := New(testConfig(h.home), nil, nil, f.OS())
	must(t, err)
	env, err := r.execEnv("/old", h.v2, false)
	must(t, err)
	want := []string{"A=1", EnvExecGeneration + "=2", EnvExecedFrom + "=/old"}
	if !reflect.DeepEqual(env, want) {
		t.Fatalf("execEnv = %q, want %q", env, want)
	}
	if got := preUpgradeEnv(f.env); !reflect.DeepEqual(got, []string{"A=1", EnvExecGeneration + "=1"}) {
		t.Fatalf("preUpgradeEnv = %q", got)
	}
}

// Boot logs an awaited pre-upgrade like Switch logs its own, and refuses to run
// the node after a failed one.
func TestBootReportsAwaitedPreUpgrade(t *testing.T) {
	failed := &PreUpgradeOutcome{Path: "/b", Runs: []PreUpgradeRun{{Attempt: 1, ExitCode: 30, Output: "boom"}},
		Err: &PreUpgradeError{Path: "/b", ExitCode: 30, Attempts: 1, Output: "boom"}}
	ok := &PreUpgradeOutcome{Path: "/b", MaxRetries: 1, Flipped: "upgrades/v2", Runs: []PreUpgradeRun{
		{Attempt: 1, ExitCode: 31, Err: errors.New("exit status 31")}, {Attempt: 2, ExitCode: 0}}}
	for _, tc := range []struct {
		name    string
		o       *PreUpgradeOutcome
		wantErr bool
		want    []string
	}{
		{"failed", failed, true, []string{"pre-upgrade ran", "boom"}},
		{"retried then ok", ok, false, []string{"pre-upgrade ran", "asked for a retry", "current link flipped"}},
		{"none", nil, false, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newTestHome(t)
			log := &testLogger{}
			f := &fakeOS{self: h.genesis}
			osys := f.OS()
			osys.AwaitedPreUpgrade = tc.o
			r, err := New(testConfig(h.home), nil, log, osys)
			must(t, err)
			err = r.Boot()
			if tc.wantErr != errors.Is(err, ErrPreUpgrade) || (!tc.wantErr && err != nil) {
				t.Fatalf("Boot: %v", err)
			}
			all := strings.Join(log.all(), "\n")
			for _, w := range tc.want {
				if !strings.Contains(all, w) {
					t.Errorf("log lacks %q:\n%s", w, all)
				}
			}
			if tc.o == nil && all != "" {
				t.Errorf("logged %q", all)
			}
		})
	}
}

// A pre-upgrade that already exited (a zombie) before the new binary looks is
// still waited for and its exit code read.
func TestAwaitPreUpgradeChildAlreadyExited(t *testing.T) {
	h := newTestHome(t)
	counter := filepath.Join(t.TempDir(), "n")
	f, _, err := overlapSwitch(t, h, preUpgradeScript(counter, []int{30}, "0"), 0, time.Minute, nil)
	must(t, err)
	m := markerIn(t, f.calls()[0].env)
	stat := fmt.Sprintf("/proc/%d/stat", m.Pid)
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		b, err := os.ReadFile(stat)
		must(t, err)
		if _, rest, _ := strings.Cut(string(b), ") "); strings.HasPrefix(rest, "Z") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("pre-upgrade never exited: %s", b)
		}
	}
	o := AwaitPreUpgrade(f.calls()[0].env)
	if o == nil || len(o.Runs) != 1 || o.Runs[0].ExitCode != 30 || !errors.Is(o.Err, ErrPreUpgrade) || h.current() != home.GenesisDir {
		t.Fatalf("outcome %+v, current %q", o, h.current())
	}
}

func FuzzDecodeMarker(f *testing.F) {
	f.Add(encodeMarker(validMarker()))
	for _, s := range []string{``, `{}`, `{"protocol":"` + markerProtocol + `"}`, `{"protocol":"` + markerProtocol + `","target":"upgrades/.."}`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		m, err := decodeMarker(v)
		if err != nil {
			if !errors.Is(err, ErrMalformedPreUpgradeMarker) {
				t.Fatalf("unexpected error type %v", err)
			}
			return
		}
		if m.Pid <= 0 || m.Timeout <= 0 || filepath.Dir(m.Target) != filepath.Join(filepath.Dir(m.Link), home.UpgradesDir) || filepath.Base(m.Link) != home.CurrentLink ||
			!strings.Contains(filepath.Base(m.Output), home.TempMarker) {
			t.Fatalf("accepted %+v", m)
		}
		if again, err := decodeMarker(encodeMarker(m)); err != nil || !reflect.DeepEqual(again, m) {
			t.Fatalf("round trip of %+v: %+v %v", m, again, err)
		}
	})
}
