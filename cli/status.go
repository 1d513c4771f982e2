package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/invisor/invisor/internal/config"
	"github.com/invisor/invisor/internal/home"
	"github.com/invisor/invisor/internal/probe"
	"github.com/invisor/invisor/internal/status"
	"github.com/invisor/invisor/staging"
)

// PlanView is the upgrade plan in force as far as status can tell.
type PlanView struct {
	Name   string `json:"name"`
	Height int64  `json:"height"`
	Info   string `json:"info"`
	// Source: "node" (asked over RPC), "upgrade-info.json" (the node halted for it),
	// or "last seen by the node" (the status file of a node that is not running).
	Source string `json:"source"`
}

// ETAView estimates when the plan height is reached.
type ETAView struct {
	BlocksLeft      int64     `json:"blocks_left"`
	AvgBlockSeconds float64   `json:"avg_block_seconds"`
	Seconds         float64   `json:"seconds"`
	At              time.Time `json:"at"`
}

// StagingView is the staging state of the plan.
type StagingView struct {
	// State is the node's stager state (idle, pending, downloading, verifying, ready,
	// failed, cancelled) when the node runs, else what the home shows: ready,
	// placed (a binary without a completion record) or missing.
	State      string     `json:"state"`
	Source     string     `json:"source"` // "node" or "home"
	BytesDone  int64      `json:"bytes_done"`
	BytesTotal int64      `json:"bytes_total"`
	Rate       float64    `json:"rate_bytes_per_second"`
	Attempt    int        `json:"attempt"`
	Failures   int        `json:"failures"`
	NextRetry  *time.Time `json:"next_retry,omitempty"`
	Error      string     `json:"error,omitempty"`
	Since      time.Time  `json:"since,omitzero"`
}

// BinaryView is a staged binary on disk.
type BinaryView struct {
	Name      string `json:"name"`
	Path      string `json:"path"`
	Present   bool   `json:"present"`
	Trusted   bool   `json:"trusted"`
	SHA256    string `json:"sha256,omitempty"`
	Size      int64  `json:"size,omitempty"`
	Checksum  string `json:"checksum,omitempty"` // the plan checksum it was verified against
	Preflight string `json:"preflight,omitempty"`
	Origin    string `json:"origin,omitempty"` // the record's source: download, operator-file-checksum, operator-word, ...
	// Plan is the plan the record is for, when that is not the plan in force.
	RecordedFor string    `json:"recorded_for,omitempty"`
	URL         string    `json:"url,omitempty"`
	Height      int64     `json:"height,omitempty"`
	Time        time.Time `json:"time,omitzero"`
	Error       string    `json:"error,omitempty"`
	// Probe is what the binary answered when staging asked it what it can do
	// (nil: it did not answer, so it gets the sequential pre-upgrade).
	Probe *probe.Answer `json:"probe,omitempty"`
}

// StatusReport is `invisor status -o json`.
type StatusReport struct {
	Home        string      `json:"home"`
	Daemon      string      `json:"daemon"`
	Enabled     bool        `json:"enabled"`
	Running     bool        `json:"running"` // a node process holds the staging lock on this home
	PID         int         `json:"pid,omitempty"`
	Node        NodeView    `json:"node"`
	Plan        *PlanView   `json:"plan"`
	ETA         *ETAView    `json:"eta,omitempty"`
	Staging     StagingView `json:"staging"`
	Binary      *BinaryView `json:"binary,omitempty"`
	AtHalt      string      `json:"at_halt"`
	Current     string      `json:"current,omitempty"`
	UpgradeInfo *home.Plan  `json:"upgrade_info,omitempty"`
	// Health is the health gate's report after a switch (see HealthView).
	Health *HealthView `json:"health,omitempty"`
	// Settings says whose settings the report decides with (the running
	// node's or this shell's) and where the two differ.
	Settings SettingsView `json:"settings"`
	Staged   []BinaryView `json:"staged"`
	// Exited is the halt report of a node that left this upgrade's halt for an
	// orchestrator to swap the binary (on-halt = exit), while the home still
	// stands at that halt (nothing started the upgrade's binary since).
	Exited *home.HaltReport `json:"exited_for_orchestrator,omitempty"`
	// Scheduled are the upgrades at a height without governance (stage --height).
	Scheduled []ScheduledView `json:"scheduled"`
	// Proposals are the running node's checks of the software-upgrade
	// proposals in their voting period (check-proposals).
	Proposals []staging.ProposalCheck `json:"proposals"`
	TempDirs  []string                `json:"temp_dirs"`
	Problems  []string                `json:"problems"`
}

