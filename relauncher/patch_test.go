package relauncher

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/invisor/invisor/internal/home"
	"github.com/invisor/invisor/internal/probe"
)

// Tests of the boot policy for patch releases: the boot redirect replaces the
// running binary only when it cannot run the chain's state (OS.Handles says it
// lacks the plan's upgrade handler, or cannot tell); a binary that carries the
// handler runs as started and becomes the upgrade's recorded binary.

const patchScript = "#!/bin/sh\necho v2.0.1\n"

// handlesOnly is an OS.Handles that carries exactly the handlers named, and
// counts its calls.
type handlesOnly struct {
	names []string
	calls atomic.Int64
}

func (h *handlesOnly) fn(name string) (bool, bool) {
	h.calls.Add(1)
	for _, n := range h.names {
		if n == name {
			return true, true
		}
	}
	return false, true
}

// patchBoot is one Boot of self on h with handles as OS.Handles.
type patchBoot struct {
	f   *fakeOS
	log *testLogger
	err error
}

func bootWith(t *testing.T, h *testHome, c Config, self string, env []string, handles func(string) (bool, bool)) patchBoot {
	t.Helper()
	f := &fakeOS{self: self, args: []string{"appd", "start"}, env: append([]string{"PATH=" + os.Getenv("PATH")}, env...)}
	o := f.OS()
	o.Handles = handles
	log := &testLogger{}
	r, err := New(c, nil, log, o)
	must(t, err)
	return patchBoot{f: f, log: log, err: r.Boot()}
}

// afterUpgrade is a home after the switch to v2 at height 123: upgrade-info
// names v2, its binary is staged and recorded, `current` points to it.
func afterUpgrade(t *testing.T) (*testHome, home.Plan) {
	t.Helper()
	h := newTestHome(t)
	p := h.haltAndStage(123, "x")
	must(t, os.Remove(h.l.Current()))
	must(t, os.Symlink(filepath.Dir(filepath.Dir(h.v2)), h.l.Current()))
	return h, p
}

func patchFile(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "bin", daemon)
	must(t, os.MkdirAll(filepath.Dir(p), 0o755))
	must(t, os.WriteFile(p, []byte(content), 0o755))
	return p
}

func sha256Of(t *testing.T, p string) string {
	t.Helper()
	f, err := os.Open(p)
	must(t, err)
	defer f.Close()
	d, err := home.HashFile(context.Background(), f)
	must(t, err)
	return d.SHA256
}

