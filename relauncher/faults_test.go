package relauncher

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/invisor/invisor/internal/home"
)

// Tests named after the rows of FAULTS.md they prove. Elsewhere: row 21
// (TestSwitch "exec E...", TestRealExecFailure), 24 (TestRealExecSwitch), 28
// (TestFault28ModifiedAfterVerification in fastpath_test.go), 27/37 (the
// edge's; TestRealExecKeepsHomeLock proves the lock is held through the exec).

// swapFile replaces the file at p by a new one with content, as an operator's
// `mv` (or an attacker) would: a new inode renamed over the path.
func swapFile(t *testing.T, p, content string) {
	t.Helper()
	tmp := p + ".new"
	must(t, os.WriteFile(tmp, []byte(content), 0o755))
	must(t, os.Rename(tmp, p))
}

// TestFault20CrashBetweenHaltAndExec: the old binary, started again after a crash
// anywhere between the halt and the exec, execs the staged binary before opening
// any store, and only repeats the preparation if it did not complete.
func TestFault20CrashBetweenHaltAndExec(t *testing.T) {
	for _, tc := range []struct {
		name        string
		flipped     bool // the crash came after `current` was flipped
		wantPreRuns string
	}{
		{"before the flip: backup and pre-upgrade again", false, "1"},
		{"after the flip: straight to the exec", true, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newTestHome(t)
			counter := filepath.Join(t.TempDir(), "n")
			h.writeExec(h.v2, fmt.Sprintf("#!/bin/sh\nn=$(cat %[1]q 2>/dev/null || echo 0); echo $((n+1)) > %[1]q\n", counter))
			h.haltAndStage(40, "")
			if tc.flipped {
				must(t, home.Symlink("upgrades/v2", h.l.Current()))
			}
			c := testConfig(h.home)
			c.RunPreUpgrade = true
			f := &fakeOS{self: h.genesis, args: []string{"appd", "start"}, env: []string{"PATH=" + os.Getenv("PATH")}}
			r, err := New(c, nil, &testLogger{}, f.OS())
			must(t, err)
			must(t, r.Boot())
			if calls := f.calls(); len(calls) != 1 || calls[0].target != h.v2 {
				t.Fatalf("execs %+v", calls)
			}
			b, _ := os.ReadFile(counter)
			if got := strings.TrimSpace(string(b)); got != tc.wantPreRuns {
				t.Fatalf("pre-upgrade runs %q, want %q", got, tc.wantPreRuns)
			}
			if h.current() != "upgrades/v2" {
				t.Fatalf("current -> %q", h.current())
			}
		})
	}
}

// TestFault41ChangedBetweenCheckAndRun: the file is swapped after the proof and
// before pre-upgrade, during pre-upgrade (before the flip), or right before the
// exec: refused, nothing ran that was not proven, `current` not flipped to it.
func TestFault41ChangedBetweenCheckAndRun(t *testing.T) {
	const evil = "#!/bin/sh\ntouch \"$EVIL_RAN\"\n"
	for _, tc := range []struct {
		name       string
		preUpgrade bool
		overlap    bool
		redirect   bool // a boot redirect with `current` already flipped: only the exec is left
		inScript   bool // the swap happens inside pre-upgrade
	}{
		{name: "before pre-upgrade", preUpgrade: true},
		{name: "before the overlapped pre-upgrade", preUpgrade: true, overlap: true},
		{name: "during pre-upgrade, before the flip", preUpgrade: true, inScript: true},
		{name: "before the flip, no pre-upgrade"},
		{name: "before the exec", redirect: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newTestHome(t)
			ran := filepath.Join(t.TempDir(), "ran")
			evilRan := filepath.Join(t.TempDir(), "evil")
			script := fmt.Sprintf("#!/bin/sh\ntouch %q\n", ran)
			if tc.inScript {
				script += fmt.Sprintf("printf '%%s' %q > %q.new && chmod 755 %[2]q.new && mv %[2]q.new %[2]q\n", evil, h.v2)
			}
			h.writeExec(h.v2, script)
			h.haltAndStage(50, "")
			if tc.redirect {
				must(t, home.Symlink("upgrades/v2", h.l.Current()))
			}
			v := &countingVerifier{l: h.l, awaits: tc.overlap}
			if !tc.inScript {
				v.after = func(Binary) { swapFile(t, h.v2, evil) }
			}
			c := testConfig(h.home)
			c.RunPreUpgrade = tc.preUpgrade
			f := &fakeOS{self: h.genesis, args: []string{"appd", "start"},
				env: []string{"PATH=" + os.Getenv("PATH"), "EVIL_RAN=" + evilRan}}
			r, err := New(c, v, &testLogger{}, f.OS())
			must(t, err)
			if tc.redirect {
				err = r.Boot()
			} else {
				err = r.Switch("v2")
			}
			if !errors.Is(err, home.ErrChanged) || !errors.Is(err, home.ErrNotTrusted) {
				t.Fatalf("err = %v, want a refusal naming the change", err)
			}
			if len(f.calls()) != 0 {
				t.Fatalf("exec'd after the swap: %+v", f.calls())
			}
			if _, err := os.Stat(evilRan); err == nil {
				t.Fatal("the swapped-in file ran")
			}
			_, serr := os.Stat(ran)
			if ranPre := serr == nil; ranPre != tc.inScript {
				t.Fatalf("the proven pre-upgrade ran: %v, want %v", ranPre, tc.inScript)
			}
			want := home.GenesisDir
			if tc.redirect {
				want = "upgrades/v2"
			}
			if h.current() != want {
				t.Fatalf("current -> %q, want %q", h.current(), want)
			}
			if a := h.l.Attempts(home.Plan{Name: "v2", Height: 50}); a.Count != 0 {
				t.Fatalf("a refused switch counted as an attempt: %+v", a)
			}
		})
	}
	// The descriptor runs what was proven even if the path changes under it: the
	// fake exec reads through argv0 at the exec.
	t.Run("argv0 is the proven descriptor", func(t *testing.T) {
		h := newTestHome(t)
		h.haltAndStage(50, "")
		f := &fakeOS{self: h.genesis, args: []string{"appd"}}
		r, err := New(testConfig(h.home), nil, nil, f.OS())
		must(t, err)
		must(t, r.Switch("v2"))
		if c := f.calls(); len(c) != 1 || !strings.HasPrefix(c[0].argv0, "/proc/self/fd/") || c[0].content != "#!/bin/sh\necho v2\n" {
			t.Fatalf("execs %+v", c)
		}
	})
}

