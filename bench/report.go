package main

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"slices"
	"strings"
	"time"
)

// marker is a point of the switch found in the stamped log; the phase it ends
// is named by label.
type marker struct {
	label    string
	subs     []string
	optional bool
	tookBack bool // the line reports took=; also mark its start
	startLbl string
	next     bool // the line right after the previous marker (first line of a new process)
	height   bool // the line must carry height=H
}

// invisorStop is how every invisor switch begins: the halt, the clean stop and
// the backup; invisorBoot is how it ends, in the new process.
var (
	invisorStop = []marker{
		{label: "block H proposed, x/upgrade halts (block interval)", subs: []string{`NEEDED at height`}},
		{label: "halt -> stop requested (a stat: the binary was hashed when staged)", subs: []string{"invisor: binary trusted; stopping the node"}},
		{label: "node shutdown (SIGTERM path, stores closed)", subs: []string{"leveldb: closed"}, optional: true},
		{label: "backup", subs: []string{"invisor: data backed up"}, optional: true, tookBack: true,
			startLbl: "stores closed -> backup starts (staging stopped, stamp re-checked)"},
	}
	invisorBoot = []marker{
		{label: "invisor boot: staging, history record, app construction", subs: []string{"starting node with ABCI CometBFT"}},
		{label: "open stores, handshake, replay block H with the upgrade handler", subs: []string{"committed state"}, height: true},
	}
)

// invisorMarkers is invisor's switch with pre-upgrade run before the exec.
var invisorMarkers = slices.Concat(invisorStop, []marker{
	{label: "pre-upgrade (`exampled-v2 pre-upgrade`)", subs: []string{"invisor: pre-upgrade ran"}, optional: true, tookBack: true,
		startLbl: "stores closed/backup -> pre-upgrade starts (staging stopped, stamp re-checked)"},
	{label: "flip current, re-stat, exec", subs: []string{"invisor: exec"}},
	{label: "new process: Go/SDK init + boot check to first log line", next: true},
}, invisorBoot)

// invisorOverlapMarkers is invisor's switch when the new binary awaits its own
// pre-upgrade: the old process starts `pre-upgrade` and execs at once; the new
// process's Go/SDK init runs while pre-upgrade does, and it reports the run
// (and flips current) before the node starts.
var invisorOverlapMarkers = slices.Concat(invisorStop, []marker{
	{label: "stores closed/backup -> pre-upgrade started, re-stat, exec", subs: []string{"invisor: exec"}},
	{label: "new process: Go/SDK init, in parallel with `exampled-v2 pre-upgrade`; wait for it, flip current, read config", subs: []string{"invisor: pre-upgrade ran"}},
}, invisorBoot)

var cosmovisorMarkers = []marker{
	{label: "block H proposed, x/upgrade halts (block interval)", subs: []string{`NEEDED at height`}},
	{label: "halt -> noticed (upgrade-info.json poll, 300 ms)", subs: []string{"daemon shutting down in an attempt to restart"}},
	{label: "kill, until backup starts", subs: []string{"starting to take backup"}, optional: true},
	{label: "backup (copy of data/)", subs: []string{"backup completed"}, optional: true},
	{label: "kill + plan info validation (x/upgrade/plan ValidateFull downloads the binary once to check it)", subs: []string{"no upgrade binary found, beginning to download it"}, optional: true},
	{label: "download at the halt (second fetch)", subs: []string{"downloading binary complete"}, optional: true},
	{label: "kill/link + pre-upgrade", subs: []string{"pre-upgrade result"}},
	{label: "relaunch", subs: []string{"running app"}},
	{label: "new process: Go/SDK init to first log line", next: true},
	{label: "app construction", subs: []string{"starting node with ABCI CometBFT"}},
	{label: "open stores, handshake, replay block H with the upgrade handler", subs: []string{"committed state"}, height: true},
}

