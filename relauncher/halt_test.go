package relauncher

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/invisor/invisor/internal/home"
)

func TestOnHaltWaitsThenArmsAndStopsOnce(t *testing.T) {
	h := newTestHome(t)
	h.haltAndStage(123, "")
	var ready atomic.Bool
	var calls atomic.Int64
	v := VerifierFunc(func(ctx context.Context, p home.Plan) (Binary, error) {
		calls.Add(1)
		if p.Name != "v2" || !ready.Load() {
			return Binary{}, errors.New("not staged yet")
		}
		return LayoutVerifier(h.l).Verify(ctx, p)
	})
	f := &fakeOS{}
	log := &testLogger{}
	c := testConfig(h.home)
	c.HaltPollInterval = 5 * time.Millisecond
	c.HaltLogInterval = 20 * time.Millisecond
	r, err := New(c, v, log, f.OS())
	must(t, err)
	defer r.Close()

	// Many concurrent callers from the consensus path: none blocks.
	var wg sync.WaitGroup
	for i := 0; i < 50; i++ {
		wg.Add(1)
		go func() { defer wg.Done(); r.OnHalt("v2", 123); _, _ = r.Armed() }()
	}
	wg.Wait()
	time.Sleep(60 * time.Millisecond)
	if _, ok := r.Armed(); ok || f.stopCount() != 0 {
		t.Fatal("armed before the binary was trusted")
	}
	if calls.Load() < 3 {
		t.Fatalf("verifier polled %d times", calls.Load())
	}
	var missing int
	for _, m := range log.all() {
		if strings.Contains(m, "binary not ready") && strings.Contains(m, "invisor stage v2 --file") {
			missing++
		}
	}
	if missing < 2 {
		t.Fatalf("missing-binary log lines = %d: %q", missing, log.all())
	}

	ready.Store(true)
	deadline := time.Now().Add(5 * time.Second)
	for {
		if name, ok := r.Armed(); ok {
			if name != "v2" {
				t.Fatalf("armed %q", name)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("never armed")
		}
		time.Sleep(time.Millisecond)
	}
	r.OnHalt("v2", 123)
	r.OnHalt("v3", 124) // ignored once armed
	time.Sleep(20 * time.Millisecond)
	if n := f.stopCount(); n != 1 {
		t.Fatalf("Stop called %d times", n)
	}
	if name, _ := r.Armed(); name != "v2" {
		t.Fatalf("armed changed to %q", name)
	}
}

func TestOnHaltReplacedBeforeArming(t *testing.T) {
	h := newTestHome(t)
	h.halt(home.Plan{Name: "v3", Height: 11})
	must(t, os.MkdirAll(filepath.Dir(h.bin("v3")), 0o755))
	must(t, os.Link(h.v2, h.bin("v3")))
	h.stage(home.Plan{Name: "v3", Height: 11})
	f := &fakeOS{}
	c := testConfig(h.home)
	c.HaltPollInterval = time.Hour // only a wake-up can make progress
	r, err := New(c, nil, nil, f.OS())
	must(t, err)
	defer r.Close()
	r.OnHalt("v2", 10)
	time.Sleep(10 * time.Millisecond)
	r.OnHalt("v3", 11)
	deadline := time.Now().Add(5 * time.Second)
	for f.stopCount() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("never stopped")
		}
		time.Sleep(time.Millisecond)
	}
	if name, _ := r.Armed(); name != "v3" {
		t.Fatalf("armed %q", name)
	}
}

func TestOnHaltSurvivesPanickingVerifierAndClose(t *testing.T) {
	h := newTestHome(t)
	h.haltAndStage(1, "")
	v := VerifierFunc(func(context.Context, home.Plan) (Binary, error) { panic("boom") })
	f := &fakeOS{}
	c := testConfig(h.home)
	c.HaltPollInterval = time.Millisecond
	r, err := New(c, v, nil, f.OS())
	must(t, err)
	r.OnHalt("v2", 1)
	r.OnHalt("..", 1) // unmappable: logged, ignored
	time.Sleep(10 * time.Millisecond)
	must(t, r.Close())
	r.OnHalt("v4", 2) // after Close: no-op
	if _, ok := r.Armed(); ok || f.stopCount() != 0 {
		t.Fatal("armed with a panicking verifier")
	}
}

// At an upgrade halt in consensus the clean stop waits until every peer has
// the halting block's commit (so none is left to halt late), and at most
// HaltGossip when a peer stays behind; the stop comes after the wait either way.
func TestCleanStopWaitsForPeersToHaveTheCommit(t *testing.T) {
	for _, tc := range []struct {
		name      string
		readyAt   int64 // the poll at which every peer has the commit; 0: never
		wantLog   string
		wantPolls int64 // at least
	}{
		{"peers catch up", 4, "every peer has the halting block's commit", 4},
		{"a peer stays behind", 0, "not every peer has the halting block's commit", 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newTestHome(t)
			h.haltAndStage(123, "")
			f := &fakeOS{}
			var polls atomic.Int64
			var stoppedAt atomic.Int64
			o := f.OS()
			stop := o.Stop
			o.Stop = func() error { stoppedAt.Store(polls.Load()); return stop() }
			o.PeersAtHalt = func(_ context.Context, height int64) (int, int, []string, error) {
				n := polls.Add(1)
				if height != 123 {
					t.Errorf("asked about height %d, want the halt's 123", height)
				}
				if tc.readyAt > 0 && n >= tc.readyAt {
					return 3, 3, nil, nil
				}
				return 2, 3, []string{"p@127.0.0.1:1 at 123/RoundStepPrecommit"}, nil
			}
			log := &testLogger{}
			c := testConfig(h.home)
			c.HaltPollInterval = 5 * time.Millisecond
			c.HaltGossip = 200 * time.Millisecond
			r, err := New(c, LayoutVerifier(h.l), log, o)
			must(t, err)
			defer r.Close()
			r.OnHalt("v2", 123)
			deadline := time.Now().Add(10 * time.Second)
			for f.stopCount() == 0 {
				if time.Now().After(deadline) {
					t.Fatalf("never stopped; log:\n%s", log.text())
				}
				time.Sleep(5 * time.Millisecond)
			}
			if got := stoppedAt.Load(); got < tc.wantPolls {
				t.Fatalf("stopped after %d polls of the peers, want at least %d", got, tc.wantPolls)
			}
			if tc.readyAt > 0 && stoppedAt.Load() != tc.readyAt {
				t.Errorf("stopped after %d polls, want right when every peer had the commit (%d)", stoppedAt.Load(), tc.readyAt)
			}
			if !strings.Contains(log.text(), tc.wantLog) {
				t.Fatalf("log does not say %q:\n%s", tc.wantLog, log.text())
			}
		})
	}
}