// TestFault38BootFetch: restarted at the halt with downloads allowed and no
// binary yet, Boot fetches it (bounded), verifies it and switches.
func TestFault38BootFetch(t *testing.T) {
	plan := home.Plan{Name: "v2", Height: 60, Info: `{"binaries":{}}`}
	fetchOK := func(h *testHome) func(context.Context, home.Plan) error {
		return func(ctx context.Context, p home.Plan) error {
			if p != plan {
				return fmt.Errorf("fetch for %+v, want %+v", p, plan)
			}
			h.writeExec(h.v2, "#!/bin/sh\necho fetched\n")
			h.stage(p)
			return nil
		}
	}
	for _, tc := range []struct {
		name      string
		downloads bool
		fetch     func(h *testHome) func(context.Context, home.Plan) error
		timeout   time.Duration
		wantExec  bool
		wantErr   string
	}{
		{name: "fetched, then redirected", downloads: true, fetch: fetchOK, wantExec: true},
		{name: "downloads off: no fetch", downloads: false, fetch: fetchOK, wantErr: "enable downloads"},
		{name: "no fetcher", downloads: true, wantErr: "wait for the download"},
		{name: "fetch fails", downloads: true, wantErr: "fetching it at boot failed: 404",
			fetch: func(*testHome) func(context.Context, home.Plan) error {
				return func(context.Context, home.Plan) error { return errors.New("404") }
			}},
		{name: "fetch bounded by BootFetchTimeout", downloads: true, timeout: 20 * time.Millisecond, wantErr: "BootFetchTimeout",
			fetch: func(*testHome) func(context.Context, home.Plan) error {
				return func(ctx context.Context, _ home.Plan) error { <-ctx.Done(); return ctx.Err() }
			}},
		{name: "fetched file does not match the plan", downloads: true, wantErr: "fetched at boot, but",
			fetch: func(h *testHome) func(context.Context, home.Plan) error {
				return func(_ context.Context, p home.Plan) error {
					h.writeExec(h.v2, "#!/bin/sh\n")
					h.stage(home.Plan{Name: p.Name, Height: p.Height + 1, Info: p.Info})
					return nil
				}
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newTestHome(t)
			must(t, os.Remove(h.v2))
			h.halt(plan)
			f := &fakeOS{self: h.genesis, args: []string{"appd", "start"}}
			if tc.fetch != nil {
				f.fetch = tc.fetch(h)
			}
			c := testConfig(h.home)
			c.DownloadsEnabled, c.BootFetchTimeout = tc.downloads, tc.timeout
			log := &testLogger{}
			r, err := New(c, nil, log, f.OS())
			must(t, err)
			err = r.Boot()
			if tc.wantExec {
				must(t, err)
				if calls := f.calls(); len(calls) != 1 || calls[0].content != "#!/bin/sh\necho fetched\n" {
					t.Fatalf("execs %+v", calls)
				}
				if !strings.Contains(log.text(), "fetching the upgrade binary at boot") {
					t.Fatalf("no fetch log line:\n%s", log.text())
				}
				return
			}
			var me *MissingBinaryError
			if !errors.As(err, &me) || !strings.Contains(err.Error(), tc.wantErr) || len(f.calls()) != 0 {
				t.Fatalf("Boot: %v (execs %d), want a MissingBinaryError with %q", err, len(f.calls()), tc.wantErr)
			}
		})
	}
}