// breakdown fills Phases and HaltToResume from the stamped log.
func (r *upgradeResult) breakdown(lines []logLine) {
	ms := invisorMarkers
	if r.Sup == cosmovisorSup {
		ms = cosmovisorMarkers
	} else if _, _, ok := find(lines, 0, "invisor: pre-upgrade started"); ok {
		ms = invisorOverlapMarkers
	}
	prevT, prevI := r.HaltSeen, 0
	var needed, committed time.Time
	add := func(label string, t time.Time) {
		r.Phases = append(r.Phases, phase{label, t.Sub(prevT)})
		prevT = t
	}
	for k, m := range ms {
		var i int
		var l logLine
		var ok bool
		switch {
		case m.next:
			i, ok = prevI+1, prevI+1 < len(lines)
			if ok {
				l = lines[i]
			}
		case m.height:
			for j := prevI; j < len(lines); j++ {
				if strings.Contains(lines[j].Text, m.subs[0]) && heightOf(lines[j].Text) == r.H {
					i, l, ok = j, lines[j], true
					break
				}
			}
		default:
			i, l, ok = find(lines, prevI, m.subs...)
		}
		if k == 0 && !ok {
			return
		}
		if !ok {
			if m.optional {
				continue
			}
			r.Phases = append(r.Phases, phase{m.label + " (not found in log)", 0})
			continue
		}
		if m.tookBack {
			if d, ok := tookOf(l.Text); ok {
				add(m.startLbl, l.T.Add(-d))
			}
		}
		add(m.label, l.T)
		prevI = i
		if k == 0 {
			needed = l.T
		}
		if m.height {
			committed = l.T
		}
	}
	if !r.ResumedSeen.IsZero() {
		add("RPC serving, seen by the 20 ms poll", r.ResumedSeen)
	}
	if !needed.IsZero() && !committed.IsZero() {
		r.HaltToResume = committed.Sub(needed)
	}
}

type results struct {
	opts       options
	start, end time.Time
	up         map[int]map[string][]upgradeResult
	cons       []consensusResult
	hooks      []webhookResult // scenario 5 (webhook.go)
	net        []networkResult // scenario 6 (network.go)
	// loadStart and loadEnd are the machine's load averages (1, 5, 15 min)
	// when the runs began and ended: other work on a shared machine shows here.
	loadStart, loadEnd string
}

func (r *results) add(id int, sup string, u upgradeResult) {
	if r.up == nil {
		r.up = map[int]map[string][]upgradeResult{}
	}
	if r.up[id] == nil {
		r.up[id] = map[string][]upgradeResult{}
	}
	r.up[id][sup] = append(r.up[id][sup], u)
}

func (r *results) addConsensus(c consensusResult) { r.cons = append(r.cons, c) }

type summary struct{ med, lo, hi time.Duration }

