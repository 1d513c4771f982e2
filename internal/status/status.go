// Package status is what a running node publishes about its upgrade work: the
// status file under <home>/cosmovisor that `invisor status` reads (bytes, rate,
// errors and warnings only the node process knows, and the settings it runs
// with, which a shell's environment does not tell), and invisor's Prometheus
// gauges.
//
// A Reporter owns both. It polls the node's Stager (a snapshot under a short
// lock, and the height the hook passed to Stager.ObserveHeight); it asks nothing
// over the network. The status file is rewritten atomically (home.WriteFile)
// when it changes and every few seconds otherwise, so a crash leaves the last
// whole file; readers compare its PID with the home lock's holder to tell a live
// node from a stale file. It decides nothing: the staging speed policy is
// staging's (Stager.ObserveHeight).
package status

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/invisor/invisor/internal/config"
	"github.com/invisor/invisor/internal/history"
	"github.com/invisor/invisor/internal/home"
	"github.com/invisor/invisor/staging"
)

// File is where a running node publishes its staging status, under
// <home>/cosmovisor.
const File = "invisor-status.json"

// Path returns <home>/cosmovisor/invisor-status.json.
func Path(nodeHome string) string {
	return filepath.Join(nodeHome, home.RootDir, File)
}

// Node is the content of File.
type Node struct {
	Time       time.Time        `json:"time"`
	PID        int              `json:"pid"`
	Height     int64            `json:"height"` // last block height seen by the node's hook (0: unknown)
	State      staging.State    `json:"state"`
	Plan       *staging.Plan    `json:"plan,omitempty"`
	BytesDone  int64            `json:"bytes_done"`
	BytesTotal int64            `json:"bytes_total"`
	Rate       float64          `json:"rate_bytes_per_second"`
	Attempt    int              `json:"attempt"`
	Failures   int              `json:"failures"`
	NextRetry  *time.Time       `json:"next_retry,omitempty"`
	Err        string           `json:"error,omitempty"`
	Install    *staging.Install `json:"install,omitempty"`
	Since      time.Time        `json:"since"`
	// HaltAt is the upgrade scheduled at a height without governance that this
	// node was started to halt for (the SDK's halt-height invisor set); nil if none.
	HaltAt *Halt `json:"halt_at,omitempty"`
	// Proposals are the checks of the software-upgrade proposals in their voting
	// period (staging.Stager.OfferProposals), by proposal id.
	Proposals []staging.ProposalCheck `json:"proposals,omitempty"`
	// Warnings are problems an operator must act on before the upgrade height:
	// a plan name no directory can hold, a binary the plan does not confirm.
	Warnings []string `json:"warnings,omitempty"`
	// Health is the post-upgrade health gate's report in a process that booted
	// after a switch (waiting, healthy or stalled); nil otherwise.
	Health *Health `json:"health,omitempty"`
	// Started is when this process image booted invisor, just after it loaded
	// Settings (an upgrade's exec starts a new image under the same PID, which
	// loads them again).
	Started time.Time `json:"started,omitzero"`
	// Settings are the invisor settings the node runs with, in app.toml order,
	// secrets redacted (see SetSettings): a shell's environment need not be the
	// node's, so `invisor status` takes its decisions from these.
	Settings []Setting `json:"settings,omitempty"`
}

// Setting is one invisor setting in effect in the running node, as the
// configuration renders it (config.Config.EffectiveSettings).
type Setting = config.Effective

// Halt is a scheduled upgrade's halt in force in the running node.
type Halt struct {
	Upgrade string `json:"upgrade"`
	Height  int64  `json:"height"`
}

// Read reads the status file a node wrote (ok false when there is none).
func Read(nodeHome string) (Node, bool, error) {
	b, err := os.ReadFile(Path(nodeHome))
	if errors.Is(err, os.ErrNotExist) {
		return Node{}, false, nil
	}
	if err != nil {
		return Node{}, false, err
	}
	var st Node
	if err := json.Unmarshal(b, &st); err != nil {
		return Node{}, false, fmt.Errorf("%s: %w; the running node rewrites it within seconds, or remove it", Path(nodeHome), err)
	}
	return st, true, nil
}

// Interval is how often a Reporter polls its Source; it bounds how stale the
// status file and the gauges are.
const Interval = 2 * time.Second

// rewriteAfter: an unchanged status is still rewritten this often, so its Time
// shows the node is alive.
const rewriteAfter = 10 * time.Second

// Source is what a Reporter polls: a *staging.Stager.
type Source interface {
	// Status is a snapshot of staging.
	Status() staging.Status
	// Height is the last block height the node observed (0: none yet).
	Height() int64
}

// Reporter polls a Source, sets the gauges and writes File. It owns its state;
// one goroutine runs it (Run).
type Reporter struct {
	home     string
	src      Source
	warnings func() []string
	g        *gauges
	failures int
	failPlan string
	lastFail int
	written  Node
	wroteAt  time.Time
	haltAt   *Halt
	webhook  func() (dropped, failed uint64)
	health   func() *Health
	started  time.Time
	settings []Setting
}

// SetSettings gives the Reporter the settings the node runs with, for
// Node.Settings; call it before Run. The status file is readable by every
// user of the machine: settings must come redacted (config.Config's
// EffectiveSettings), as they are written as given.
func (r *Reporter) SetSettings(settings []Setting) {
	r.settings = append([]Setting(nil), settings...)
}