// TestFault39AttemptsAcrossRestarts: a binary that halts again after the switch
// is exec'd at most MaxSwitchAttempts times across restarts (each a new
// Relauncher on the same home), with one data backup in total, and then refused
// with a message that says what to do, without backup or pre-upgrade.
func TestFault39AttemptsAcrossRestarts(t *testing.T) {
	h := newTestHome(t)
	counter := filepath.Join(t.TempDir(), "n")
	h.writeExec(h.v2, fmt.Sprintf("#!/bin/sh\nn=$(cat %[1]q 2>/dev/null || echo 0); echo $((n+1)) > %[1]q\n", counter))
	p := h.haltAndStage(70, "")
	must(t, os.WriteFile(filepath.Join(h.l.DataDir(), "000001.ldb"), []byte("t"), 0o644))
	c := testConfig(h.home)
	c.Backup, c.BackupDir, c.RunPreUpgrade, c.MaxSwitchAttempts = true, t.TempDir(), true, 3
	env := []string{"PATH=" + os.Getenv("PATH")}
	execs := 0
	var last error
	log := &testLogger{}
	for restart := 0; restart < 6; restart++ {
		// Alternate the old binary's boot redirect with the new binary's halt and
		// Switch (it runs, halts at the same height again, and switches to itself).
		// `current` is rolled back each time (as an operator trying again would),
		// so every attempt prepares: the backup rule, not the link, saves the disk.
		self := h.genesis
		if restart%2 == 1 {
			self = h.v2
		}
		must(t, home.Symlink(home.GenesisDir, h.l.Current()))
		f := &fakeOS{self: self, args: []string{"appd", "start"}, env: env}
		r, err := New(c, nil, log, f.OS())
		must(t, err)
		if restart%2 == 0 {
			last = r.Boot()
		} else {
			last = r.Switch("v2")
		}
		execs += len(f.calls())
	}
	if execs != 3 {
		t.Fatalf("%d execs across restarts, want 3", execs)
	}
	ents, _ := os.ReadDir(c.BackupDir)
	if len(ents) != 1 {
		t.Fatalf("%d backups, want 1: %v", len(ents), ents)
	}
	if b, _ := os.ReadFile(counter); strings.TrimSpace(string(b)) != "3" {
		t.Fatalf("pre-upgrade ran %q times, want 3 (none after the refusal)", b)
	}
	if n := strings.Count(log.text(), "the first attempt's backup stands"); n != 2 {
		t.Fatalf("%d later attempts said the first backup stands, want 2:\n%s", n, log.text())
	}
	ledger := filepath.Join(h.l.Root(), home.AttemptsFile)
	if !errors.Is(last, ErrExecLoop) || !strings.Contains(last.Error(), "started 3 times") ||
		!strings.Contains(last.Error(), "lacks the upgrade handler \"v2\"") || !strings.Contains(last.Error(), "remove "+ledger) {
		t.Fatalf("last error: %v", last)
	}
	if a := h.l.Attempts(p); a.Count != 3 || a.Backup != filepath.Join(c.BackupDir, ents[0].Name()) {
		t.Fatalf("ledger %+v", a)
	}
	// Removing the ledger (after restaging) lets the switch go again.
	must(t, os.Remove(ledger))
	f := &fakeOS{self: h.genesis, args: []string{"appd"}, env: env}
	r, err := New(c, nil, nil, f.OS())
	must(t, err)
	must(t, r.Boot())
	if len(f.calls()) != 1 {
		t.Fatal("no exec after the ledger was removed")
	}
}

