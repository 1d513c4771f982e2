// Command bench runs the same v1 -> v2 governance upgrade of the example chain
// under invisor and under cosmovisor v1.5.0, alternating run by run, and
// prints (and writes to BENCHMARKS.md) one table of the results. See
// BENCHMARKS.md at the repository root.
//
//	cd bench && go run . -runs 5
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

type options struct {
	runs      int
	scenarios map[int]bool
	v1, v2    string
	work      string
	out       string
	blocks    int
	delay     int64
	rate      float64
	keep      bool
	s4slow    bool
	s5hooks   []webhookVariant
	extraEnv  string
	cmdline   string
	binInfo   []string
	commit    string
}

func main() {
	var o options
	var scen, hooks string
	flag.IntVar(&o.runs, "runs", 5, "runs per supervisor and scenario")
	flag.StringVar(&scen, "scenarios", "1,2,3,4", "scenarios to run (comma-separated; 5, the webhook receiver that is down, and 6, the network's downtime with 4 validators, run only when named)")
	flag.StringVar(&o.v1, "v1", "../build/exampled-v1", "exampled v1 binary (make build)")
	flag.StringVar(&o.v2, "v2", "../build/exampled-v2", "exampled v2 binary (make build)")
	flag.StringVar(&o.work, "work", "work", "scratch directory (homes, cosmovisor binary, served files, logs)")
	flag.StringVar(&o.out, "out", "../BENCHMARKS.md", "where to write the results (empty: do not write)")
	flag.IntVar(&o.blocks, "blocks", 200, "scenarios 4 and 5: blocks measured per run")
	flag.Int64Var(&o.delay, "delay", 80, "plan height = height at proposal + delay (room to stage a 20 MB/s download)")
	flag.Float64Var(&o.rate, "rate", 20e6, "throttled server rate, bytes/s")
	flag.BoolVar(&o.s4slow, "s4-throttled", false, "scenarios 4 and 5: serve the archive at -rate instead of full loopback speed")
	flag.StringVar(&hooks, "s5-webhooks", "none,hang,refused", "scenario 5: webhook variants per round (none: no webhook; hang: accepts, never answers; refused: nothing listens)")
	flag.StringVar(&o.extraEnv, "invisor-env", "", "extra KEY=VALUE settings for the invisor runs (comma-separated), e.g. INVISOR_PRE_UPGRADE=false for a what-if")
	flag.BoolVar(&o.keep, "keep", false, "keep node homes after each run")
	flag.Parse()
	o.cmdline = "cd bench && go run . " + strings.Join(os.Args[1:], " ")
	o.scenarios = map[int]bool{}
	for _, s := range strings.Split(scen, ",") {
		if n, err := strconv.Atoi(strings.TrimSpace(s)); err == nil {
			o.scenarios[n] = true
		}
	}
	for _, h := range strings.Split(hooks, ",") {
		v := webhookVariant(strings.TrimSpace(h))
		if !slices.Contains(webhookVariants, v) {
			fmt.Fprintf(os.Stderr, "bench: -s5-webhooks: unknown variant %q; want none, hang or refused\n", v)
			os.Exit(2)
		}
		o.s5hooks = append(o.s5hooks, v)
	}
	if err := run(context.Background(), o); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func say(format string, a ...any) {
	fmt.Printf("%s %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, a...))
}

func run(ctx context.Context, o options) error {
	var err error
	for _, p := range []*string{&o.v1, &o.v2, &o.work} {
		if *p, err = filepath.Abs(*p); err != nil {
			return err
		}
	}
	for _, b := range []string{o.v1, o.v2} {
		if _, err := os.Stat(b); err != nil {
			return fmt.Errorf("%s missing: run `make build` at the repository root", b)
		}
	}
	for _, d := range []string{"runs", "logs", "srv", "bin"} {
		if err := os.MkdirAll(filepath.Join(o.work, d), 0o755); err != nil {
			return err
		}
	}
	// Snapshot the binaries: build/ may be rebuilt while the bench runs.
	for _, p := range []*string{&o.v1, &o.v2} {
		dst := filepath.Join(o.work, "bin", filepath.Base(*p))
		if err := copyFile(*p, dst, 0o755); err != nil {
			return err
		}
		sum, _, err := sha256File(dst)
		if err != nil {
			return err
		}
		o.binInfo = append(o.binInfo, fmt.Sprintf("%s sha256 %.12s", filepath.Base(*p), sum))
		*p = dst
	}
	o.commit = gitCommit(ctx)
	say("binaries: %s; repository at %s", strings.Join(o.binInfo, ", "), o.commit)
	env, err := newEnv(ctx, o)
	if err != nil {
		return err
	}
	defer env.close()

	res := &results{opts: o, start: time.Now(), loadStart: loadavg()}
	for _, sc := range upgradeScenarios {
		if !o.scenarios[sc.ID] {
			continue
		}
		for i := 1; i <= o.runs; i++ {
			// Alternate, and alternate who goes first, so drift hits both alike.
			order := []string{invisorSup, cosmovisorSup}
			if i%2 == 0 {
				order = []string{cosmovisorSup, invisorSup}
			}
			for _, sup := range order {
				r, err := env.upgradeRun(ctx, sc, sup, i)
				if err != nil {
					return fmt.Errorf("scenario %d %s run %d: %w", sc.ID, sup, i, err)
				}
				say("scenario %d %-10s run %d: downtime %s, halt->resume (log) %s", sc.ID, sup, i,
					r.Downtime.Round(time.Millisecond), r.HaltToResume.Round(time.Millisecond))
				res.add(sc.ID, sup, r)
			}
		}
	}
	if o.scenarios[4] {
		for i := 1; i <= o.runs; i++ {
			order := []bool{false, true}
			if i%2 == 0 {
				order = []bool{true, false}
			}
			for _, staging := range order {
				r, err := env.consensusRun(ctx, staging, i)
				if err != nil {
					return fmt.Errorf("scenario 4 run %d (staging=%v): %w", i, staging, err)
				}
				say("scenario 4 %-10s run %d: block interval p50 %s p99 %s max %s (%s)", r.label(), i,
					r.P50.Round(time.Millisecond), r.P99.Round(time.Millisecond), r.Max.Round(time.Millisecond), r.Note)
				res.addConsensus(r)
			}
		}
	}
	if o.scenarios[5] {
		for i := 1; i <= o.runs; i++ {
			// Rotate the order round by round, so each variant takes each place alike.
			k := (i - 1) % len(o.s5hooks)
			for _, v := range slices.Concat(o.s5hooks[k:], o.s5hooks[:k]) {
				r, err := env.webhookRun(ctx, v, i)
				if err != nil {
					return fmt.Errorf("scenario 5 round %d (webhook %s): %w", i, v, err)
				}
				say("scenario 5 %-10s run %d: block interval p50 %s p99 %s max %s (%s)", v, i,
					r.P50.Round(time.Millisecond), r.P99.Round(time.Millisecond), r.Max.Round(time.Millisecond), r.activity())
				res.addWebhook(r)
			}
		}
	}
	if o.scenarios[6] {
		for i := 1; i <= o.runs; i++ {
			order := []string{invisorSup, cosmovisorSup}
			if i%2 == 0 {
				order = []string{cosmovisorSup, invisorSup}
			}
			for _, sup := range order {
				r, err := env.networkRun(ctx, sup, i)
				if err != nil {
					return fmt.Errorf("scenario 6 %s run %d: %w", sup, i, err)
				}
				say("scenario 6 %-10s run %d: halt -> first block on v2 %s, -> H+1 %s, -> all four signing %s (block %d), stragglers %d, interval %s",
					sup, i, r.FirstOnV2.Round(time.Millisecond), r.NextBlock.Round(time.Millisecond), r.AllSigning.Round(time.Millisecond),
					r.AllSignedH, r.Stragglers, r.Interval.Round(time.Millisecond))
				res.net = append(res.net, r)
			}
		}
	}
	res.end, res.loadEnd = time.Now(), loadavg()
	if len(res.up) > 0 || len(res.cons) > 0 {
		fmt.Println()
		fmt.Println(res.table())
		fmt.Println(res.breakdown())
	}
	if len(res.hooks) > 0 {
		fmt.Println()
		fmt.Println(res.webhookTable())
		fmt.Println(res.webhookRuns())
	}
	if len(res.net) > 0 {
		fmt.Println()
		fmt.Println(res.networkSection())
	}
	if o.out != "" {
		if err := res.writeMarkdown(o.out); err != nil {
			return err
		}
		say("wrote %s", o.out)
	}
	return nil
}

// buildCosmovisor builds cosmovisor v1.5.0 from the module pinned in
// bench/cosmovisor/go.mod.
func buildCosmovisor(ctx context.Context, work string) (string, error) {
	out := filepath.Join(work, "cosmovisor")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, "cosmossdk.io/tools/cosmovisor/cmd/cosmovisor")
	cmd.Dir = "cosmovisor"
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("building cosmovisor v1.5.0: %w", err)
	}
	v, _ := exec.CommandContext(ctx, out, "version").CombinedOutput()
	if !strings.Contains(string(v), "v1.5.0") {
		return "", fmt.Errorf("built cosmovisor is not v1.5.0: %s", firstLine(string(v)))
	}
	return out, nil
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(s, "\n")
	return s
}

// gitCommit describes the repository the binaries were built from (best effort).
func gitCommit(ctx context.Context) string {
	out, err := exec.CommandContext(ctx, "git", "-C", "..", "rev-parse", "--short", "HEAD").Output()
	if err != nil {
		return "unknown commit"
	}
	c := strings.TrimSpace(string(out))
	if st, err := exec.CommandContext(ctx, "git", "-C", "..", "status", "--porcelain", "--untracked-files=no").Output(); err == nil && len(st) > 0 {
		c += " (with uncommitted changes)"
	}
	return c
}
