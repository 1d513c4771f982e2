package invisor

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	cmtcfg "github.com/cometbft/cometbft/config"
	"github.com/cometbft/cometbft/crypto/ed25519"
	ctypes "github.com/cometbft/cometbft/rpc/core/types"
	rpctypes "github.com/cometbft/cometbft/rpc/jsonrpc/types"
	"github.com/cometbft/cometbft/types"

	"cosmossdk.io/log/v2"

	"github.com/invisor/invisor/hook"
	"github.com/invisor/invisor/internal/comet"
	"github.com/invisor/invisor/internal/comet/comettest"
	"github.com/invisor/invisor/internal/health"
	"github.com/invisor/invisor/internal/home"
	"github.com/invisor/invisor/internal/notify"
)

// The upgrade at upgradeH in these tests; the gate boots at bootTime.
const upgradeH = 100

var bootTime = time.Date(2026, 6, 1, 10, 0, 0, 0, time.UTC)

// fakeClock is the gate's clock, set by the test.
type fakeClock struct{ ns atomic.Int64 }

func newFakeClock() *fakeClock {
	c := &fakeClock{}
	c.ns.Store(bootTime.UnixNano())
	return c
}
func (c *fakeClock) now() time.Time        { return time.Unix(0, c.ns.Load()) }
func (c *fakeClock) after(d time.Duration) { c.ns.Store(bootTime.Add(d).UnixNano()) }

// healthComet is CometBFT's RPC as the gate asks it: /status (this node's
// validator power and latest height), /commit (signed by this validator at the
// heights in signed), /dump_consensus_state (the round state set).
type healthComet struct {
	laddr   string
	pk      ed25519.PubKey
	mu      sync.Mutex
	power   int64
	latest  int64
	signed  map[int64]bool
	round   json.RawMessage
	commits atomic.Int32 // /commit asks
}

func newHealthComet(t *testing.T, power int64) *healthComet {
	c := &healthComet{pk: ed25519.GenPrivKey().PubKey().(ed25519.PubKey), power: power, latest: upgradeH, signed: map[int64]bool{}}
	other := ed25519.GenPrivKey().PubKey().Address()
	c.laddr = comettest.Server(t, func(method string, p map[string]json.RawMessage) (any, *rpctypes.RPCError) {
		c.mu.Lock()
		defer c.mu.Unlock()
		switch method {
		case "status":
			return &ctypes.ResultStatus{SyncInfo: ctypes.SyncInfo{LatestBlockHeight: c.latest},
				ValidatorInfo: ctypes.ValidatorInfo{Address: c.pk.Address(), PubKey: c.pk, VotingPower: c.power}}, nil
		case "commit":
			c.commits.Add(1)
			var hs string
			if err := json.Unmarshal(p["height"], &hs); err != nil {
				return nil, &rpctypes.RPCError{Code: -32602, Message: "bad height"}
			}
			var h int64
			for _, d := range hs {
				h = 10*h + int64(d-'0')
			}
			if h > c.latest {
				return nil, &rpctypes.RPCError{Code: -32603, Message: "Internal error", Data: "height must be less than or equal to the current blockchain height"}
			}
			mine := types.CommitSig{BlockIDFlag: types.BlockIDFlagAbsent}
			if c.signed[h] {
				mine = types.CommitSig{BlockIDFlag: types.BlockIDFlagCommit, ValidatorAddress: c.pk.Address(), Timestamp: signedAt(h), Signature: []byte{1}}
			}
			cm := &types.Commit{Height: h, Signatures: []types.CommitSig{
				{BlockIDFlag: types.BlockIDFlagCommit, ValidatorAddress: other, Timestamp: signedAt(h), Signature: []byte{2}}, mine}}
			return &ctypes.ResultCommit{SignedHeader: types.SignedHeader{Header: &types.Header{Height: h}, Commit: cm}, CanonicalCommit: h < c.latest}, nil
		case "dump_consensus_state":
			if c.round == nil {
				return nil, &rpctypes.RPCError{Code: -32603, Message: "Internal error", Data: "no round state"}
			}
			return &ctypes.ResultDumpConsensusState{RoundState: c.round, Peers: []ctypes.PeerStateInfo{}}, nil
		}
		return nil, comettest.MethodNotFound(method)
	})
	return c
}

