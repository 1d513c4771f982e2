package health

import (
	"errors"
	"fmt"
	"time"
)

// DefaultDeadline is how long after the boot block H+1 may take before a stall
// is reported: well past a block interval and the handshake of a large store,
// short enough that the operator hears while validators are still around.
const DefaultDeadline = 60 * time.Second

// RefreshEvery is how often the votes are read again while H+1 is late.
const RefreshEvery = 5 * time.Second

// UnsignedBlocks is how many commits after H without this validator's
// signature, once H+1 is committed and the deadline passed, make a stall.
const UnsignedBlocks = 3

// Config is the gate's configuration.
type Config struct {
	// Deadline bounds the wait for H+1 after the boot; 0 never reports a stall
	// (a failed handler is still reported).
	Deadline time.Duration
}

// DefaultConfig returns the defaults.
func DefaultConfig() Config { return Config{Deadline: DefaultDeadline} }

// Validate checks c.
func (c Config) Validate() error {
	if c.Deadline < 0 {
		return errors.New("health: Deadline is negative; want 0 (no stall report) or a positive duration")
	}
	return nil
}

// State is where the upgrade stands.
type State string

// States of a Report.
const (
	// StateWaiting: H+1 not committed yet (or, for a validator, not signed yet),
	// within the deadline.
	StateWaiting State = "waiting"
	// StateHealthy: H+1 committed, and signed by this validator after H. Final.
	StateHealthy State = "healthy"
	// StateStalled: the handler failed, or the deadline passed; Cause says why.
	StateStalled State = "stalled"
)

// States lists every State, for gauges by state.
var States = []State{StateWaiting, StateHealthy, StateStalled}

// Cause is why an upgrade stalled.
type Cause string

// Causes of a stall.
const (
	// CauseHandlerFailed: the upgrade handler returned an error on this node.
	CauseHandlerFailed Cause = "handler-failed"
	// CauseNetwork: consensus is at H+1 and votes arrive, but not enough:
	// validators have not switched yet.
	CauseNetwork Cause = "network"
	// CauseCatchingUp: the node is in block sync and has no H+1 from its peers.
	CauseCatchingUp Cause = "catching-up"
	// CauseNotSigning: H+1 was committed, but the commits since carry no
	// signature of this validator.
	CauseNotSigning Cause = "not-signing"
	// CauseUnknown: anything else (CometBFT cannot be asked, consensus is not at
	// H+1, no vote at all); the message says what was observed.
	CauseUnknown Cause = "unknown"
)

// Online is how much of the validator set CometBFT holds votes of at H+1:
// those validators run the new version (the old binaries halted at H and
// cannot vote at H+1).
type Online struct {
	Validators int     `json:"validators"`
	Of         int     `json:"of"`
	Power      int64   `json:"power"`
	Total      int64   `json:"total"`
	Fraction   float64 `json:"fraction"`
	Round      int32   `json:"round"`
}

// Report is the gate's state as the status file, `invisor status` and the
// metrics show it.
type Report struct {
	Upgrade string    `json:"upgrade"`
	Height  int64     `json:"height"`
	State   State     `json:"state"`
	Booted  time.Time `json:"booted"`
	// AppliedAt is when this binary applied block H (nil: not yet, or before
	// this boot: AppliedBefore).
	AppliedAt     *time.Time `json:"applied_at,omitempty"`
	AppliedBefore bool       `json:"applied_before_boot,omitempty"`
	// CommittedAt is when block H+1 was seen committed (CometBFT stored it, or
	// this node ran H+2);
	// CommittedSeconds is that, in seconds after the boot.
	CommittedAt      *time.Time `json:"committed_at,omitempty"`
	CommittedSeconds float64    `json:"committed_seconds_after_switch,omitempty"`
	// Validator: CometBFT says this node has voting power.
	Validator    bool       `json:"validator"`
	SignedHeight int64      `json:"signed_height,omitempty"`
	SignedAt     *time.Time `json:"signed_at,omitempty"`
	Cause        Cause      `json:"cause,omitempty"`
	Online       *Online    `json:"online,omitempty"`
	Message      string     `json:"message"`
	Advice       string     `json:"advice,omitempty"`
}

