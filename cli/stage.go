package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/invisor/invisor"
	"github.com/invisor/invisor/relauncher"
	"github.com/invisor/invisor/staging"
)

// How `stage` and `prepare` put a binary in place
//
// Both verify the binary the way an automatic download is verified, by running
// staging.Fetch into a scratch home (a staging temp directory under
// <home>/cosmovisor, on the same filesystem, which the node removes at start if
// this command is killed): checksum, safe unpacking, header check for this
// OS/arch, preflight. The verified binary (or the whole unpacked upgrade
// directory when upgrades/<name> does not exist yet) is then renamed into place
// atomically, without its record. Then:
//
//   - if no node holds the staging lock on the home, the command takes it and runs
//     staging.Fetch on the real home for the plan: Fetch finds the hand-placed
//     binary, checks it against the plan checksum, preflights it and writes the
//     completion record. The install is trusted when the command returns;
//   - if a node runs (it holds the lock), the command does not touch the record:
//     the node's stager adopts the hand-placed binary for the plan in force within
//     its poll interval (and for a later plan when that plan appears), with the
//     same checks. `stage` waits for that when the plan is in force.
//
// The record is written for the real plan whenever it is known (asked from the
// node, or data/upgrade-info.json after a halt), so the stager accepts it as
// staged for that plan; staged ahead of a proposal, it is recorded for a plan
// whose info names the given source.

const (
	flagURL      = "url"
	flagFile     = "file"
	flagChecksum = "checksum"
	flagHeight   = "height"
	flagWait     = "wait"
)

func stageCmd(opts invisor.Options) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "stage <upgrade-name> (--url URL | --file PATH) [--checksum sha256:HEX]",
		Short: "Put an upgrade binary in place by hand, verified and recorded like a download (cosmovisor add-upgrade)",
		Long: `Put the binary for upgrade <upgrade-name> at <home>/cosmovisor/upgrades/<name>/bin/<daemon>,
verified exactly like an automatic download: checksum (--checksum, or a ?checksum= in the
URL; for --file the file's own sha256 when none is given), safe unpacking of archives,
a header check for this OS/arch and a preflight run (` + "`<bin> version`" + `), then an atomic
move into place and a completion record.

With the node stopped the install is trusted when the command returns. With the node
running, the binary is placed and the node's stager verifies and records it for the plan
in force (the command waits up to --wait for that).`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			e, err := loadValidEnv(cmd, opts)
			if err != nil {
				return err
			}
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
			if _, err := staging.SafeName(name); err != nil {
				return err
			}
			ctx := cmd.Context()
			plan := knownPlan(ctx, e, name)
			synth := staging.Plan{Name: name, Height: height, Info: planInfo(src)}
			if plan == nil {
				p := synth
				plan = &p
			}
			return stageAndRecord(ctx, e, *plan, synth, file != "", wait)
		},
	}
	cmd.Flags().String(flagURL, "", "download the binary (or an archive holding bin/<daemon> or <daemon>) from this http(s) URL")
	cmd.Flags().String(flagFile, "", "take the binary (or archive) from this local file")
	cmd.Flags().String(flagChecksum, "", "expected checksum, sha256:HEX or sha512:HEX (required for --url unless the URL has ?checksum= or require-checksum is false)")
	cmd.Flags().Int64(flagHeight, 0, "upgrade height to record when the plan is not known yet")
	cmd.Flags().Duration(flagWait, 30*time.Second, "with the node running: how long to wait for it to record the binary")
	cmd.Flags().String(flagNode, "", "CometBFT RPC of the node, to learn the plan (default: rpc.laddr of config.toml)")
	invisor.AddFlags(cmd.Flags())
	return cmd
}