// signedAt is when this test's validators signed block h.
func signedAt(h int64) time.Time { return bootTime.Add(time.Duration(h-upgradeH) * time.Second) }

func (c *healthComet) set(f func(c *healthComet)) {
	c.mu.Lock()
	defer c.mu.Unlock()
	f(c)
}

// votesAt is the round state at height of the validators of powers 10, 20,
// 30, 40, those at the indexes given voting in round 1.
func votesAt(t *testing.T, height int64, voted ...int) json.RawMessage {
	set, pvs := comettest.Validators(t, 10, 20, 30, 40)
	var vs []comettest.Vote
	for _, i := range voted {
		vs = append(vs, comettest.Prevote(i, 1, false))
	}
	return comettest.RoundState(t, set, pvs, height, 1, vs...)
}

// healthNode is a node with the gate armed for v2 at upgradeH, its clock and
// ticks in the test's hands, a webhook and CometBFT on the loopback.
type healthNode struct {
	*node
	hg    *healthGate
	logs  *logLines
	docs  chan notify.Document
	clock *fakeClock
	ticks chan time.Time
	steps chan health.Report
	comet *healthComet
}

func newHealthNode(t *testing.T, deadline time.Duration, power int64) *healthNode {
	t.Helper()
	url, docs := webhook(t)
	hn := &healthNode{logs: newLogLines(), docs: docs, clock: newFakeClock(), ticks: make(chan time.Time, 1),
		steps: make(chan health.Report, 1024), comet: newHealthComet(t, power)}
	logger := log.NewLogger(hn.logs, log.OutputJSONOption())
	nc := notify.DefaultConfig()
	nc.URL = url
	nt, err := notify.New(nc, logger)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = nt.Close(context.Background()) })
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	hn.node = &node{log: logger, notifier: nt, runCtx: ctx, rpcLaddr: hn.comet.laddr}
	client, err := comet.NewClient(hn.comet.laddr)
	if err != nil {
		t.Fatal(err)
	}
	hn.hg = newHealthGate(health.Config{Deadline: deadline},
		health.Arm{Upgrade: "v2", Height: upgradeH, Booted: bootTime, RPC: true, Daemon: "appd"}, client, hn.clock.now)
	hn.hg.tick = hn.ticks
	hn.hg.stepped = func(r health.Report) {
		select {
		case hn.steps <- r:
		default:
		}
	}
	hn.startHealth(hn.hg)
	t.Cleanup(hn.stopHealth)
	return hn
}

// until steps the gate until its report satisfies ok, and returns that report.
func (hn *healthNode) until(t *testing.T, what string, ok func(health.Report) bool) health.Report {
	t.Helper()
	deadline := time.After(waitLimit)
	for {
		select {
		case hn.ticks <- time.Time{}:
		default:
		}
		select {
		case r := <-hn.steps:
			if ok(r) {
				return r
			}
		case <-deadline:
			t.Fatalf("the gate never reported %s; last: %+v", what, hn.healthReport())
		}
	}
}

// stepN steps the gate n times and returns the reports.
func (hn *healthNode) stepN(t *testing.T, n int) []health.Report {
	t.Helper()
	var out []health.Report
	for len(out) < n {
		out = append(out, hn.until(t, "a step", func(health.Report) bool { return true }))
	}
	return out
}

func isState(s health.State) func(health.Report) bool {
	return func(r health.Report) bool { return r.State == s }
}

// noMoreDocs closes the webhook and says whether a document is left.
func (hn *healthNode) noMoreDocs(t *testing.T) {
	t.Helper()
	if err := hn.notifier.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	select {
	case d := <-hn.docs:
		t.Fatalf("an event more: %+v", d)
	default:
	}
}

