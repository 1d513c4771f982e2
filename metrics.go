package invisor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/invisor/invisor/internal/home"
	"github.com/invisor/invisor/staging"
)

// StatusFile is where a running node publishes its staging status, under
// <home>/cosmovisor, so that `invisor status` can show bytes, rate and errors
// that only the node process knows. It is rewritten atomically on every change.
const StatusFile = "invisor-status.json"

// StatusPath returns <home>/cosmovisor/invisor-status.json.
func StatusPath(nodeHome string) string {
	return filepath.Join(nodeHome, home.RootDir, StatusFile)
}

// NodeStatus is the content of StatusFile.
type NodeStatus struct {
	Time       time.Time        `json:"time"`
	PID        int              `json:"pid"`
	Height     int64            `json:"height"` // last app height seen by the node (0: unknown)
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
	// Warnings are problems an operator must act on before the upgrade height:
	// a plan name no directory can hold, a binary the plan does not confirm.
	Warnings []string `json:"warnings,omitempty"`
}

// ReadNodeStatus reads the status file a node wrote (ok false when there is none).
func ReadNodeStatus(home string) (NodeStatus, bool, error) {
	b, err := os.ReadFile(StatusPath(home))
	if errors.Is(err, os.ErrNotExist) {
		return NodeStatus{}, false, nil
	}
	if err != nil {
		return NodeStatus{}, false, err
	}
	var st NodeStatus
	if err := json.Unmarshal(b, &st); err != nil {
		return NodeStatus{}, false, fmt.Errorf("%s: %w", StatusPath(home), err)
	}
	return st, true, nil
}

// Metric names, on the node's Prometheus endpoint: CometBFT's
// (config.toml [instrumentation] prometheus = true) and the API server's
// /metrics?format=prometheus (app.toml [telemetry] enabled with
// prometheus-retention-time > 0) both serve the default registry.
const (
	MetricPlanHeight      = "invisor_plan_height"
	MetricBlocksToUpgrade = "invisor_blocks_to_upgrade"
	MetricStagingState    = "invisor_staging_state"
	MetricBytesDownloaded = "invisor_staging_bytes_downloaded"
	MetricAttempts        = "invisor_staging_attempts"
	MetricFailures        = "invisor_staging_failures"
	MetricSecondsReady    = "invisor_seconds_since_ready"
	MetricLastSwitch      = "invisor_last_switch_duration_seconds"
	MetricNameUnmappable  = "invisor_plan_name_unmappable"
	MetricUnconfirmed     = "invisor_binary_unconfirmed"
)

var allStates = []staging.State{staging.StateIdle, staging.StatePending, staging.StateDownloading,
	staging.StateVerifying, staging.StateReady, staging.StateFailed, staging.StateCancelled}

// gauges are invisor's Prometheus gauges. They are registered once per process
// (a process runs one node; after the exec the new process registers its own).
type gauges struct {
	planHeight, blocksTo, bytes, attempts, failures, sinceReady, lastSwitch prometheus.Gauge
	unmappable, unconfirmed                                                 prometheus.Gauge
	state                                                                   *prometheus.GaugeVec
}

var (
	gaugesOnce sync.Once
	theGauges  *gauges
)