// TestBootPatchRelease is the operator's patch release after an upgrade: v2.0.1
// installed at the operator's path and started there runs as started, becomes
// the upgrade's recorded binary (the staged v2.0.0 kept beside), `current` stays
// on the upgrade; a restart of that path runs it as a copy, without a second
// install; a restart of the old v1 path is redirected to it, and says why.
func TestBootPatchRelease(t *testing.T) {
	h, p := afterUpgrade(t)
	c := testConfig(h.home)
	oldSHA := sha256Of(t, h.v2)
	patch := patchFile(t, patchScript)
	patchSHA := sha256Of(t, patch)
	v2 := &handlesOnly{names: []string{"v2"}}

	b := bootWith(t, h, c, patch, nil, v2.fn)
	must(t, b.err)
	if n := len(b.f.calls()); n != 0 {
		t.Fatalf("the patch release was redirected (%d execs)", n)
	}
	if v2.calls.Load() != 1 {
		t.Fatalf("OS.Handles asked %d times, want once", v2.calls.Load())
	}
	v, err := h.l.Open(context.Background(), p)
	must(t, err)
	rec := v.Record
	v.Close()
	if rec.SHA256 != patchSHA || rec.Source != home.SourceOperatorStarted || rec.File != patch || !rec.Source.Unconfirmed() {
		t.Fatalf("record of the upgrade's binary = %+v, want the patch (sha256 %s) started by the operator", rec, patchSHA)
	}
	if has, known := rec.Probe.HasHandler("v2"); !has || !known || rec.Probe.InvisorVersion != probe.InvisorVersion() ||
		!rec.Probe.Speaks(probe.ProtocolAwaitPreUpgrade) {
		t.Fatalf("record's probe answer = %+v, want what this binary knows about itself", rec.Probe)
	}
	if got, _ := os.ReadFile(h.v2); string(got) != patchScript {
		t.Fatalf("upgrades/v2/bin = %q, want the patch", got)
	}
	prev, err := h.l.Previous("v2")
	must(t, err)
	if len(prev) != 1 || prev[0].Err != nil || prev[0].Record.SHA256 != oldSHA || sha256Of(t, prev[0].Bin) != oldSHA {
		t.Fatalf("the staged v2.0.0 was not kept with its record: %+v", prev)
	}
	if h.current() != "upgrades/v2" {
		t.Fatalf("current -> %q", h.current())
	}
	lines := matching(b.log, "patch release")
	if len(lines) != 1 {
		t.Fatalf("logged %d patch-release lines, want 1:\n%s", len(lines), b.log.text())
	}
	for _, want := range []string{patch, patchSHA, h.v2, oldSHA, prev[0].Bin, string(home.SourceOperatorStarted)} {
		if !strings.Contains(lines[0], want) {
			t.Errorf("the patch-release line lacks %q: %s", want, lines[0])
		}
	}

	// Restart of the operator's path: a copy of the recorded binary; no second
	// install, no question to the binary.
	b = bootWith(t, h, c, patch, nil, v2.fn)
	must(t, b.err)
	if len(b.f.calls()) != 0 || len(matching(b.log, "running a copy of the binary the chain needs")) != 1 || v2.calls.Load() != 1 {
		t.Fatalf("second start of the patch: execs %d, Handles calls %d, log:\n%s", len(b.f.calls()), v2.calls.Load(), b.log.text())
	}
	if prev, _ := h.l.Previous("v2"); len(prev) != 1 {
		t.Fatalf("a restart installed again: %d kept binaries", len(prev))
	}

	// Restart of the old v1 path: it lacks the handler, so it is redirected to
	// the patch, and the log says why.
	b = bootWith(t, h, c, h.genesis, nil, (&handlesOnly{}).fn)
	must(t, b.err)
	calls := b.f.calls()
	if len(calls) != 1 || calls[0].target != h.v2 || calls[0].content != patchScript {
		t.Fatalf("v1 start: execs %+v, want one into the patch at %s", calls, h.v2)
	}
	if l := matching(b.log, "redirecting"); len(l) != 1 || !strings.Contains(l[0], `lacks the upgrade handler "v2" that the chain's state needs`) {
		t.Fatalf("the redirect does not say why:\n%s", b.log.text())
	}
}

