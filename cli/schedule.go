package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/invisor/invisor/internal/comet"
	"github.com/invisor/invisor/internal/config"
	"github.com/invisor/invisor/internal/history"
	"github.com/invisor/invisor/internal/home"
	"github.com/invisor/invisor/internal/status"
	"github.com/invisor/invisor/staging"
)

// Upgrades at a height without governance
//
// `stage NAME --height H` verifies the binary exactly as a staged governance
// binary (staging.Fetch: checksum, unpacking, OS/arch, preflight, probe) for the
// plan {NAME, H, info naming the binary}, into upgrades/<NAME>, records it, and
// adds the plan to the home's schedule (home.Layout.AddScheduled). The node reads
// the schedule when it starts: it sets the SDK's halt-height to H before the app
// is built, halts there, and switches as for a governance plan. A node already
// running applies it at its next start, so the command says to restart it.
//
// It refuses a height the chain has passed (the height comes from the node's RPC
// when a node holds the home lock, else from CometBFT's state store), a height or
// name a governance plan in force or another scheduled upgrade takes, and a name
// whose upgrades/ directory holds another binary.

// stageAtHeight schedules upgrade name at height without governance (stage --height).
func stageAtHeight(ctx context.Context, e *env, name string, height int64, src string, fileSource bool) error {
	plan := staging.Plan{Name: name, Height: height, Info: planInfo(src)}
	cur, from, err := chainHeight(ctx, e)
	if err != nil {
		return err
	}
	if err := checkSchedulable(e, []staging.Plan{plan}, cur, from); err != nil {
		return err
	}
	return scheduleOne(ctx, e, plan, staging.Redact(src), fileSource, cur, from)
}

// checkSchedulable refuses plans that cannot join the schedule, before anything is
// fetched: a passed height, a collision with the plan in force or the schedule,
// or a name twice.
func checkSchedulable(e *env, plans []staging.Plan, cur int64, from string) error {
	l := e.layout()
	sched, err := l.Schedule()
	if err != nil {
		return err
	}
	gov, govFrom := ownPlan(e)
	seen := map[string]bool{}
	heights := map[int64]string{}
	same := func(a, b string) bool {
		da, errA := l.DirName(a)
		db, errB := l.DirName(b)
		return errA == nil && errB == nil && da == db
	}
	for _, p := range plans {
		canon, err := l.DirName(p.Name)
		if err != nil {
			return err
		}
		switch {
		case p.Height <= 0:
			return fmt.Errorf("upgrade %q: height %d: give the height agreed for the upgrade (--height H, above 0)", p.Name, p.Height)
		case p.Height <= cur:
			return fmt.Errorf("upgrade %q at height %d: the chain is at %d already (%s); a scheduled upgrade needs a height the chain has not reached",
				p.Name, p.Height, cur, from)
		case seen[canon]:
			return fmt.Errorf("upgrade %q is listed twice", p.Name)
		case heights[p.Height] != "":
			return fmt.Errorf("upgrades %q and %q are both at height %d; one upgrade per height", heights[p.Height], p.Name, p.Height)
		case gov != nil && gov.Height == p.Height:
			return fmt.Errorf("upgrade %q at height %d: governance plan %q is at that height (%s); the governance plan upgrades the chain there, do not schedule another",
				p.Name, p.Height, gov.Name, govFrom)
		case gov != nil && same(gov.Name, p.Name):
			return fmt.Errorf("upgrade %q: a governance plan of that name is in force at height %d (%s); choose another name for the upgrade at %d",
				p.Name, gov.Height, govFrom, p.Height)
		}
		for _, s := range sched {
			switch {
			case same(s.Plan.Name, p.Name):
				return fmt.Errorf("upgrade %q is already scheduled at height %d; `%s invisor cancel %s` first to schedule it again",
					s.Plan.Name, s.Plan.Height, e.appName(), s.Plan.Name)
			case s.Plan.Height == p.Height:
				return fmt.Errorf("upgrade %q is already scheduled at height %d; one upgrade per height", s.Plan.Name, s.Plan.Height)
			}
		}
		seen[canon], heights[p.Height] = true, p.Name
	}
	return nil
}

