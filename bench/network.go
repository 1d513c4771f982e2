package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/invisor/invisor/example-app/localnet"
)

// Scenario 6 (issue 16): the network's downtime at an upgrade. Four validators
// of equal power and one full node on 127.0.0.1, every node under the same
// supervisor (invisor in every node, or cosmovisor v1.5.0 in every node), the
// v2 binary in place before the height, backups off; the two alternate run by
// run. Measured from the network's halt (the first validator's `UPGRADE "v2"
// NEEDED` line, stamped on arrival):
//   - first block on v2: the first node's app at H (v2 applied the upgrade's block);
//   - next block agreed: the first node's app at H+1, the first block proposed and
//     committed by two thirds of the power on v2;
//   - all four signing: the first block after H whose commit carries all four
//     validators' precommits (read once the run is over);
//   - each validator's own switch: its halt line to its app at H;
//   - stragglers: validators whose halt line came more than one block interval
//     after the first one's.
// Five nodes restart at once on the machine's cores, which no real network does;
// the report says how many cores the run had.

// networkResult is one upgrade of the whole network under one supervisor.
type networkResult struct {
	Sup        string
	H          int64
	Interval   time.Duration            // median block interval before the plan height
	FirstOnV2  time.Duration            // network halt -> first node's app at H
	NextBlock  time.Duration            // network halt -> first node's app at H+1
	AllSigning time.Duration            // network halt -> the first node's app at the first block signed by all four
	AllSignedH int64                    // that block
	Switch     map[string]time.Duration // validator -> its halt line to its app at H
	HaltLag    map[string]time.Duration // validator -> its halt line after the first one's
	Stragglers int
}

