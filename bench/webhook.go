package main

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"
)

// Scenario 5 (issue 14): a webhook receiver that is down never slows block
// production. The chain and plan of scenario 4 with staging on (so the notifier
// has events to send: plan-seen, binary-ready, any staging events), run with no
// webhook, with one that accepts and never answers (each POST waits out the
// notifier's 5 s timeout and is retried), and with a port that refuses.

// webhookVariant is how the node's webhook is set up in one run.
type webhookVariant string

const (
	hookNone    webhookVariant = "none"
	hookHang    webhookVariant = "hang"
	hookRefused webhookVariant = "refused"
)

// webhookVariants are run in this order in round 1, rotated by one each round,
// so that each variant takes each place once every three rounds.
var webhookVariants = []webhookVariant{hookNone, hookHang, hookRefused}

func (v webhookVariant) title() string {
	switch v {
	case hookHang:
		return "down: accepts, never answers"
	case hookRefused:
		return "down: connection refused"
	}
	return "no webhook"
}

// Log lines of the node that show what the notifier did (root notify.go and
// internal/notify).
const (
	logWebhookOn     = "invisor: sending upgrade events to the webhook"
	logWebhookFailed = "invisor: the webhook did not take an event"
)

// webhookResult is one scenario-5 run: the block intervals, and the proof
// that the notifier was busy with the receiver during the window.
type webhookResult struct {
	consensusResult
	Variant webhookVariant
	Round   int
	// GaveUp lists "kind×attempts" of each event the notifier gave up on
	// (logWebhookFailed) by the end of the window.
	GaveUp []string
	// POSTs is how many POSTs the hanging receiver held during the window,
	// and Busy for how long at least one was open.
	POSTs int
	Busy  time.Duration
}

func (r webhookResult) window() time.Duration { return r.WindowEnd.Sub(r.WindowStart) }

// activity says in one phrase what the receiver and the notifier did in the window.
func (r webhookResult) activity() string {
	var parts []string
	if r.Variant == hookHang {
		parts = append(parts, fmt.Sprintf("%d POSTs held open, a POST in flight %.0f%% of the window",
			r.POSTs, 100*r.Busy.Seconds()/r.window().Seconds()))
	}
	if r.Variant != hookNone {
		gave := "none yet"
		if len(r.GaveUp) > 0 {
			gave = strings.Join(r.GaveUp, ", ")
		}
		parts = append(parts, "events given up on: "+gave)
	}
	if len(parts) == 0 {
		return "webhook off"
	}
	return strings.Join(parts, "; ")
}

// webhookRun runs one variant of scenario 5.
func (e *benchEnv) webhookRun(ctx context.Context, v webhookVariant, round int) (webhookResult, error) {
	r := webhookResult{Variant: v, Round: round}
	name := fmt.Sprintf("s5-%s-%d", v, round)
	logPath := filepath.Join(e.o.work, "logs", name+".log")
	var env []string
	var recv *hangingReceiver
	switch v {
	case hookHang:
		var err error
		if recv, err = newHangingReceiver(); err != nil {
			return r, err
		}
		defer recv.Close()
		env = append(env, "INVISOR_WEBHOOK_URL="+recv.URL())
	case hookRefused:
		u, err := refusedURL()
		if err != nil {
			return r, err
		}
		env = append(env, "INVISOR_WEBHOOK_URL="+u)
	}
	c, lines, err := e.intervalRun(ctx, name, true, env)
	r.consensusResult = c
	if err != nil {
		return r, err
	}
	_, _, on := find(lines, 0, logWebhookOn)
	switch {
	case v == hookNone && on:
		return r, fmt.Errorf("the node sends to a webhook though none was set; see %s", logPath)
	case v != hookNone && !on:
		return r, fmt.Errorf("the node did not take INVISOR_WEBHOOK_URL (no %q line); see %s", logWebhookOn, logPath)
	}
	r.GaveUp = gaveUp(lines, r.WindowEnd)
	if recv != nil {
		r.POSTs, r.Busy = recv.activity(r.WindowStart, r.WindowEnd)
		if r.POSTs == 0 {
			return r, fmt.Errorf("the hanging receiver got no POST during the window: the run did not exercise it; see %s", logPath)
		}
	}
	if v == hookRefused && len(r.GaveUp) == 0 {
		return r, fmt.Errorf("the notifier gave up on no event during the window though the port refuses: the run did not exercise it; see %s", logPath)
	}
	return r, nil
}