func summarize(ds []time.Duration) summary {
	if len(ds) == 0 {
		return summary{}
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	m := s[len(s)/2]
	if len(s)%2 == 0 {
		m = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return summary{m, s[0], s[len(s)-1]}
}

func (s summary) String() string {
	return fmt.Sprintf("%.3fs [%.3f..%.3f]", s.med.Seconds(), s.lo.Seconds(), s.hi.Seconds())
}

func ratio(a, b time.Duration) float64 {
	if b == 0 {
		return 0
	}
	return float64(a) / float64(b)
}

func verdict(ok bool, format string, a ...any) string {
	s := fmt.Sprintf(format, a...)
	if ok {
		return "met (" + s + ")"
	}
	return "MISSED (" + s + ")"
}

// table is the one table: Markdown, printed and written.
func (r *results) table() string {
	var b strings.Builder
	fmt.Fprintf(&b, "| scenario | metric | invisor | cosmovisor v1.5.0 | ratio invisor/cosmovisor | target |\n")
	fmt.Fprintf(&b, "|---|---|---|---|---|---|\n")
	for _, sc := range upgradeScenarios {
		runs := r.up[sc.ID]
		if runs == nil {
			continue
		}
		get := func(sup string, f func(upgradeResult) time.Duration) summary {
			var ds []time.Duration
			for _, u := range runs[sup] {
				ds = append(ds, f(u))
			}
			return summarize(ds)
		}
		dI, dC := get(invisorSup, func(u upgradeResult) time.Duration { return u.Downtime }),
			get(cosmovisorSup, func(u upgradeResult) time.Duration { return u.Downtime })
		hI, hC := get(invisorSup, func(u upgradeResult) time.Duration { return u.HaltToResume }),
			get(cosmovisorSup, func(u upgradeResult) time.Duration { return u.HaltToResume })
		rd := ratio(dI.med, dC.med)
		fmt.Fprintf(&b, "| %d. %s | downtime (RPC, n=%d) | %s | %s | **%.2f** | <= %.2f: %s |\n", sc.ID, sc.Title,
			len(runs[invisorSup]), dI, dC, rd, sc.Target, verdict(rd <= sc.Target, "by %+.0f%%", (rd/sc.Target-1)*100))
		fmt.Fprintf(&b, "| | halt -> block H committed (log) | %s | %s | %.2f | |\n", hI, hC, ratio(hI.med, hC.med))
		fmt.Fprintf(&b, "| | invisor: binary ready before the halt by | %s | | | |\n",
			get(invisorSup, func(u upgradeResult) time.Duration { return u.StagedAhead }))
	}
	if len(r.cons) > 0 {
		var idle, stag []consensusResult
		for _, c := range r.cons {
			if c.Staging {
				stag = append(stag, c)
			} else {
				idle = append(idle, c)
			}
		}
		get := func(cs []consensusResult, f func(consensusResult) time.Duration) summary {
			var ds []time.Duration
			for _, c := range cs {
				ds = append(ds, f(c))
			}
			return summarize(ds)
		}
		p50s, p50i := get(stag, func(c consensusResult) time.Duration { return c.P50 }), get(idle, func(c consensusResult) time.Duration { return c.P50 })
		p99s, p99i := get(stag, func(c consensusResult) time.Duration { return c.P99 }), get(idle, func(c consensusResult) time.Duration { return c.P99 })
		mxs, mxi := get(stag, func(c consensusResult) time.Duration { return c.Max }), get(idle, func(c consensusResult) time.Duration { return c.Max })
		rp := ratio(p99s.med, p99i.med)
		speed := "at loopback speed"
		if r.opts.s4slow {
			speed = fmt.Sprintf("at %.0f MB/s", r.opts.rate/1e6)
		}
		fmt.Fprintf(&b, "| 4. block interval over %d blocks, invisor staging a %d MiB tar.gz served %s **vs the same chain idle** (columns: staging / idle) | p50 (n=%d) | %s | %s | %.3f | |\n",
			r.opts.blocks, r.bigSizeMiB(), speed, len(stag), p50s, p50i, ratio(p50s.med, p50i.med))
		fmt.Fprintf(&b, "| | p99 | %s | %s | **%.3f** | <= 1.05: %s |\n", p99s, p99i, rp, verdict(rp <= 1.05, "%+.1f%%", (rp-1)*100))
		fmt.Fprintf(&b, "| | max | %s | %s | %.3f | |\n", mxs, mxi, ratio(mxs.med, mxi.med))
	}
	return b.String()
}

func (r *results) bigSizeMiB() int64 {
	fi, err := os.Stat(r.opts.work + "/srv/big/exampled-big.tar.gz")
	if err != nil {
		return 0
	}
	return fi.Size() >> 20
}

// breakdown is the median of each phase per scenario and supervisor.
func (r *results) breakdown() string {
	var b strings.Builder
	for _, sc := range upgradeScenarios {
		runs := r.up[sc.ID]
		if runs == nil {
			continue
		}
		for _, sup := range []string{invisorSup, cosmovisorSup} {
			fmt.Fprintf(&b, "\nScenario %d, %s: where the downtime goes (median of %d runs; from /abci_info at H-1 to /abci_info at H)\n\n",
				sc.ID, sup, len(runs[sup]))
			fmt.Fprintf(&b, "| phase | median | [min..max] |\n|---|---|---|\n")
			var order []string
			by := map[string][]time.Duration{}
			for _, u := range runs[sup] {
				for _, p := range u.Phases {
					if _, ok := by[p.Name]; !ok {
						order = append(order, p.Name)
					}
					by[p.Name] = append(by[p.Name], p.D)
				}
			}
			var total time.Duration
			for _, name := range order {
				s := summarize(by[name])
				total += s.med
				fmt.Fprintf(&b, "| %s | %.3fs | [%.3f..%.3f] |\n", name, s.med.Seconds(), s.lo.Seconds(), s.hi.Seconds())
			}
			fmt.Fprintf(&b, "| (sum of medians) | %.3fs | |\n", total.Seconds())
		}
	}
	if len(r.cons) > 0 {
		fmt.Fprintf(&b, "\nScenario 4 runs:\n\n| run | p50 | p99 | max | note |\n|---|---|---|---|---|\n")
		for _, c := range r.cons {
			fmt.Fprintf(&b, "| %s | %.3fs | %.3fs | %.3fs | %s |\n", c.label(), c.P50.Seconds(), c.P99.Seconds(), c.Max.Seconds(), c.Note)
		}
	}
	return b.String()
}

// loadavg is the 1, 5 and 15 minute load averages ("?" when unknown).
func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if f := strings.Fields(string(b)); err == nil && len(f) >= 3 {
		return strings.Join(f[:3], " ")
	}
	return "?"
}

func machine() string {
	mem := "?"
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, "MemTotal:") {
				var kb int64
				fmt.Sscan(strings.TrimSpace(strings.TrimPrefix(strings.TrimSuffix(l, " kB"), "MemTotal:")), &kb)
				mem = fmt.Sprintf("%.1f GiB", float64(kb)/(1<<20))
			}
		}
	}
	cpu := "?"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, "model name") {
				_, cpu, _ = strings.Cut(l, ":")
				cpu = strings.TrimSpace(cpu)
				break
			}
		}
	}
	return fmt.Sprintf("nproc %d, memory %s, %s, %s/%s, %s", runtime.NumCPU(), mem, cpu, runtime.GOOS, runtime.GOARCH, runtime.Version())
}