func (e *benchEnv) networkRun(ctx context.Context, sup string, idx int) (networkResult, error) {
	r := networkResult{Sup: sup, Switch: map[string]time.Duration{}, HaltLag: map[string]time.Duration{}}
	name := fmt.Sprintf("s6-%s-%d", sup, idx)
	dir, done, err := e.runDir(name)
	if err != nil {
		return r, err
	}
	defer done()
	ictx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	net, err := localnet.NewTestnet(ictx, e.o.v1, dir, 4, 1, localnet.Settings{ChainID: "bench-network-1"})
	cancel()
	if err != nil {
		return r, err
	}
	nodes := net.Nodes()
	procs := make([]*proc, len(nodes))
	defer func() {
		_ = localnet.Parallel(len(procs), func(i int) error {
			if procs[i] != nil {
				procs[i].stop(20 * time.Second)
			}
			return nil
		})
	}()
	for i, n := range nodes {
		env := append(cleanEnv(), "DAEMON_NAME="+daemon, "DAEMON_HOME="+n.Home, "UNSAFE_SKIP_BACKUP=true")
		bin, args := e.o.v1, []string{"start", "--home", n.Home, "--log_no_color"}
		if sup == cosmovisorSup {
			env = append(env, "INVISOR_ENABLED=false", "DAEMON_ALLOW_DOWNLOAD_BINARIES=false")
			for dst, src := range map[string]string{
				filepath.Join(n.Home, "cosmovisor", "genesis", "bin", daemon):               e.o.v1,
				filepath.Join(n.Home, "cosmovisor", "upgrades", upgradeName, "bin", daemon): e.o.v2,
			} {
				if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
					return r, err
				}
				if err := copyFile(src, dst, 0o755); err != nil {
					return r, err
				}
			}
			bin, args = e.cosmovisor, []string{"run", "start", "--home", n.Home, "--log_no_color"}
		} else {
			// In place before the height: staged from the unthrottled server
			// when the plan appears, long before it.
			env = append(env, "DAEMON_ALLOW_DOWNLOAD_BINARIES=true")
		}
		log := filepath.Join(e.o.work, "logs", name+"-"+n.Name+".log")
		_ = os.Remove(log)
		if procs[i], err = startProc(bin, args, env, log); err != nil {
			return r, err
		}
	}
	if _, err := waitHeight(ctx, nodes[0], procs[0], 3, 2*time.Minute); err != nil {
		return r, err
	}
	pctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	srv := &localnet.FileServer{URL: e.fast.URL, Dir: e.srvDir}
	sc, _, err := net.ScheduleUpgrade(pctx, srv, upgradeName, e.o.v2, e.o.delay)
	cancel()
	if err != nil {
		return r, err
	}
	r.H = sc.Height
	if now, _ := nodes[0].AppInfo(ctx); now.Height >= r.H-2 {
		return r, fmt.Errorf("proposal passed at height %d, too late for plan height %d; raise -delay", now.Height, r.H)
	}

	// Poll every node's app every 20 ms through the halt and the switch.
	atH := make([]time.Time, len(nodes))
	var firstH, firstH1 time.Time
	heightAt := map[int64]time.Time{} // first time any node's app reached a height past H
	deadline := time.Now().Add(5 * time.Minute)
	for {
		t := time.Now()
		all := true
		for i, n := range nodes {
			info, err := n.AppInfo(ctx)
			if err != nil {
				all = false
				continue
			}
			if info.Height >= r.H && atH[i].IsZero() {
				atH[i] = t
			}
			for h := r.H; h <= info.Height && h <= r.H+8; h++ {
				if _, ok := heightAt[h]; !ok {
					heightAt[h] = t
				}
			}
			if info.Height < r.H+8 {
				all = false
			}
		}
		if all {
			break
		}
		if t.After(deadline) {
			return r, fmt.Errorf("not every node reached %d within 5 minutes; see %s", r.H+8, filepath.Join(e.o.work, "logs"))
		}
		time.Sleep(20*time.Millisecond - time.Since(t))
	}
	firstH, firstH1 = heightAt[r.H], heightAt[r.H+1]

	// The halt lines, stamped on arrival.
	halts := map[string]time.Time{}
	var netHalt time.Time
	for i, n := range nodes[:4] {
		_, l, ok := find(procs[i].snapshot(), 0, "NEEDED at height")
		if !ok {
			return r, fmt.Errorf("%s logged no halt", n.Name)
		}
		halts[n.Name] = l.T
		if netHalt.IsZero() || l.T.Before(netHalt) {
			netHalt = l.T
		}
	}
	for i, n := range nodes[:4] {
		r.Switch[n.Name] = atH[i].Sub(halts[n.Name])
		r.HaltLag[n.Name] = halts[n.Name].Sub(netHalt)
	}
	r.FirstOnV2, r.NextBlock = firstH.Sub(netHalt), firstH1.Sub(netHalt)

	// Block interval before the plan height, and the first block signed by all four.
	r.Interval = blockInterval(ctx, nodes[0], r.H-11, r.H-1)
	for _, n := range nodes[:4] {
		if r.HaltLag[n.Name] > r.Interval {
			r.Stragglers++
		}
	}
	addrs := make([]string, 4)
	for i, n := range nodes[:4] {
		if addrs[i], err = n.ValidatorAddress(ctx); err != nil {
			return r, err
		}
	}
	for h := r.H + 1; h <= r.H+7; h++ {
		signers, err := nodes[0].CommitSigners(ctx, h)
		if err != nil {
			return r, err
		}
		if allIn(addrs, signers) {
			r.AllSignedH = h
			// CommitSigners(h) reads block h+1's commit: h is signed by all once h+1 exists.
			r.AllSigning = heightAt[h+1].Sub(netHalt)
			break
		}
	}
	for i, n := range nodes {
		if done, xerr := procs[i].hasExited(); done {
			return r, fmt.Errorf("%s exited (%v) after the upgrade", n.Name, xerr)
		}
		if info, err := n.AppInfo(ctx); err != nil || info.Version != "v2.0.0" {
			return r, fmt.Errorf("%s after the upgrade: %+v %v, want v2.0.0", n.Name, info, err)
		}
	}
	return r, nil
}

// blockInterval is the median interval between consecutive blocks from..to as
// their headers' times say (0 when they cannot be read).
func blockInterval(ctx context.Context, n *localnet.Node, from, to int64) time.Duration {
	times, err := blockTimes(ctx, n.RPCPort, max(from, 1), to)
	if err != nil || len(times) < 2 {
		return 0
	}
	var ds []time.Duration
	for i := 1; i < len(times); i++ {
		ds = append(ds, times[i].Sub(times[i-1]))
	}
	slices.Sort(ds)
	return ds[len(ds)/2]
}

