package invisor

import (
	"context"
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spf13/cast"

	cmtcfg "github.com/cometbft/cometbft/config"
	ctypes "github.com/cometbft/cometbft/rpc/core/types"
	rpctypes "github.com/cometbft/cometbft/rpc/jsonrpc/types"

	"cosmossdk.io/log/v2"

	"github.com/cosmos/cosmos-sdk/server"
	upgradetypes "github.com/cosmos/cosmos-sdk/x/upgrade/types"

	"github.com/invisor/invisor/internal/comet/comettest"
	"github.com/invisor/invisor/internal/config"
	"github.com/invisor/invisor/internal/history"
	"github.com/invisor/invisor/internal/home"
	"github.com/invisor/invisor/relauncher"
	"github.com/invisor/invisor/staging"
)

// waitLimit bounds every wait for an event; none is expected to take more than
// a few of the watcher's ticks.
const waitLimit = 30 * time.Second

// logLines is the node's log, JSON lines, that a test waits on.
type logLines struct {
	mu    sync.Mutex
	lines []string
	wrote chan struct{}
}

func newLogLines() *logLines { return &logLines{wrote: make(chan struct{}, 1)} }

func (l *logLines) Write(b []byte) (int, error) {
	l.mu.Lock()
	l.lines = append(l.lines, string(b))
	l.mu.Unlock()
	select {
	case l.wrote <- struct{}{}:
	default:
	}
	return len(b), nil
}

func (l *logLines) has(s string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, line := range l.lines {
		if strings.Contains(line, s) {
			return true
		}
	}
	return false
}

// wait returns once a line containing s was logged.
func (l *logLines) wait(t *testing.T, s string) {
	t.Helper()
	deadline := time.After(waitLimit)
	for !l.has(s) {
		select {
		case <-l.wrote:
		case <-deadline:
			l.mu.Lock()
			defer l.mu.Unlock()
			t.Fatalf("no log line says %q:\n%s", s, strings.Join(l.lines, ""))
		}
	}
}

// fakeComet is CometBFT's /status at a block-store height the test sets; every
// request is announced on asked once its answer is decided.
type fakeComet struct {
	laddr  string
	height atomic.Int64
	asked  chan int64
}

func newFakeComet(t *testing.T, height int64) *fakeComet {
	c := &fakeComet{asked: make(chan int64, 1024)}
	c.height.Store(height)
	c.laddr = comettest.Server(t, func(method string, _ map[string]json.RawMessage) (any, *rpctypes.RPCError) {
		if method != "status" {
			return nil, comettest.MethodNotFound(method)
		}
		h := c.height.Load()
		select {
		case c.asked <- h:
		default:
		}
		return &ctypes.ResultStatus{SyncInfo: ctypes.SyncInfo{LatestBlockHeight: h}}, nil
	})
	return c
}

// waitAsked returns once the watcher asked /status n more times.
func (c *fakeComet) waitAsked(t *testing.T, n int) {
	t.Helper()
	deadline := time.After(waitLimit)
	for i := 0; i < n; i++ {
		select {
		case <-c.asked:
		case <-deadline:
			t.Fatalf("the watcher asked CometBFT %d times, want %d", i, n)
		}
	}
}

// scheduledNode is a node as boot leaves it with an upgrade scheduled at a
// height (its binary staged and recorded, the plan in the schedule, the halt set
// for it), with the real relauncher and stager and CometBFT faked at rpcLaddr.
// The relauncher's stop (SIGTERM to this process by default) signals stopped.
type scheduledNode struct {
	*node
	s       home.Scheduled
	logs    *logLines
	comet   *fakeComet
	stopped chan struct{}
}

