package status

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/invisor/invisor/internal/health"
	"github.com/invisor/invisor/staging"
)

// The health gate's report goes into the status file and the gauges as it
// changes; with no gate the gauges say nothing is measured.
func TestReporterPublishesHealth(t *testing.T) {
	nodeHome := testHome(t)
	var rep *Health
	r := NewReporter(nodeHome, &fakeSource{st: staging.Status{State: staging.StateIdle}}, nil)
	r.SetHealth(func() *Health { return rep })
	r.Once()
	if ns, _, _ := Read(nodeHome); ns.Health != nil {
		t.Fatalf("health without a gate: %+v", ns.Health)
	}
	for _, s := range health.States {
		if v := value(t, r.g.health.WithLabelValues(string(s))); v != 0 {
			t.Errorf("%s{state=%s} = %v without a gate", MetricUpgradeHealth, s, v)
		}
	}
	if v := value(t, r.g.onlineRatio); v != -1 {
		t.Errorf("%s = %v without a gate, want -1", MetricOnlinePower, v)
	}

	rep = &Health{Upgrade: "v2", Height: 100, State: health.StateStalled, Cause: health.CauseNetwork,
		Online: &health.Online{Validators: 2, Of: 4, Power: 50, Total: 100, Fraction: 0.5}, Message: "waiting for the network"}
	r.Once()
	ns, _, err := Read(nodeHome)
	if err != nil || ns.Health == nil || ns.Health.State != health.StateStalled || ns.Health.Cause != health.CauseNetwork ||
		ns.Health.Online == nil || ns.Health.Online.Fraction != 0.5 {
		t.Fatalf("status health %+v, %v", ns.Health, err)
	}
	if v := value(t, r.g.health.WithLabelValues(string(health.StateStalled))); v != 1 {
		t.Errorf("stalled gauge %v, want 1", v)
	}
	if v := value(t, r.g.onlineRatio); v != 0.5 {
		t.Errorf("%s = %v, want 0.5", MetricOnlinePower, v)
	}

	// The last word at a stop is written, however soon after the last report.
	var mu sync.Mutex
	asked := make(chan struct{}, 1)
	r.SetHealth(func() *Health {
		select {
		case asked <- struct{}{}:
		default:
		}
		mu.Lock()
		defer mu.Unlock()
		return rep
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { r.Run(ctx); close(done) }()
	<-asked // Run's first report took the stalled one
	now := time.Now().UTC()
	mu.Lock()
	rep = &Health{Upgrade: "v2", Height: 100, State: health.StateHealthy, CommittedAt: &now, Message: "healthy"}
	mu.Unlock()
	cancel()
	<-done
	if ns, _, _ := Read(nodeHome); ns.Health == nil || ns.Health.State != health.StateHealthy {
		t.Fatalf("after the stop: %+v", ns.Health)
	}
	if v := value(t, r.g.health.WithLabelValues(string(health.StateStalled))); v != 0 {
		t.Errorf("stalled gauge %v once healthy", v)
	}
}
