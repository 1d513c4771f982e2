package relauncher

import (
	"context"
	"errors"
	"os"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/invisor/invisor/internal/home"
)

func TestPathForEveryNodeState(t *testing.T) {
	for state, want := range map[NodeState]HaltPath{
		NodeInConsensus:  PathCleanStop,
		NodeNotStarted:   PathReexec,
		NodeCatchingUp:   PathReexec,
		NodeStateUnknown: PathReexec,
	} {
		if got := PathFor(state); got != want {
			t.Errorf("PathFor(%s) = %s, want %s", state, got, want)
		}
	}
}

// steppedVerifier refuses until ready is set and reports each question on asked,
// so a test steps the wait loop: receive a question, then tick.
type steppedVerifier struct {
	l     home.Layout
	ready atomic.Bool
	asked chan home.Plan
}

func newSteppedVerifier(l home.Layout) *steppedVerifier {
	return &steppedVerifier{l: l, asked: make(chan home.Plan, 16)}
}

func (v *steppedVerifier) Verify(ctx context.Context, p home.Plan) (Binary, error) {
	defer func() { v.asked <- p }()
	if !v.ready.Load() {
		return Binary{}, errors.New("not staged yet")
	}
	return LayoutVerifier(v.l).Verify(ctx, p)
}

func (v *steppedVerifier) waitAsked(t *testing.T) home.Plan {
	t.Helper()
	select {
	case p := <-v.asked:
		return p
	case <-time.After(10 * time.Second):
		t.Fatal("the wait loop never asked the verifier")
		return home.Plan{}
	}
}

// A node catching up (block sync) halts: the halting call waits for the binary,
// stepping on the tick seam, then re-execs this very image with the halt marker
// and the same argv; it backs up nothing, runs no pre-upgrade and flips nothing,
// because the stores are open.
func TestHaltCatchingUpWaitsThenReexecsWithoutTouchingStores(t *testing.T) {
	h := newTestHome(t)
	p := h.halt(home.Plan{Name: "v2", Height: 123})
	h.stage(p)
	v := newSteppedVerifier(h.l)
	f := &fakeOS{self: h.genesis, args: []string{"appd", "start", "--home", h.home},
		env: []string{"PATH=/bin", EnvRedirectTarget + "=/old"}, tick: make(chan time.Time)}
	log := &testLogger{}
	c := testConfig(h.home)
	c.Backup, c.RunPreUpgrade = true, true
	c.PreUpgradeArgs = []string{"--marker-that-must-not-run"}
	r, err := New(c, v, log, f.OS())
	must(t, err)
	defer r.Close()

	done := make(chan struct{})
	go func() {
		defer close(done)
		r.Halt(context.Background(), "v2", 123, NodeCatchingUp, "CometBFT /status: catching_up=true")
	}()
	for i := 0; i < 3; i++ {
		v.waitAsked(t)
		select {
		case <-done:
			t.Fatal("Halt returned before the binary was proven")
		default:
		}
		f.tick <- time.Now()
	}
	v.ready.Store(true)
	stepUntil(t, done, f.tick, v.asked)

	calls := f.calls()
	if len(calls) != 1 {
		t.Fatalf("execs = %d, want 1 (the re-exec)", len(calls))
	}
	ex := calls[0]
	if ex.argv0 != "/proc/self/exe" {
		t.Errorf("re-exec ran %q, want this process's own image /proc/self/exe", ex.argv0)
	}
	if strings.Join(ex.argv, " ") != strings.Join(f.args, " ") {
		t.Errorf("argv %q, want %q", ex.argv, f.args)
	}
	env := envMap(ex.env)
	if env[EnvReexecHalt] != "123/v2" {
		t.Errorf("%s = %q", EnvReexecHalt, env[EnvReexecHalt])
	}
	if _, ok := env[EnvRedirectTarget]; ok {
		t.Error("the re-exec carried the previous redirect target")
	}
	if got := h.current(); got != home.GenesisDir {
		t.Errorf("current = %s: flipped with the stores open", got)
	}
	if backups, _ := os.ReadDir(h.home); hasBackup(backups) {
		t.Error("a data backup was taken with the stores open")
	}
	if a := h.l.Attempts(p); a.Count != 0 {
		t.Errorf("attempts = %d: the re-exec is not an attempt of the new binary", a.Count)
	}
	text := log.text()
	for _, want := range []string{"pathre-exec", "node_statecatching-up", "CometBFT /status: catching_up=true", "binary not ready", "re-executing this binary"} {
		if !strings.Contains(text, want) {
			t.Errorf("log lacks %q:\n%s", want, text)
		}
	}
	if f.stopCount() != 0 {
		t.Error("the re-exec path sent the clean stop")
	}
}

// stepUntil ticks the wait loop, draining its questions, until done is closed.
func stepUntil(t *testing.T, done <-chan struct{}, tick chan time.Time, asked <-chan home.Plan) {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case <-done:
			return
		case tick <- time.Now():
		case <-asked:
		case <-timeout:
			t.Fatal("the wait loop did not finish once the binary was proven")
		}
	}
}

