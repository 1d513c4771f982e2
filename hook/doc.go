// Package hook watches the x/upgrade plan from inside the consensus path.
//
// A PlanWatcher wraps the app's PreBlocker (and, through Install for a
// hand-written app.go or Load for a depinject app on runtime.App, its
// EndBlocker). In every block it passes the block's height on (Sink.Height), and after the wrapped blocker has run, it reads the
// upgrade plan (one KV read) and tells its Sink when the plan in force appeared,
// changed or vanished — in the very block whose EndBlocker scheduled it — and
// when x/upgrade halted the chain at the plan height because this binary has no
// handler for it. A Sink that also implements FailureSink is told when the
// PreBlocker failed at a due plan's height for another reason (this binary has
// the handler, and the handler failed): the post-upgrade health gate's input.
//
// Guarantees: the block's result is exactly the wrapped PreBlocker's result —
// same response, same error, no state written, no gas charged to the block;
// a panic inside invisor code is recovered and logged; the Sink is called
// synchronously but must not block (staging and the relauncher hand the work to
// their own goroutines through latest-value slots), except that Halted may hold a
// halted block the process could not survive (block sync) until it replaces the
// process image.
//
// The hook leaves nothing on disk and does not download, verify or exec
// anything: that is the job of the staging and relauncher packages.
package hook
