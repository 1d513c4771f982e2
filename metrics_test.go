package invisor

import (
	"context"
	"testing"
	"time"

	"github.com/invisor/invisor/staging"
)

// TestReporterHurriesNearUpgrade checks that staging stops pacing its writes
// once the upgrade is within hurryWithinBlocks and the binary is not ready, and
// paces again for the next plan.
func TestReporterHurriesNearUpgrade(t *testing.T) {
	cfg := staging.DefaultConfig()
	cfg.Home, cfg.DaemonName, cfg.AllowDownload = t.TempDir(), "appd", false
	st, err := staging.New(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = st.Run(ctx)
	}()
	defer func() { cancel(); <-done }()

	var h int64
	r := &statusReporter{home: cfg.Home, stager: st, g: registerGauges(),
		height: func(context.Context) (int64, error) { return h, nil }}
	offer := func(name string, height int64) {
		t.Helper()
		st.Offer(&staging.Plan{Name: name, Height: height})
		deadline := time.Now().Add(5 * time.Second)
		for s := st.Status(); s.Plan == nil || s.Plan.Name != name; s = st.Status() {
			if time.Now().After(deadline) {
				t.Fatalf("staging did not take plan %s: %+v", name, s)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}

	offer("v2", 1000)
	h = 1000 - hurryWithinBlocks - 1
	r.once(ctx)
	if st.Status().Hurried {
		t.Fatalf("hurried %d blocks before the upgrade", 1000-h)
	}
	h = 1000 - hurryWithinBlocks
	r.once(ctx)
	if !st.Status().Hurried {
		t.Fatalf("not hurried %d blocks before the upgrade with the binary missing (state %s)", 1000-h, st.Status().State)
	}
	offer("v3", 5000)
	if st.Status().Hurried {
		t.Fatal("a new plan far ahead is still staged at full speed")
	}
}
