package health

import (
	"errors"
	"strings"
	"testing"
	"time"
)

const h = 100 // the upgrade height in these tests

var t0 = time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)

// at is t0 plus s seconds: the fake clock.
func at(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }

func newGate(deadline time.Duration, rpc bool) *Gate {
	return New(Config{Deadline: deadline}, Arm{Upgrade: "v2", Height: h, Booted: t0, RPC: rpc, Daemon: "appd"})
}

// votes is a validator set of powers 10, 20, 30, 40 at height with those of
// the indexes given voting.
func votes(height int64, voted ...int) Votes {
	v := Votes{Height: height, Round: 2}
	for _, p := range []int64{10, 20, 30, 40} {
		v.Validators = append(v.Validators, Vote{Power: p})
	}
	for _, i := range voted {
		v.Validators[i].Voted = true
	}
	return v
}

// step is one thing that happens to the gate, then a Step at now with what it
// must say.
type step struct {
	feed  func(g *Gate)
	now   float64
	event Event
	state State
	cause Cause
	says  string // in the message
}

func TestGate(t *testing.T) {
	validator := func(g *Gate) { g.Polled(Node{LatestHeight: h, Validator: true}) }
	for _, tc := range []struct {
		name     string
		deadline time.Duration
		rpc      bool
		steps    []step
	}{
		{"healthy: a validator that signed H+1", time.Minute, true, []step{
			{feed: validator, now: 1, state: StateWaiting, says: "waiting for this binary to apply"},
			{feed: func(g *Gate) { g.Applied(at(2)) }, now: 2, state: StateWaiting, says: "applied at height 100; waiting for the network to commit block 101"},
			{feed: func(g *Gate) { g.Committed(at(4)) }, now: 4, state: StateWaiting, says: "waiting for this validator's first signature"},
			{feed: func(g *Gate) { g.Signed(101, at(3.5)) }, now: 5, event: EventHealthy, state: StateHealthy,
				says: `upgrade "v2" healthy: applied at height 100 at 2026-05-01T12:00:02Z, block 101 committed 4.0 s after the switch, first signed at height 101`},
			{now: 6, state: StateHealthy}, // said once
		}},
		{"healthy: not a validator", time.Minute, true, []step{
			{feed: func(g *Gate) { g.Polled(Node{LatestHeight: h}); g.Applied(at(1)); g.Committed(at(2)) }, now: 2, event: EventHealthy, state: StateHealthy,
				says: "this node is not a validator"},
		}},
		{"healthy: no RPC, signing not checked", time.Minute, false, []step{
			{feed: func(g *Gate) { g.Committed(at(2)) }, now: 2, event: EventHealthy, state: StateHealthy, says: "signing not checked"},
		}},
		{"healthy: applied before this boot", time.Minute, true, []step{
			{feed: func(g *Gate) { g.arm.AppliedBefore = true; g.Polled(Node{}); g.Committed(at(2)) }, now: 2, event: EventHealthy, state: StateHealthy,
				says: "applied at height 100 before this boot"},
		}},
		{"a validator's unknown status is no health", time.Minute, true, []step{
			{feed: func(g *Gate) { g.Polled(Node{Err: errors.New("refused")}); g.Committed(at(2)) }, now: 3, state: StateWaiting},
		}},
		{"stalled: the network, 2 of 4 online", time.Minute, true, []step{
			{feed: validator, now: 59, state: StateWaiting},
			{feed: func(g *Gate) { g.Applied(at(1)); g.ReadVotes(at(60), votes(h+1, 0, 3)) }, now: 60, event: EventStalled, state: StateStalled, cause: CauseNetwork,
				says: "waiting for the network: 2 of 4 validators online on the new version, 50.0% of the voting power; more than 2/3 is needed; the others have not switched yet"},
			{now: 61, state: StateStalled, cause: CauseNetwork},                                                                // no news: nothing said
			{feed: func(g *Gate) { g.ReadVotes(at(65), votes(h+1, 3, 0)) }, now: 65, state: StateStalled, cause: CauseNetwork}, // the same numbers
			{feed: func(g *Gate) { g.ReadVotes(at(70), votes(h+1, 0, 2, 3)) }, now: 70, event: EventStallChanged, state: StateStalled, cause: CauseNetwork,
				says: "although 3 of 4 validators, 80.0% of the voting power, vote on the new version"},
			{feed: func(g *Gate) { g.Committed(at(72)); g.Signed(101, at(72)) }, now: 72, event: EventHealthy, state: StateHealthy,
				says: "block 101 committed 72.0 s after the switch"},
		}},
		{"stalled: the handler failed, at once", time.Minute, true, []step{
			{feed: func(g *Gate) { g.Failed(at(1), "example-app: upgrade handler v2 fails in this build") }, now: 1, event: EventStalled, state: StateStalled,
				cause: CauseHandlerFailed, says: `the upgrade handler of "v2" failed on this node at height 100: example-app: upgrade handler v2 fails in this build; every node running this build fails the same way`},
			{feed: func(g *Gate) { g.ReadVotes(at(60), votes(h+1, 0)) }, now: 60, state: StateStalled, cause: CauseHandlerFailed}, // the cause stays
		}},
		{"stalled: the handler failed, with the deadline off", 0, true, []step{
			{feed: func(g *Gate) { g.Failed(at(1), "boom") }, now: 1, event: EventStalled, state: StateStalled, cause: CauseHandlerFailed},
		}},
		{"deadline 0: no stall report", 0, true, []step{
			{feed: validator, now: 3600, state: StateWaiting},
			{feed: func(g *Gate) { g.ReadVotes(at(3600), votes(h+1, 0)) }, now: 7200, state: StateWaiting},
		}},
		{"stalled: catching up", time.Minute, true, []step{
			{feed: func(g *Gate) { g.Polled(Node{CatchingUp: true, LatestHeight: 90}) }, now: 60, event: EventStalled, state: StateStalled, cause: CauseCatchingUp,
				says: "the node is catching up (block sync) at height 90"},
		}},
		{"stalled: RPC does not answer", time.Minute, true, []step{
			{feed: func(g *Gate) { g.Polled(Node{Err: errors.New("connection refused")}) }, now: 60, event: EventStalled, state: StateStalled, cause: CauseUnknown,
				says: "block 101 is not committed 1m0s after the boot, and CometBFT's RPC does not answer: connection refused"},
			{feed: func(g *Gate) { g.Polled(Node{LatestHeight: h}); g.ReadVotes(at(61), votes(h+1, 1)) }, now: 61, event: EventStalled, state: StateStalled, cause: CauseNetwork,
				says: "1 of 4 validators online on the new version, 20.0% of the voting power"},
		}},
		{"stalled: no RPC at all", time.Minute, false, []step{
			{now: 60, event: EventStalled, state: StateStalled, cause: CauseUnknown, says: "rpc.laddr is empty"},
		}},
		{"stalled: consensus elsewhere, then no votes", time.Minute, true, []step{
			{feed: func(g *Gate) { validator(g); g.ReadVotes(at(60), votes(h)) }, now: 60, event: EventStalled, state: StateStalled, cause: CauseUnknown,
				says: "consensus is at height 100, not at 101"},
			{feed: func(g *Gate) { g.ReadVotes(at(65), votes(h+1)) }, now: 65, event: EventStallChanged, state: StateStalled, cause: CauseUnknown,
				says: "holds no vote of its latest rounds at all"},
			{feed: func(g *Gate) { g.ReadVotes(at(70), Votes{Err: errors.New("timeout")}) }, now: 70, event: EventStallChanged, state: StateStalled, cause: CauseUnknown,
				says: "consensus state cannot be read: timeout"},
		}},
		{"stalled: committed but not signing", time.Minute, true, []step{
			{feed: func(g *Gate) { validator(g); g.Committed(at(5)); g.Checked(101); g.Checked(102) }, now: 60, state: StateWaiting},
			{feed: func(g *Gate) { g.Checked(103) }, now: 61, event: EventStalled, state: StateStalled, cause: CauseNotSigning,
				says: "the commits of blocks 101 to 103 carry no signature of this validator"},
			{feed: func(g *Gate) { g.Signed(104, at(62)) }, now: 62, event: EventHealthy, state: StateHealthy, says: "first signed at height 104"},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := newGate(tc.deadline, tc.rpc)
			for i, s := range tc.steps {
				if s.feed != nil {
					s.feed(g)
				}
				ev := g.Step(at(s.now))
				r := g.Report()
				if ev != s.event || r.State != s.state || r.Cause != s.cause || !strings.Contains(r.Message, s.says) {
					t.Fatalf("step %d: event %d, %s (%s): %q\nwant event %d, %s (%s) saying %q", i, ev, r.State, r.Cause, r.Message, s.event, s.state, s.cause, s.says)
				}
				if r.State == StateStalled && r.Advice == "" {
					t.Errorf("step %d: a stall without advice: %+v", i, r)
				}
				if r.Upgrade != "v2" || r.Height != h || !r.Booted.Equal(t0) {
					t.Errorf("step %d: report names %q at %d booted %v", i, r.Upgrade, r.Height, r.Booted)
				}
			}
		})
	}
}

