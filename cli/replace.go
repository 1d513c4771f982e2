package cli

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"time"

	"github.com/invisor/invisor/internal/home"
	"github.com/invisor/invisor/staging"
)

// How `stage NAME --replace` puts a patch release in place
//
// A patch release (v2.0.1 of upgrade v2: the same upgrade handlers, a fix) is
// verified as any staged binary is, by staging.Fetch into a scratch home
// (checksum, safe unpacking, OS/arch, preflight, probe), and its own probe
// answer must say that it carries the upgrade handler NAME: a binary that gives
// no answer, cannot tell, or lacks it is refused. Only the binary of an upgrade
// already in place is replaced: one applied (`current` points to
// upgrades/<dir>, or data/upgrade-info.json names it) or staged (a completion
// record exists for it). The new record is for the same plan as
// upgrade-info.json's (or the existing record's), with source
// home.SourceOperatorReplaced, and home.Layout.InstallBinary keeps the binary it
// replaces under upgrades/<dir>/previous/. `current` is not touched: a node
// already on the upgrade keeps pointing there, and a halted one is switched by
// the boot redirect as before.
//
// Refused: NAME neither applied nor staged; the chain halted for another
// upgrade, or a running node has another plan in force, and NAME is not
// applied (its binary is not the one the chain runs next); a staged record for
// another plan than the one in force.

// replaceTarget is the upgrade whose binary --replace swaps, and why it may.
type replaceTarget struct {
	plan     home.Plan // name and height of the plan the new record is for
	infoHash string    // that plan's info hash
	kind     replaceKind
	state    string       // what kind means here, for the output
	old      *home.Record // the record there now, nil if none
}

// replaceKind is how the upgrade whose binary is replaced stands.
type replaceKind int

const (
	kindApplied replaceKind = iota // current points to it: the node runs it
	kindHalted                     // data/upgrade-info.json names it, current not yet switched
	kindPending                    // staged for the plan a running node has in force
	kindAhead                      // staged, its height not reached as far as the home tells
	kindEarlier                    // staged for an upgrade before the chain's last one
)