// scheduleOne verifies and records plan's binary, then adds plan to the schedule.
func scheduleOne(ctx context.Context, e *env, plan staging.Plan, source string, fileSource bool, cur int64, from string) error {
	l := e.layout()
	bin, err := l.UpgradeBin(plan.Name)
	if err != nil {
		return err
	}
	if _, err := os.Lstat(bin); err == nil && plan.Info != "" {
		if v, err := l.Open(ctx, plan); err == nil {
			v.Close()
		} else if !sameBinary(l, plan.Name, source) {
			return fmt.Errorf("%s already exists and is not the binary given for upgrade %q (%v); choose another upgrade name, or remove %s",
				bin, plan.Name, err, bin)
		}
		// The same bytes, recorded for another height (the agreed height moved):
		// staging records them again for this plan.
	}
	scfg := e.cfg.Staging
	scfg.AllowDownload, scfg.NoHandler = true, true
	if fileSource {
		scfg.AllowFileURLs = true
	}
	fmt.Fprintf(e.out, "verifying the binary for %q at height %d ...\n", plan.Name, plan.Height)
	inst, err := staging.Fetch(ctx, scfg, plan, stagingLog{e})
	if err != nil {
		return fmt.Errorf("upgrade %q not scheduled: %w", plan.Name, err)
	}
	if err := l.AddScheduled(home.Scheduled{Plan: plan, Source: source}); err != nil {
		return fmt.Errorf("upgrade %q verified at %s but not scheduled: %w", plan.Name, inst.Path, err)
	}
	if err := history.Append(e.home, history.Entry{Event: history.EventScheduled, Upgrade: plan.Name, Height: plan.Height,
		Time: time.Now().UTC(), PID: os.Getpid(), To: inst.Path, SHA256: inst.SHA256}); err != nil {
		fmt.Fprintf(e.errOut, "warning: not recorded in the history: %v\n", err)
	}
	fmt.Fprintf(e.out, "scheduled %q at height %d (the chain is at %d, %s)\n  binary %s\n  sha256 %s, %d bytes (%s); preflight: %s\n",
		plan.Name, plan.Height, cur, from, inst.Path, inst.SHA256, inst.Size, inst.Record.Source, inst.Record.Preflight)
	if pid, held := l.HolderPID(); held {
		fmt.Fprintf(e.out, "The running node (PID %d) was started before this: invisor sets the halt-height when it starts the node,\n"+
			"so restart it before height %d (e.g. `systemctl restart <unit>`); `%s invisor scheduled` then shows it in force.\n",
			pid, plan.Height, e.appName())
	} else {
		fmt.Fprintf(e.out, "Start the node as usual: it halts at height %d and switches to this binary.\n", plan.Height)
	}
	return nil
}

// sameBinary reports whether upgrade name's staged binary has the sha256 that
// source pins and is not the binary `current` runs: the same bytes may be
// recorded again for a new height.
func sameBinary(l home.Layout, name, source string) bool {
	rec, err := l.ReadRecord(name)
	if err != nil {
		return false
	}
	dir, _ := l.UpgradeDir(name)
	if l.CurrentIs(dir) {
		return false
	}
	u, err := url.Parse(source)
	if err != nil {
		return false
	}
	return strings.EqualFold(u.Query().Get("checksum"), "sha256:"+rec.SHA256)
}

// chainHeight is the chain's height as this node knows it, and where it came
// from: the running node's RPC (its app height), else the height the running
// node last published, else (no node runs) CometBFT's state store.
func chainHeight(ctx context.Context, e *env) (int64, string, error) {
	l := e.layout()
	pid, held := l.HolderPID()
	if !held {
		h, err := comet.StateHeight(e.cmt)
		if err != nil {
			return 0, "", fmt.Errorf("cannot tell where the chain is, so nothing was scheduled: %w", err)
		}
		return h, "CometBFT's state store; no node runs", nil
	}
	if nc, err := newNodeClient(e.rpc); err == nil {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		v := nc.view(cctx)
		cancel()
		if v.Reachable {
			return v.Height, fmt.Sprintf("the running node's RPC %s", v.RPC), nil
		}
	}
	if ns, why := runningStatus(e, l); why == "" && ns.Height > 0 {
		return ns.Height, fmt.Sprintf("the running node's status, PID %d", pid), nil
	}
	return 0, "", fmt.Errorf("a node runs on this home (PID %d) but neither its RPC (%s) nor its status file says its height; nothing was scheduled", pid, e.rpc)
}

