package invisor

import (
	"context"
	"fmt"
	"sync"

	"github.com/invisor/invisor/relauncher"
	"github.com/invisor/invisor/staging"
)

// planVerifier trusts a staged binary only for the plan x/upgrade halted for:
// the name and info in data/upgrade-info.json, which x/upgrade writes before it
// halts. So a plan replaced under the same name never gets the old binary, and
// nothing is trusted for an upgrade the chain has not reached.
//
// Hashing a binary of a few hundred MB takes a noticeable part of a second. So
// that this time is not spent while the chain is down, the binary of the plan
// in force is hashed as soon as staging has it (preverify), with its file stamp
// taken before the hash; at the halt a stat proves it unchanged. Any doubt —
// another plan, another info, a changed stamp — means a full verification.
//
// preverify also scans the binary for the capability of awaiting its own
// pre-upgrade (relauncher.BinaryAwaitsPreUpgrade), which lets the switch overlap
// pre-upgrade with the new binary's start-up. Only this cache carries the
// capability: a full verification at the halt leaves it false, and the switch
// waits for pre-upgrade as before.
type planVerifier struct {
	home, daemon string

	mu    sync.Mutex
	ready *preverified
}

type preverified struct {
	plan  staging.Plan
	bin   relauncher.Binary
	stamp relauncher.FileStamp
}

func newPlanVerifier(home, daemon string) *planVerifier {
	return &planVerifier{home: home, daemon: daemon}
}

// Trusted implements relauncher.Verifier.
func (v *planVerifier) Trusted(name string) (relauncher.Binary, error) {
	ui, ok, err := relauncher.ReadUpgradeInfo(v.home)
	if err != nil {
		return relauncher.Binary{}, err
	}
	if !ok || ui.Name != name {
		return relauncher.Binary{}, fmt.Errorf("invisor: data/upgrade-info.json does not name upgrade %q: the chain has not halted for it", name)
	}
	plan := staging.Plan{Name: ui.Name, Height: ui.Height, Info: ui.Info}
	if b, ok := v.cached(plan); ok {
		return b, nil
	}
	inst, err := staging.TrustedFor(v.home, v.daemon, plan)
	if err != nil {
		return relauncher.Binary{}, err
	}
	return binaryOf(inst), nil
}

// cached returns the preverified binary of plan if its file is provably unchanged.
func (v *planVerifier) cached(plan staging.Plan) (relauncher.Binary, bool) {
	v.mu.Lock()
	pv := v.ready
	v.mu.Unlock()
	if pv == nil || pv.plan.Name != plan.Name || pv.plan.Info != plan.Info {
		return relauncher.Binary{}, false
	}
	if pv.stamp.Recheck(pv.bin.Path) != nil {
		return relauncher.Binary{}, false
	}
	return pv.bin, true
}

// preverify hashes the binary staged for plan now, while the chain runs, and
// scans it for the pre-upgrade capability.
func (v *planVerifier) preverify(plan staging.Plan) (relauncher.Binary, error) {
	path := staging.BinPath(v.home, v.daemon, plan.Name)
	stamp, err := relauncher.StampOf(path)
	if err != nil {
		return relauncher.Binary{}, err
	}
	inst, err := staging.TrustedFor(v.home, v.daemon, plan)
	if err != nil {
		return relauncher.Binary{}, err
	}
	if inst.Path != path {
		return relauncher.Binary{}, fmt.Errorf("invisor: staged binary at %s, expected %s", inst.Path, path)
	}
	b := binaryOf(inst)
	// A scan error only costs the overlap; a changed stamp means the scan (and
	// the hash) may describe another file.
	awaits, scanErr := relauncher.BinaryAwaitsPreUpgrade(path)
	if err := stamp.Recheck(path); err != nil {
		return relauncher.Binary{}, err
	}
	b.AwaitsPreUpgrade = awaits && scanErr == nil
	v.mu.Lock()
	v.ready = &preverified{plan: plan, bin: b, stamp: stamp}
	v.mu.Unlock()
	return b, nil
}

// forget drops the preverified binary (the plan changed or vanished).
func (v *planVerifier) forget() {
	v.mu.Lock()
	v.ready = nil
	v.mu.Unlock()
}

func binaryOf(inst staging.Install) relauncher.Binary {
	return relauncher.Binary{Name: inst.Name, Path: inst.Path, SHA256: inst.SHA256, Size: inst.Size}
}

// watchReady preverifies the plan's binary once staging has it; a later plan
// change cancels the wait (see node.PlanChanged).
func (n *node) watchReady(ctx context.Context, plan staging.Plan) {
	if _, err := n.stager.WaitReady(ctx, plan.Name); err != nil {
		return
	}
	b, err := n.verifier.preverify(plan)
	if err != nil {
		n.log.Error("invisor: the staged binary does not verify; staging will try again", "upgrade", plan.Name, "err", err)
		return
	}
	n.log.Info("invisor: upgrade binary staged and verified; the switch at the upgrade height needs no download and no hashing",
		"upgrade", plan.Name, "height", plan.Height, "awaits_pre_upgrade", b.AwaitsPreUpgrade)
}