// stageReplace puts a patch release of upgrade name in place (stage --replace).
// The record is written by this command, so there is nothing to wait for: wait
// is not used.
func stageReplace(ctx context.Context, e *env, name, src string, fileSource bool, _ time.Duration) error {
	l := e.layout()
	tgt, err := replaceTargetOf(e, l, name)
	if err != nil {
		return err
	}
	bin, _ := l.UpgradeBin(name) // mapped by replaceTargetOf
	// The lock says whether a node runs here; without one, this command owns the
	// home until it returns. With one, the running node does not write the
	// upgrade's directory of an applied upgrade, and a staging of the plan in force
	// sees either record, each proving its own binary.
	locked, release, err := lockUnlessRunning(l)
	if err != nil {
		return err
	}
	defer release()

	fmt.Fprintf(e.out, "verifying the patch release for %q (%s) ...\n", name, tgt.state)
	inst, cleanup, err := verifyScratch(ctx, e, staging.Plan{Name: name, Height: tgt.plan.Height, Info: planInfo(src)}, fileSource)
	defer cleanup()
	var mh *staging.MissingHandlerError
	switch {
	case errors.As(err, &mh):
		return fmt.Errorf("refused: the binary (sha256 %s, invisor %s) says it has no upgrade handler %q: it is not a release of upgrade %q (an older one?); nothing was replaced",
			mh.SHA256, mh.InvisorVersion, name, name)
	case err != nil:
		return fmt.Errorf("refused: the binary does not verify, nothing was replaced: %w", err)
	}
	ans := inst.Record.Probe
	if ans == nil {
		return fmt.Errorf("refused: the binary (sha256 %s) gave no probe answer (it links no invisor, or a release older than the probe), so it cannot show that it carries the upgrade handler %q; nothing was replaced. Install it at the path your process manager starts and restart instead only if you are sure it is a release of %q",
			inst.SHA256, name, name)
	}
	if has, known := ans.HasHandler(name); !known {
		return fmt.Errorf("refused: the binary (sha256 %s, invisor %s) answered the probe but could not tell whether it carries the upgrade handler %q (the chain does not give invisor its app constructor, invisor.Options.NewApp); nothing was replaced",
			inst.SHA256, ans.InvisorVersion, name)
	} else if !has {
		return fmt.Errorf("refused: the binary (sha256 %s) says it has no upgrade handler %q; nothing was replaced", inst.SHA256, name)
	}
	if tgt.holds(ctx, l, inst.SHA256) {
		fmt.Fprintf(e.out, "upgrade %q already has this binary: %s (sha256 %s, %s); nothing to do\n", name, bin, inst.SHA256, tgt.old.Source)
		return nil
	}

	rec := home.Record{Plan: tgt.plan.Name, Height: tgt.plan.Height, InfoHash: tgt.infoHash, Source: home.SourceOperatorReplaced,
		Checksum: inst.Record.Checksum, SHA256: inst.SHA256, Size: inst.Size, Preflight: inst.Record.Preflight, Probe: ans}
	if fileSource {
		if u, err := url.Parse(src); err == nil {
			rec.File = u.Path
		}
	} else {
		rec.URL = inst.Record.URL
	}
	rep, err := l.InstallBinary(ctx, inst.Path, rec)
	if err != nil {
		return fmt.Errorf("the binary verified, but putting it in place failed: %w", err)
	}
	cleanup()

	fmt.Fprintf(e.out, "replaced the binary of upgrade %q (%s)\n", name, tgt.state)
	fmt.Fprintf(e.out, "  now  %s\n       sha256 %s, %d bytes (%s); preflight: %s\n", rep.Path, rep.Record.SHA256, rep.Record.Size, rep.Record.Source, rep.Record.Preflight)
	switch {
	case rep.Kept != "" && rep.KeptRecord != nil:
		fmt.Fprintf(e.out, "  was  sha256 %s (%s), kept at %s\n", rep.KeptRecord.SHA256, rep.KeptRecord.Source, rep.Kept)
	case rep.Kept != "":
		fmt.Fprintf(e.out, "  was  an unrecorded binary, kept at %s\n", rep.Kept)
	default:
		fmt.Fprintf(e.out, "  was  no binary\n")
	}
	if rep.Kept != "" {
		fmt.Fprintf(e.out, "  to go back: %s invisor stage %s --replace --file %s\n", e.appName(), name, rep.Kept)
	}
	cur := filepath.Join(l.Current(), home.BinDir, l.Daemon())
	next := fmt.Sprintf("  A start of %[1]s runs it.\n"+
		"  A start of any binary without the upgrade handler %[2]q (such as the release before the upgrade) is redirected to it.\n"+
		"  A start of another build that carries %[2]q (an older patch at the path your process manager starts) runs that build\n"+
		"  instead and records it in this one's place: put this binary at that path too, or start %[1]s.", cur, name)
	switch {
	case tgt.kind == kindEarlier:
		fmt.Fprintf(e.out, "next: nothing to do now: this binary runs only on a node that replays upgrade %q at height %d (a resync from before it).\n", name, tgt.plan.Height)
	case tgt.kind == kindPending && locked != nil:
		fmt.Fprintf(e.out, "next: nothing to do; the running node (PID %d) switches to this binary at the upgrade height %d.\n", locked.PID, tgt.plan.Height)
	case tgt.kind == kindPending || tgt.kind == kindAhead:
		fmt.Fprintf(e.out, "next: nothing to do; the node switches to this binary at the upgrade height %d.\n", tgt.plan.Height)
	case tgt.kind == kindHalted && locked != nil:
		fmt.Fprintf(e.out, "next: nothing to do; the running node (PID %d), halted for the upgrade, switches to this binary once it sees its record (`%s invisor status` shows it).\n",
			locked.PID, e.appName())
	case tgt.kind == kindHalted:
		fmt.Fprintf(e.out, "next: start the node as usual; the boot redirect switches to this binary.\n%s\n", next)
	case locked != nil:
		fmt.Fprintf(e.out, "next: the running node (PID %d) keeps its binary until its next restart; restart it (e.g. `systemctl restart <unit>`)\n"+
			"and the boot redirect runs this one.\n%s\n", locked.PID, next)
	default:
		fmt.Fprintf(e.out, "next: start the node as usual; the boot redirect runs this binary.\n%s\n", next)
	}
	return nil
}

