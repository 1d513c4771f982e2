package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/invisor/invisor/internal/config"
	"github.com/invisor/invisor/internal/home"
	"github.com/invisor/invisor/internal/status"
	"github.com/invisor/invisor/staging"
)

// How `stage` and `prepare` put a binary in place
//
// Both verify the binary the way an automatic download is verified, by running
// staging.Fetch into a scratch home (a staging temp directory under
// <home>/cosmovisor, on the same filesystem, which the node removes at start if
// this command is killed): checksum, safe unpacking, header check for this
// OS/arch, preflight in a sandbox. The verified binary (or the whole unpacked
// upgrade directory when upgrades/<dir> does not exist yet) is then renamed into
// place atomically, without a record: a completion record is only ever written
// for the plan in force, against that plan (its checksum or its archive), by
// staging. Then:
//
//   - if no node runs on the home (this command gets the home lock), and the plan
//     is known from the node's own state (data/upgrade-info.json after a halt, or
//     the status the node last wrote), the command runs staging.Fetch for that
//     plan under the lock: the install is trusted when the command returns, or the
//     command says why the plan does not confirm it;
//   - if a node runs (it holds the lock), the node's stager verifies the placed
//     binary against the plan in force within its poll interval; `stage` waits
//     for that when the plan is in force;
//   - staged ahead of its plan, the binary waits in place and is verified against
//     the plan when it appears.
//
// The plan is never taken from an RPC endpoint alone: whatever answers there is
// not authenticated, and a plan from it could make a binary look confirmed.

const (
	flagURL      = "url"
	flagFile     = "file"
	flagChecksum = "checksum"
	flagHeight   = "height"
	flagWait     = "wait"
	flagReplace  = "replace"
	flagBatch    = "batch"
)

func stageCmd(opts config.Options) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "stage <upgrade-name> (--url URL | --file PATH) [--checksum sha256:HEX] [--height H | --replace] | stage --batch FILE",
		Short: "Put an upgrade binary in place by hand, verified and recorded like a download (cosmovisor add-upgrade)",
		Long: `Put the binary for upgrade <upgrade-name> at <home>/cosmovisor/upgrades/<name>/bin/<daemon>,
verified exactly like an automatic download: checksum (--checksum, or a ?checksum= in the
URL; for --file the file's own sha256 when none is given), safe unpacking of archives,
a header check for this OS/arch and a preflight run (` + "`<bin> version`" + `), then an atomic
move into place and a completion record.

With the node stopped the install is trusted when the command returns. With the node
running, the binary is placed and the node's stager verifies and records it for the plan
in force (the command waits up to --wait for that).

--height H schedules an upgrade without governance (an emergency upgrade agreed
off-chain): the node halts at H through the SDK's halt-height, which invisor sets on
the node it starts, and switches to this binary as for a governance upgrade. Several
can be queued; ` + "`invisor scheduled`" + ` lists them and ` + "`invisor cancel NAME`" + ` cancels one.
--batch FILE schedules several at once from cosmovisor's formats: its
upgrade-info.json.batch (a JSON list of {"name","height","info"}) or its
add-batch-upgrade list (name:path:height, separated by commas or new lines).

--replace puts a patch release (same upgrade, a fixed binary) under the layout of an
upgrade already applied or staged, verified as usual and required to carry the
upgrade's handler; the boot redirect then runs it.`,
		Args: cobra.RangeArgs(0, 1),
		RunE: func(cmd *cobra.Command, args []string) error {
			e, err := loadValidEnv(cmd, opts)
			if err != nil {
				return err
			}
			if batch, _ := cmd.Flags().GetString(flagBatch); batch != "" {
				if len(args) != 0 {
					return errors.New("--batch takes no upgrade name: the file names them")
				}
				return stageBatch(cmd.Context(), e, batch)
			}
			if len(args) != 1 {
				return errors.New("name the upgrade: stage <upgrade-name> (--url URL | --file PATH), or give --batch FILE")
			}
			replace, _ := cmd.Flags().GetBool(flagReplace)
			u, _ := cmd.Flags().GetString(flagURL)
			file, _ := cmd.Flags().GetString(flagFile)
			sum, _ := cmd.Flags().GetString(flagChecksum)
			height, _ := cmd.Flags().GetInt64(flagHeight)
			wait, _ := cmd.Flags().GetDuration(flagWait)
			src, err := sourceURL(u, file, sum)
			if err != nil {
				return err
			}
			name := args[0]
			if _, err := e.layout().UpgradeDir(name); err != nil {
				return err
			}
			ctx := cmd.Context()
			switch {
			case replace && height != 0:
				return errors.New("give --height (an upgrade at a height without governance) or --replace (a patch release of an upgrade), not both")
			case replace:
				return stageReplace(ctx, e, name, src, file != "", wait)
			case height != 0:
				return stageAtHeight(ctx, e, name, height, src, file != "")
			}
			plan := knownPlan(e, name)
			synth := staging.Plan{Name: name, Info: planInfo(src)}
			return stageAndRecord(ctx, e, plan, synth, file != "", wait)
		},
	}
	cmd.Flags().String(flagURL, "", "download the binary (or an archive holding bin/<daemon> or <daemon>) from this http(s) URL")
	cmd.Flags().String(flagFile, "", "take the binary (or archive) from this local file")
	cmd.Flags().String(flagChecksum, "", "expected checksum, sha256:HEX or sha512:HEX (required for --url unless the URL has ?checksum= or require-checksum is false)")
	cmd.Flags().Int64(flagHeight, 0, "schedule an upgrade at this height without governance (the node halts there through the SDK's halt-height)")
	cmd.Flags().Bool(flagReplace, false, "put a patch release in place of the binary of an upgrade already applied or staged")
	cmd.Flags().String(flagBatch, "", "schedule the upgrades a cosmovisor batch file lists (upgrade-info.json.batch, or name:path:height lines)")
	cmd.Flags().Duration(flagWait, 30*time.Second, "with the node running: how long to wait for it to record the binary")
	cmd.Flags().String(flagNode, "", "CometBFT RPC of the node, to learn the plan (default: rpc.laddr of config.toml)")
	config.AddFlags(cmd.Flags())
	return cmd
}