// A validator: applied at H, H+1 committed, its signature in the commit of
// H+1: one Info line with the three moments, the status report, and one
// healthy event; the gate then stops asking CometBFT.
func TestHealthyValidatorSigned(t *testing.T) {
	hn := newHealthNode(t, time.Minute, 10)
	hn.clock.after(2 * time.Second)
	hn.healthPlan(nil, upgradeH) // x/upgrade applied the plan in block H
	hn.until(t, "applied", func(r health.Report) bool { return r.AppliedAt != nil })
	hn.healthHeight(upgradeH + 1) // a PreBlocker at H+1 (optimistic execution of a proposal): proves nothing
	hn.clock.after(5 * time.Second)
	hn.comet.set(func(c *healthComet) { c.latest, c.signed[upgradeH+1] = upgradeH+2, true })
	hn.healthHeight(upgradeH + 2) // FinalizeBlock of H+2: the network committed H+1
	r := hn.until(t, "healthy", isState(health.StateHealthy))
	if !r.Validator || r.SignedHeight != upgradeH+1 || r.SignedAt == nil || !r.SignedAt.Equal(signedAt(upgradeH+1)) ||
		r.CommittedAt == nil || !r.CommittedAt.Equal(bootTime.Add(5*time.Second)) || r.CommittedSeconds != 5 ||
		r.AppliedAt == nil || !r.AppliedAt.Equal(bootTime.Add(2*time.Second)) {
		t.Fatalf("healthy report %+v", r)
	}
	hn.logs.wait(t, `"message":"invisor: upgrade healthy"`)
	for _, want := range []string{`"signed_height":101`, `"committed_height":101`, `"seconds_after_switch":"5.000"`, `first signed at height 101`} {
		if !hn.logs.has(want) {
			t.Errorf("the healthy line lacks %s", want)
		}
	}
	d := next(t, hn.docs)
	if d.Kind != notify.KindHealthy || d.Upgrade != "v2" || d.Height != upgradeH || !strings.Contains(d.Message, "healthy") {
		t.Fatalf("healthy event %+v", d)
	}
	select {
	case <-hn.hg.done:
	case <-time.After(waitLimit):
		t.Fatal("the gate still runs once healthy")
	}
	if got := hn.healthReport(); got == nil || got.State != health.StateHealthy {
		t.Fatalf("status report after the gate ended: %+v", got)
	}
	if a := testing.AllocsPerRun(100, func() { hn.healthHeight(upgradeH + 5) }); a != 0 {
		t.Errorf("Height's part allocates %v per block", a)
	}
	hn.noMoreDocs(t)
}

// A node without voting power is healthy once H+1 is committed; no commit is read.
func TestHealthyNonValidator(t *testing.T) {
	hn := newHealthNode(t, time.Minute, 0)
	hn.until(t, "a status poll", func(r health.Report) bool { return r.State == health.StateWaiting })
	hn.healthHeight(upgradeH + 2)
	r := hn.until(t, "healthy", isState(health.StateHealthy))
	if r.Validator || r.SignedHeight != 0 || !strings.Contains(r.Message, "not a validator") {
		t.Fatalf("report %+v", r)
	}
	if n := hn.comet.commits.Load(); n != 0 {
		t.Errorf("%d commits read for a node that is not a validator", n)
	}
	if d := next(t, hn.docs); d.Kind != notify.KindHealthy {
		t.Fatalf("event %+v", d)
	}
}

