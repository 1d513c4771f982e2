package e2e

import (
	"fmt"
	"sync"
	"testing"
	"time"
)

// phases names the step an end-to-end test is in, so that a failure says where
// it stopped at the very end of the test's output, after the nodes' log tails:
// a CI excerpt shows a run's last lines, and a bare "context deadline exceeded"
// above kilobytes of node logs does not say which wait ran out.
type phases struct {
	mu    sync.Mutex
	start time.Time
	name  string
	at    time.Time
}

// newPhases returns the recorder of t's steps. Call it before the test
// registers its other cleanups (the node stops and log tails): cleanups run last
// registered first, so its report comes after theirs.
func newPhases(t *testing.T) *phases {
	p := &phases{start: time.Now(), name: "setting up", at: time.Now()}
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		p.mu.Lock()
		defer p.mu.Unlock()
		t.Logf("%s FAILED in step %q, begun at +%.1fs and %.1fs long",
			t.Name(), p.name, p.at.Sub(p.start).Seconds(), time.Since(p.at).Seconds())
	})
	return p
}

// step records and logs the step t begins now.
func (p *phases) step(t *testing.T, format string, args ...any) {
	t.Helper()
	p.mu.Lock()
	p.name, p.at = fmt.Sprintf(format, args...), time.Now()
	since := p.at.Sub(p.start).Seconds()
	p.mu.Unlock()
	t.Logf("[%5.1fs] %s", since, fmt.Sprintf(format, args...))
}