func newScheduledNode(t *testing.T, height, cometAt int64) *scheduledNode {
	t.Helper()
	l, p := stageSelf(t, staging.Plan{Name: "v3", Height: height})
	s := home.Scheduled{Plan: p, Source: "file:///opt/v3/appd"}
	if err := l.AddScheduled(s); err != nil {
		t.Fatal(err)
	}
	sn := &scheduledNode{s: s, logs: newLogLines(), comet: newFakeComet(t, cometAt), stopped: make(chan struct{}, 1)}
	logger := log.NewLogger(sn.logs, log.OutputJSONOption())
	rcfg := relauncher.DefaultConfig()
	rcfg.Home, rcfg.DaemonName, rcfg.Backup, rcfg.RunPreUpgrade = l.Home(), "appd", false, false
	rcfg.HaltPollInterval = 10 * time.Millisecond
	rl, err := relauncher.New(rcfg, nil, logger, relauncher.OS{Stop: func() error {
		sn.stopped <- struct{}{}
		return nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	scfg := staging.DefaultConfig()
	scfg.Home, scfg.DaemonName = l.Home(), "appd"
	st, err := staging.New(scfg, logger)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(func() {
		cancel()
		rl.Close()
	})
	halt := s
	sn.node = &node{log: logger, rl: rl, stager: st, layout: l, runCtx: ctx, rpcLaddr: sn.comet.laddr, halt: &halt, home: l.Home()}
	return sn
}

func noUpgradeInfo(t *testing.T, l home.Layout) {
	t.Helper()
	if _, err := os.Stat(l.UpgradeInfo()); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("%s written before the halt (%v)", l.UpgradeInfo(), err)
	}
}

// In consensus: the watcher starts once the node passed the block before the
// height, does nothing while CometBFT's block store is below it, and once block
// H is there (the app refused it: halt-height) writes data/upgrade-info.json for
// the scheduled plan, exactly as x/upgrade writes it, and takes a governance
// halt's path: the relauncher proves the staged binary and stops the node.
func TestScheduledHaltWritesUpgradeInfoAtTheHeight(t *testing.T) {
	sn := newScheduledNode(t, 40, 38)
	l, p := sn.layout, sn.s.Plan

	for _, h := range []int64{1, 37, 38} {
		sn.scheduledHeight(h)
	}
	if sn.haltWatch.Load() {
		t.Fatal("the watcher started before the block before the height")
	}
	sn.comet.height.Store(39)
	sn.scheduledHeight(39)
	sn.scheduledHeight(39) // once only
	// Three answers below the height: the first two were acted on (nothing to do)
	// by the time the third is asked for.
	sn.comet.waitAsked(t, 3)
	noUpgradeInfo(t, l)
	if _, armed := sn.rl.Armed(); armed {
		t.Fatal("armed below the height")
	}
	select {
	case <-sn.stopped:
		t.Fatal("the node was stopped below the height")
	default:
	}

	sn.comet.height.Store(40)
	select {
	case <-sn.stopped:
	case <-time.After(waitLimit):
		t.Fatal("the node was not stopped at the height")
	}
	if name, armed := sn.rl.Armed(); !armed || name != "v3" {
		t.Fatalf("Armed = %q, %v", name, armed)
	}
	if ui, ok, err := l.ReadUpgradeInfo(); !ok || err != nil || ui != p {
		t.Fatalf("upgrade-info.json = %+v, %v, %v; want %+v", ui, ok, err, p)
	}
	// As x/upgrade writes it (DumpUpgradeInfoToDisk) and reads it (ReadUpgradeInfoFromDisk).
	b, err := os.ReadFile(l.UpgradeInfo())
	if err != nil {
		t.Fatal(err)
	}
	if want, _ := json.Marshal(upgradetypes.Plan{Name: p.Name, Height: p.Height, Info: p.Info}); string(b) != string(want) {
		t.Errorf("upgrade-info.json\n%s\nx/upgrade writes\n%s", b, want)
	}
	var up upgradetypes.Plan
	if err := json.Unmarshal(b, &up); err != nil || up.ValidateBasic() != nil || up.Name != p.Name || up.Height != p.Height || up.Info != p.Info {
		t.Errorf("x/upgrade reads %+v (%v, %v)", up, err, up.ValidateBasic())
	}
	hist, err := history.Read(l.Home())
	if err != nil || len(hist) != 1 || hist[0].Event != history.EventHalt || hist[0].Upgrade != "v3" || hist[0].Height != 40 {
		t.Fatalf("history = %+v, %v", hist, err)
	}
	sn.logs.wait(t, "halted at the height of an upgrade scheduled without governance")
}

// An upgrade cancelled after the node started (it keeps its halt-height) is not
// switched to at the height: no upgrade-info.json, no stop, no halt recorded.
func TestScheduledHaltOfACancelledUpgrade(t *testing.T) {
	sn := newScheduledNode(t, 40, 39)
	l := sn.layout
	sn.scheduledHeight(39)
	sn.comet.waitAsked(t, 1)
	if _, ok, err := l.RemoveScheduled("v3"); !ok || err != nil {
		t.Fatalf("RemoveScheduled = %v, %v", ok, err)
	}
	sn.comet.height.Store(40)
	sn.logs.wait(t, "cancelled after it started")
	noUpgradeInfo(t, l)
	if _, armed := sn.rl.Armed(); armed {
		t.Fatal("armed for a cancelled upgrade")
	}
	select {
	case <-sn.stopped:
		t.Fatal("the node was stopped for a cancelled upgrade")
	default:
	}
	if hist, _ := history.Read(l.Home()); len(hist) != 0 {
		t.Fatalf("history = %+v", hist)
	}
}

// The watcher ends with the node (its run context), at any height.
func TestScheduledHaltWatcherEndsWithTheNode(t *testing.T) {
	sn := newScheduledNode(t, 40, 39)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		sn.watchHalt(ctx, sn.s)
		close(done)
	}()
	sn.comet.waitAsked(t, 1)
	cancel()
	select {
	case <-done:
	case <-time.After(waitLimit):
		t.Fatal("watchHalt did not return when its context ended")
	}
	noUpgradeInfo(t, sn.layout)
}

// The due upgrade (its binary runs the chain's next block) leaves the schedule,
// with a history entry, once the block at its height ran.
func TestScheduledUpgradeAppliedLeavesTheSchedule(t *testing.T) {
	sn := newScheduledNode(t, 40, 39)
	due := sn.s
	sn.halt, sn.due = nil, &due
	sn.scheduledHeight(39)
	if sn.dueDone.Load() {
		t.Fatal("applied before its block ran")
	}
	sn.scheduledHeight(40)
	sn.scheduledHeight(41)
	sn.logs.wait(t, "scheduled upgrade applied; removed from the schedule")
	if s, err := sn.layout.Schedule(); err != nil || len(s) != 0 {
		t.Fatalf("schedule = %+v, %v", s, err)
	}
	// The history entry is appended after that log line, and nothing says when it
	// is done (scheduledApplied logs nothing after it): poll, bounded.
	var hist []history.Entry
	for deadline := time.Now().Add(waitLimit); len(hist) == 0 && time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		var err error
		if hist, err = history.Read(sn.layout.Home()); err != nil {
			t.Fatal(err)
		}
	}
	if len(hist) != 1 || hist[0].Event != history.EventScheduledApplied || hist[0].Upgrade != "v3" || hist[0].Height != 40 {
		t.Fatalf("history = %+v", hist)
	}
}