// batchEntry is one upgrade of a cosmovisor batch file.
type batchEntry struct {
	plan   staging.Plan
	file   string // name:path:height form: the binary's path
	source string
}

// parseBatch reads cosmovisor's two batch formats: upgrade-info.json.batch, a JSON
// list of plans ({"name","height","info"}, height a number or a string), and the
// list `cosmovisor add-batch-upgrade --upgrade-list` takes, name:path:height
// entries separated by commas or new lines.
func parseBatch(b []byte) ([]batchEntry, error) {
	b = bytes.TrimSpace(b)
	if len(b) == 0 {
		return nil, errors.New("the batch file is empty")
	}
	if b[0] == '[' {
		var raw []json.RawMessage
		if err := json.Unmarshal(b, &raw); err != nil {
			return nil, fmt.Errorf("the batch file is not a JSON list of plans: %w", err)
		}
		if len(raw) == 0 {
			return nil, errors.New("the batch file lists no upgrade")
		}
		out := make([]batchEntry, 0, len(raw))
		for i, r := range raw {
			p, err := home.ParseUpgradeInfo(r)
			if err != nil {
				return nil, fmt.Errorf("plan %d of the batch: %w", i+1, err)
			}
			out = append(out, batchEntry{plan: p, source: "batch plan info"})
		}
		return out, nil
	}
	var out []batchEntry
	for _, item := range strings.FieldsFunc(string(b), func(r rune) bool { return r == ',' || r == '\n' || r == '\r' }) {
		item = strings.TrimSpace(item)
		if item == "" || strings.HasPrefix(item, "#") {
			continue
		}
		first, last := strings.Index(item, ":"), strings.LastIndex(item, ":")
		if first <= 0 || last == first {
			return nil, fmt.Errorf("batch entry %q: want name:path:height", item)
		}
		h, err := strconv.ParseInt(strings.TrimSpace(item[last+1:]), 10, 64)
		if err != nil {
			return nil, fmt.Errorf("batch entry %q: height: %w", item, err)
		}
		if h <= 0 {
			return nil, fmt.Errorf("batch entry %q: height %d: give the height agreed for the upgrade, above 0", item, h)
		}
		path := strings.TrimSpace(item[first+1 : last])
		if path == "" {
			return nil, fmt.Errorf("batch entry %q: no binary path", item)
		}
		out = append(out, batchEntry{plan: staging.Plan{Name: strings.TrimSpace(item[:first]), Height: h}, file: path})
	}
	if len(out) == 0 {
		return nil, errors.New("the batch file lists no upgrade")
	}
	return out, nil
}

// stageBatch schedules the upgrades of a cosmovisor batch file (stage --batch):
// all are checked before any is fetched.
func stageBatch(ctx context.Context, e *env, path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	entries, err := parseBatch(b)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	plans := make([]staging.Plan, len(entries))
	for i := range entries {
		en := &entries[i]
		if en.file != "" {
			src, err := sourceURL("", en.file, "")
			if err != nil {
				return fmt.Errorf("upgrade %q: %w", en.plan.Name, err)
			}
			en.plan.Info, en.source = planInfo(src), staging.Redact(src)
		}
		plans[i] = en.plan
	}
	cur, from, err := chainHeight(ctx, e)
	if err != nil {
		return err
	}
	if err := checkSchedulable(e, plans, cur, from); err != nil {
		return fmt.Errorf("%s: nothing was scheduled: %w", path, err)
	}
	for _, en := range entries {
		if err := scheduleOne(ctx, e, en.plan, en.source, true, cur, from); err != nil {
			return err
		}
	}
	return nil
}

// ScheduledView is one line of `invisor scheduled`.
type ScheduledView struct {
	Upgrade string    `json:"upgrade"`
	Height  int64     `json:"height"`
	Source  string    `json:"source,omitempty"`
	Added   time.Time `json:"added"`
	Binary  string    `json:"binary"`
	SHA256  string    `json:"sha256,omitempty"`
	Trusted bool      `json:"trusted"`
	Problem string    `json:"problem,omitempty"`
	// InForce says whether the running node halts at this height (its
	// halt-height); empty when no node runs.
	InForce string `json:"in_force,omitempty"`
}