// TestFault33UnmappableNameNeverFailsBoot: a plan name no directory can hold
// never stops the node from starting, and never arms a switch; the log says why
// and what to do. Names that need escaping or case handling map as cosmovisor's.
func TestFault33UnmappableNameNeverFailsBoot(t *testing.T) {
	for _, name := range []string{".", "..", strings.Repeat("/", 86), strings.Repeat("x", 256)} {
		t.Run(fmt.Sprintf("%.12q", name), func(t *testing.T) {
			h := newTestHome(t)
			h.halt(home.Plan{Name: name, Height: 80})
			f := &fakeOS{self: h.genesis}
			log := &testLogger{}
			c := testConfig(h.home)
			c.HaltPollInterval = time.Millisecond
			r, err := New(c, nil, log, f.OS())
			must(t, err)
			defer r.Close()
			if err := r.Boot(); err != nil {
				t.Fatalf("Boot: %v", err)
			}
			r.OnHalt(name, 80)
			if _, armed := r.Armed(); armed || len(f.calls()) != 0 || f.stopCount() != 0 {
				t.Fatal("acted on an unmappable name")
			}
			r.mu.Lock()
			started := r.started
			r.mu.Unlock()
			if started {
				t.Fatal("OnHalt started a waiter for an unmappable name")
			}
			all := log.text()
			if n := strings.Count(all, "cannot be mapped to a directory"); n != 2 || !strings.Contains(all, (&home.UnmappableNameError{}).Advice()) {
				t.Fatalf("log:\n%s", all)
			}
		})
	}
	for _, tc := range []struct {
		name, dir     string
		disableRecase bool
	}{
		{"V2-Upgrade", "v2-upgrade", false},
		{"V2-Upgrade", "V2-Upgrade", true},
		{`say "hi"/x`, "say%20%22hi%22%2Fx", false},
		{"zero\u200bwidth", "zero%E2%80%8Bwidth", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newTestHome(t)
			c := testConfig(h.home)
			c.DisableRecase = tc.disableRecase
			r, err := New(c, nil, nil, (&fakeOS{}).OS())
			must(t, err)
			l := r.Home()
			bin := filepath.Join(l.UpgradesRoot(), tc.dir, home.BinDir, daemon)
			h.writeExec(bin, "#!/bin/sh\n")
			p := h.halt(home.Plan{Name: tc.name, Height: 81})
			stageRecord(t, l, p)
			f := &fakeOS{self: h.genesis, args: []string{"appd"}}
			r, err = New(c, nil, nil, f.OS())
			must(t, err)
			must(t, r.Boot())
			if calls := f.calls(); len(calls) != 1 || calls[0].target != bin {
				t.Fatalf("execs %+v, want %s", calls, bin)
			}
			if want := filepath.Join(home.UpgradesDir, tc.dir); h.current() != want {
				t.Fatalf("current -> %q, want %q", h.current(), want)
			}
		})
	}
}

// Every exec hands the home lock to the new image (after any child was started)
// and takes it back if the exec returned; without a lock the exec goes on.
func TestExecHandsOverLock(t *testing.T) {
	h := newTestHome(t)
	h.haltAndStage(90, "")
	lk, err := h.l.Acquire(nil)
	must(t, err)
	defer lk.Release()
	f := &fakeOS{self: h.genesis, args: []string{"appd"}, lock: lk, execErr: syscall.EACCES,
		env: []string{home.EnvLock + "=99:1:1"}}
	var flagsAtExec int
	osys := f.OS()
	exec := osys.Exec
	osys.Exec = func(argv0 string, argv, envv []string) error {
		flagsAtExec = fdFlags(t, lk)
		return exec(argv0, argv, envv)
	}
	r, err := New(testConfig(h.home), nil, nil, osys)
	must(t, err)
	err = r.Switch("v2")
	if !errors.Is(err, syscall.EACCES) {
		t.Fatalf("Switch: %v", err)
	}
	env := envMap(f.calls()[0].env)
	var fd, dev, ino uint64
	if _, err := fmt.Sscanf(env[home.EnvLock], "%d:%d:%d", &fd, &dev, &ino); err != nil || fd == 99 {
		t.Fatalf("%s=%q: %v", home.EnvLock, env[home.EnvLock], err)
	}
	if flagsAtExec&syscall.FD_CLOEXEC != 0 {
		t.Fatal("the lock descriptor was close-on-exec at the exec")
	}
	if fdFlags(t, lk)&syscall.FD_CLOEXEC == 0 {
		t.Fatal("Keep was not called after the failed exec")
	}
	if strings.Count(strings.Join(f.calls()[0].env, "\n"), home.EnvLock+"=") != 1 {
		t.Fatalf("env %q", f.calls()[0].env)
	}
}

func fdFlags(t *testing.T, lk *home.Lock) int {
	t.Helper()
	// The lock's descriptor: the only open file on the lock path in this process.
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skip("no /proc/self/fd")
	}
	for _, e := range ents {
		if tgt, _ := os.Readlink("/proc/self/fd/" + e.Name()); tgt == lk.Path() {
			var fd int
			fmt.Sscan(e.Name(), &fd)
			fl, _, errno := syscall.Syscall(syscall.SYS_FCNTL, uintptr(fd), syscall.F_GETFD, 0)
			if errno != 0 {
				t.Fatal(errno)
			}
			return int(fl)
		}
	}
	t.Fatal("lock descriptor not found")
	return 0
}