// applySchedule at boot, against CometBFT's state height: behind the chain is
// removed, the due upgrade gets data/upgrade-info.json (so the boot redirect runs
// its binary), and the next one sets the SDK's halt-height on this node.
func TestApplySchedule(t *testing.T) {
	sched := []home.Scheduled{
		{Plan: home.Plan{Name: "a", Height: 10, Info: "ia"}},
		{Plan: home.Plan{Name: "b", Height: 20, Info: "ib"}},
		{Plan: home.Plan{Name: "c", Height: 30, Info: "ic"}},
	}
	for _, tc := range []struct {
		name        string
		last        int64
		operator    int64      // the operator's halt-height (0: none)
		ui          *home.Plan // data/upgrade-info.json before the boot
		left        string     // the schedule after
		due, halt   string
		haltHeight  int64
		upgradeInfo string // the plan name data/upgrade-info.json holds after ("" none)
	}{
		{name: "before all", last: 5, left: "a,b,c", halt: "a", haltHeight: 10},
		{name: "the block before a", last: 9, left: "a,b,c", due: "a", halt: "b", haltHeight: 20, upgradeInfo: "a"},
		{name: "a applied", last: 10, left: "b,c", halt: "b", haltHeight: 20},
		{name: "a applied, b due", last: 19, left: "b,c", due: "b", halt: "c", haltHeight: 30, upgradeInfo: "b"},
		{name: "all behind", last: 31, left: ""},
		{name: "the operator's lower halt-height stays", last: 10, operator: 15, left: "b,c", haltHeight: 15},
		{name: "the operator's higher halt-height gives way", last: 10, operator: 25, left: "b,c", halt: "b", haltHeight: 20},
		{name: "due already written", last: 9, ui: &sched[0].Plan, left: "a,b,c", due: "a", halt: "b", haltHeight: 20, upgradeInfo: "a"},
		{name: "the chain halted for a governance plan at or after it", last: 9, ui: &home.Plan{Name: "gov", Height: 10},
			left: "a,b,c", halt: "b", haltHeight: 20, upgradeInfo: "gov"},
		{name: "an older governance halt is superseded", last: 9, ui: &home.Plan{Name: "gov", Height: 4},
			left: "a,b,c", due: "a", halt: "b", haltHeight: 20, upgradeInfo: "a"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l, err := home.New(t.TempDir(), "appd", home.Options{})
			if err != nil {
				t.Fatal(err)
			}
			if err := os.MkdirAll(l.Root(), 0o755); err != nil {
				t.Fatal(err)
			}
			for _, s := range sched {
				if err := l.AddScheduled(s); err != nil {
					t.Fatal(err)
				}
			}
			if tc.ui != nil {
				if err := l.WriteUpgradeInfo(*tc.ui); err != nil {
					t.Fatal(err)
				}
			}
			sctx := server.NewDefaultContext()
			sctx.Config = cmtcfg.DefaultConfig().SetRoot(l.Home())
			comettest.SaveState(t, sctx.Config, tc.last)
			if tc.operator > 0 {
				sctx.Viper.Set(server.FlagHaltHeight, tc.operator)
			}
			logs := newLogLines()
			n := &node{log: log.NewLogger(logs, log.OutputJSONOption()), layout: l, rpcLaddr: "tcp://127.0.0.1:26657"}
			if err := n.applySchedule(asServer(sctx)); err != nil {
				t.Fatal(err)
			}
			got, err := l.Schedule()
			if err != nil {
				t.Fatal(err)
			}
			var left []string
			for _, s := range got {
				left = append(left, s.Plan.Name)
			}
			name := func(s *home.Scheduled) string {
				if s == nil {
					return ""
				}
				return s.Plan.Name
			}
			if strings.Join(left, ",") != tc.left || name(n.due) != tc.due || name(n.halt) != tc.halt {
				t.Errorf("schedule %v, due %q, halt %q; want %s, %q, %q", left, name(n.due), name(n.halt), tc.left, tc.due, tc.halt)
			}
			if h := cast.ToInt64(sctx.Viper.Get(server.FlagHaltHeight)); h != tc.haltHeight {
				t.Errorf("halt-height %d, want %d", h, tc.haltHeight)
			}
			ui, ok, err := l.ReadUpgradeInfo()
			if err != nil || (ok && ui.Name != tc.upgradeInfo) || (!ok && tc.upgradeInfo != "") {
				t.Errorf("upgrade-info.json = %+v (%v, %v), want %q", ui, ok, err, tc.upgradeInfo)
			}
			if tc.due != "" && ui != n.due.Plan {
				t.Errorf("upgrade-info.json %+v is not the due plan %+v", ui, n.due.Plan)
			}
		})
	}

	t.Run("nothing scheduled: the state store is not read", func(t *testing.T) {
		l, _ := home.New(t.TempDir(), "appd", home.Options{})
		sctx := server.NewDefaultContext()
		sctx.Config = cmtcfg.DefaultConfig().SetRoot(l.Home())
		n := &node{log: log.NewNopLogger(), layout: l}
		if err := n.applySchedule(asServer(sctx)); err != nil || n.halt != nil || n.due != nil {
			t.Fatalf("%v, halt %v, due %v", err, n.halt, n.due)
		}
		if _, err := os.Stat(sctx.Config.DBDir()); !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("%s created (%v)", sctx.Config.DBDir(), err)
		}
	})
	t.Run("state store unreadable: the boot fails, naming the way out", func(t *testing.T) {
		l, _ := home.New(t.TempDir(), "appd", home.Options{})
		os.MkdirAll(l.Root(), 0o755)
		if err := l.AddScheduled(sched[0]); err != nil {
			t.Fatal(err)
		}
		sctx := server.NewDefaultContext()
		sctx.Config = cmtcfg.DefaultConfig().SetRoot(l.Home())
		comettest.SaveState(t, sctx.Config, 3)
		db, err := cmtcfg.DefaultDBProvider(&cmtcfg.DBContext{ID: "state", Config: sctx.Config})
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		n := &node{log: log.NewNopLogger(), layout: l}
		err = n.applySchedule(asServer(sctx))
		if err == nil || !strings.Contains(err.Error(), "`invisor cancel NAME`") {
			t.Fatalf("err = %v", err)
		}
		if cast.ToInt64(sctx.Viper.Get(server.FlagHaltHeight)) != 0 || n.halt != nil {
			t.Fatal("a halt was set without the chain's height")
		}
	})
}

// asServer is the SDK's server context as the edge reads it (serverOf, without
// the logger's module key).
func asServer(sctx *server.Context) config.Server {
	return config.Server{Viper: sctx.Viper, Comet: sctx.Config, Logger: sctx.Logger}
}
