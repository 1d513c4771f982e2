package localnet

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"time"
)

// DaemonName is the example chain's binary name under cosmovisor/*/bin.
const DaemonName = "exampled"

// TraceDenom is the denom whose metadata the example upgrade handlers write.
const TraceDenom = "uinvisor"

// UpgradeSpec describes one governance upgrade to drive on a node.
type UpgradeSpec struct {
	Name     string // plan name, e.g. "v2"
	Binary   string // the new binary, served over loopback HTTP
	ServeDir string // where to put it for the server (ignored when Server is set)
	// Server serves the binary; nil starts one for this upgrade only. Pass a
	// long-lived one when a node must download it later (a late joiner).
	Server *FileServer
	Start  bool // start the node first
	// PlanDelay is how many blocks after the proposal the plan height is (default 30).
	PlanDelay int64
	// After is how many blocks past the plan height to wait (default 5).
	After int64
	// Progress receives one line per step (optional).
	Progress func(string)
}

// UpgradeResult is what happened, measured from RPC polling every 20 ms.
type UpgradeResult struct {
	Name           string
	PlanHeight     int64
	ProposedAt     int64 // app height when the proposal was submitted
	SeenBlock      int64 // block in which invisor noticed the plan (from its log line)
	StagedAtHeight int64 // app height when the staged binary was first trusted
	StagedSHA256   string
	PIDBefore      int
	ProcBefore     Proc // argv, environment and cwd of the node process before the upgrade
	ProcAfter      Proc
	PIDAfter       int
	ExeBefore      string
	ExeAfter       string
	VersionBefore  string
	VersionAfter   string
	HaltSeen       time.Time // first time the app was seen at H-1
	ResumedSeen    time.Time // first time the app was seen at H
	Downtime       time.Duration
	Trace          string // what the upgrade handler wrote into state
	FinalHeight    int64
}

// Summary is a few readable lines about the upgrade.
func (r UpgradeResult) Summary() string {
	var b strings.Builder
	fmt.Fprintf(&b, "upgrade %q at height %d\n", r.Name, r.PlanHeight)
	fmt.Fprintf(&b, "  plan seen by invisor in block  %d (proposal submitted at %d)\n", r.SeenBlock, r.ProposedAt)
	fmt.Fprintf(&b, "  binary staged and verified at  height %d, %d blocks before the upgrade (sha256 %.12s...)\n",
		r.StagedAtHeight, r.PlanHeight-r.StagedAtHeight, r.StagedSHA256)
	fmt.Fprintf(&b, "  halt at height                 %d (last block of %s: %d)\n", r.PlanHeight, r.VersionBefore, r.PlanHeight-1)
	fmt.Fprintf(&b, "  PID before / after             %d / %d (%s -> %s)\n", r.PIDBefore, r.PIDAfter, r.ExeBefore, r.ExeAfter)
	fmt.Fprintf(&b, "  first block by %-15s %d; handler trace: %q\n", r.VersionAfter, r.PlanHeight, r.Trace)
	fmt.Fprintf(&b, "  downtime (app at H-1 -> app at H, /abci_info every 20 ms): %s\n", r.Downtime.Round(time.Millisecond))
	fmt.Fprintf(&b, "  chain height now               %d", r.FinalHeight)
	return b.String()
}