// holds reports whether the upgrade's binary is already the one with sha256,
// recorded for t's plan and provably unchanged.
func (t replaceTarget) holds(ctx context.Context, l home.Layout, sha256 string) bool {
	o := t.old
	if o == nil || o.SHA256 != sha256 || o.Height != t.plan.Height || o.InfoHash != t.infoHash || !o.Source.Valid() {
		return false
	}
	v, err := l.Inspect(ctx, t.plan.Name)
	if err != nil {
		return false
	}
	v.Close()
	return v.Record.SHA256 == sha256
}

// replaceTargetOf decides whether upgrade name's binary may be replaced, and for
// which plan the new record is (see the comment at the top).
func replaceTargetOf(e *env, l home.Layout, name string) (replaceTarget, error) {
	dir, err := l.UpgradeDir(name)
	if err != nil {
		return replaceTarget{}, err
	}
	bin, _ := l.UpgradeBin(name)
	canon := home.CanonicalName(name)
	ui, uiOK, err := l.ReadUpgradeInfo()
	if err != nil {
		return replaceTarget{}, err
	}
	var t replaceTarget
	rec, rerr := l.ReadRecord(name)
	switch {
	case rerr == nil && rec.Plan != canon:
		return t, fmt.Errorf("%s is recorded for upgrade %q, not %q: give the name the plan has", bin, rec.Plan, name)
	case rerr == nil:
		t.old = &rec
	case !errors.Is(rerr, fs.ErrNotExist):
		return t, fmt.Errorf("the completion record of %s cannot be read (%v); stage the upgrade with `%s invisor stage %s --file` instead",
			bin, rerr, e.appName(), name)
	}
	cur := "nowhere"
	if c, err := currentTarget(l); err == nil && c != "" {
		cur = c
	}
	current := l.CurrentIs(dir)
	uiNames := uiOK && home.CanonicalName(ui.Name) == canon
	applied := current || uiNames
	staged := t.old != nil && t.old.Source.Valid() && t.old.Format >= home.RecordFormat

	switch {
	case uiNames && current:
		t.kind, t.state = kindApplied, fmt.Sprintf("applied: %s names it and current points to %s", home.UpgradeInfoFile, cur)
	case uiNames:
		t.kind, t.state = kindHalted, fmt.Sprintf("the chain halted for it: %s names it; current points to %s", home.UpgradeInfoFile, cur)
	case current:
		t.kind, t.state = kindApplied, fmt.Sprintf("applied: current points to %s", cur)
	case staged && uiOK && t.old.Height < ui.Height:
		t.kind, t.state = kindEarlier, fmt.Sprintf("staged for the plan at height %d, before the chain's last upgrade %q at %d", t.old.Height, ui.Name, ui.Height)
	case staged:
		t.kind, t.state = kindAhead, fmt.Sprintf("staged for the plan at height %d", t.old.Height)
	default:
		return t, fmt.Errorf("refused: upgrade %q is neither applied (current points to %s, and %s names %s) nor staged (no completion record this version accepts at %s): --replace only swaps the binary of an upgrade already in place; stage a new upgrade with `%s invisor stage %s --file|--url`",
			name, cur, home.UpgradeInfoFile, uiText(ui, uiOK), bin+home.RecordSuffix, e.appName(), name)
	}
	if uiOK && !applied && !l.CurrentIs(mustDir(l, ui.Name)) {
		return t, fmt.Errorf("refused: the chain halted for upgrade %q (%s) and upgrade %q is not applied: the chain needs %q's binary next, and replacing %q's would not run; stage %q's binary instead",
			ui.Name, home.UpgradeInfoFile, name, ui.Name, name, ui.Name)
	}
	if np := runningPlan(e, l); np != nil {
		switch {
		case home.CanonicalName(np.Name) == canon && !applied:
			if t.old == nil || t.old.For(*np) != nil {
				why := "no completion record"
				if t.old != nil {
					why = t.old.For(*np).Error()
				}
				return t, fmt.Errorf("refused: the running node has plan %q at height %d in force, and the binary at %s is not staged for it (%s); stage it with `%s invisor stage %s --file|--url`",
					np.Name, np.Height, bin, why, e.appName(), name)
			}
			t.kind = kindPending
		case home.CanonicalName(np.Name) != canon && !applied && t.kind != kindEarlier:
			return t, fmt.Errorf("refused: the running node has plan %q at height %d in force and upgrade %q is not applied: only the binary of an applied upgrade, or of the plan in force, is replaced",
				np.Name, np.Height, name)
		}
	}
	switch {
	case uiNames:
		t.plan, t.infoHash = home.Plan{Name: ui.Name, Height: ui.Height, Info: ui.Info}, ui.InfoHash()
		if t.old != nil && t.old.For(t.plan) != nil {
			t.old = nil // a record for another plan proves nothing here; it is kept aside all the same
		}
	case t.old != nil:
		t.plan, t.infoHash = home.Plan{Name: t.old.Plan, Height: t.old.Height}, t.old.InfoHash
	default:
		return t, fmt.Errorf("refused: current points to %s, but no completion record at %s says which plan upgrade %q was for, and %s names %s; stage it with `%s invisor stage %s --file|--url` instead",
			cur, bin+home.RecordSuffix, name, home.UpgradeInfoFile, uiText(ui, uiOK), e.appName(), name)
	}
	return t, nil
}