// Arm says what the gate watches.
type Arm struct {
	Upgrade string
	Height  int64 // H, the upgrade's height
	Booted  time.Time
	// AppliedBefore: CometBFT's state at the boot was at H already (an earlier
	// process of this binary applied it; H+1 was not committed).
	AppliedBefore bool
	// RPC: CometBFT's RPC can be asked. Without it the signing is not checked
	// and a stall is not diagnosed.
	RPC bool
	// Daemon is the chain binary's name, for the advice.
	Daemon string
}

// Node is what one ask of CometBFT's /status saw.
type Node struct {
	Err          error // CometBFT could not be asked; the rest is zero
	CatchingUp   bool
	LatestHeight int64
	Validator    bool // validator_info.voting_power > 0
}

// Votes is what one read of CometBFT's consensus state saw.
type Votes struct {
	Err        error // it could not be read; the rest is zero
	Height     int64
	Round      int32
	Validators []Vote // the set at Height, in CometBFT's order
}

// Vote is one validator of the set: its power and whether it voted in the
// latest rounds.
type Vote struct {
	Power int64
	Voted bool
}

// Event is what a Step asks the edge to say.
type Event int

// Events of Step.
const (
	EventNone Event = iota
	// EventHealthy: the upgrade became healthy (once).
	EventHealthy
	// EventStalled: a stall with a cause not reported before: log and notify.
	EventStalled
	// EventStallChanged: the same cause reads differently (other numbers): log.
	EventStallChanged
)

// Gate is the state machine of one upgrade's health. Its methods are not safe
// for concurrent use: one goroutine owns it.
type Gate struct {
	cfg Config
	arm Arm

	appliedAt, committedAt time.Time
	failedAt               time.Time
	failErr                string

	node           *Node
	validatorKnown bool
	validator      bool
	signedHeight   int64
	signedAt       time.Time
	checked        int64 // highest height read whose commit lacks this validator
	votes          *Votes
	votesAt        time.Time

	rep      Report
	notified Cause  // the cause of the last EventStalled
	said     string // the message of the last stall event
}

// New returns a gate for arm, waiting.
func New(cfg Config, arm Arm) *Gate {
	g := &Gate{cfg: cfg, arm: arm}
	g.rep = g.base()
	g.rep.State = StateWaiting
	g.rep.Message = g.waitingMessage()
	return g
}

// Applied: this binary applied block H at at.
func (g *Gate) Applied(at time.Time) {
	if g.appliedAt.IsZero() {
		g.appliedAt = at
	}
}

// Failed: the upgrade handler failed at H with err (at most the first is kept).
func (g *Gate) Failed(at time.Time, err string) {
	if g.failErr == "" {
		g.failedAt, g.failErr = at, err
	}
}

// Committed: block H+1 was committed at at.
func (g *Gate) Committed(at time.Time) {
	if g.committedAt.IsZero() {
		g.committedAt = at
	}
}

// Polled records what CometBFT's /status said.
func (g *Gate) Polled(n Node) {
	g.node = &n
	if n.Err == nil {
		g.validatorKnown, g.validator = true, n.Validator
	}
}

// Signed: the commit of height (> H) carries this validator's signature, made at at.
func (g *Gate) Signed(height int64, at time.Time) {
	if g.signedHeight == 0 && height > g.arm.Height {
		g.signedHeight, g.signedAt = height, at
	}
}

// Checked: the commit of height was read and does not carry this validator's
// signature.
func (g *Gate) Checked(height int64) {
	if height > g.checked {
		g.checked = height
	}
}

// ReadVotes records what the consensus state said at now.
func (g *Gate) ReadVotes(now time.Time, v Votes) {
	g.votes, g.votesAt = &v, now
}

// NeedsSignature says whether the edge should look for this validator's
// signature, and from which height.
func (g *Gate) NeedsSignature() (from int64, ok bool) {
	if g.rep.State == StateHealthy || g.committedAt.IsZero() || !g.arm.RPC || !g.validatorKnown || !g.validator || g.signedHeight > 0 {
		return 0, false
	}
	return max(g.arm.Height+1, g.checked+1), true
}

// NeedsVotes says whether the edge should read the consensus state at now:
// H+1 is late (the deadline passed) and the last read is RefreshEvery old.
func (g *Gate) NeedsVotes(now time.Time) bool {
	return g.arm.RPC && g.cfg.Deadline > 0 && g.committedAt.IsZero() && g.failErr == "" &&
		!now.Before(g.deadlineAt()) && (g.votes == nil || now.Sub(g.votesAt) >= RefreshEvery)
}