// H+1 is late and consensus at H+1 holds votes of 2 of 4 validators (powers 10
// and 40 of 100): stalled, the network, 50.0%; when a third votes, the log
// says so and the webhook does not hear again; when H+1 commits, healthy.
func TestStalledNetworkThenHealthy(t *testing.T) {
	hn := newHealthNode(t, time.Minute, 10)
	hn.comet.set(func(c *healthComet) { c.round = votesAt(t, upgradeH+1, 0, 3) })
	hn.healthPlan(nil, upgradeH)
	hn.clock.after(59 * time.Second)
	for _, r := range hn.stepN(t, 3) {
		if r.State != health.StateWaiting {
			t.Fatalf("before the deadline: %+v", r)
		}
	}
	hn.clock.after(61 * time.Second)
	r := hn.until(t, "stalled", isState(health.StateStalled))
	if r.Cause != health.CauseNetwork || r.Online == nil || r.Online.Validators != 2 || r.Online.Of != 4 || r.Online.Power != 50 ||
		r.Online.Total != 100 || r.Online.Fraction != 0.5 || r.Online.Round != 1 {
		t.Fatalf("stalled report %+v (online %+v)", r, r.Online)
	}
	const says = "waiting for the network: 2 of 4 validators online on the new version, 50.0% of the voting power; more than 2/3 is needed; the others have not switched yet"
	if !strings.Contains(r.Message, says) || !strings.Contains(r.Advice, "nothing to do on this node") {
		t.Fatalf("message %q, advice %q", r.Message, r.Advice)
	}
	hn.logs.wait(t, `"message":"invisor: upgrade stalled"`)
	if !hn.logs.has(`"cause":"network"`) || !hn.logs.has(says) || !hn.logs.has(`"online_power_fraction":"0.500"`) {
		t.Error("the stalled line lacks the cause, the message or the fraction")
	}
	d := next(t, hn.docs)
	if d.Kind != notify.KindStalled || d.Reason != string(health.CauseNetwork) || !strings.Contains(d.Message, says) || d.Upgrade != "v2" || d.Height != upgradeH {
		t.Fatalf("stalled event %+v", d)
	}

	hn.comet.set(func(c *healthComet) { c.round = votesAt(t, upgradeH+1, 0, 2, 3) })
	hn.clock.after(61*time.Second + health.RefreshEvery)
	hn.until(t, "the third validator", func(r health.Report) bool { return r.Online != nil && r.Online.Validators == 3 })
	hn.logs.wait(t, `"message":"invisor: upgrade still stalled"`)

	hn.clock.after(70 * time.Second)
	hn.comet.set(func(c *healthComet) { c.latest, c.signed[upgradeH+1] = upgradeH+2, true })
	hn.healthHeight(upgradeH + 2)
	r = hn.until(t, "healthy", isState(health.StateHealthy))
	if r.Cause != "" || r.Online != nil || r.CommittedSeconds != 70 {
		t.Fatalf("healthy report %+v", r)
	}
	if d := next(t, hn.docs); d.Kind != notify.KindHealthy {
		t.Fatalf("after the stall: %+v, want healthy (and no second stalled)", d)
	}
	hn.noMoreDocs(t)
}

// The upgrade handler fails: stalled at once, before the deadline, with what
// to do; and a failure the gate had no step for before the node stopped (the
// handshake that ran the handler ends the process) is still logged and sent.
func TestStalledHandlerFailed(t *testing.T) {
	for _, tc := range []struct {
		name     string
		stepped  bool
		deadline time.Duration
	}{{"while the node runs", true, time.Minute}, {"right before the stop", false, time.Minute}, {"with the deadline off", true, 0}} {
		t.Run(tc.name, func(t *testing.T) {
			hn := newHealthNode(t, tc.deadline, 10)
			hn.until(t, "a first step", isState(health.StateWaiting))
			hn.clock.after(time.Second)
			hn.UpgradeFailed(hook.Plan{Name: "v2", Height: upgradeH}, upgradeH, errors.New("example-app: upgrade handler v2 fails in this build (FailUpgrade=v2)"))
			hn.UpgradeFailed(hook.Plan{Name: "v3", Height: upgradeH}, upgradeH, errors.New("another plan")) // not this gate's
			if tc.stepped {
				r := hn.until(t, "stalled", isState(health.StateStalled))
				if r.Cause != health.CauseHandlerFailed || !strings.Contains(r.Message, "FailUpgrade=v2") {
					t.Fatalf("report %+v", r)
				}
			} else {
				hn.stopHealth()
			}
			hn.logs.wait(t, `"message":"invisor: upgrade stalled"`)
			for _, want := range []string{`"cause":"handler-failed"`, "appd invisor rollback", "appd invisor stage v2 --replace --file PATH", "every node running this build fails the same way"} {
				if !hn.logs.has(want) {
					t.Errorf("the stalled line lacks %q", want)
				}
			}
			d := next(t, hn.docs)
			if d.Kind != notify.KindStalled || d.Reason != string(health.CauseHandlerFailed) || !strings.Contains(d.Message, "invisor rollback") {
				t.Fatalf("event %+v", d)
			}
			if r := hn.healthReport(); r == nil || r.State != health.StateStalled || r.Cause != health.CauseHandlerFailed {
				t.Fatalf("status report %+v", r)
			}
		})
	}
}

