// Package notify tells an operator's receiver (a chat bridge, a pager, a
// dashboard) what invisor does with an upgrade: it POSTs one small versioned
// JSON document (Version, "invisor.event/1") to a webhook URL for each Event.
//
// # Use
//
//	n, err := notify.New(cfg, logger) // cfg.URL set; a nil *Notifier is off
//	n.Notify(notify.Event{Kind: notify.KindPlanSeen, Upgrade: "v2", Height: 1200, Message: "..."})
//	...
//	n.Close(ctx) // before the exec, with a short deadline (CloseWait)
//
// # Guarantees
//
//   - Notify never blocks and never fails its caller, so it may be called from
//     the block's path: it numbers the event and puts it in a bounded in-memory
//     queue (Config.QueueSize) without waiting. When the queue is full, or the
//     Notifier is closed, the event is dropped and counted (Stats.Dropped). A
//     receiver that is down or hangs costs the node one queue slot per event,
//     never a wait.
//
//   - One goroutine drains the queue, so documents are POSTed one at a time, in
//     the order Notify numbered them. Each POST is bounded by Config.Timeout; a
//     failed one (a transport error, 408, 429 or 5xx) is retried up to
//     Config.Attempts times in all, with exponential backoff and jitter between
//     Config.BackoffMin and Config.BackoffMax. Any other 4xx is not retried
//     (the receiver refuses the document; retrying cannot change its mind). An
//     event that exhausts its attempts is counted (Stats.Failed) and logged,
//     and the next one is sent.
//
//   - Every document carries Seq, numbered from 1 per process in Notify's order,
//     and Process, an id drawn once per process. A receiver de-duplicates on
//     (process, seq): a retried POST whose first try reached it (the response was
//     lost, or came after the timeout) arrives twice with the same pair. A gap in
//     seq means events were dropped (queue full) or lost at shutdown.
//
//   - The URL's userinfo and query (a token) never appear in a log line or an
//     error: they are shown through staging.Redact.
//
//   - With Config.Journal set, an event is sent once per home: the keys of the
//     last JournalKeep events taken off the queue are kept in that file, and an
//     event with the same kind, upgrade, height, sha256 and reason is not sent
//     again, by this process or by the next one (a restart, the new binary after
//     a switch). It is counted (Stats.Repeated) instead.
//
// # What is on disk
//
// Only the journal, when Config.Journal is set: a small JSON file rewritten
// atomically (home.WriteFile) before each POST; a crash leaves the last whole
// file, and a missing or damaged one only means an event may be sent again.
// The queue lives in memory only: events queued or in flight when the process
// ends are lost, and are not sent again by the next process.
//
// # What it does not do
//
//   - It does not persist, replay or batch events, and does not guarantee
//     delivery: Close (called before the exec at a switch) waits at most for
//     its context (the edge gives it CloseWait); whatever is still queued, or
//     being retried, then is lost and Close says how many. In particular a
//     "halted" event posted to a receiver that is down is usually lost; the
//     "switched" event of the new binary follows it.
//   - It does not sign documents or authenticate the receiver beyond what the
//     URL carries (https, credentials in the URL or its query).
//   - It decides no event: the edge (the root package) says when a plan was
//     seen, staged, refused, halted or switched. New kinds are new Kind
//     constants; a receiver must ignore kinds it does not know.
package notify
