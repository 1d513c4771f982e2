package staging

import (
	"context"
	"testing"
	"time"
)

// TestObserveHeightHurriesNearUpgrade: staging stops pacing its writes once the
// upgrade is within HurryWithinBlocks and the binary is not ready, and paces
// again for the next plan until that one is near.
func TestObserveHeightHurriesNearUpgrade(t *testing.T) {
	s, err := New(testConfig(t), &testLogger{t: t})
	if err != nil {
		t.Fatal(err)
	}
	s.ObserveHeight(10)
	if s.Status().Hurried {
		t.Fatal("hurried without a plan")
	}
	s.Offer(&Plan{Name: "v2", Height: 1000})
	s.ObserveHeight(1000 - HurryWithinBlocks - 1)
	if s.Status().Hurried {
		t.Fatalf("hurried %d blocks before the upgrade", HurryWithinBlocks+1)
	}
	s.ObserveHeight(1000 - HurryWithinBlocks)
	if !s.Status().Hurried {
		t.Fatalf("not hurried %d blocks before the upgrade with the binary missing", HurryWithinBlocks)
	}
	if h := s.Height(); h != 1000-HurryWithinBlocks {
		t.Fatalf("Height() = %d, want the last observed %d", h, 1000-HurryWithinBlocks)
	}
	s.Offer(&Plan{Name: "v3", Height: 5000})
	s.ObserveHeight(1000)
	if s.Status().Hurried {
		t.Fatal("a new plan far ahead is staged at full speed")
	}
}

// TestObserveHeightLeavesAReadyBinaryAlone: a binary already staged is not
// hurried, however near the upgrade.
func TestObserveHeightLeavesAReadyBinaryAlone(t *testing.T) {
	cfg := testConfig(t)
	srv := newServer(t)
	u := srv.blob("/exampled", testBins.good)
	s, _ := startStager(t, cfg)
	p := &Plan{Name: "v2", Height: 50, Info: infoJSON(pinned(u, testBins.good))}
	s.Offer(p)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if _, err := s.WaitReady(ctx, *p); err != nil {
		t.Fatal(err)
	}
	s.ObserveHeight(p.Height - 1)
	if st := s.Status(); st.Hurried || st.State != StateReady {
		t.Fatalf("ready binary near the upgrade: %+v", st)
	}
}

// ObserveHeight runs in the consensus path for every block: no allocation.
func TestObserveHeightDoesNotAllocate(t *testing.T) {
	s, err := New(testConfig(t), &testLogger{t: t})
	if err != nil {
		t.Fatal(err)
	}
	s.Offer(&Plan{Name: "v2", Height: 1 << 40})
	h := int64(0)
	if n := testing.AllocsPerRun(1000, func() { h++; s.ObserveHeight(h) }); n != 0 {
		t.Fatalf("ObserveHeight allocates %v times per call", n)
	}
}