func scheduledCmd(opts config.Options) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "scheduled",
		Short: "List the upgrades scheduled at a height without governance (stage --height)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			e, err := loadEnv(cmd, opts)
			if err != nil {
				return err
			}
			views, err := scheduledViews(cmd.Context(), e)
			if err != nil {
				return err
			}
			if e.json {
				return e.printJSON(views)
			}
			if len(views) == 0 {
				fmt.Fprintln(e.out, "no upgrade is scheduled at a height")
				return nil
			}
			rows := make([][]string, 0, len(views))
			for _, v := range views {
				bin := "sha256 " + short(v.SHA256) + " (verified)"
				if !v.Trusted {
					bin = "NOT READY: " + v.Problem
				}
				rows = append(rows, []string{v.Upgrade, strconv.FormatInt(v.Height, 10), bin, v.InForce})
			}
			return table(e.out, []string{"UPGRADE", "HEIGHT", "BINARY", "RUNNING NODE"}, rows)
		},
	}
	addOutputFlag(cmd)
	return cmd
}

func scheduledViews(ctx context.Context, e *env) ([]ScheduledView, error) {
	l := e.layout()
	sched, err := l.Schedule()
	if err != nil {
		return nil, err
	}
	var running *status.Node
	if ns, why := runningStatus(e, l); why == "" {
		running = &ns
	}
	views := make([]ScheduledView, 0, len(sched))
	for _, s := range sched {
		v := ScheduledView{Upgrade: s.Plan.Name, Height: s.Plan.Height, Source: s.Source, Added: s.Added}
		v.Binary, _ = l.UpgradeBin(s.Plan.Name)
		if b, err := l.Open(ctx, s.Plan); err != nil {
			v.Problem = err.Error()
		} else {
			v.Trusted, v.SHA256 = true, b.Record.SHA256
			b.Close()
		}
		switch {
		case running == nil:
		case running.HaltAt != nil && running.HaltAt.Upgrade == s.Plan.Name && running.HaltAt.Height == s.Plan.Height:
			v.InForce = fmt.Sprintf("halts here (PID %d)", running.PID)
		case running.HaltAt != nil && running.HaltAt.Height < s.Plan.Height:
			v.InForce = fmt.Sprintf("after %q at %d", running.HaltAt.Upgrade, running.HaltAt.Height)
		default:
			v.InForce = fmt.Sprintf("NOT IN FORCE: PID %d started before it; restart the node", running.PID)
		}
		views = append(views, v)
	}
	return views, nil
}

func cancelCmd(opts config.Options) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "cancel <upgrade-name>",
		Short: "Cancel an upgrade scheduled at a height without governance (stage --height)",
		Long: `Remove the upgrade from the schedule. Its binary stays in upgrades/<name> (remove it by
hand if it is not wanted). A running node keeps the halt-height it was started with: restart it
before the height, or it halts there and waits.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			e, err := loadEnv(cmd, opts)
			if err != nil {
				return err
			}
			l := e.layout()
			name := args[0]
			if ui, ok, err := l.ReadUpgradeInfo(); err == nil && ok && home.CanonicalName(ui.Name) == home.CanonicalName(name) {
				return fmt.Errorf("upgrade %q at height %d is under way: the chain's state reached its height (%s names it); its binary runs the chain from there. To undo it, stop the node and use `%s invisor rollback`",
					ui.Name, ui.Height, home.UpgradeInfoFile, e.appName())
			}
			s, ok, err := l.RemoveScheduled(name)
			if err != nil {
				return err
			}
			if !ok {
				return fmt.Errorf("no upgrade %q is scheduled; `%s invisor scheduled` lists them", name, e.appName())
			}
			if err := history.Append(e.home, history.Entry{Event: history.EventCancelled, Upgrade: s.Plan.Name, Height: s.Plan.Height,
				Time: time.Now().UTC(), PID: os.Getpid()}); err != nil {
				fmt.Fprintf(e.errOut, "warning: not recorded in the history: %v\n", err)
			}
			bin, _ := l.UpgradeBin(s.Plan.Name)
			fmt.Fprintf(e.out, "cancelled %q at height %d; its binary stays at %s\n", s.Plan.Name, s.Plan.Height, bin)
			if pid, held := l.HolderPID(); held {
				fmt.Fprintf(e.out, "The running node (PID %d) was started with halt-height %d: restart it before that height, or it halts there and waits.\n",
					pid, s.Plan.Height)
			}
			return nil
		},
	}
	return cmd
}
