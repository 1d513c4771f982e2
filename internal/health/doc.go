// Package health is the post-upgrade health gate: after a switch to the binary
// of the upgrade at height H, it decides whether the upgrade worked, and if not,
// why, in words an operator can act on.
//
// A Gate is a state machine fed by events and a clock, with no I/O of its own:
// the process edge tells it that this binary applied block H (Applied), that
// the upgrade handler failed (Failed), that the network committed H+1
// (Committed: CometBFT's block store holds H+1, or the
// node runs H+2; not a PreBlocker at H+1, which optimistic execution runs for a
// mere proposal), what the node's
// CometBFT says (Polled, Signed, Checked, Votes), and asks it at each step
// (Step) what changed. The edge logs, publishes and sends what Step returns.
//
// Guarantees:
//   - healthy means H+1 was committed and, for a validator, that at least one
//     commit after H carries this validator's signature; it is final;
//   - a failed upgrade handler is reported at once (the handshake that runs it
//     may end the process right after), whatever the deadline;
//   - otherwise a stall is reported only once Config.Deadline has passed since
//     the boot without H+1 committed, never with Deadline 0; its cause is the
//     first that holds of: the handler failed, the node catches up in block
//     sync, consensus is at H+1 with votes seen (the network: how much voting
//     power is online on the new version), anything else as observed;
//   - Step says EventStalled once per cause, EventStallChanged when the same
//     cause reads differently (other numbers), so a receiver is not paged at
//     every poll.
//
// What is on disk: nothing. What it does not do: it asks no one, starts no
// goroutine, and decides nothing about the switch itself.
package health