// writeMarkdown writes the sections of BENCHMARKS.md that this invocation
// measured: the results section (scenarios 1-4) and scenario 5's section each
// replace only what lies between their own markers, so a run of scenario 5
// alone leaves the results of the others, and the analysis, as they were.
func (r *results) writeMarkdown(path string) error {
	const begin, end = "<!-- bench:results:begin -->", "<!-- bench:results:end -->"
	if len(r.up) > 0 || len(r.cons) > 0 {
		var b strings.Builder
		fmt.Fprintf(&b, "%s\n", begin)
		fmt.Fprintf(&b, "Command: `%s` (also `make bench`)  \n", r.opts.cmdline)
		fmt.Fprintf(&b, "Date: %s to %s  \n", r.start.UTC().Format("2006-01-02 15:04 MST"), r.end.UTC().Format("15:04 MST"))
		fmt.Fprintf(&b, "Machine: %s  \n", machine())
		fmt.Fprintf(&b, "Binaries (snapshotted at start): %s, built from %s; cosmovisor v1.5.0 built from the module proxy  \n",
			strings.Join(r.opts.binInfo, ", "), r.opts.commit)
		fmt.Fprintf(&b, "Chain: one validator, timeout_commit 300 ms, plan height = proposal height + %d; runs alternate invisor and cosmovisor (and who goes first) run by run.\n\n", r.opts.delay)
		b.WriteString(r.table())
		b.WriteString("\n")
		b.WriteString(r.breakdown())
		fmt.Fprintf(&b, "%s\n", end)
		if err := replaceSection(path, begin, end, b.String()); err != nil {
			return err
		}
	}
	if len(r.net) > 0 {
		if err := replaceSection(path, networkBegin, networkEnd,
			"## Scenario 6: the network's downtime (4 validators)\n\n"+networkBegin+"\n"+r.networkSection()+networkEnd+"\n"); err != nil {
			return err
		}
	}
	if len(r.hooks) > 0 {
		if err := replaceSection(path, webhookBegin, webhookEnd,
			"## Scenario 5: a webhook receiver that is down\n\n"+r.webhookSection()); err != nil {
			return err
		}
	}
	return nil
}

// replaceSection puts section (which starts with its heading or begin and ends
// with end) in the file at path: it replaces what lies between begin and end
// when the file has both markers, and is appended to the file otherwise (a new
// file gets the title first). Text before begin in section (a heading) is used
// only when the section is appended.
func replaceSection(path, begin, end, section string) error {
	const title = "# Benchmarks: invisor vs cosmovisor v1.5.0\n\n"
	old, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	s := string(old)
	var out string
	i, j := strings.Index(s, begin), strings.Index(s, end)
	switch {
	case i >= 0 && j > i:
		out = s[:i] + strings.TrimSuffix(section[strings.Index(section, begin):], "\n") + s[j+len(end):]
	case len(s) == 0:
		out = title + section
	default:
		out = strings.TrimRight(s, "\n") + "\n\n" + section
	}
	return os.WriteFile(path, []byte(out), 0o644)
}
