package cli

import (
	"context"
	"fmt"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/invisor/invisor/internal/comet"
	"github.com/invisor/invisor/internal/config"
	"github.com/invisor/invisor/internal/proposals"
	"github.com/invisor/invisor/staging"
)

const flagPlatform = "platform"

func checkProposalCmd(opts config.Options) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "check-proposal <proposal-id> [--platform OS/ARCH[,OS/ARCH...] | --platform all]",
		Short: "Check a software-upgrade proposal's binary before voting: download, checksum, preflight, upgrade handler",
		Long: `Check the binary that software-upgrade proposal <proposal-id> names, the way invisor
stages a passed plan, before you vote: the plan info is read from the node's RPC
(config.toml rpc.laddr or --node), the binary for each platform asked is downloaded
into a temporary directory, its checksum verified against the plan, archives unpacked
safely and the executable header checked for that OS/arch. For this machine's platform
the binary is also preflighted (` + "`<bin> version`" + ` in a sandbox) and asked whether it
carries the plan's upgrade handler. Nothing is kept: the running node checks proposals
in their voting period on its own (check-proposals) and keeps what it verified.

It downloads even when allow-download is false (you asked for it); the other staging
settings (require-checksum, allowed schemes, size limits, download-deadline) apply.
--platform all checks every platform the plan's info names. It exits non-zero unless
every platform checked verified.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, err := strconv.ParseUint(args[0], 10, 64)
			if err != nil {
				return fmt.Errorf("proposal id %q: want a number, as `query gov proposals` lists them", args[0])
			}
			e, err := loadValidEnv(cmd, opts)
			if err != nil {
				return err
			}
			platforms, _ := cmd.Flags().GetString(flagPlatform)
			return runCheckProposal(cmd.Context(), e, id, platforms)
		},
	}
	addOutputFlag(cmd)
	cmd.Flags().String(flagNode, "", "CometBFT RPC of the node (default: rpc.laddr of config.toml)")
	cmd.Flags().String(flagPlatform, "", "platforms to check, as the plan info keys them (linux/amd64,darwin/arm64), or all (default: this machine's)")
	config.AddFlags(cmd.Flags())
	return cmd
}

// proposalReport is check-proposal's JSON output.
type proposalReport struct {
	Proposal staging.Proposal        `json:"proposal"`
	Status   proposals.Status        `json:"status"`
	Checks   []staging.ProposalCheck `json:"checks"`
}

func runCheckProposal(ctx context.Context, e *env, id uint64, platforms string) error {
	c, err := comet.NewClient(e.rpc)
	if err != nil {
		return fmt.Errorf("check-proposal: %w; give the node's RPC with --node", err)
	}
	qctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	prop, st, err := proposals.Get(qctx, c, id)
	cancel()
	if err != nil {
		return fmt.Errorf("check-proposal: %w", err)
	}
	keys, err := checkPlatforms(prop.Plan, platforms)
	if err != nil {
		return fmt.Errorf("check-proposal %d: %w", id, err)
	}
	cfg := e.cfg.Staging
	cfg.AllowDownload = true // the operator asked for this download
	cfg.DiskShare = 1        // and is waiting for it
	rep := proposalReport{Proposal: prop, Status: st}
	if !e.json {
		fmt.Fprintf(e.out, "proposal %d %q (%s): upgrade %q at height %d\n", prop.ID, prop.Title, st, prop.Plan.Name, prop.Plan.Height)
		if left := proposals.VotingLeft(prop, time.Now()); left > 0 {
			fmt.Fprintf(e.out, "  voting ends %s (in %s)\n", prop.VotingEnd.Local().Format(time.RFC1123), left.Round(time.Minute))
		}
	}
	failed := 0
	for _, key := range keys {
		chk := staging.CheckProposal(ctx, cfg, prop, key, false, staging.NopLogger{})
		rep.Checks = append(rep.Checks, chk)
		if chk.State != staging.CheckVerified {
			failed++
		}
		if !e.json {
			printCheck(e, chk)
		}
	}
	if e.json {
		if err := e.printJSON(rep); err != nil {
			return err
		}
	}
	if failed > 0 {
		return fmt.Errorf("proposal %d: %d of %d platform(s) checked did not verify", id, failed, len(keys))
	}
	return nil
}

// printCheck prints one platform's result: the summary line, then what was seen.
func printCheck(e *env, c staging.ProposalCheck) {
	fmt.Fprintf(e.out, "  %s\n", c.Summary())
	row := func(k, v string) {
		if v != "" {
			fmt.Fprintf(e.out, "      %-9s %s\n", k+":", v)
		}
	}
	row("url", c.URL)
	row("sha256", c.SHA256)
	row("version", c.Version)
	row("handler", c.Handler)
	if c.State != staging.CheckVerified {
		row("error", c.Err)
	}
}

// checkPlatforms turns --platform into the platform keys to check: this
// machine's by default, a list, or every key of the plan's inline info.
func checkPlatforms(p staging.Plan, flag string) ([]string, error) {
	flag = strings.TrimSpace(flag)
	switch flag {
	case "":
		return []string{runtime.GOOS + "/" + runtime.GOARCH}, nil
	case "all":
		bins, err := staging.ParseInfo(p.Info)
		if err != nil {
			return nil, fmt.Errorf("--platform all needs the platforms from the plan's info: %w; name them instead, e.g. --platform linux/amd64,linux/arm64", err)
		}
		// "any" is what a platform without its own key gets: checked as this
		// machine's platform when this machine has no key of its own.
		here := runtime.GOOS + "/" + runtime.GOARCH
		keys := make([]string, 0, len(bins))
		for k := range bins {
			if k == "any" {
				if _, own := bins[here]; own {
					continue
				}
				k = here
			}
			keys = append(keys, k)
		}
		sort.Strings(keys)
		return keys, nil
	}
	var keys []string
	for _, k := range strings.Split(flag, ",") {
		if k = strings.TrimSpace(k); k != "" {
			keys = append(keys, k)
		}
	}
	return keys, nil
}