var (
	kindRe     = regexp.MustCompile(`\bkind=(\S+)`)
	attemptsRe = regexp.MustCompile(`\battempts=(\d+)`)
)

// gaveUp returns "kind×attempts" for each logWebhookFailed line stamped by until.
func gaveUp(lines []logLine, until time.Time) []string {
	var out []string
	for _, l := range lines {
		if l.T.After(until) || !strings.Contains(l.Text, logWebhookFailed) {
			continue
		}
		kind, attempts := "?", "?"
		if m := kindRe.FindStringSubmatch(l.Text); m != nil {
			kind = m[1]
		}
		if m := attemptsRe.FindStringSubmatch(l.Text); m != nil {
			attempts = m[1]
		}
		out = append(out, kind+"×"+attempts)
	}
	return out
}

// refusedURL is a webhook URL on a loopback port where nothing listens (it
// was free a moment ago).
func refusedURL() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	addr := l.Addr().String()
	if err := l.Close(); err != nil {
		return "", err
	}
	return "http://" + addr + "/hook", nil
}

// hangingReceiver is a webhook receiver down in the worst way: it accepts
// every connection and reads the request, but never answers, so each POST
// waits for the notifier's timeout. It records when each connection opened
// and when the client gave up on it.
type hangingReceiver struct {
	ln net.Listener
	wg sync.WaitGroup

	mu     sync.Mutex
	conns  map[net.Conn]*heldConn // every connection accepted
	closed bool
}

// heldConn is one connection the receiver held. End is zero while it is open;
// POST says whether a request line "POST " arrived on it.
type heldConn struct {
	Start, End time.Time
	POST       bool
}

func newHangingReceiver() (*hangingReceiver, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	h := &hangingReceiver{ln: ln, conns: map[net.Conn]*heldConn{}}
	h.wg.Add(1)
	go h.accept()
	return h, nil
}

// URL is the webhook URL to give the node.
func (h *hangingReceiver) URL() string { return "http://" + h.ln.Addr().String() + "/hook" }

func (h *hangingReceiver) accept() {
	defer h.wg.Done()
	for {
		c, err := h.ln.Accept()
		if err != nil {
			return
		}
		h.mu.Lock()
		if h.closed {
			h.mu.Unlock()
			c.Close()
			return
		}
		hc := &heldConn{Start: time.Now()}
		h.conns[c] = hc
		h.wg.Add(1)
		h.mu.Unlock()
		go h.hold(c, hc)
	}
}

// hold reads what the client sends and answers nothing, until the client
// closes the connection (its timeout) or the receiver closes.
func (h *hangingReceiver) hold(c net.Conn, hc *heldConn) {
	defer h.wg.Done()
	defer c.Close()
	var head []byte
	buf := make([]byte, 4096)
	for {
		k, err := c.Read(buf)
		if len(head) < 5 {
			head = append(head, buf[:min(k, 5-len(head))]...)
			if len(head) == 5 {
				h.mu.Lock()
				hc.POST = string(head) == "POST "
				h.mu.Unlock()
			}
		}
		if err != nil { // EOF or a reset: the client gave up; or Close
			break
		}
	}
	h.mu.Lock()
	hc.End = time.Now()
	h.mu.Unlock()
}

// activity returns the POSTs held at some time in [from, to] and how long, in
// that span, at least one was open.
func (h *hangingReceiver) activity(from, to time.Time) (posts int, busy time.Duration) {
	var spans [][2]time.Time
	now := time.Now()
	h.mu.Lock()
	for _, c := range h.conns {
		end := c.End
		if end.IsZero() { // still held
			end = now
		}
		if !c.POST || end.Before(from) || c.Start.After(to) {
			continue
		}
		posts++
		spans = append(spans, [2]time.Time{maxTime(c.Start, from), minTime(end, to)})
	}
	h.mu.Unlock()
	return posts, union(spans)
}

// union is the total length covered by spans.
func union(spans [][2]time.Time) time.Duration {
	slices.SortFunc(spans, func(a, b [2]time.Time) int { return a[0].Compare(b[0]) })
	var total time.Duration
	var cur [2]time.Time
	for i, s := range spans {
		switch {
		case i == 0:
			cur = s
		case s[0].After(cur[1]):
			total += cur[1].Sub(cur[0])
			cur = s
		case s[1].After(cur[1]):
			cur[1] = s[1]
		}
	}
	if len(spans) > 0 {
		total += cur[1].Sub(cur[0])
	}
	return total
}