// Done reports whether the gate reached its final state (healthy): the edge
// stops asking CometBFT.
func (g *Gate) Done() bool { return g.rep.State == StateHealthy }

// Report returns the gate's state as of the last Step.
func (g *Gate) Report() Report { return g.rep }

// Step evaluates the gate at now and says what the edge must announce.
func (g *Gate) Step(now time.Time) Event {
	if g.rep.State == StateHealthy {
		return EventNone
	}
	rep := g.base()
	rep.State = StateWaiting
	switch {
	case !g.committedAt.IsZero() && g.signedEnough():
		rep.State, rep.Message = StateHealthy, g.healthyMessage()
	case !g.committedAt.IsZero():
		rep.Message = fmt.Sprintf("block %d committed; waiting for this validator's first signature after height %d", g.arm.Height+1, g.arm.Height)
		if g.cfg.Deadline > 0 && !now.Before(g.deadlineAt()) && g.checked >= g.arm.Height+UnsignedBlocks {
			rep.State, rep.Cause = StateStalled, CauseNotSigning
			rep.Message = fmt.Sprintf("block %d committed, but the commits of blocks %d to %d carry no signature of this validator",
				g.arm.Height+1, g.arm.Height+1, g.checked)
			rep.Advice = "check the validator's key and signer (priv_validator_key.json, or the remote signer at priv_validator_laddr) and the node's log for signing errors"
		}
	case g.failErr != "":
		rep.State, rep.Cause = StateStalled, CauseHandlerFailed
		rep.Message = fmt.Sprintf("the upgrade handler of %q failed on this node at height %d: %s; every node running this build fails the same way",
			g.arm.Upgrade, g.arm.Height, g.failErr)
		d := g.daemon()
		rep.Advice = fmt.Sprintf("restarting this build fails again: stop the node, run `%s invisor rollback`, then stage a fixed build with `%s invisor stage %s --replace --file PATH` and start the node (docs/upgrades/rollback.md)",
			d, d, g.arm.Upgrade)
	case g.cfg.Deadline > 0 && !now.Before(g.deadlineAt()):
		rep.State = StateStalled
		g.diagnose(&rep)
	default:
		rep.Message = g.waitingMessage()
	}
	g.rep = rep
	return g.event()
}

func (g *Gate) event() Event {
	switch g.rep.State {
	case StateHealthy:
		return EventHealthy
	case StateStalled:
		if g.rep.Cause != g.notified {
			g.notified, g.said = g.rep.Cause, g.rep.Message
			return EventStalled
		}
		if g.rep.Message != g.said {
			g.said = g.rep.Message
			return EventStallChanged
		}
	}
	return EventNone
}

// diagnose says why H+1 is late, from what CometBFT said last.
func (g *Gate) diagnose(rep *Report) {
	next := g.arm.Height + 1
	late := fmt.Sprintf("block %d is not committed %s after the boot", next, g.cfg.Deadline)
	rep.Cause = CauseUnknown
	rep.Advice = fmt.Sprintf("look at the node's log around height %d; `%s invisor status` shows what invisor sees", next, g.daemon())
	n, v := g.node, g.votes
	switch {
	case !g.arm.RPC:
		rep.Message = late + ", and CometBFT cannot be asked why (rpc.laddr is empty)"
	case n == nil:
		rep.Message = late + ", and CometBFT has not been asked yet"
	case n.Err != nil:
		rep.Message = fmt.Sprintf("%s, and CometBFT's RPC does not answer: %v", late, n.Err)
		rep.Advice = fmt.Sprintf("look at the node's log: it may be stuck in its handshake (replaying block %d) or stopped", g.arm.Height)
	case n.CatchingUp:
		rep.Cause = CauseCatchingUp
		rep.Message = fmt.Sprintf("%s: the node is catching up (block sync) at height %d", late, n.LatestHeight)
		rep.Advice = fmt.Sprintf("wait: block sync applies block %d once a peer has it; if the height does not move, check the node's peers", next)
	case v == nil:
		rep.Message = late + ", and CometBFT's consensus state has not been read yet"
	case v.Err != nil:
		rep.Message = fmt.Sprintf("%s, and CometBFT's consensus state cannot be read: %v", late, v.Err)
	case v.Height != next:
		rep.Message = fmt.Sprintf("%s, and CometBFT's consensus is at height %d, not at %d", late, v.Height, next)
	default:
		o := tally(*v)
		rep.Online = &o
		switch {
		case o.Validators == 0:
			rep.Message = fmt.Sprintf("%s: consensus is at height %d and holds no vote of its latest rounds at all, not even this node's", late, next)
			rep.Advice = "check the node's peers (persistent_peers, CometBFT's /net_info) and its log"
		case 3*o.Power > 2*o.Total:
			rep.Cause = CauseNetwork
			rep.Message = fmt.Sprintf("%s although %d of %d validators, %.1f%% of the voting power, vote on the new version", late, o.Validators, o.Of, 100*o.Fraction)
			rep.Advice = "more than 2/3 is online, so consensus should commit shortly; if it does not, look for an app hash or consensus error in the node's log and compare with the other validators"
		default:
			rep.Cause = CauseNetwork
			rep.Message = fmt.Sprintf("waiting for the network: %d of %d validators online on the new version, %.1f%% of the voting power; more than 2/3 is needed; the others have not switched yet",
				o.Validators, o.Of, 100*o.Fraction)
			rep.Advice = "check with the other validators (a chat channel); nothing to do on this node"
		}
	}
}