// TestBootRedirectReasons: a binary that lacks the handler, cannot tell (no
// OS.Handles, or it panics), or halted for the plan itself (the re-exec at the
// halt, which is not even asked) is redirected as before, each logging why.
func TestBootRedirectReasons(t *testing.T) {
	lacks := &handlesOnly{names: []string{"v1"}}
	for _, tc := range []struct {
		name    string
		env     []string
		handles func(string) (bool, bool)
		why     string
	}{
		{"older release", nil, lacks.fn, `lacks the upgrade handler "v2"`},
		{"cannot tell: no OS.Handles", nil, nil, "could not tell whether it carries the upgrade handler"},
		{"cannot tell: unknown", nil, func(string) (bool, bool) { return false, false }, "could not tell"},
		{"cannot tell: panics", nil, func(string) (bool, bool) { panic("app constructor") }, "could not tell"},
		{"re-exec at the halt is not asked", []string{EnvReexecHalt + "=123/v2"},
			func(string) (bool, bool) { t.Error("asked at the re-exec"); return true, true }, `halted for upgrade "v2"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newTestHome(t)
			h.haltAndStage(123, "x")
			b := bootWith(t, h, testConfig(h.home), h.genesis, tc.env, tc.handles)
			must(t, b.err)
			if calls := b.f.calls(); len(calls) != 1 || calls[0].target != h.v2 {
				t.Fatalf("execs %+v, want the redirect to %s", calls, h.v2)
			}
			if l := matching(b.log, "redirecting"); len(l) != 1 || !strings.Contains(l[0], tc.why) {
				t.Fatalf("redirect line does not say %q:\n%s", tc.why, b.log.text())
			}
			if prev, _ := h.l.Previous("v2"); len(prev) != 0 || h.current() != "upgrades/v2" {
				t.Fatalf("kept %d, current %q", len(prev), h.current())
			}
		})
	}
}

// TestBootPatchAtTheHalt: the chain halted for v2 and the switch never ran
// (current still at genesis). A binary with the handler, started by the
// operator, runs with or without a staged binary (no fetch, no
// *MissingBinaryError), after the preparation a switch takes: the data backup
// (noted in the attempts ledger), pre-upgrade of the recorded copy, the flip.
func TestBootPatchAtTheHalt(t *testing.T) {
	for _, staged := range []bool{true, false} {
		name := map[bool]string{true: "staged binary replaced", false: "nothing staged"}[staged]
		t.Run(name, func(t *testing.T) {
			h := newTestHome(t)
			p := h.halt(home.Plan{Name: "v2", Height: 123, Info: "x"})
			if staged {
				h.stage(p)
			} else {
				must(t, os.Remove(h.v2))
			}
			marker := filepath.Join(t.TempDir(), "pre-upgrade")
			patch := patchFile(t, "#!/bin/sh\nif [ \"$1\" = pre-upgrade ]; then echo \"$0\" > "+marker+"; exit 0; fi\necho v2.0.1\n")
			c := testConfig(h.home)
			c.Backup, c.BackupDir, c.RunPreUpgrade = true, t.TempDir(), true
			c.DownloadsEnabled = true
			f := &fakeOS{self: patch, args: []string{"appd", "start"}, env: []string{"PATH=" + os.Getenv("PATH")},
				fetch: func(context.Context, home.Plan) error { t.Error("fetched at boot"); return errors.New("no") }}
			o := f.OS()
			o.Handles = (&handlesOnly{names: []string{"v2"}}).fn
			log := &testLogger{}
			r, err := New(c, nil, log, o)
			must(t, err)
			must(t, r.Boot())
			if len(f.calls()) != 0 {
				t.Fatalf("execs %+v", f.calls())
			}
			if h.current() != "upgrades/v2" {
				t.Fatalf("current -> %q, want the upgrade", h.current())
			}
			v, err := h.l.Open(context.Background(), p)
			must(t, err)
			v.Close()
			if v.Record.Source != home.SourceOperatorStarted || v.Record.SHA256 != sha256Of(t, patch) {
				t.Fatalf("record %+v", v.Record)
			}
			if _, err := os.Stat(marker); err != nil {
				t.Fatalf("pre-upgrade of the recorded copy did not run: %v", err)
			}
			att := h.l.Attempts(p)
			if att.Count != 1 || att.Backup == "" {
				t.Fatalf("attempts %+v, want one with its backup", att)
			}
			if _, err := os.Stat(att.Backup); err != nil {
				t.Fatalf("backup: %v", err)
			}
			if prev, _ := h.l.Previous("v2"); staged != (len(prev) == 1) {
				t.Fatalf("kept %+v (staged %v)", prev, staged)
			}
			if !strings.Contains(log.text(), "patch release") || strings.Contains(log.text(), "binary is not staged") {
				t.Fatalf("log:\n%s", log.text())
			}
		})
	}
}

// TestBootPatchAtUpgradePath: a binary with the handler started from the
// upgrade's own path without a record (placed by hand, started via current/bin)
// is recorded where it is: nothing copied, nothing kept.
func TestBootPatchAtUpgradePath(t *testing.T) {
	h, p := afterUpgrade(t)
	must(t, h.l.RemoveRecord("v2"))
	before, err := home.StampOf(h.v2)
	must(t, err)
	self := filepath.Join(h.l.Current(), home.BinDir, daemon)
	b := bootWith(t, h, testConfig(h.home), self, nil, (&handlesOnly{names: []string{"v2"}}).fn)
	must(t, b.err)
	if len(b.f.calls()) != 0 {
		t.Fatalf("execs %+v", b.f.calls())
	}
	if after, _ := home.StampOf(h.v2); !after.Same(before) {
		t.Fatal("the running file was rewritten")
	}
	v, err := h.l.Open(context.Background(), p)
	must(t, err)
	v.Close()
	if v.Record.Source != home.SourceOperatorStarted || v.Rehashed {
		t.Fatalf("record %+v (rehashed %v)", v.Record, v.Rehashed)
	}
	if prev, _ := h.l.Previous("v2"); len(prev) != 0 {
		t.Fatalf("kept %+v", prev)
	}
}

// TestBootPatchNotRecordable: a patch that cannot be recorded (a planted
// symlink where the previous binary would be kept) does not run unrecorded: Boot
// fails, naming the cause and the command, and the staged binary stays proven.
func TestBootPatchNotRecordable(t *testing.T) {
	h, p := afterUpgrade(t)
	must(t, os.Symlink(t.TempDir(), filepath.Join(filepath.Dir(filepath.Dir(h.v2)), home.PreviousDir)))
	patch := patchFile(t, patchScript)
	b := bootWith(t, h, testConfig(h.home), patch, nil, (&handlesOnly{names: []string{"v2"}}).fn)
	if b.err == nil || !errors.Is(b.err, home.ErrNotTrusted) || !strings.Contains(b.err.Error(), "symlink") ||
		!strings.Contains(b.err.Error(), "invisor stage v2 --replace --file "+patch) {
		t.Fatalf("Boot = %v", b.err)
	}
	if len(b.f.calls()) != 0 {
		t.Fatalf("execs %+v", b.f.calls())
	}
	v, err := h.l.Open(context.Background(), p)
	must(t, err)
	v.Close()
	if v.Record.Source != home.SourceDownload {
		t.Fatalf("record %+v", v.Record)
	}
}

// matching returns the log lines containing sub.
func matching(l *testLogger, sub string) []string {
	var out []string
	for _, m := range l.all() {
		if strings.Contains(m, sub) {
			out = append(out, m)
		}
	}
	return out
}

// TestBootProvenBinaryStartedWithoutSwitch: at the halt, something other than
// invisor's switch starts the upgrade's proven binary (an orchestrator after
// on-halt = exit starts the staged file, or the image's copy of it): the boot
// takes the preparation the switch would have taken (backup, pre-upgrade, the
// flip of current, one attempt noted), once; a second start finds current
// flipped and does nothing again.
func TestBootProvenBinaryStartedWithoutSwitch(t *testing.T) {
	for _, copied := range []bool{false, true} {
		name := map[bool]string{false: "the staged file", true: "a copy of it, as in an image"}[copied]
		t.Run(name, func(t *testing.T) {
			h := newTestHome(t)
			marker := filepath.Join(t.TempDir(), "pre-upgrade")
			h.writeExec(h.v2, "#!/bin/sh\nif [ \"$1\" = pre-upgrade ]; then echo ran >> '"+marker+"'; exit 0; fi\necho v2\n")
			p := h.haltAndStage(123, "x")
			self := h.v2
			if copied {
				b, err := os.ReadFile(h.v2)
				must(t, err)
				self = filepath.Join(t.TempDir(), "appd")
				must(t, os.WriteFile(self, b, 0o755))
			}
			c := testConfig(h.home)
			c.Backup, c.BackupDir, c.RunPreUpgrade = true, t.TempDir(), true
			for run := 1; run <= 2; run++ {
				f := &fakeOS{self: self, args: []string{"appd", "start"}, env: []string{"PATH=" + os.Getenv("PATH")}}
				log := &testLogger{}
				r, err := New(c, nil, log, f.OS())
				must(t, err)
				must(t, r.Boot())
				if len(f.calls()) != 0 {
					t.Fatalf("start %d: execs %+v", run, f.calls())
				}
				if h.current() != "upgrades/v2" {
					t.Fatalf("start %d: current -> %q, want the upgrade", run, h.current())
				}
				if run == 1 && !strings.Contains(log.text(), "started without a switch") {
					t.Fatalf("start %d: log does not say why it prepares:\n%s", run, log.text())
				}
				if run == 2 && strings.Contains(log.text(), "started without a switch") {
					t.Fatalf("start %d prepared again:\n%s", run, log.text())
				}
			}
			if b, err := os.ReadFile(marker); err != nil || string(b) != "ran\n" {
				t.Fatalf("pre-upgrade ran %q (%v), want once", b, err)
			}
			att := h.l.Attempts(p)
			if att.Count != 1 || att.Backup == "" {
				t.Fatalf("attempts %+v, want one with its backup", att)
			}
			if _, err := os.Stat(att.Backup); err != nil {
				t.Fatalf("backup: %v", err)
			}
		})
	}
}
