// Package planwatch is the SDK-free half of invisor's hook: given what one block
// showed (its height, the upgrade plan in force after its blocker ran, and the
// blocker's result), it decides what the node must hear: the plan appeared,
// changed or vanished; x/upgrade halted the chain for it; the upgrade failed.
//
// Each supported SDK line has an adapter (package hook for SDK v0.55) that wraps
// the app's PreBlocker and EndBlocker, reads the plan from its x/upgrade keeper
// and asks x/upgrade's own code whether an error is its halt; this package holds
// the rules that are the same on every line, so they exist once.
//
// Watcher's methods run in the consensus path: they never block, never panic
// out (a Sink's panic is recovered and logged) and allocate nothing in a block
// where nothing changed.
package planwatch

import (
	"fmt"
	"sync"
)

// Plan is the part of an upgrade plan invisor acts on.
type Plan struct {
	Name   string
	Height int64
	Info   string
}

// Sink receives what the watcher sees. Its methods run in the consensus path
// and must return at once, with one exception: Halted may hold the halted block
// when the process could not survive its halt error (block sync), until it
// replaces the process image (syscall.Exec); the block cannot go on anyway.
type Sink interface {
	// PlanChanged is called when the plan in force appears or changes (p != nil)
	// or vanishes (p == nil: cancelled or applied); height is the block in which
	// the watcher noticed it.
	PlanChanged(p *Plan, height int64)
	// Halted is called when x/upgrade stopped the chain at height for plan p
	// because this binary has no handler for it. It may not return (see above);
	// when it returns, the block's result is x/upgrade's error, unchanged.
	Halted(p Plan, height int64)
	// Height is called with the height of every block the watcher observes
	// (from the PreBlocker, and again from the EndBlocker when both are
	// wrapped), before the plan is read, so the node knows how near the plan is
	// without asking CometBFT. It must return at once and must not allocate:
	// it runs in every block.
	Height(h int64)
}

// FailureSink is a Sink that also hears of a failed upgrade: the PreBlocker of
// the block at the plan's height returned an error that is not x/upgrade's halt
// (so this binary has the handler, and the handler, or what x/upgrade does
// around it, failed). The watcher type-asserts its Sink once, so a Sink without
// the method keeps working. UpgradeFailed runs in the consensus path, once per
// plan and watcher, and must return at once; the block's result stays err.
type FailureSink interface {
	UpgradeFailed(p Plan, height int64, err error)
}

// Logger is satisfied by the SDK's loggers of every line.
type Logger interface {
	Info(msg string, keyVals ...any)
	Error(msg string, keyVals ...any)
}

// Verdict is what x/upgrade's own code says of a block that failed while a plan
// was in force; the adapter asks it, since only x/upgrade knows its halt.
type Verdict struct {
	// Due: the plan executes at this height (x/upgrade's Plan.ShouldExecute)
	// and the height is not one the operator skips.
	Due bool
	// Halt: the error is x/upgrade's halt for this plan (its
	// BuildUpgradeNeededMsg): this binary has no handler for it.
	Halt bool
}

// Watcher keeps what was reported, so each change, halt and failure is told once.
type Watcher struct {
	sink Sink
	fail FailureSink // sink, when it is one; nil otherwise
	log  Logger

	mu      sync.Mutex
	last    *Plan // plan last reported; nil before the first block or when none
	started bool
	halted  string // haltKey of the plan whose halt was reported
	failed  string // haltKey of the plan whose failure was reported
}

// New returns a watcher that reports to sink.
func New(sink Sink, log Logger) *Watcher {
	fail, _ := sink.(FailureSink)
	return &Watcher{sink: sink, fail: fail, log: log}
}

// Height passes a block's height on to the sink, with its own recovery: a
// failing Height must not keep the plan from being read.
func (w *Watcher) Height(h int64) {
	defer w.Recover()
	w.sink.Height(h)
}

// Observe takes what the block at height showed: cur is the plan in force after
// the blocker ran (nil: none), preErr the blocker's result (nil from an
// EndBlocker, or when the block went well). judge is asked only when a plan is
// in force and preErr is not nil, so a normal block costs nothing more.
func (w *Watcher) Observe(height int64, cur *Plan, preErr error, judge func() Verdict) {
	defer w.Recover()
	w.mu.Lock()
	changed := !w.started || !samePlan(w.last, cur)
	w.started, w.last = true, cur
	halt, failed := false, false
	if cur != nil && preErr != nil {
		v := judge()
		halt = v.Due && v.Halt && w.halted != haltKey(cur)
		if halt {
			w.halted = haltKey(cur)
		}
		failed = v.Due && !v.Halt && w.fail != nil && w.failed != haltKey(cur)
		if failed {
			w.failed = haltKey(cur)
		}
	}
	w.mu.Unlock()

	if changed {
		w.sink.PlanChanged(cur, height)
	}
	if halt {
		w.sink.Halted(*cur, height)
	}
	if failed {
		w.fail.UpgradeFailed(*cur, height, preErr)
	}
}

// Recover logs a panic in invisor's code of the consensus path instead of
// letting it change the block's outcome. Call it deferred.
func (w *Watcher) Recover() {
	if r := recover(); r != nil {
		w.log.Error("invisor: recovered from a panic in the plan watcher; the block is unaffected", "panic", fmt.Sprint(r))
	}
}

func haltKey(p *Plan) string { return fmt.Sprintf("%d/%s", p.Height, p.Name) }

func samePlan(a, b *Plan) bool {
	if a == nil || b == nil {
		return a == b
	}
	return *a == *b
}