// SetWebhook gives the Reporter the webhook's counters (internal/notify's
// Stats) for the invisor_webhook_events_* gauges; call it before Run.
func (r *Reporter) SetWebhook(stats func() (dropped, failed uint64)) { r.webhook = stats }

// SetHaltAt says which scheduled upgrade's height the node halts at (its
// halt-height); call it before Run.
func (r *Reporter) SetHaltAt(upgrade string, height int64) {
	r.haltAt = &Halt{Upgrade: upgrade, Height: height}
	r.g.scheduled.Set(float64(height))
}

// NewReporter returns a Reporter for the node at nodeHome whose staging is src.
// warnings, if not nil, returns the problems the node knows of beyond staging's
// (a plan name no directory can hold); they go into the file and the
// invisor_plan_name_unmappable gauge. It registers the gauges on first use.
func NewReporter(nodeHome string, src Source, warnings func() []string) *Reporter {
	r := &Reporter{home: nodeHome, src: src, warnings: warnings, g: registerGauges(), started: time.Now().UTC()}
	r.g.blocksTo.Set(-1)
	r.g.sinceReady.Set(-1)
	if e, ok := history.LastSwitch(nodeHome); ok {
		r.g.lastSwitch.Set(e.Seconds)
	}
	return r
}

// Run reports every Interval until ctx is done, and once more then: a node
// that stops (a failed handshake included) leaves its last state in the file.
func (r *Reporter) Run(ctx context.Context) {
	t := time.NewTicker(Interval)
	defer t.Stop()
	for {
		r.Once()
		select {
		case <-ctx.Done():
			r.Once()
			return
		case <-t.C:
		}
	}
}

// Once takes one snapshot: it sets the gauges and writes File if the status
// changed (or has not been written for a while).
func (r *Reporter) Once() {
	st := r.src.Status()
	h := r.src.Height()
	name := ""
	if st.Plan != nil {
		name = st.Plan.Name
	}
	if name != r.failPlan {
		r.failPlan, r.failures, r.lastFail = name, 0, 0
	}
	if st.State == staging.StateFailed && st.Attempt != r.lastFail {
		r.failures++
		r.lastFail = st.Attempt
	}

	g := r.g
	for _, s := range allStates {
		v := 0.0
		if s == st.State {
			v = 1
		}
		g.state.WithLabelValues(string(s)).Set(v)
	}
	g.planHeight.Set(0)
	g.blocksTo.Set(-1)
	if st.Plan != nil {
		g.planHeight.Set(float64(st.Plan.Height))
		if h > 0 {
			g.blocksTo.Set(float64(st.Plan.Height - h))
		}
	}
	if r.webhook != nil {
		d, f := r.webhook()
		g.hookDropped.Set(float64(d))
		g.hookFailed.Set(float64(f))
	}
	g.bytes.Set(float64(st.BytesDone))
	g.attempts.Set(float64(st.Attempt))
	g.failures.Set(float64(r.failures))
	g.sinceReady.Set(-1)
	if st.State == staging.StateReady {
		g.sinceReady.Set(time.Since(st.Since).Seconds())
	}

	ns := Node{Time: time.Now().UTC(), PID: os.Getpid(), Height: h, State: st.State, Plan: st.Plan,
		BytesDone: st.BytesDone, BytesTotal: st.BytesTotal, Rate: st.Rate, Attempt: st.Attempt, Failures: r.failures,
		Err: st.Err, Install: st.Install, Since: st.Since, HaltAt: r.haltAt, Proposals: st.Proposals,
		Started: r.started, Settings: r.settings}
	g.proposals.Reset()
	for _, c := range st.Proposals {
		g.proposals.WithLabelValues(strconv.FormatUint(c.ID, 10), c.Plan.Name, string(c.State)).Set(1)
	}
	g.unmappable.Set(0)
	g.unconfirmed.Set(0)
	if r.warnings != nil {
		if w := r.warnings(); len(w) > 0 {
			ns.Warnings = w
			g.unmappable.Set(1)
		}
	}
	if st.Install != nil && st.Install.Record.Source.Unconfirmed() {
		g.unconfirmed.Set(1)
		ns.Warnings = append(ns.Warnings, fmt.Sprintf("the binary for %q is trusted on the operator's word (%s), not on the plan's checksum: sha256 %s",
			st.Install.Name, st.Install.Record.Source, st.Install.SHA256))
	}
	if !st.NextRetry.IsZero() {
		nr := st.NextRetry
		ns.NextRetry = &nr
	}
	var hr *Health
	if r.health != nil {
		hr = r.health()
	}
	r.setHealth(&ns, hr)
	if r.changed(ns) || time.Since(r.wroteAt) > rewriteAfter {
		if writeJSON(Path(r.home), ns) == nil {
			r.written, r.wroteAt = ns, time.Now()
		}
	}
}

// changed reports whether ns differs from what was last written in anything but
// time and height.
func (r *Reporter) changed(ns Node) bool {
	a, b := r.written, ns
	a.Time, b.Time, a.Height, b.Height = time.Time{}, time.Time{}, 0, 0
	ja, _ := json.Marshal(a)
	jb, _ := json.Marshal(b)
	return string(ja) != string(jb)
}

func writeJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return home.WriteFile(path, append(b, '\n'), 0o644)
}