func allIn(want, got []string) bool {
	for _, w := range want {
		if !slices.ContainsFunc(got, func(g string) bool { return strings.EqualFold(g, w) }) {
			return false
		}
	}
	return true
}

// networkSection is scenario 6's section of BENCHMARKS.md: per run, then the
// medians and ranges of both supervisors side by side.
func (r *results) networkSection() string {
	var b strings.Builder
	fmt.Fprintf(&b, "Command: `%s` (`make bench-network`)  \n", r.opts.cmdline)
	fmt.Fprintf(&b, "Date: %s to %s  \n", r.start.UTC().Format("2006-01-02 15:04 MST"), r.end.UTC().Format("15:04 MST"))
	fmt.Fprintf(&b, "Machine: %s (five nodes restart at once on these cores)  \n", machine())
	fmt.Fprintf(&b, "Binaries: %s, built from %s  \n", strings.Join(r.opts.binInfo, ", "), r.opts.commit)
	fmt.Fprintf(&b, "Chain: 4 validators of equal power and 1 full node on 127.0.0.1, timeout_commit 300 ms, plan height = proposal height + %d, v2 in place before the height, backups off; runs alternate the supervisors (and who goes first) run by run.\n\n", r.opts.delay)
	b.WriteString("| run | supervisor | block interval | halt -> first block on v2 (app at H) | halt -> H+1 agreed | halt -> first block signed by all four | stragglers | switch per validator (its halt -> its app at H) |\n|---|---|---|---|---|---|---|---|\n")
	for i, n := range r.net {
		var sw []string
		for _, v := range []string{"val0", "val1", "val2", "val3"} {
			sw = append(sw, fmt.Sprintf("%s %.2fs (+%.2fs)", v, n.Switch[v].Seconds(), n.HaltLag[v].Seconds()))
		}
		fmt.Fprintf(&b, "| %d | %s | %.3fs | %.3fs | %.3fs | %.3fs (block %d) | %d | %s |\n", i+1, n.Sup, n.Interval.Seconds(),
			n.FirstOnV2.Seconds(), n.NextBlock.Seconds(), n.AllSigning.Seconds(), n.AllSignedH, n.Stragglers, strings.Join(sw, ", "))
	}
	b.WriteString("\n(+x: that validator's halt line came x after the first one's; a straggler is one more than a block interval late.)\n\n")
	get := func(sup string, f func(networkResult) time.Duration) summary {
		var ds []time.Duration
		for _, n := range r.net {
			if n.Sup == sup {
				ds = append(ds, f(n))
			}
		}
		return summarize(ds)
	}
	b.WriteString("| from the network's halt | invisor | cosmovisor v1.5.0 | ratio (medians) |\n|---|---|---|---|\n")
	for _, row := range []struct {
		name string
		f    func(networkResult) time.Duration
	}{
		{"first block on v2 (app at H on the first node)", func(n networkResult) time.Duration { return n.FirstOnV2 }},
		{"H+1 agreed (first block proposed and committed on v2)", func(n networkResult) time.Duration { return n.NextBlock }},
		{"first block signed by all four", func(n networkResult) time.Duration { return n.AllSigning }},
		{"each validator's own switch", nil},
	} {
		var a, c summary
		if row.f != nil {
			a, c = get(invisorSup, row.f), get(cosmovisorSup, row.f)
		} else {
			var ai, ci []time.Duration
			for _, n := range r.net {
				for _, d := range n.Switch {
					if n.Sup == invisorSup {
						ai = append(ai, d)
					} else {
						ci = append(ci, d)
					}
				}
			}
			a, c = summarize(ai), summarize(ci)
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %.2f |\n", row.name, a, c, ratio(a.med, c.med))
	}
	var st [2][]string
	for _, n := range r.net {
		i := 0
		if n.Sup == cosmovisorSup {
			i = 1
		}
		st[i] = append(st[i], fmt.Sprint(n.Stragglers))
	}
	fmt.Fprintf(&b, "| stragglers per run | %s | %s | |\n", strings.Join(st[0], ", "), strings.Join(st[1], ", "))
	return b.String()
}

const networkBegin, networkEnd = "<!-- bench:network:begin -->", "<!-- bench:network:end -->"