func statusCmd(opts config.Options) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show the upgrade plan, staging state, what happens at the halt, and setup problems",
		Long: `Show the plan in force (name, height, info), the current height and an ETA, the staging
state (bytes, rate, last error), the staged binary (sha256, checksum, preflight), what
will happen at the upgrade height, and anything wrong with the setup.

With the node running the plan and height come from its RPC (config.toml rpc.laddr or
--node) and the staging state from the status file the node keeps under
<home>/cosmovisor; with the node stopped, from the home directory alone.

What depends on a setting (downloads, backups, pre-upgrade) is told with the settings
the running node publishes in that file, which need not be this shell's (a service
unit's environment); the settings where this shell differs are listed. With no node
running, this shell's settings are used, and the output says so.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			e, err := loadEnv(cmd, opts)
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), 15*time.Second)
			defer cancel()
			rep := gatherStatus(ctx, e)
			if e.json {
				return e.printJSON(rep)
			}
			printStatus(e, rep)
			return nil
		},
	}
	addOutputFlag(cmd)
	cmd.Flags().String(flagNode, "", "CometBFT RPC of the node (default: rpc.laddr of config.toml)")
	config.AddFlags(cmd.Flags())
	return cmd
}

// gatherStatus builds the report. Every decision that depends on a setting
// (downloads, backups, pre-upgrade, the home's layout) is taken with the
// running node's settings when its status file publishes them (nodeSettings),
// else with shell's.
func gatherStatus(ctx context.Context, shell *env) StatusReport {
	// What the running node published: the status file of the home lock's holder.
	pid, running := shell.layout().HolderPID()
	ns, nsOK, nsErr := status.Read(shell.home)
	live := nsOK && running && ns.PID == pid
	e, sv := nodeSettings(shell, ns, live)

	daemon := e.daemon()
	rep := StatusReport{Home: e.home, Daemon: daemon, Enabled: e.cfgErr != nil || e.cfg.Enabled, Settings: sv,
		Staged: []BinaryView{}, Scheduled: []ScheduledView{}, Proposals: []staging.ProposalCheck{}, TempDirs: []string{}, Problems: []string{}}
	problem := func(format string, a ...any) { rep.Problems = append(rep.Problems, fmt.Sprintf(format, a...)) }
	switch {
	case shell.cfgErr != nil && sv.From == "node":
		problem("configuration in this shell: %v (the commands run from it refuse it, and so would a node started with it; the running node's settings are shown)", shell.cfgErr)
	case shell.cfgErr != nil:
		problem("configuration: %v (the node will refuse to start)", shell.cfgErr)
	}
	if _, err := os.Stat(filepath.Join(e.home, "config", "config.toml")); err != nil {
		problem("%s is not an initialised node home: %v", e.home, err)
	}

	l := e.layout()
	rep.PID, rep.Running = pid, running

	// The node, over RPC.
	if nc, err := newNodeClient(e.rpc); err != nil {
		rep.Node = NodeView{RPC: e.rpc, Error: err.Error()}
	} else {
		rep.Node = nc.view(ctx)
		if rep.Node.Reachable {
			if p, err := nc.currentPlan(ctx); err != nil {
				rep.Node.Error = err.Error()
			} else if p != nil {
				rep.Plan = &PlanView{Name: p.Name, Height: p.Height, Info: p.Info, Source: "node"}
			}
		}
	}

	// The home: upgrade-info.json, current, staged binaries, leftovers.
	ui, uiOK, err := l.ReadUpgradeInfo()
	if err != nil {
		problem("%v", err)
	}
	if uiOK {
		rep.UpgradeInfo = &ui
	}
	cur, curErr := currentTarget(l)
	rep.Current = cur
	if curErr != nil {
		problem("%v", curErr)
	}
	rep.Staged = stagedBinariesFor(ctx, l, rep.Plan)
	for _, b := range rep.Staged {
		if b.Present && !b.Trusted && b.Error != "" && !strings.Contains(b.Error, "no completion record") {
			problem("upgrade %q: %s", b.Name, b.Error)
		}
	}
	if m, _ := filepath.Glob(filepath.Join(l.Root(), "*"+home.TempMarker+"*")); len(m) > 0 {
		rep.TempDirs = m
		if !rep.Running {
			problem("%d temp name(s) left by an interrupted attempt under %s; the node removes them at its next start",
				len(m), l.Root())
		}
	}

	if nsErr != nil {
		problem("%v", nsErr)
	}
	if live {
		for _, w := range ns.Warnings {
			problem("%s", w)
		}
		rep.Proposals = append(rep.Proposals, ns.Proposals...)
	}

	rep.Health = healthView(ns, nsOK, live)

	// The plan: node > halted (upgrade-info.json not yet applied) > last seen.
	if rel, _ := l.CurrentRel(ui.Name); rep.Plan == nil && uiOK && cur != rel {
		rep.Plan = &PlanView{Name: ui.Name, Height: ui.Height, Info: ui.Info, Source: "upgrade-info.json"}
	}
	if rep.Plan == nil && nsOK && ns.Plan != nil && !rep.Node.Reachable {
		rep.Plan = &PlanView{Name: ns.Plan.Name, Height: ns.Plan.Height, Info: ns.Plan.Info,
			Source: "last seen by the node at " + ns.Time.Format(time.RFC3339)}
	}

	if rep.Plan != nil {
		if rep.Node.Reachable && rep.Node.Height > 0 {
			rep.ETA = eta(rep.Plan.Height, rep.Node.Height, rep.Node.AvgBlockSeconds, rep.Node.LatestBlockTime)
		}
		b := binaryView(ctx, l, rep.Plan.Name, &home.Plan{Name: rep.Plan.Name, Height: rep.Plan.Height, Info: rep.Plan.Info})
		rep.Binary = &b
		if _, err := l.UpgradeDir(rep.Plan.Name); err != nil {
			var ue *home.UnmappableNameError
			if errors.As(err, &ue) {
				problem("%v: %s", err, ue.Advice())
			}
		}
		if b.Trusted && home.Source(b.Origin).Unconfirmed() && !live {
			problem("the binary for %q is trusted on the operator's word (%s), not on the plan's checksum: sha256 %s", b.Name, b.Origin, b.SHA256)
		}
	}

	// Staging state.
	switch {
	case live && rep.Plan != nil && ns.Plan != nil && ns.Plan.Name == rep.Plan.Name:
		rep.Staging = StagingView{State: string(ns.State), Source: "node", BytesDone: ns.BytesDone, BytesTotal: ns.BytesTotal,
			Rate: ns.Rate, Attempt: ns.Attempt, Failures: ns.Failures, NextRetry: ns.NextRetry, Error: ns.Err, Since: ns.Since}
	case rep.Binary != nil:
		rep.Staging = StagingView{State: homeState(*rep.Binary), Source: "home", BytesTotal: -1}
		if live && ns.Err != "" {
			rep.Staging.Error = ns.Err
		}
	case live:
		rep.Staging = StagingView{State: string(ns.State), Source: "node", BytesTotal: -1}
	default:
		rep.Staging = StagingView{State: "idle", Source: "home", BytesTotal: -1}
	}
	if rep.Binary != nil && rep.Binary.Trusted && rep.Staging.State != string(staging.StateReady) && rep.Staging.Source == "node" {
		// The node has not looked yet (polls every few seconds); the record on disk is authoritative.
		rep.Staging.State = string(staging.StateReady)
	}

	if rep.Staging.State == string(staging.StateRefused) {
		problem("the staged binary was refused: %s", rep.Staging.Error)
	}
	rep.AtHalt = atHalt(e, rep, problem)
	if hr, ok, err := l.ReadHaltReport(); err != nil {
		problem("the halt report: %v", err)
	} else if rel, _ := l.CurrentRel(ui.Name); ok && uiOK && hr.Upgrade == ui.Name && hr.Height == ui.Height && cur != rel && !live {
		rep.Exited = &hr
	}
	if sv, err := scheduledViews(ctx, e); err != nil {
		problem("the schedule of upgrades at a height: %v", err)
	} else {
		rep.Scheduled = sv
		for _, v := range sv {
			if !v.Trusted {
				problem("upgrade %q scheduled at height %d has no verified binary: %s", v.Upgrade, v.Height, v.Problem)
			}
			if strings.HasPrefix(v.InForce, "NOT IN FORCE") {
				problem("upgrade %q scheduled at height %d is not in force in the running node (PID %d, started before it): restart the node before that height",
					v.Upgrade, v.Height, rep.PID)
			}
		}
	}
	return rep
}

// currentTarget returns where cosmovisor/current points, relative to the
// cosmovisor root ("genesis", "upgrades/v2"), or "" if there is no link.
func currentTarget(l home.Layout) (string, error) {
	abs, ok, err := l.CurrentDir()
	if err != nil || !ok {
		return "", err
	}
	rel, rerr := filepath.Rel(l.Root(), abs)
	if rerr != nil || strings.HasPrefix(rel, "..") {
		rel = abs
	}
	if _, err := os.Stat(abs); err != nil {
		return rel, fmt.Errorf("%s points to %s, which does not exist; restore it or remove the link", l.Current(), abs)
	}
	return rel, nil
}

// binaryView is upgrade name's binary as the proof sees it: for plan when that
// plan is in force (the check the switch makes), else against its own record.
func binaryView(ctx context.Context, l home.Layout, name string, plan *home.Plan) BinaryView {
	bin, err := l.UpgradeBin(name)
	b := BinaryView{Name: name, Path: bin}
	if err != nil {
		b.Error = err.Error()
		return b
	}
	if _, err := os.Lstat(b.Path); err == nil {
		b.Present = true
	}
	var v *home.Verified
	if plan != nil {
		v, err = l.Open(ctx, *plan)
	} else {
		v, err = l.Inspect(ctx, name)
	}
	if err != nil {
		b.Error = err.Error()
		return b
	}
	v.Close()
	r := v.Record
	b.Trusted, b.SHA256, b.Size, b.Checksum, b.Preflight = plan != nil, r.SHA256, r.Size, r.Checksum, r.Preflight
	b.Origin, b.URL, b.Height, b.Time, b.Probe = string(r.Source), r.URL, r.Height, r.Time, r.Probe
	if plan == nil {
		b.RecordedFor = fmt.Sprintf("%q at height %d (not the plan in force)", r.Plan, r.Height)
	}
	return b
}

// stagedBinaries lists every upgrade directory with its binary's state, against
// its own record.
func stagedBinaries(l home.Layout) []BinaryView {
	return stagedBinariesFor(context.Background(), l, nil)
}

// stagedBinariesFor is stagedBinaries with the binary of plan (the plan in
// force, or nil) checked against that plan.
func stagedBinariesFor(ctx context.Context, l home.Layout, plan *PlanView) []BinaryView {
	out := []BinaryView{}
	for _, in := range l.Installs() {
		name := in.Record.Plan
		if in.Err != nil || name == "" {
			n, err := url.PathUnescape(filepath.Base(in.Dir))
			if err != nil {
				continue
			}
			name = n
		}
		var p *home.Plan
		if plan != nil {
			if d1, err := l.DirName(plan.Name); err == nil && d1 == filepath.Base(in.Dir) {
				name, p = plan.Name, &home.Plan{Name: plan.Name, Height: plan.Height, Info: plan.Info}
			}
		}
		out = append(out, binaryView(ctx, l, name, p))
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Height != out[j].Height {
			return out[i].Height < out[j].Height
		}
		return out[i].Name < out[j].Name
	})
	return out
}

func homeState(b BinaryView) string {
	switch {
	case b.Trusted:
		return string(staging.StateReady)
	case b.Present:
		return "placed"
	default:
		return "missing"
	}
}

// eta estimates when height plan is reached from height now.
func eta(plan, now int64, avg float64, latest time.Time) *ETAView {
	left := plan - now
	v := &ETAView{BlocksLeft: left, AvgBlockSeconds: avg}
	if avg > 0 && left > 0 {
		v.Seconds = float64(left) * avg
		base := latest
		if base.IsZero() {
			base = time.Now()
		}
		v.At = base.Add(time.Duration(v.Seconds * float64(time.Second))).UTC()
	}
	return v
}

// atHalt says in one sentence what will happen at the plan height, and adds a
// problem when it needs the operator.
func atHalt(e *env, rep StatusReport, problem func(string, ...any)) string {
	p := rep.Plan
	switch {
	case p == nil:
		return "no upgrade is scheduled; nothing will happen"
	case e.cfgErr != nil:
		return "unknown: fix the configuration first"
	case !e.cfg.Enabled:
		return fmt.Sprintf("invisor is disabled: at height %d the node halts (CONSENSUS FAILURE) and waits for the binary to be switched by hand or by cosmovisor", p.Height)
	}
	b := rep.Binary
	if b != nil && b.Trusted {
		steps := []string{}
		if e.cfg.Relauncher.Backup {
			steps = append(steps, "backs up data/ to "+e.cfg.Values["backup-dir"])
		}
		if e.cfg.Relauncher.RunPreUpgrade {
			steps = append(steps, "runs `"+filepath.Base(b.Path)+" pre-upgrade`")
		}
		rel, _ := e.layout().CurrentRel(p.Name)
		steps = append(steps, "points cosmovisor/current at "+rel)
		return fmt.Sprintf("at height %d x/upgrade halts the chain (CometBFT logs CONSENSUS FAILURE, which is expected); invisor stops the node cleanly, %s, and execs %s (sha256 %s) in the same process",
			p.Height, strings.Join(steps, ", "), b.Path, b.SHA256)
	}
	hint := fmt.Sprintf("`%s invisor stage %s --file PATH` (or --url URL --checksum sha256:HEX)", e.appName(), p.Name)
	if e.cfg.Staging.AllowDownload && strings.TrimSpace(p.Info) != "" {
		if rep.Staging.Error != "" {
			problem("upgrade %q is not staged yet and the last attempt failed: %s", p.Name, rep.Staging.Error)
		}
		return fmt.Sprintf("the binary is not ready yet; staging downloads it from the plan info and retries until it is. If it is not ready at height %d the node waits at the halt until it is (or until you run %s), then switches",
			p.Height, hint)
	}
	why := "downloads are disabled (allow-download = false)"
	if e.cfg.Staging.AllowDownload {
		why = "the plan has no info to download from"
	}
	problem("upgrade %q is not staged and %s: run %s before height %d", p.Name, why, hint, p.Height)
	return fmt.Sprintf("the node will halt at height %d and wait for the binary, because %s: run %s", p.Height, why, hint)
}

func printStatus(e *env, r StatusReport) {
	w := e.out
	fmt.Fprintf(w, "home       %s (daemon %s, invisor %s)\n", r.Home, r.Daemon, map[bool]string{true: "enabled", false: "disabled"}[r.Enabled])
	printSettings(w, r.Settings)
	if r.Node.Reachable {
		fmt.Fprintf(w, "node       running, height %d, %s, app %s", r.Node.Height, r.Node.Network, r.Node.AppVersion)
		if r.Node.CatchingUp {
			fmt.Fprint(w, ", catching up")
		}
		fmt.Fprintln(w)
	} else if r.Running {
		fmt.Fprintf(w, "node       pid %d holds the home, RPC %s not reachable: %s\n", r.PID, r.Node.RPC, r.Node.Error)
	} else {
		fmt.Fprintf(w, "node       not running (RPC %s)\n", r.Node.RPC)
	}
	if r.Plan == nil {
		fmt.Fprintln(w, "plan       none")
	} else {
		fmt.Fprintf(w, "plan       %q at height %d (%s)\n", r.Plan.Name, r.Plan.Height, r.Plan.Source)
		if r.Plan.Info != "" {
			fmt.Fprintf(w, "info       %s\n", r.Plan.Info)
		}
	}
	if x := r.Exited; x != nil {
		fmt.Fprintf(w, "exited     at the halt of %q at height %d, %s, with code %d (on-halt = exit): the orchestrator starts the upgrade's binary",
			x.Upgrade, x.Height, x.Time.Local().Format(time.DateTime), x.ExitCode)
		if x.Binary != nil {
			fmt.Fprintf(w, "; verified here: %s (sha256 %s, %s)\n", x.Binary.Path, short(x.Binary.SHA256), x.Binary.Source)
		} else {
			fmt.Fprintf(w, "; none verified here: %s\n", x.BinaryMissing)
		}
	}
	for _, sv := range r.Scheduled {
		fmt.Fprintf(w, "scheduled  %q at height %d (no governance)", sv.Upgrade, sv.Height)
		if sv.Trusted {
			fmt.Fprintf(w, ", binary verified, sha256 %s", short(sv.SHA256))
		} else {
			fmt.Fprintf(w, ", binary NOT READY")
		}
		if sv.InForce != "" {
			fmt.Fprintf(w, "; running node: %s", sv.InForce)
		}
		fmt.Fprintln(w)
	}
	for _, c := range r.Proposals {
		fmt.Fprintf(w, "proposal   %s", c.Summary())
		if left := time.Until(c.VotingEnd); !c.VotingEnd.IsZero() && left > 0 {
			fmt.Fprintf(w, " (voting ends in %s)", left.Round(time.Second))
		}
		fmt.Fprintln(w)
	}
	if r.ETA != nil {
		if r.ETA.Seconds > 0 {
			fmt.Fprintf(w, "eta        %d blocks, about %s (at %s; %.2fs/block)\n", r.ETA.BlocksLeft,
				time.Duration(r.ETA.Seconds*float64(time.Second)).Round(time.Second), r.ETA.At.Local().Format(time.DateTime), r.ETA.AvgBlockSeconds)
		} else {
			fmt.Fprintf(w, "eta        %d blocks\n", r.ETA.BlocksLeft)
		}
	}
	s := r.Staging
	fmt.Fprintf(w, "staging    %s (from %s)", s.State, s.Source)
	if s.State == string(staging.StateDownloading) {
		total := "?"
		if s.BytesTotal >= 0 {
			total = strconv.FormatInt(s.BytesTotal, 10)
		}
		fmt.Fprintf(w, ", %d/%s bytes at %.0f B/s", s.BytesDone, total, s.Rate)
	}
	if s.Attempt > 0 {
		fmt.Fprintf(w, ", attempt %d, %d failed", s.Attempt, s.Failures)
	}
	fmt.Fprintln(w)
	if s.Error != "" {
		fmt.Fprintf(w, "last error %s\n", s.Error)
	}
	if b := r.Binary; b != nil {
		if b.Trusted {
			fmt.Fprintf(w, "binary     %s\n           sha256 %s, %d bytes, %s", b.Path, b.SHA256, b.Size, b.Origin)
			if b.Checksum != "" {
				fmt.Fprintf(w, ", verified against %s", b.Checksum)
			}
			fmt.Fprintf(w, "\n           preflight: %s\n", b.Preflight)
			fmt.Fprintf(w, "           answered:  %s\n", probeText(b.Probe, b.Name))
		} else {
			fmt.Fprintf(w, "binary     %s: %s\n", b.Path, b.Error)
		}
	}
	fmt.Fprintf(w, "at halt    %s\n", r.AtHalt)
	printHealth(w, r.Health)
	if r.Current != "" {
		fmt.Fprintf(w, "current    %s\n", r.Current)
	}
	if len(r.Staged) > 0 {
		fmt.Fprintln(w, "staged:")
		for _, b := range r.Staged {
			st := "trusted " + short(b.SHA256)
			switch {
			case b.Error != "":
				st = "NOT trusted: " + b.Error
			case !b.Trusted:
				st = "recorded " + short(b.SHA256)
			}
			if b.Origin != "" {
				st += " (" + b.Origin + ")"
			}
			fmt.Fprintf(w, "  %-12s %s\n", b.Name, st)
		}
	}
	if len(r.Problems) == 0 {
		fmt.Fprintln(w, "problems   none")
	} else {
		fmt.Fprintln(w, "problems:")
		for _, p := range r.Problems {
			fmt.Fprintf(w, "  - %s\n", p)
		}
	}
}

// printSettings says whose settings the report decides with and, for the
// running node's, each one this shell has another value for.
func printSettings(w io.Writer, sv SettingsView) {
	fmt.Fprintf(w, "settings   %s\n", sv.Note)
	switch {
	case sv.From != "node":
	case len(sv.Differences) == 0:
		fmt.Fprintln(w, "           this shell's are the same")
	default:
		for _, d := range sv.Differences {
			fmt.Fprintf(w, "           %s\n", d)
		}
		fmt.Fprintln(w, "           commands run from this shell (stage, check-proposal) use the shell's")
	}
}

func short(h string) string {
	if len(h) > 12 {
		return h[:12]
	}
	return h
}

// probeText says what a staged binary answered the probe, for plan name.
func probeText(a *probe.Answer, name string) string {
	if a == nil {
		return "no probe answer (pre-upgrade runs before the exec)"
	}
	handler := "handler unknown"
	if has, known := a.HasHandler(name); known && has {
		handler = "has the upgrade handler"
	} else if known {
		handler = "NO upgrade handler"
	}
	return fmt.Sprintf("invisor %s, protocols %s, %s", a.InvisorVersion, strings.Join(a.Protocols, " "), handler)
}

// HealthView is the health gate's report after a switch (internal/health):
// from the running node, or the last one a node that stopped wrote (a handler
// that failed in the handshake ends the process).
type HealthView struct {
	status.Health
	// Live: the running node wrote it; else ReportedAt is when the stopped one did.
	Live       bool      `json:"live"`
	ReportedAt time.Time `json:"reported_at"`
}

func healthView(ns status.Node, ok, live bool) *HealthView {
	if !ok || ns.Health == nil {
		return nil
	}
	return &HealthView{Health: *ns.Health, Live: live, ReportedAt: ns.Time}
}

// printHealth prints the health block: the state, the three moments, and for
// a stall its cause, the online power and what to do.
func printHealth(w io.Writer, h *HealthView) {
	if h == nil {
		return
	}
	from := "running node"
	if !h.Live {
		from = "last reported at " + h.ReportedAt.Local().Format(time.DateTime) + ", node not running"
	}
	fmt.Fprintf(w, "health     %s: upgrade %q at height %d (%s)", strings.ToUpper(string(h.State)), h.Upgrade, h.Height, from)
	if h.Cause != "" {
		fmt.Fprintf(w, ", cause %s", h.Cause)
	}
	fmt.Fprintln(w)
	var moments []string
	switch {
	case h.AppliedAt != nil:
		moments = append(moments, "applied "+h.AppliedAt.Local().Format(time.DateTime))
	case h.AppliedBefore:
		moments = append(moments, "applied before this boot")
	}
	if h.CommittedAt != nil {
		moments = append(moments, fmt.Sprintf("block %d committed %.1f s after the switch", h.Height+1, h.CommittedSeconds))
	}
	if h.SignedHeight > 0 {
		moments = append(moments, fmt.Sprintf("first signed at %d", h.SignedHeight))
	}
	if len(moments) > 0 {
		fmt.Fprintf(w, "           %s\n", strings.Join(moments, ", "))
	}
	if o := h.Online; o != nil {
		fmt.Fprintf(w, "           online on the new version: %d of %d validators, %.1f%% of the voting power (round %d)\n",
			o.Validators, o.Of, 100*o.Fraction, o.Round)
	}
	fmt.Fprintf(w, "           %s\n", h.Message)
	if h.Advice != "" {
		fmt.Fprintf(w, "           what to do: %s\n", h.Advice)
	}
}