func hasBackup(entries []os.DirEntry) bool {
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), "data-backup-") {
			return true
		}
	}
	return false
}

// The Boot of the re-executed image logs the halt it switches for and redirects
// (backup, flip, exec) before any store is opened; the marker goes no further.
func TestBootAfterReexecSwitchesAndDropsTheMarker(t *testing.T) {
	h := newTestHome(t)
	h.haltAndStage(123, "")
	f := &fakeOS{self: h.genesis, args: []string{"appd", "start"}, env: []string{EnvReexecHalt + "=123/v2"}}
	log := &testLogger{}
	c := testConfig(h.home)
	c.Backup = true
	r, err := New(c, nil, log, f.OS())
	must(t, err)
	must(t, r.Boot())
	calls := f.calls()
	if len(calls) != 1 || calls[0].target != h.v2 {
		t.Fatalf("execs %+v, want one into %s", calls, h.v2)
	}
	if _, ok := envMap(calls[0].env)[EnvReexecHalt]; ok {
		t.Error("the halt marker was passed on to the new binary")
	}
	if h.current() != "upgrades/v2" {
		t.Errorf("current = %s", h.current())
	}
	if backups, _ := os.ReadDir(h.home); !hasBackup(backups) {
		t.Error("no data backup before the switch at boot")
	}
	if !strings.Contains(log.text(), "re-executed at the upgrade halt") {
		t.Errorf("boot did not say it switches for the halt:\n%s", log.text())
	}
}

// A stop request while the halted block waits ends the process with 128+signal.
func TestReexecWaitEndsOnStopRequest(t *testing.T) {
	h := newTestHome(t)
	h.halt(home.Plan{Name: "v2", Height: 123})
	v := newSteppedVerifier(h.l)
	f := &fakeOS{self: h.genesis, tick: make(chan time.Time), sigs: make(chan os.Signal, 1)}
	r, err := New(testConfig(h.home), v, &testLogger{}, f.OS())
	must(t, err)
	defer r.Close()
	errc := make(chan error, 1)
	go func() { errc <- r.ReexecAtHalt(context.Background(), "v2", 123) }()
	v.waitAsked(t)
	f.sigs <- syscall.SIGTERM
	select {
	case err := <-errc:
		if err == nil {
			t.Fatal("no error after the stop request")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the wait did not end on the stop request")
	}
	if got := f.exitCodes(); len(got) != 1 || got[0] != 128+int(syscall.SIGTERM) {
		t.Fatalf("exit codes %v, want [%d]", got, 128+int(syscall.SIGTERM))
	}
	if len(f.calls()) != 0 {
		t.Fatal("exec'd after a stop request")
	}
}

// Before CometBFT started (the handshake replays the halting block), the failed
// start would leave CometBFT's stores open: the halt re-execs too, and never
// sends the clean stop.
func TestHaltNotStartedReexecs(t *testing.T) {
	h := newTestHome(t)
	h.haltAndStage(123, "")
	v := newSteppedVerifier(h.l)
	v.ready.Store(true)
	f := &fakeOS{self: h.genesis, args: []string{"appd", "start"}, tick: make(chan time.Time)}
	log := &testLogger{}
	r, err := New(testConfig(h.home), v, log, f.OS())
	must(t, err)
	defer r.Close()
	r.Halt(context.Background(), "v2", 123, NodeNotStarted, "CometBFT's RPC is not listening yet")
	calls := f.calls()
	if len(calls) != 1 || calls[0].argv0 != "/proc/self/exe" || envMap(calls[0].env)[EnvReexecHalt] != "123/v2" {
		t.Fatalf("execs %+v, want the re-exec of this image", calls)
	}
	if f.stopCount() != 0 {
		t.Error("sent the clean stop to a node that never started")
	}
	if h.current() != home.GenesisDir {
		t.Error("flipped current before the re-exec")
	}
	if !strings.Contains(log.text(), "pathre-exec") || !strings.Contains(log.text(), "node_statenot-started") {
		t.Errorf("log does not say the path and the state:\n%s", log.text())
	}
}

// In consensus the clean stop is sent once the binary is proven, and Halt
// returns at once.
func TestHaltInConsensusStopsOnceProven(t *testing.T) {
	h := newTestHome(t)
	h.haltAndStage(123, "")
	v := newSteppedVerifier(h.l)
	v.ready.Store(true)
	f := &fakeOS{self: h.genesis, tick: make(chan time.Time)}
	r, err := New(testConfig(h.home), v, &testLogger{}, f.OS())
	must(t, err)
	defer r.Close()
	r.Halt(context.Background(), "v2", 123, NodeInConsensus, "CometBFT /status: catching_up=false")
	v.waitAsked(t)
	for deadline := time.Now().Add(10 * time.Second); f.stopCount() == 0; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the node was never stopped")
		}
	}
	must(t, r.Close())
	if name, ok := r.Armed(); !ok || name != "v2" {
		t.Fatalf("Armed = %q %v", name, ok)
	}
	if f.stopCount() != 1 {
		t.Fatalf("stops = %d, want 1", f.stopCount())
	}
}
