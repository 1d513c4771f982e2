package invisor

import (
	"context"
	"fmt"

	"github.com/invisor/invisor/internal/history"
	"github.com/invisor/invisor/internal/home"
	"github.com/invisor/invisor/internal/status"
)

// startReporting starts the status reporter (gauges and the status file) for
// the node's lifetime and records in the history a switch that led to this boot.
// settings are the invisor settings the node runs with
// (config.Config.EffectiveSettings of boot's config, secrets redacted), for
// `invisor status` run from a shell whose environment is not the node's.
func (n *node) startReporting(ctx context.Context, settings []status.Setting) {
	n.home = n.layout.Home()
	if e, ok, err := history.RecordSwitch(n.layout); err != nil {
		n.log.Error("invisor: could not record the switch in the history; only `invisor history` is affected", "err", err)
	} else if ok {
		if e.AfterRollback {
			n.log.Info("invisor: running the upgrade binary after a rollback", "upgrade", e.Upgrade, "height", e.Height, "sha256", e.SHA256)
		} else {
			n.log.Info("invisor: running the upgrade binary", "upgrade", e.Upgrade, "height", e.Height,
				"seconds_since_halt", fmt.Sprintf("%.3f", e.Seconds), "sha256", e.SHA256)
		}
		n.noteSwitched(e)
	}
	var src status.Source = n.stager
	if n.notifier != nil {
		src = &stagingWatcher{Stager: n.stager, n: n}
	}
	r := status.NewReporter(n.home, src, n.nameWarnings)
	r.SetHealth(n.healthReport)
	r.SetSettings(settings)
	if s := n.halt; s != nil {
		r.SetHaltAt(s.Plan.Name, s.Plan.Height)
	}
	if nt := n.notifier; nt != nil {
		r.SetWebhook(func() (uint64, uint64) { s := nt.Stats(); return s.Dropped + s.Lost, s.Failed })
	}
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		r.Run(ctx)
	}()
}

// recordHalt appends the halt to the history. It runs once per upgrade, at the
// halt, where a small synchronous append costs nothing that matters.
func (n *node) recordHalt(name string, height int64) {
	if n.home == "" {
		return
	}
	if err := history.RecordHalt(n.home, name, height); err != nil {
		n.log.Error("invisor: could not record the halt in the history; only `invisor history` is affected", "err", err)
	}
}

// setNameProblem records (or clears, with "") the plan-name problem status shows.
func (n *node) setNameProblem(msg string) {
	n.nameMu.Lock()
	n.nameProblem = msg
	n.nameMu.Unlock()
}

func (n *node) nameWarnings() []string {
	n.nameMu.Lock()
	defer n.nameMu.Unlock()
	if n.nameProblem == "" {
		return nil
	}
	return []string{n.nameProblem}
}

// unconfirmedInstalls lists the staged binaries whose record says the plan did
// not confirm them (the operator's word, or the unsafe override).
func unconfirmedInstalls(l home.Layout) []home.Record {
	var out []home.Record
	for _, in := range l.Installs() {
		if in.Err == nil && in.Record.Source.Unconfirmed() {
			rec := in.Record
			rec.File = in.Bin
			out = append(out, rec)
		}
	}
	return out
}