func prepareCmd(opts invisor.Options) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "prepare",
		Short: "Ask the node for the upgrade plan in force and stage its binary now (cosmovisor prepare-upgrade)",
		Long: `Ask the node (config.toml rpc.laddr, or --node) for the plan in force and stage the binary
its info names now, verified and recorded like an automatic download, whatever
allow-download says. The node may be the local one or another node of the chain.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			e, err := loadValidEnv(cmd, opts)
			if err != nil {
				return err
			}
			wait, _ := cmd.Flags().GetDuration(flagWait)
			nc, err := newNodeClient(e.rpc)
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), 10*time.Second)
			p, err := nc.currentPlan(ctx)
			cancel()
			if err != nil {
				return fmt.Errorf("asking %s for the upgrade plan: %w (is the node running? use --node to ask another)", nc.base, err)
			}
			if p == nil {
				fmt.Fprintln(e.out, "no upgrade plan is in force; nothing to prepare")
				return nil
			}
			fmt.Fprintf(e.out, "plan %q at height %d\n", p.Name, p.Height)
			return stageAndRecord(cmd.Context(), e, *p, *p, false, wait)
		},
	}
	cmd.Flags().String(flagNode, "", "CometBFT RPC of the node to ask (default: rpc.laddr of config.toml)")
	cmd.Flags().Duration(flagWait, 30*time.Second, "with the node running: how long to wait for it to record the binary")
	invisor.AddFlags(cmd.Flags())
	return cmd
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
			sum, err := staging.FileSHA256(abs)
			if err != nil {
				return "", err
			}
			checksum = "sha256:" + sum
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

// knownPlan returns the real plan named name if the node or the home knows it.
func knownPlan(ctx context.Context, e *env, name string) *staging.Plan {
	if nc, err := newNodeClient(e.rpc); err == nil {
		qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		p, err := nc.currentPlan(qctx)
		cancel()
		if err == nil && p != nil && p.Name == name {
			return p
		}
	}
	// After a halt the chain's own record of the plan, which the boot redirect
	// checks the install against.
	if ui, ok, err := relauncher.ReadUpgradeInfo(e.home); err == nil && ok && ui.Name == name {
		return &staging.Plan{Name: ui.Name, Height: ui.Height, Info: ui.Info}
	}
	if ns, ok, _ := invisor.ReadNodeStatus(e.home); ok && ns.Plan != nil && ns.Plan.Name == name {
		p := *ns.Plan
		return &p
	}
	return nil
}

// stageAndRecord verifies the binary of plan fetch into a scratch home, moves it
// into place and has it recorded for plan (see the comment at the top).
func stageAndRecord(ctx context.Context, e *env, plan, fetch staging.Plan, fileSource bool, wait time.Duration) error {
	home, daemon := e.home, e.cfg.Staging.DaemonName
	if inst, err := staging.Trusted(home, daemon, plan.Name); err == nil {
		fmt.Fprintf(e.out, "upgrade %q is already staged and trusted: %s (sha256 %s)\n", plan.Name, inst.Path, inst.SHA256)
		return nil
	}
	bin := staging.BinPath(home, daemon, plan.Name)
	if _, err := os.Lstat(bin); err == nil {
		return fmt.Errorf("%s already exists without a valid completion record; run `%s invisor verify %s`, or remove %s and stage again",
			bin, e.appName(), plan.Name, staging.UpgradeDir(home, plan.Name))
	}

	root := staging.CosmovisorRoot(home)
	if err := os.MkdirAll(filepath.Join(root, staging.UpgradesDir), 0o755); err != nil {
		return err
	}
	scratch, err := os.MkdirTemp(root, staging.TempPrefix+"cli-")
	if err != nil {
		return fmt.Errorf("scratch directory under %s: %w", root, err)
	}
	defer os.RemoveAll(scratch)

	scfg := e.cfg.Staging
	scfg.Home, scfg.AllowDownload = scratch, true
	if fileSource {
		scfg.AllowFileURLs = true
	}
	fmt.Fprintf(e.out, "verifying the binary for %q ...\n", plan.Name)
	inst, err := staging.Fetch(ctx, scfg, fetch, stagingLog{e})
	if err != nil {
		return fmt.Errorf("staging %q: %w", plan.Name, err)
	}
	if plan.Info != fetch.Info {
		// The real plan is known: the binary must match what governance approved
		// (its checksum, when it names a plain binary), before anything is placed.
		if err := os.Remove(staging.RecordPath(scratch, daemon, plan.Name)); err != nil {
			return err
		}
		vcfg := scfg
		vcfg.AllowDownload = false
		if _, err := staging.Fetch(ctx, vcfg, plan, stagingLog{e}); err != nil {
			return fmt.Errorf("this binary is not the one upgrade %q names, nothing was placed: %w", plan.Name, err)
		}
	}
	if err := place(home, daemon, plan.Name, scratch); err != nil {
		return err
	}
	os.RemoveAll(scratch)

	// Record it, unless a running node owns the home.
	st, err := staging.New(e.cfg.Staging, stagingLog{e})
	if errors.Is(err, staging.ErrLocked) {
		fmt.Fprintf(e.out, "placed %s (sha256 %s); the running node verifies and records it for plan %q\n", bin, inst.SHA256, plan.Name)
		if plan.Info == fetch.Info {
			// Staged ahead of its plan: the node records it when the plan appears.
			fmt.Fprintf(e.out, "plan %q is not in force yet; the node records the binary when it is (check with `%s invisor status`)\n",
				plan.Name, e.appName())
			return nil
		}
		return waitTrusted(ctx, e, plan.Name, inst.SHA256, wait)
	}
	if err != nil {
		return fmt.Errorf("placed %s, but cannot record it: %w", bin, err)
	}
	defer st.Close()
	rcfg := e.cfg.Staging
	if fileSource {
		rcfg.AllowFileURLs = true // to compare with the checksum of a synthetic file:// plan
	}
	final, err := staging.Fetch(ctx, rcfg, plan, stagingLog{e})
	if err != nil {
		return fmt.Errorf("placed %s, but recording it for plan %q failed: %w", bin, plan.Name, err)
	}
	fmt.Fprintf(e.out, "staged %q: %s\n  sha256 %s, %d bytes; preflight: %s\n", plan.Name, final.Path, final.SHA256, final.Size, final.Record.Preflight)
	return nil
}

// place moves the verified binary from the scratch home into the real one: the
// whole upgrade directory if there is none yet (keeping lib/ and the like), else
// only bin/<daemon>. The scratch record is not moved: the record is written for
// the real plan.
func place(home, daemon, name, scratch string) error {
	sdir, ddir := staging.UpgradeDir(scratch, name), staging.UpgradeDir(home, name)
	if err := os.Remove(staging.RecordPath(scratch, daemon, name)); err != nil {
		return err
	}
	if _, err := os.Lstat(ddir); errors.Is(err, fs.ErrNotExist) {
		if err := os.Rename(sdir, ddir); err != nil {
			return fmt.Errorf("move into %s: %w", ddir, err)
		}
		return nil
	}
	bin := staging.BinPath(home, daemon, name)
	if err := os.MkdirAll(filepath.Dir(bin), 0o755); err != nil {
		return err
	}
	if err := os.Rename(staging.BinPath(scratch, daemon, name), bin); err != nil {
		return fmt.Errorf("move into %s: %w", bin, err)
	}
	return nil
}

// waitTrusted waits for a running node to record the placed binary.
func waitTrusted(ctx context.Context, e *env, name, sha string, wait time.Duration) error {
	deadline := time.Now().Add(wait)
	for {
		inst, err := staging.Trusted(e.home, e.cfg.Staging.DaemonName, name)
		if err == nil && inst.SHA256 == sha {
			fmt.Fprintf(e.out, "staged %q: %s\n  sha256 %s, %d bytes; preflight: %s\n", name, inst.Path, inst.SHA256, inst.Size, inst.Record.Preflight)
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("placed, but the running node has not recorded it within %s (%v); it records it only for the plan in force named %q — check `%s invisor status` and the node's log",
				wait, err, name, e.appName())
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
	Preflight string `json:"preflight,omitempty"`
	Error     string `json:"error,omitempty"`
}

func verifyCmd(opts invisor.Options) *cobra.Command {
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
				for _, b := range stagedBinaries(e.home, e.daemon()) {
					names = append(names, b.Name)
				}
			}
			timeout := staging.DefaultPreflightTimeout
			var res []VerifyResult
			failed := 0
			for _, n := range names {
				r := verifyOne(cmd.Context(), e.home, e.daemon(), n, timeout)
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
					fmt.Fprintln(e.out, "nothing is staged under", filepath.Join(staging.CosmovisorRoot(e.home), staging.UpgradesDir))
				}
				for _, r := range res {
					if r.OK {
						fmt.Fprintf(e.out, "ok    %-12s %s sha256 %s; preflight: %s\n", r.Name, r.Path, r.SHA256, r.Preflight)
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

func verifyOne(ctx context.Context, home, daemon, name string, timeout time.Duration) VerifyResult {
	r := VerifyResult{Name: name, Path: staging.BinPath(home, daemon, name)}
	inst, err := staging.Trusted(home, daemon, name)
	if err != nil {
		r.Error = err.Error()
		return r
	}
	r.SHA256 = inst.SHA256
	out, err := preflight(ctx, inst.Path, timeout)
	if err != nil {
		r.Error = err.Error()
		return r
	}
	r.OK, r.Preflight = true, out
	return r
}

// preflight runs `<bin> version` with a bound and returns its first line.
func preflight(ctx context.Context, bin string, timeout time.Duration) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "version")
	cmd.Env = os.Environ()
	out, err := cmd.CombinedOutput()
	line := strings.TrimSpace(strings.SplitN(strings.TrimSpace(string(out)), "\n", 2)[0])
	if err != nil {
		return line, fmt.Errorf("preflight `%s version` failed: %w: %s", bin, err, line)
	}
	return line, nil
}