// RunUpgrade proposes, votes and waits through one upgrade on n, asserting on the
// way that invisor staged the binary before the height and switched in place.
func RunUpgrade(ctx context.Context, n *Node, s UpgradeSpec) (UpgradeResult, error) {
	if s.PlanDelay == 0 {
		s.PlanDelay = 30
	}
	if s.After == 0 {
		s.After = 5
	}
	say := func(format string, a ...any) {
		if s.Progress != nil {
			s.Progress(fmt.Sprintf(format, a...))
		}
	}
	r := UpgradeResult{Name: s.Name}
	if s.Start {
		if err := n.Start(); err != nil {
			return r, err
		}
		say("started %s start (PID %d)", filepath.Base(n.Bin), n.Pid())
		if _, err := n.WaitHeight(ctx, 2); err != nil {
			return r, err
		}
	}

	// Serve the new binary from a loopback HTTP server.
	srv := s.Server
	if srv == nil {
		var err error
		if srv, err = ServeDir(s.ServeDir); err != nil {
			return r, err
		}
		defer srv.Close()
	}
	before, err := n.AppInfo(ctx)
	if err != nil {
		return r, err
	}
	r.VersionBefore, r.PIDBefore = before.Version, n.Pid()
	r.ExeBefore, _ = n.Exe()
	r.ProcBefore, _ = n.Proc()
	say("proposing upgrade %q at height %d (now %d), binary served at %s", s.Name, before.Height+s.PlanDelay, before.Height, srv.URL)
	sc, err := n.ScheduleUpgrade(ctx, srv, s.Name, s.Binary, s.PlanDelay)
	r.ProposedAt, r.PlanHeight = sc.ProposedAt, sc.Height
	if err != nil {
		return r, err
	}
	cur, _ := n.AppInfo(ctx)
	say("proposal passed at height %d", cur.Height)
	if cur.Height >= r.PlanHeight-1 {
		return r, fmt.Errorf("proposal passed at height %d, too late for plan height %d", cur.Height, r.PlanHeight)
	}

	// Poll the app every 20 ms through the halt and the switch.
	home := n.Home
	target := r.PlanHeight + s.After
	for {
		info, err := n.AppInfo(ctx)
		now := time.Now()
		if err == nil {
			if r.StagedAtHeight == 0 {
				if rec, path, ok := Staged(home, s.Name); ok {
					r.StagedAtHeight, r.StagedSHA256 = info.Height, rec.SHA256
					say("staged and verified %s at height %d", path, info.Height)
				}
			}
			if info.Height >= r.PlanHeight-1 && r.HaltSeen.IsZero() {
				r.HaltSeen = now
			}
			if info.Height >= r.PlanHeight && r.ResumedSeen.IsZero() {
				r.ResumedSeen = now
				say("height %d committed by %s", info.Height, info.Version)
			}
			if info.Height >= target {
				r.FinalHeight, r.VersionAfter = info.Height, info.Version
				break
			}
		}
		if done, exitErr := n.Exited(); done {
			return r, fmt.Errorf("node process exited (%v) at height %d; upgrade %q did not complete", exitErr, info.Height, s.Name)
		}
		select {
		case <-ctx.Done():
			return r, fmt.Errorf("waiting for height %d (at %d): %w", target, info.Height, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
	r.Downtime = r.ResumedSeen.Sub(r.HaltSeen)
	r.PIDAfter = n.Pid()
	r.ExeAfter, _ = n.Exe()
	r.ProcAfter, _ = n.Proc()
	r.SeenBlock = seenBlock(n.LogTail(64<<20), s.Name)
	r.Trace, _ = n.TraceDescription(ctx, TraceDenom)

	// The outcomes the walking skeleton promises.
	want := StagedBin(home, s.Name)
	switch {
	case r.StagedAtHeight == 0 || r.StagedAtHeight >= r.PlanHeight:
		return r, fmt.Errorf("binary for %q was not staged and verified before height %d (staged at %d)", s.Name, r.PlanHeight, r.StagedAtHeight)
	case r.PIDAfter != r.PIDBefore:
		return r, fmt.Errorf("PID changed across the upgrade: %d -> %d", r.PIDBefore, r.PIDAfter)
	case r.ExeAfter != want:
		return r, fmt.Errorf("process %d executes %s, want the staged %s", r.PIDAfter, r.ExeAfter, want)
	case !r.ProcAfter.Same(r.ProcBefore):
		return r, fmt.Errorf("argv, environment or cwd changed across the exec:\n before %+v\n after  %+v", r.ProcBefore, r.ProcAfter)
	case r.VersionAfter == r.VersionBefore:
		return r, fmt.Errorf("app version still %s after the upgrade", r.VersionAfter)
	case !strings.Contains(r.Trace, "upgrade handler "+s.Name+" ran at height "+strconv.FormatInt(r.PlanHeight, 10)):
		return r, fmt.Errorf("upgrade handler %s left no trace in state (denom metadata description %q)", s.Name, r.Trace)
	}
	return r, nil
}

var seenRe = regexp.MustCompile(`upgrade plan seen.*?block=(\d+).*?upgrade=(\S+)`)

// seenBlock finds the block in which invisor logged the plan named name.
func seenBlock(log, name string) int64 {
	for _, m := range seenRe.FindAllStringSubmatch(log, -1) {
		if m[2] == name {
			h, _ := strconv.ParseInt(m[1], 10, 64)
			return h
		}
	}
	return 0
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o755)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// Scheduled is an upgrade plan that governance has passed.
type Scheduled struct {
	Name       string
	Height     int64
	SHA256     string // of the served binary
	ProposedAt int64
}

// ScheduleUpgrade serves bin under srv as the binary of upgrade name and passes
// a MsgSoftwareUpgrade for height now+delay through governance (propose, vote,
// wait for PASSED).
func (n *Node) ScheduleUpgrade(ctx context.Context, srv *FileServer, name, bin string, delay int64) (Scheduled, error) {
	s := Scheduled{Name: name}
	dir := filepath.Join(srv.Dir, servedDir(name))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return s, err
	}
	served := filepath.Join(dir, DaemonName)
	if err := copyFile(bin, served); err != nil {
		return s, err
	}
	sha, err := SHA256File(served)
	if err != nil {
		return s, err
	}
	now, err := n.AppInfo(ctx)
	if err != nil {
		return s, err
	}
	s.SHA256, s.ProposedAt, s.Height = sha, now.Height, now.Height+delay
	info := PlanInfo(runtime.GOOS, runtime.GOARCH, srv.URL+"/"+servedDir(name)+"/"+DaemonName, sha)
	return s, n.PassUpgrade(ctx, name, s.Height, info)
}

// servedDir is the directory under the file server for upgrade name: the name
// itself when it is a plain URL path segment, else a digest of it.
func servedDir(name string) string {
	if plainSegment.MatchString(name) {
		return name
	}
	sum := sha256.Sum256([]byte(name))
	return "u-" + hex.EncodeToString(sum[:6])
}

var plainSegment = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*$`)

// PassUpgrade proposes a MsgSoftwareUpgrade, votes yes from the validator key
// and waits until governance passed it.
func (n *Node) PassUpgrade(ctx context.Context, name string, height int64, info string) error {
	id, err := n.ProposeUpgrade(ctx, name, height, info)
	if err != nil {
		return err
	}
	return n.voteAndWait(ctx, id)
}

func (n *Node) voteAndWait(ctx context.Context, id uint64) error {
	if err := n.Vote(ctx, id); err != nil {
		return err
	}
	return n.WaitPassed(ctx, id)
}

// CancelUpgrade passes a MsgCancelUpgrade through governance.
func (n *Node) CancelUpgrade(ctx context.Context) error {
	id, err := n.propose(ctx, "cancel", map[string]any{
		"@type": "/cosmos.upgrade.v1beta1.MsgCancelUpgrade", "authority": GovAddress,
	})
	if err != nil {
		return err
	}
	return n.voteAndWait(ctx, id)
}