func registerGauges() *gauges {
	gaugesOnce.Do(func() {
		g := func(name, help string) prometheus.Gauge {
			return prometheus.NewGauge(prometheus.GaugeOpts{Name: name, Help: help})
		}
		theGauges = &gauges{
			planHeight:  g(MetricPlanHeight, "Height of the upgrade plan in force (0: none)."),
			blocksTo:    g(MetricBlocksToUpgrade, "Blocks until the plan height (-1: no plan or height unknown)."),
			bytes:       g(MetricBytesDownloaded, "Bytes downloaded by the current staging attempt."),
			attempts:    g(MetricAttempts, "Staging attempts made for the plan in force."),
			failures:    g(MetricFailures, "Failed staging attempts for the plan in force."),
			sinceReady:  g(MetricSecondsReady, "Seconds since the upgrade binary became ready (-1: not ready)."),
			lastSwitch:  g(MetricLastSwitch, "Seconds from the last upgrade halt to the new binary's boot on this home (0: none recorded)."),
			unmappable:  g(MetricNameUnmappable, "1 when the plan in force has a name no upgrades/ directory can hold: invisor will not switch it."),
			unconfirmed: g(MetricUnconfirmed, "1 when the plan's staged binary is trusted on the operator's word or by the unsafe override, not on the plan's checksum."),
			state: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: MetricStagingState,
				Help: "1 for the current staging state, 0 for the others."}, []string{"state"}),
		}
		for _, c := range []prometheus.Collector{theGauges.planHeight, theGauges.blocksTo, theGauges.bytes,
			theGauges.attempts, theGauges.failures, theGauges.sinceReady, theGauges.lastSwitch, theGauges.state,
			theGauges.unmappable, theGauges.unconfirmed} {
			// A name clash with another collector leaves that gauge unexported;
			// the node must not fail for a metric.
			_ = prometheus.DefaultRegisterer.Register(c)
		}
	})
	return theGauges
}

// statusReporter polls the Stager and the node's height, sets the gauges and
// writes StatusFile; it also tells staging to hurry when the upgrade is near and
// the binary is not ready (hurryWithinBlocks). It owns its state; one goroutine runs it.
type statusReporter struct {
	home     string
	warnings func() []string
	stager   *staging.Stager
	height   func(ctx context.Context) (int64, error)
	g        *gauges
	failures int
	failPlan string
	lastFail int
	written  NodeStatus
	wroteAt  time.Time
}

// hurryWithinBlocks: when the upgrade is this close and its binary is not ready,
// staging stops pacing its disk writes (staging-disk-share). A binary missing at
// the halt costs the chain more than a few slower blocks now.
const hurryWithinBlocks = 100

// reportInterval is how often the reporter polls; it bounds how stale status and
// gauges are.
const reportInterval = 2 * time.Second

func newStatusReporter(home string, stager *staging.Stager, rpcLaddr string) *statusReporter {
	r := &statusReporter{home: home, stager: stager, g: registerGauges(), height: rpcHeightFunc(rpcLaddr)}
	r.g.blocksTo.Set(-1)
	r.g.sinceReady.Set(-1)
	if e, ok := lastSwitch(home); ok {
		r.g.lastSwitch.Set(e.Seconds)
	}
	return r
}

