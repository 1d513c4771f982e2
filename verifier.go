package invisor

import (
	"context"
	"sync"

	"github.com/invisor/invisor/internal/home"
	"github.com/invisor/invisor/relauncher"
)

// planVerifier is the relauncher's Verifier: the proof is internal/home's
// (Layout.Open: the completion record for exactly the plan in force, stamp
// unchanged or re-hashed through the descriptor). It adds one thing the proof
// does not know: whether the binary awaits its own pre-upgrade, which lets the
// switch overlap pre-upgrade with the new binary's start-up. That is decided once,
// when staging has the binary (scan), for the exact file version (sha256 and
// stamp); any other version gets the sequential order.
type planVerifier struct {
	layout home.Layout

	mu      sync.Mutex
	scanned *scanned
}

type scanned struct {
	plan   home.Plan
	sha256 string
	stamp  home.Stamp
	awaits bool
}

func newPlanVerifier(l home.Layout) *planVerifier { return &planVerifier{layout: l} }

// Verify implements relauncher.Verifier. Each call opens the file anew: the
// relauncher owns and closes what it gets.
func (v *planVerifier) Verify(ctx context.Context, p home.Plan) (relauncher.Binary, error) {
	bin, err := v.layout.Open(ctx, p)
	if err != nil {
		return relauncher.Binary{}, err
	}
	v.mu.Lock()
	s := v.scanned
	v.mu.Unlock()
	awaits := s != nil && s.plan == p && s.sha256 == bin.Record.SHA256 && s.stamp.Same(bin.Stamp()) && s.awaits
	return relauncher.Binary{Verified: bin, AwaitsPreUpgrade: awaits}, nil
}

// scan opens plan's staged binary now, while the chain runs, and scans it for the
// pre-upgrade capability. The stamp check at the halt is cheap: no hashing while
// the chain is down.
func (v *planVerifier) scan(ctx context.Context, p home.Plan) (awaits bool, err error) {
	bin, err := v.layout.Open(ctx, p)
	if err != nil {
		return false, err
	}
	defer bin.Close()
	// A scan error only costs the overlap.
	found, scanErr := relauncher.ScanAwaitsPreUpgrade(bin)
	awaits = found && scanErr == nil
	v.mu.Lock()
	v.scanned = &scanned{plan: p, sha256: bin.Record.SHA256, stamp: bin.Stamp(), awaits: awaits}
	v.mu.Unlock()
	return awaits, nil
}

// forget drops the scan (the plan changed or vanished).
func (v *planVerifier) forget() {
	v.mu.Lock()
	v.scanned = nil
	v.mu.Unlock()
}