// Close stops accepting, drops the connections still held and waits for
// their goroutines.
func (h *hangingReceiver) Close() {
	h.mu.Lock()
	h.closed = true
	for c, hc := range h.conns {
		if hc.End.IsZero() {
			c.Close()
		}
	}
	h.mu.Unlock()
	h.ln.Close()
	h.wg.Wait()
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

func (r *results) addWebhook(w webhookResult) { r.hooks = append(r.hooks, w) }

// webhookTable is scenario 5's table: per variant, medians [min..max] of the
// runs, and each p99 against the runs without a webhook.
func (r *results) webhookTable() string {
	by := map[webhookVariant][]webhookResult{}
	for _, w := range r.hooks {
		by[w.Variant] = append(by[w.Variant], w)
	}
	get := func(ws []webhookResult, f func(webhookResult) time.Duration) summary {
		var ds []time.Duration
		for _, w := range ws {
			ds = append(ds, f(w))
		}
		return summarize(ds)
	}
	base := get(by[hookNone], func(w webhookResult) time.Duration { return w.P99 })
	var b strings.Builder
	fmt.Fprintf(&b, "| webhook | p50 | p99 | max | p99 / p99 with no webhook | target | webhook activity in the window (per run) |\n")
	fmt.Fprintf(&b, "|---|---|---|---|---|---|---|\n")
	for _, v := range webhookVariants {
		ws := by[v]
		if len(ws) == 0 {
			continue
		}
		p99 := get(ws, func(w webhookResult) time.Duration { return w.P99 })
		ratioCell, target := "1 (baseline)", ""
		if v != hookNone {
			rp := ratio(p99.med, base.med)
			ratioCell = fmt.Sprintf("**%.3f**", rp)
			target = "<= 1.05: " + verdict(rp <= 1.05 && base.med > 0, "%+.1f%%", (rp-1)*100)
		}
		var acts []string
		for _, w := range ws {
			acts = append(acts, w.activity())
		}
		fmt.Fprintf(&b, "| %s (n=%d) | %s | %s | %s | %s | %s | %s |\n", v.title(), len(ws),
			get(ws, func(w webhookResult) time.Duration { return w.P50 }), p99,
			get(ws, func(w webhookResult) time.Duration { return w.Max }), ratioCell, target, strings.Join(acts, " / "))
	}
	return b.String()
}

// webhookRuns lists scenario 5's runs in the order they ran.
func (r *results) webhookRuns() string {
	var b strings.Builder
	fmt.Fprintf(&b, "| round | webhook | p50 | p99 | max | webhook activity in the window | staging, slowest intervals |\n|---|---|---|---|---|---|---|\n")
	for _, w := range r.hooks {
		fmt.Fprintf(&b, "| %d | %s | %.3fs | %.3fs | %.3fs | %s | %s |\n", w.Round, w.Variant.title(),
			w.P50.Seconds(), w.P99.Seconds(), w.Max.Seconds(), w.activity(), w.Note)
	}
	return b.String()
}

// webhookSection is scenario 5's part of BENCHMARKS.md, markers included.
func (r *results) webhookSection() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s\n", webhookBegin)
	fmt.Fprintf(&b, "Command: `%s` (also `make bench-webhook`)  \n", r.opts.cmdline)
	fmt.Fprintf(&b, "Date: %s to %s  \n", r.start.UTC().Format("2006-01-02 15:04 MST"), r.end.UTC().Format("15:04 MST"))
	fmt.Fprintf(&b, "Machine: %s; load average %s at the start, %s at the end  \n", machine(), r.loadStart, r.loadEnd)
	fmt.Fprintf(&b, "Binaries (snapshotted at start): %s, built from %s  \n", strings.Join(r.opts.binInfo, ", "), r.opts.commit)
	fmt.Fprintf(&b, "Chain: one validator, timeout_commit 300 ms; a plan a million blocks ahead passes and invisor stages its %d MiB tar.gz in every run; "+
		"intervals of the %d blocks after the plan passed; the variants rotate their order round by round.\n\n", r.bigSizeMiB(), r.opts.blocks)
	b.WriteString(r.webhookTable())
	b.WriteString("\nRuns, in the order they ran:\n\n")
	b.WriteString(r.webhookRuns())
	fmt.Fprintf(&b, "%s\n", webhookEnd)
	return b.String()
}

// The markers of scenario 5's section of BENCHMARKS.md.
const webhookBegin, webhookEnd = "<!-- bench:webhook:begin -->", "<!-- bench:webhook:end -->"