// mustDir is l.UpgradeDir(name), "" when the name cannot be mapped.
func mustDir(l home.Layout, name string) string {
	d, _ := l.UpgradeDir(name)
	return d
}

func uiText(ui home.Plan, ok bool) string {
	if !ok {
		return "no upgrade"
	}
	return fmt.Sprintf("%q", ui.Name)
}

// runningPlan is the plan a running node on this home has in force, as it
// publishes it (the status file of the process holding the home lock); nil when
// no node runs or it has none.
func runningPlan(e *env, l home.Layout) *staging.Plan {
	ns, why := runningStatus(e, l)
	if why != "" || ns.Plan == nil {
		return nil
	}
	p := *ns.Plan
	return &p
}

// lockUnlessRunning takes the home lock when no node runs on l, so the command
// owns the home until it calls release; when a node holds it, locked names that
// node (and release does nothing). Any other failure to lock is err.
func lockUnlessRunning(l home.Layout) (locked *home.LockedError, release func(), err error) {
	lock, err := l.Acquire(os.Environ())
	switch {
	case errors.As(err, &locked):
		return locked, func() {}, nil
	case err != nil:
		return nil, func() {}, err
	}
	return nil, func() { lock.Release() }, nil
}

// verifyScratch verifies the binary of plan fetch in a scratch home
// (scratchHome), exactly as stageAndRecord does. cleanup removes the scratch
// home; call it once the binary is in place.
func verifyScratch(ctx context.Context, e *env, fetch staging.Plan, fileSource bool) (staging.Install, func(), error) {
	scfg, _, cleanup, err := scratchHome(e, fileSource)
	if err != nil {
		return staging.Install{}, cleanup, err
	}
	inst, err := staging.Fetch(ctx, scfg, fetch, stagingLog{e})
	return inst, cleanup, err
}

// scratchHome makes a scratch home for verifying a binary: a staging temp
// directory under <home>/cosmovisor (on the same filesystem, so the verified
// binary is renamed into place; the node removes it at start if this command is
// killed), with the staging configuration that fetches into it. cleanup removes
// it and may be called more than once.
func scratchHome(e *env, fileSource bool) (staging.Config, home.Layout, func(), error) {
	l := e.layout()
	nop := func() {}
	if err := os.MkdirAll(l.UpgradesRoot(), 0o755); err != nil {
		return staging.Config{}, home.Layout{}, nop, err
	}
	scratch, err := os.MkdirTemp(l.Root(), staging.TempPrefix+"cli-")
	if err != nil {
		return staging.Config{}, home.Layout{}, nop, fmt.Errorf("scratch directory under %s: %w", l.Root(), err)
	}
	cleanup := func() { os.RemoveAll(scratch) }
	scfg := e.cfg.Staging
	scfg.Home, scfg.AllowDownload = scratch, true
	if fileSource {
		scfg.AllowFileURLs = true
	}
	sl, err := scfg.Layout()
	if err != nil {
		cleanup()
		return staging.Config{}, home.Layout{}, nop, err
	}
	return scfg, sl, cleanup, nil
}