func prepareCmd(opts config.Options) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "prepare",
		Short: "Stage the binary of the upgrade plan in force now (cosmovisor prepare-upgrade)",
		Long: `Stage now the binary named by the info of the upgrade plan in force, verified and
recorded like an automatic download, whatever allow-download says. The plan is taken
only from this node's own state: the status the running node writes (its hook sees
every plan in the block that schedules it), or data/upgrade-info.json after a halt.
With --node, the plan that node reports must be the same, or nothing is staged.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			e, err := loadValidEnv(cmd, opts)
			if err != nil {
				return err
			}
			wait, _ := cmd.Flags().GetDuration(flagWait)
			p, from := ownPlan(e)
			if p == nil {
				return fmt.Errorf("this node's own state names no upgrade plan (%s); start the node, which stages the plan itself the block it passes, or run prepare again once `%s invisor status` shows the plan",
					from, e.appName())
			}
			if f := cmd.Flags().Lookup(flagNode); f != nil && f.Changed {
				nc, err := newNodeClient(e.rpc)
				if err != nil {
					return err
				}
				ctx, cancel := context.WithTimeout(cmd.Context(), 10*time.Second)
				rp, err := nc.currentPlan(ctx)
				cancel()
				if err != nil {
					return fmt.Errorf("asking %s for the upgrade plan: %w", nc.base, err)
				}
				if rp == nil || *rp != *p {
					return fmt.Errorf("%s reports plan %v, but this node's own state (%s) names %q at height %d: nothing staged; a plan is only taken from the node's own state",
						nc.base, planText(rp), from, p.Name, p.Height)
				}
			}
			fmt.Fprintf(e.out, "plan %q at height %d (from %s)\n", p.Name, p.Height, from)
			return stageAndRecord(cmd.Context(), e, p, *p, false, wait)
		},
	}
	cmd.Flags().String(flagNode, "", "also ask this CometBFT RPC for the plan and refuse if it differs from the node's own state")
	cmd.Flags().Duration(flagWait, 30*time.Second, "with the node running: how long to wait for it to record the binary")
	config.AddFlags(cmd.Flags())
	return cmd
}

func planText(p *staging.Plan) string {
	if p == nil {
		return "none"
	}
	return fmt.Sprintf("%q at height %d", p.Name, p.Height)
}

// sourceURL builds the source of `stage` from its flags.
func sourceURL(rawURL, file, checksum string) (string, error) {
	switch {
	case (rawURL == "") == (file == ""):
		return "", errors.New("give exactly one of --url or --file")
	case file != "":
		abs, err := filepath.Abs(file)
		if err != nil {
			return "", err
		}
		fi, err := os.Stat(abs)
		if err != nil {
			return "", err
		}
		if !fi.Mode().IsRegular() {
			return "", fmt.Errorf("--file %s is not a regular file", abs)
		}
		if checksum == "" {
			// The operator vouches for a local file; pin it so the copy is checked.
			f, err := os.Open(abs)
			if err != nil {
				return "", err
			}
			d, err := home.HashFile(context.Background(), f)
			f.Close()
			if err != nil {
				return "", err
			}
			checksum = "sha256:" + d.SHA256
		}
		rawURL = (&url.URL{Scheme: "file", Path: abs}).String()
	}
	u, err := url.Parse(rawURL)
	if err != nil {
		return "", fmt.Errorf("--url %q: %w", rawURL, err)
	}
	if checksum != "" {
		if _, err := staging.ParseChecksum(checksum); err != nil {
			return "", fmt.Errorf("--checksum: %w", err)
		}
		q := u.Query()
		if q.Has("checksum") && q.Get("checksum") != checksum {
			return "", fmt.Errorf("--checksum %s differs from the URL's checksum %s", checksum, q.Get("checksum"))
		}
		q.Set("checksum", checksum)
		u.RawQuery = q.Encode()
	}
	return u.String(), nil
}

// planInfo is cosmovisor-format plan info naming src for this platform.
func planInfo(src string) string {
	b, _ := json.Marshal(map[string]any{"binaries": map[string]string{runtime.GOOS + "/" + runtime.GOARCH: src}})
	return string(b)
}

// ownPlan is the plan in force as this node's own state says it: data/upgrade-info.json
// (x/upgrade wrote it at the halt), else the status the node writes while it runs,
// if the process that wrote it still holds the home lock. from says which, or why
// there is none.
func ownPlan(e *env) (p *staging.Plan, from string) {
	l := e.layout()
	if ui, ok, err := l.ReadUpgradeInfo(); err == nil && ok {
		return &ui, home.UpgradeInfoFile
	}
	ns, why := runningStatus(e, l)
	switch why {
	case noStatus:
		return nil, "no node status and no data/upgrade-info.json"
	case notRunning:
		return nil, "no node runs on this home, and no data/upgrade-info.json"
	}
	if ns.Plan == nil {
		return nil, fmt.Sprintf("the running node (PID %d) has no plan in force", ns.PID)
	}
	plan := *ns.Plan
	return &plan, fmt.Sprintf("the running node, PID %d", ns.PID)
}

// Why runningStatus has no status to give.
const (
	noStatus   = "no node status"
	notRunning = "no node runs on this home"
)

// runningStatus is the status the running node publishes: the status file, when
// the process that wrote it holds the home lock (a stale or forged file is none).
// why is "" when it has one, else noStatus or notRunning.
func runningStatus(e *env, l home.Layout) (ns status.Node, why string) {
	ns, ok, _ := status.Read(e.home)
	if !ok {
		return status.Node{}, noStatus
	}
	if pid, held := l.HolderPID(); !held || pid != ns.PID {
		return status.Node{}, notRunning
	}
	return ns, ""
}

// knownPlan returns the plan in force named name, if the node's own state knows it.
func knownPlan(e *env, name string) *staging.Plan {
	if p, _ := ownPlan(e); p != nil && p.Name == name {
		return p
	}
	return nil
}

// stageAndRecord verifies the binary of plan fetch into a scratch home, moves it
// into place and has it recorded for plan when plan is known (see the comment at
// the top). plan is nil when the plan is not in force yet.
func stageAndRecord(ctx context.Context, e *env, plan *staging.Plan, fetch staging.Plan, fileSource bool, wait time.Duration) error {
	l := e.layout()
	name := fetch.Name
	bin, err := l.UpgradeBin(name)
	if err != nil {
		return err
	}
	if plan != nil {
		if v, err := l.Open(ctx, *plan); err == nil {
			v.Close()
			fmt.Fprintf(e.out, "upgrade %q is already staged and trusted for the plan in force: %s (sha256 %s)\n", name, v.Path, v.Record.SHA256)
			return nil
		}
	}
	if _, err := os.Lstat(bin); err == nil {
		return fmt.Errorf("%s already exists and is not proven for the plan in force; run `%s invisor verify %s` to see why, or remove it and stage again",
			bin, e.appName(), name)
	}
	// The lock says whether a node runs here; without one, this command owns the
	// home until it returns.
	locked, release, err := lockUnlessRunning(l)
	if err != nil {
		return err
	}
	defer release()

	scfg, sl, cleanup, err := scratchHome(e, fileSource)
	if err != nil {
		return err
	}
	defer cleanup()
	fmt.Fprintf(e.out, "verifying the binary for %q ...\n", name)
	inst, err := staging.Fetch(ctx, scfg, fetch, stagingLog{e})
	if err != nil {
		return fmt.Errorf("staging %q: %w", name, err)
	}
	if err := sl.RemoveRecord(name); err != nil {
		return err
	}
	if plan != nil && plan.Info != fetch.Info {
		// The plan is known: the binary must be the one governance approved
		// (its checksum, or the binary in its archive) before anything is placed.
		vcfg := scfg
		vcfg.AllowDownload = e.cfg.Staging.AllowDownload
		if _, err := staging.Fetch(ctx, vcfg, *plan, stagingLog{e}); err != nil {
			return fmt.Errorf("this binary is not the one the plan %q names, nothing was placed: %w", name, err)
		}
		if err := sl.RemoveRecord(name); err != nil {
			return err
		}
	}
	if err := place(l, sl, name); err != nil {
		return err
	}
	cleanup()

	switch {
	case locked != nil && plan == nil:
		fmt.Fprintf(e.out, "placed %s (sha256 %s); plan %q is not in force yet: the running node (PID %d) verifies the binary against the plan when it is (check with `%s invisor status`)\n",
			bin, inst.SHA256, name, locked.PID, e.appName())
		return nil
	case locked != nil:
		fmt.Fprintf(e.out, "placed %s (sha256 %s); the running node (PID %d) verifies it against plan %q\n", bin, inst.SHA256, locked.PID, name)
		return waitTrusted(ctx, e, *plan, inst.SHA256, wait)
	case plan == nil:
		fmt.Fprintf(e.out, "placed %s (sha256 %s); plan %q is not in force yet: the node verifies the binary against the plan when it is\n", bin, inst.SHA256, name)
		return nil
	}
	rcfg := e.cfg.Staging
	if fileSource {
		rcfg.AllowFileURLs = true
	}
	final, err := staging.Fetch(ctx, rcfg, *plan, stagingLog{e})
	if err != nil {
		return fmt.Errorf("placed %s, but it is not trusted for plan %q: %w", bin, name, err)
	}
	fmt.Fprintf(e.out, "staged %q: %s\n  sha256 %s, %d bytes (%s); preflight: %s\n", name, final.Path, final.SHA256, final.Size, final.Record.Source, final.Record.Preflight)
	return nil
}

// place moves the verified binary from the scratch home into the real one: the
// whole upgrade directory if there is none yet (keeping lib/ and the like), else
// only bin/<daemon>. No record moves: records are written for the plan in force.
func place(l, scratch home.Layout, name string) error {
	sdir, _ := scratch.UpgradeDir(name)
	ddir, err := l.UpgradeDir(name)
	if err != nil {
		return err
	}
	if _, err := os.Lstat(ddir); errors.Is(err, fs.ErrNotExist) {
		if err := os.Rename(sdir, ddir); err != nil {
			return fmt.Errorf("move into %s: %w", ddir, err)
		}
		return home.SyncDir(filepath.Dir(ddir))
	}
	bin, _ := l.UpgradeBin(name)
	if err := os.MkdirAll(filepath.Dir(bin), 0o755); err != nil {
		return err
	}
	sbin, _ := scratch.UpgradeBin(name)
	if err := os.Rename(sbin, bin); err != nil {
		return fmt.Errorf("move into %s: %w", bin, err)
	}
	return home.SyncDir(filepath.Dir(bin))
}

// waitTrusted waits for a running node to record the placed binary for plan.
func waitTrusted(ctx context.Context, e *env, plan staging.Plan, sha string, wait time.Duration) error {
	deadline := time.Now().Add(wait)
	l := e.layout()
	for {
		v, err := l.Open(ctx, plan)
		if err == nil {
			v.Close()
			if v.Record.SHA256 == sha {
				fmt.Fprintf(e.out, "staged %q: %s\n  sha256 %s, %d bytes (%s); preflight: %s\n", plan.Name, v.Path, v.Record.SHA256, v.Record.Size, v.Record.Source, v.Record.Preflight)
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("placed, but the running node has not recorded it for plan %q within %s (%v); check `%s invisor status` and the node's log",
				plan.Name, wait, err, e.appName())
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// stagingLog prints staging's log lines on stderr.
type stagingLog struct{ e *env }

func (l stagingLog) line(level, msg string, kv ...any) {
	var b strings.Builder
	b.WriteString(level + " " + msg)
	for i := 0; i+1 < len(kv); i += 2 {
		fmt.Fprintf(&b, " %v=%v", kv[i], kv[i+1])
	}
	fmt.Fprintln(l.e.errOut, b.String())
}
func (l stagingLog) Info(msg string, kv ...any)  { l.line("INF", msg, kv...) }
func (l stagingLog) Warn(msg string, kv ...any)  { l.line("WRN", msg, kv...) }
func (l stagingLog) Error(msg string, kv ...any) { l.line("ERR", msg, kv...) }

// VerifyResult is one line of `invisor verify`.
type VerifyResult struct {
	Name      string `json:"name"`
	Path      string `json:"path"`
	OK        bool   `json:"ok"`
	SHA256    string `json:"sha256,omitempty"`
	Source    string `json:"source,omitempty"` // how the record ties the bytes to the plan
	Preflight string `json:"preflight,omitempty"`
	// Probe is what the binary answered at staging (its record), in words.
	Probe string `json:"probe,omitempty"`
	Note  string `json:"note,omitempty"`
	Error string `json:"error,omitempty"`
}

func verifyCmd(opts config.Options) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "verify [upgrade-name]",
		Short: "Re-hash and preflight staged binaries (all, or one upgrade)",
		Long: `Check that each staged binary still has its completion record, re-hashes to the recorded
