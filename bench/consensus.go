package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/invisor/invisor/example-app/localnet"
)

// consensusResult is one scenario-4 run: block intervals over o.blocks blocks
// from the block after the far-future plan passed.
type consensusResult struct {
	Staging       bool
	P50, P99, Max time.Duration
	Intervals     []time.Duration
	StageStart    time.Time // "staging: downloading"
	StageReady    time.Time // "staging: ready"
	WindowStart   time.Time // time of the first measured block
	WindowEnd     time.Time
	Note          string
}

func (r consensusResult) label() string {
	if r.Staging {
		return "staging"
	}
	return "idle"
}

func (e *benchEnv) consensusRun(ctx context.Context, staging bool, idx int) (consensusResult, error) {
	name := fmt.Sprintf("s4-%s-%d", consensusResult{Staging: staging}.label(), idx)
	r, _, err := e.intervalRun(ctx, name, staging, nil)
	return r, err
}

// intervalRun is one run of scenarios 4 and 5: a fresh chain under invisor
// (with extraEnv on top of the supervisor settings), a far-future plan passed,
// and the intervals of the o.blocks blocks that follow. It also returns the
// node's stamped log up to the end of the window.
func (e *benchEnv) intervalRun(ctx context.Context, name string, staging bool, extraEnv []string) (consensusResult, []logLine, error) {
	r := consensusResult{Staging: staging}
	dir, done, err := e.runDir(name)
	if err != nil {
		return r, nil, err
	}
	defer done()
	home := filepath.Join(dir, "home")
	logPath := filepath.Join(e.o.work, "logs", name+".log")
	_ = os.Remove(logPath)
	ictx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	n, err := localnet.NewSingle(ictx, e.o.v1, home, localnet.Settings{TimeoutCommit: 300 * time.Millisecond})
	cancel()
	if err != nil {
		return r, nil, err
	}
	// Same chain, same plan; only whether invisor may download differs. Idle:
	// invisor sees the plan and waits for a hand-placed binary.
	env := append(cleanEnv(), "DAEMON_NAME="+daemon, "DAEMON_HOME="+home,
		"DAEMON_ALLOW_DOWNLOAD_BINARIES="+fmt.Sprint(staging))
	env = append(env, extraEnv...)
	p, err := startProc(e.o.v1, []string{"start", "--home", home, "--log_no_color"}, env, logPath)
	if err != nil {
		return r, nil, err
	}
	defer p.stop(20 * time.Second)
	cur, err := waitHeight(ctx, n, p, 3, 90*time.Second)
	if err != nil {
		return r, nil, err
	}
	url := e.bigURL
	if e.o.s4slow {
		url = strings.Replace(url, e.fast.URL, e.slow.URL, 1)
	}
	info := fmt.Sprintf(`{"binaries":{"any":%q}}`, url)
	pctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	err = n.PassUpgrade(pctx, "big", cur+1_000_000, info)
	cancel()
	if err != nil {
		return r, nil, err
	}
	now, _ := n.AppInfo(ctx)
	h0 := now.Height
	last := h0 + int64(e.o.blocks)
	if _, err := waitHeight(ctx, n, p, last, time.Duration(e.o.blocks)*2*time.Second+time.Minute); err != nil {
		return r, nil, err
	}
	times, err := blockTimes(ctx, n.RPCPort, h0, last)
	if err != nil {
		return r, nil, err
	}
	for i := 1; i < len(times); i++ {
		r.Intervals = append(r.Intervals, times[i].Sub(times[i-1]))
	}
	r.WindowStart, r.WindowEnd = times[0], times[len(times)-1]
	s := slices.Clone(r.Intervals)
	slices.Sort(s)
	r.P50, r.P99, r.Max = pct(s, 0.50), pct(s, 0.99), s[len(s)-1]
	lines := p.snapshot()
	if _, l, ok := find(lines, 0, "staging: downloading"); ok {
		r.StageStart = l.T
	}
	if _, l, ok := find(lines, 0, "staging: ready"); ok {
		r.StageReady = l.T
	}
	switch {
	case !staging:
		r.Note = "no download"
	case r.StageStart.IsZero():
		return r, lines, fmt.Errorf("invisor did not start staging the archive; see %s", logPath)
	case r.StageReady.IsZero():
		r.Note = fmt.Sprintf("staging started %s into the window, not ready at its end",
			r.StageStart.Sub(r.WindowStart).Round(100*time.Millisecond))
	default:
		r.Note = fmt.Sprintf("staged in %s, from %s into the %s window",
			r.StageReady.Sub(r.StageStart).Round(100*time.Millisecond),
			r.StageStart.Sub(r.WindowStart).Round(100*time.Millisecond),
			r.WindowEnd.Sub(r.WindowStart).Round(100*time.Millisecond))
	}
	r.Note += "; slowest: " + slowest(times, lines, r.StageStart, 3)
	return r, lines, nil
}

// pct is the nearest-rank percentile of sorted s.
func pct(s []time.Duration, q float64) time.Duration {
	if len(s) == 0 {
		return 0
	}
	i := int(q*float64(len(s)) + 0.999999)
	return s[min(max(i-1, 0), len(s)-1)]
}

// blockTimes returns the header times of blocks from..to (inclusive).
func blockTimes(ctx context.Context, port int, from, to int64) ([]time.Time, error) {
	byH := map[int64]time.Time{}
	for lo := from; lo <= to; lo += 20 {
		hi := min(lo+19, to)
		url := fmt.Sprintf("http://127.0.0.1:%d/blockchain?minHeight=%d&maxHeight=%d", port, lo, hi)
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return nil, err
		}
		var env struct {
			Result struct {
				BlockMetas []struct {
					Header struct {
						Height string    `json:"height"`
						Time   time.Time `json:"time"`
					} `json:"header"`
				} `json:"block_metas"`
			} `json:"result"`
		}
		err = json.NewDecoder(resp.Body).Decode(&env)
		resp.Body.Close()
		if err != nil {
			return nil, err
		}
		for _, m := range env.Result.BlockMetas {
			var h int64
			fmt.Sscan(m.Header.Height, &h)
			byH[h] = m.Header.Time
		}
	}
	out := make([]time.Time, 0, to-from+1)
	for h := from; h <= to; h++ {
		t, ok := byH[h]
		if !ok {
			return nil, fmt.Errorf("no header time for block %d", h)
		}
		out = append(out, t)
	}
	return out, nil
}

// slowest describes the k longest intervals: length, when the block that
// ended it was made relative to the start of staging, and the last staging
// log line before it.
func slowest(times []time.Time, lines []logLine, stageStart time.Time, k int) string {
	idx := make([]int, 0, len(times)-1)
	for i := 1; i < len(times); i++ {
		idx = append(idx, i)
	}
	slices.SortFunc(idx, func(a, b int) int {
		return int(times[b].Sub(times[b-1]) - times[a].Sub(times[a-1]))
	})
	var parts []string
	for _, i := range idx[:min(k, len(idx))] {
		d := times[i].Sub(times[i-1])
		s := fmt.Sprintf("%.2fs", d.Seconds())
		if !stageStart.IsZero() {
			s += fmt.Sprintf(" at %+.1fs", times[i].Sub(stageStart).Seconds())
			last := ""
			for _, l := range lines {
				if l.T.After(times[i]) {
					break
				}
				if j := strings.Index(l.Text, "staging: "); j >= 0 {
					last, _, _ = strings.Cut(l.Text[j+len("staging: "):], " ")
				}
			}
			if last != "" {
				s += " (after staging " + last + ")"
			}
		}
		parts = append(parts, s)
	}
	return strings.Join(parts, ", ")
}