// tally counts the validators that voted and their power.
func tally(v Votes) Online {
	o := Online{Of: len(v.Validators), Round: v.Round}
	for _, val := range v.Validators {
		o.Total += val.Power
		if val.Voted {
			o.Validators++
			o.Power += val.Power
		}
	}
	if o.Total > 0 {
		o.Fraction = float64(o.Power) / float64(o.Total)
	}
	return o
}

// signedEnough: this node's signing is not needed (not a validator, or it
// cannot be checked) or was seen.
func (g *Gate) signedEnough() bool {
	return !g.arm.RPC || (g.validatorKnown && !g.validator) || g.signedHeight > 0
}

func (g *Gate) deadlineAt() time.Time { return g.arm.Booted.Add(g.cfg.Deadline) }

func (g *Gate) daemon() string {
	if g.arm.Daemon == "" {
		return "<appd>"
	}
	return g.arm.Daemon
}

// base is the report's fixed part: what happened so far.
func (g *Gate) base() Report {
	r := Report{Upgrade: g.arm.Upgrade, Height: g.arm.Height, Booted: g.arm.Booted, AppliedBefore: g.arm.AppliedBefore && g.appliedAt.IsZero(),
		Validator: g.validatorKnown && g.validator, SignedHeight: g.signedHeight}
	if !g.appliedAt.IsZero() {
		t := g.appliedAt.UTC()
		r.AppliedAt = &t
	}
	if !g.committedAt.IsZero() {
		t := g.committedAt.UTC()
		r.CommittedAt = &t
		r.CommittedSeconds = g.committedAt.Sub(g.arm.Booted).Seconds()
	}
	if g.signedHeight > 0 {
		t := g.signedAt.UTC()
		r.SignedAt = &t
	}
	return r
}

func (g *Gate) waitingMessage() string {
	if g.appliedAt.IsZero() && !g.arm.AppliedBefore {
		return fmt.Sprintf("waiting for this binary to apply upgrade %q at height %d", g.arm.Upgrade, g.arm.Height)
	}
	return fmt.Sprintf("upgrade %q applied at height %d; waiting for the network to commit block %d", g.arm.Upgrade, g.arm.Height, g.arm.Height+1)
}

func (g *Gate) healthyMessage() string {
	applied := fmt.Sprintf("applied at height %d before this boot", g.arm.Height)
	if !g.appliedAt.IsZero() {
		applied = fmt.Sprintf("applied at height %d at %s", g.arm.Height, g.appliedAt.UTC().Format(time.RFC3339))
	}
	signed := "this node is not a validator"
	switch {
	case !g.arm.RPC:
		signed = "signing not checked (rpc.laddr is empty)"
	case g.signedHeight > 0:
		signed = fmt.Sprintf("first signed at height %d at %s", g.signedHeight, g.signedAt.UTC().Format(time.RFC3339))
	}
	return fmt.Sprintf("upgrade %q healthy: %s, block %d committed %.1f s after the switch, %s",
		g.arm.Upgrade, applied, g.arm.Height+1, g.committedAt.Sub(g.arm.Booted).Seconds(), signed)
}
