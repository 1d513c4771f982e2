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