// health-deadline 0: H+1 an hour late, votes of one validator in four: no
// stall, no log line, no event; the gate still says healthy when H+1 comes.
func TestHealthDeadlineZeroDisablesTheStall(t *testing.T) {
	hn := newHealthNode(t, 0, 0)
	hn.comet.set(func(c *healthComet) { c.round = votesAt(t, upgradeH+1, 0) })
	hn.clock.after(time.Hour)
	for _, r := range hn.stepN(t, 5) {
		if r.State != health.StateWaiting || r.Cause != "" {
			t.Fatalf("with the deadline off: %+v", r)
		}
	}
	if hn.logs.has("stalled") {
		t.Fatal("a stall logged with the deadline off")
	}
	hn.healthHeight(upgradeH + 2)
	hn.until(t, "healthy", isState(health.StateHealthy))
	if d := next(t, hn.docs); d.Kind != notify.KindHealthy {
		t.Fatalf("event %+v, want only healthy", d)
	}
	hn.noMoreDocs(t)
}

// The old binary's halt at H (cosmovisor has not switched yet) disarms the
// gate: it reports nothing.
func TestHealthDisarmedByTheHalt(t *testing.T) {
	hn := newHealthNode(t, time.Minute, 10)
	hn.healthHalted(upgradeH)
	select {
	case <-hn.hg.done:
	case <-time.After(waitLimit):
		t.Fatal("the gate still runs after the halt at H")
	}
	if r := hn.healthReport(); r != nil {
		t.Fatalf("status report %+v after the halt", r)
	}
	hn.noMoreDocs(t)
}

// The gate is armed at boot when upgrade-info.json names H and CometBFT's state
// is at H-1 or H, not otherwise.
func TestArmHealth(t *testing.T) {
	for _, tc := range []struct {
		name          string
		info          bool
		state         int64
		armed, before bool
	}{
		{"no upgrade-info.json", false, upgradeH - 1, false, false},
		{"the block before H: this binary applies it", true, upgradeH - 1, true, false},
		{"H applied before this boot, H+1 not", true, upgradeH, true, true},
		{"long after the upgrade", true, upgradeH + 1, false, false},
		{"far behind it", true, upgradeH - 5, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l, err := home.New(t.TempDir(), "appd", home.Options{})
			if err != nil {
				t.Fatal(err)
			}
			if err := os.MkdirAll(l.Root(), 0o755); err != nil {
				t.Fatal(err)
			}
			if tc.info {
				if err := l.WriteUpgradeInfo(home.Plan{Name: "v2", Height: upgradeH}); err != nil {
					t.Fatal(err)
				}
			}
			cfg := cmtcfg.DefaultConfig().SetRoot(l.Home())
			comettest.SaveState(t, cfg, tc.state)
			logs := newLogLines()
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			n := &node{log: log.NewLogger(logs, log.OutputJSONOption()), layout: l, runCtx: ctx}
			n.armHealth(cfg, health.DefaultConfig())
			defer n.stopHealth()
			if (n.health != nil) != tc.armed {
				t.Fatalf("armed %v, want %v", n.health != nil, tc.armed)
			}
			if !tc.armed {
				if n.healthReport() != nil {
					t.Fatal("a report without a gate")
				}
				return
			}
			if n.health.arm.AppliedBefore != tc.before || n.health.arm.Upgrade != "v2" || n.health.arm.Height != upgradeH || n.health.arm.RPC {
				t.Fatalf("arm %+v", n.health.arm)
			}
			logs.wait(t, "invisor: health gate armed")
			if !logs.has("rpc.laddr") {
				t.Error("an empty rpc.laddr not said")
			}
		})
	}
}