// The report of a healthy validator carries the three moments; the network
// stall carries the online power.
func TestGateReportFields(t *testing.T) {
	g := newGate(time.Minute, true)
	g.Polled(Node{Validator: true})
	g.ReadVotes(at(60), votes(h+1, 0, 3))
	g.Step(at(60))
	o := g.Report().Online
	if o == nil || *o != (Online{Validators: 2, Of: 4, Power: 50, Total: 100, Fraction: 0.5, Round: 2}) {
		t.Fatalf("online %+v", o)
	}
	g.Applied(at(1))
	g.Committed(at(61))
	g.Signed(101, at(60.5))
	g.Step(at(61))
	r := g.Report()
	if r.AppliedAt == nil || !r.AppliedAt.Equal(at(1)) || r.CommittedAt == nil || !r.CommittedAt.Equal(at(61)) || r.CommittedSeconds != 61 ||
		r.SignedHeight != 101 || r.SignedAt == nil || !r.SignedAt.Equal(at(60.5)) || !r.Validator || r.Cause != "" || r.Online != nil || r.Advice != "" {
		t.Fatalf("healthy report %+v", r)
	}
}

// The edge asks CometBFT only for what the gate needs: the signature from
// H+1 on once H+1 is committed (for a validator), the votes every
// RefreshEvery once the deadline passed, nothing once healthy.
func TestGateSaysWhatToAsk(t *testing.T) {
	g := newGate(time.Minute, true)
	if _, ok := g.NeedsSignature(); ok {
		t.Fatal("a signature asked for before H+1")
	}
	if g.NeedsVotes(at(59)) || !g.NeedsVotes(at(60)) {
		t.Fatal("votes asked for before the deadline, or not at it")
	}
	g.ReadVotes(at(60), votes(h+1, 0))
	if g.NeedsVotes(at(64)) || !g.NeedsVotes(at(65)) {
		t.Fatal("votes not refreshed every RefreshEvery")
	}
	g.Polled(Node{Validator: true})
	g.Committed(at(66))
	if g.NeedsVotes(at(70)) {
		t.Fatal("votes asked for after H+1 was committed")
	}
	if from, ok := g.NeedsSignature(); !ok || from != 101 {
		t.Fatalf("signature from %d, %v; want from 101", from, ok)
	}
	g.Checked(101)
	if from, _ := g.NeedsSignature(); from != 102 {
		t.Fatalf("signature from %d after 101 was checked, want 102", from)
	}
	g.Signed(102, at(67))
	g.Step(at(67))
	if _, ok := g.NeedsSignature(); ok || !g.Done() {
		t.Fatal("still asking once healthy")
	}
	if err := (Config{Deadline: -time.Second}).Validate(); err == nil {
		t.Error("a negative deadline validated")
	}
	if err := DefaultConfig().Validate(); err != nil || DefaultConfig().Deadline != DefaultDeadline {
		t.Errorf("defaults: %+v, %v", DefaultConfig(), err)
	}
}