sha256, and passes the preflight run (` + "`<bin> version`" + `). Exits non-zero if any fails.`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			e, err := loadEnv(cmd, opts)
			if err != nil {
				return err
			}
			var names []string
			if len(args) == 1 {
				names = args
			} else {
				for _, b := range stagedBinaries(e.layout()) {
					names = append(names, b.Name)
				}
			}
			var res []VerifyResult
			failed := 0
			for _, n := range names {
				r := verifyOne(cmd.Context(), e, n)
				if !r.OK {
					failed++
				}
				res = append(res, r)
			}
			if e.json {
				if res == nil {
					res = []VerifyResult{}
				}
				if err := e.printJSON(res); err != nil {
					return err
				}
			} else {
				if len(res) == 0 {
					fmt.Fprintln(e.out, "nothing is staged under", e.layout().UpgradesRoot())
				}
				for _, r := range res {
					if r.OK && r.Note != "" {
						fmt.Fprintf(e.out, "ok    %-12s %s; preflight: %s; %s\n", r.Name, r.Path, r.Preflight, r.Note)
					} else if r.OK {
						fmt.Fprintf(e.out, "ok    %-12s %s sha256 %s; preflight: %s; probe: %s\n", r.Name, r.Path, r.SHA256, r.Preflight, r.Probe)
					} else {
						fmt.Fprintf(e.out, "FAIL  %-12s %s: %s\n", r.Name, r.Path, r.Error)
					}
				}
			}
			if failed > 0 {
				return fmt.Errorf("%d of %d staged binaries failed verification", failed, len(res))
			}
			return nil
		},
	}
	addOutputFlag(cmd)
	return cmd
}

// verifyOne checks upgrade name's binary against its completion record (for the
// plan in force when the node's own state names one: the proof the switch uses)
// and preflights it.
func verifyOne(ctx context.Context, e *env, name string) VerifyResult {
	l := e.layout()
	bin, err := l.UpgradeBin(name)
	r := VerifyResult{Name: name, Path: bin}
	if err != nil {
		r.Error = err.Error()
		return r
	}
	rec, err := l.ReadRecord(name)
	if errors.Is(err, fs.ErrNotExist) && knownPlan(e, name) == nil {
		// Placed ahead of its plan: only the preflight can be run now.
		if _, serr := os.Lstat(bin); serr == nil {
			out, perr := staging.Preflight(ctx, e.cfg.Staging, bin)
			if perr != nil {
				r.Error = perr.Error()
				return r
			}
			r.OK, r.Preflight = true, out
			r.Note = "placed, not verified against a plan yet (none of this name is in force): the node verifies it against the plan when it is"
			return r
		}
	}
	if err != nil {
		r.Error = err.Error()
		return r
	}
	plan, ok := knownPlan(e, name), true
	if plan == nil {
		// Not in force: check the file against its record's own plan.
		ok = false
		plan = &staging.Plan{Name: name, Height: rec.Height}
	}
	var v *home.Verified
	if ok {
		v, err = l.Open(ctx, *plan)
	} else {
		v, err = l.Inspect(ctx, name)
	}
	if err != nil {
		r.Error = err.Error()
		return r
	}
	defer v.Close()
	r.SHA256, r.Source, r.Probe = rec.SHA256, string(rec.Source), probeText(rec.Probe, name)
	if !ok {
		r.Note = "no plan of this name is in force; checked against its record only"
	}
	out, err := staging.Preflight(ctx, e.cfg.Staging, v.Path)
	if err != nil {
		r.Error = err.Error()
		return r
	}
	r.OK, r.Preflight = true, out
	return r
}