func (r *statusReporter) run(ctx context.Context) {
	t := time.NewTicker(reportInterval)
	defer t.Stop()
	for {
		r.once(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (r *statusReporter) once(ctx context.Context) {
	st := r.stager.Status()
	hctx, cancel := context.WithTimeout(ctx, time.Second)
	h, err := r.height(hctx)
	cancel()
	if err != nil {
		h = 0
	}
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
			if st.Plan.Height-h <= hurryWithinBlocks && st.State != staging.StateReady && !st.Hurried {
				r.stager.Hurry()
			}
		}
	}
	g.bytes.Set(float64(st.BytesDone))
	g.attempts.Set(float64(st.Attempt))
	g.failures.Set(float64(r.failures))
	g.sinceReady.Set(-1)
	if st.State == staging.StateReady {
		g.sinceReady.Set(time.Since(st.Since).Seconds())
	}

	ns := NodeStatus{Time: time.Now().UTC(), PID: os.Getpid(), Height: h, State: st.State, Plan: st.Plan,
		BytesDone: st.BytesDone, BytesTotal: st.BytesTotal, Rate: st.Rate, Attempt: st.Attempt, Failures: r.failures,
		Err: st.Err, Install: st.Install, Since: st.Since}
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
	if r.changed(ns) || time.Since(r.wroteAt) > 10*time.Second {
		if writeJSONAtomic(StatusPath(r.home), ns) == nil {
			r.written, r.wroteAt = ns, time.Now()
		}
	}
}

// changed reports whether ns differs from what was last written in anything but
// time and height.
func (r *statusReporter) changed(ns NodeStatus) bool {
	a, b := r.written, ns
	a.Time, b.Time, a.Height, b.Height = time.Time{}, time.Time{}, 0, 0
	ja, _ := json.Marshal(a)
	jb, _ := json.Marshal(b)
	return string(ja) != string(jb)
}

func writeJSONAtomic(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return home.WriteFile(path, append(b, '\n'), 0o644)
}

// RPCBaseURL turns CometBFT's rpc.laddr (tcp://0.0.0.0:26657, unix:///path) into
// an HTTP base URL and a client that can reach it from this host.
func RPCBaseURL(laddr string) (string, *http.Client, error) {
	u, err := url.Parse(laddr)
	if err != nil {
		return "", nil, fmt.Errorf("rpc.laddr %q: %w", laddr, err)
	}
	client := &http.Client{Timeout: 3 * time.Second}
	switch u.Scheme {
	case "tcp", "http", "":
		host, port, err := net.SplitHostPort(u.Host)
		if err != nil {
			return "", nil, fmt.Errorf("rpc.laddr %q: %w", laddr, err)
		}
		if host == "" || host == "0.0.0.0" || host == "::" {
			host = "127.0.0.1"
		}
		return "http://" + net.JoinHostPort(host, port), client, nil
	case "unix":
		sock := u.Path
		client.Transport = &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		}}
		return "http://unix", client, nil
	default:
		return "", nil, fmt.Errorf("rpc.laddr %q: scheme %q not supported", laddr, u.Scheme)
	}
}

// rpcHeightFunc returns a function reading the app height from the node's own
// /abci_info (the edge has no other view of the height between plan changes).
func rpcHeightFunc(laddr string) func(ctx context.Context) (int64, error) {
	base, client, err := RPCBaseURL(laddr)
	return func(ctx context.Context) (int64, error) {
		if err != nil {
			return 0, err
		}
		req, rerr := http.NewRequestWithContext(ctx, http.MethodGet, base+"/abci_info", nil)
		if rerr != nil {
			return 0, rerr
		}
		resp, rerr := client.Do(req)
		if rerr != nil {
			return 0, rerr
		}
		defer resp.Body.Close()
		var env struct {
			Result struct {
				Response struct {
					LastBlockHeight string `json:"last_block_height"`
				} `json:"response"`
			} `json:"result"`
		}
		if rerr := json.NewDecoder(resp.Body).Decode(&env); rerr != nil {
			return 0, rerr
		}
		return strconv.ParseInt(strings.TrimSpace(env.Result.Response.LastBlockHeight), 10, 64)
	}
}

// startReporting starts the status reporter (gauges and StatusFile) for the
// node's lifetime and records in the history a switch that led to this boot.
func (n *node) startReporting(ctx context.Context, cfg Config, rpcLaddr string) {
	n.home = n.layout.Home()
	if e, ok, err := recordSwitch(n.layout); err != nil {
		n.log.Error("invisor: could not record the switch in the history; only `invisor history` is affected", "err", err)
	} else if ok {
		n.log.Info("invisor: running the upgrade binary", "upgrade", e.Upgrade, "height", e.Height,
			"seconds_since_halt", fmt.Sprintf("%.3f", e.Seconds), "sha256", e.SHA256)
	}
	r := newStatusReporter(n.home, n.stager, rpcLaddr)
	r.warnings = n.nameWarnings
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		r.run(ctx)
	}()
}

// recordHalt appends the halt to the history. It runs once per upgrade, at the
// halt, where a small synchronous append costs nothing that matters.
func (n *node) recordHalt(name string, height int64) {
	if n.home == "" {
		return
	}
	e := HistoryEntry{Event: EventHalt, Upgrade: name, Height: height, Time: time.Now().UTC(), PID: os.Getpid()}
	if exe, err := os.Executable(); err == nil {
		e.From = exe
	}
	if err := AppendHistory(n.home, e); err != nil {
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
