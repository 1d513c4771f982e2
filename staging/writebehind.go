package staging

import (
	"os"
	"time"
)

// writeBehindWindow is how much a staging write may leave dirty in the page
// cache before its writeback is started.
const writeBehindWindow = 8 << 20

// paceWindow is the unit of a paced write: written, flushed, then rested after.
// At 2 MiB a node fsync that arrives during the flush waits a few milliseconds
// on a fast disk and some tens of milliseconds on a 100 MB/s cloud volume.
const paceWindow = 2 << 20

// writeBehind writes to f and keeps its dirty data bounded, so the final fsync
// is short and the node's own fsyncs (consensus WAL, stores) never queue behind
// a gigabyte of staging data: without it, staging a 1 GiB binary stretched block
// intervals to over a second.
//
// Unpaced (pace nil, or hurrying), it starts the writeback of each full window as
// soon as it is written and waits for the window before it. Paced, it flushes
// each paceWindow and then rests (see pacer), so staging holds the disk only a
// small share of the time even on a slow volume.
type writeBehind struct {
	f      *os.File
	pace   *pacer
	off    int64 // bytes written
	synced int64 // bytes whose writeback was started
}

func (w *writeBehind) Write(p []byte) (int, error) {
	n, err := w.f.Write(p)
	w.off += int64(n)
	for w.pace.active() && w.off-w.synced >= paceWindow {
		start := time.Now()
		flushWindow(w.f, w.synced, paceWindow)
		w.synced += paceWindow
		w.pace.rest(time.Since(start))
	}
	for w.off-w.synced >= writeBehindWindow {
		startWriteback(w.f, w.synced, writeBehindWindow)
		if w.synced >= writeBehindWindow {
			waitWriteback(w.f, w.synced-writeBehindWindow, writeBehindWindow)
		}
		w.synced += writeBehindWindow
	}
	return n, err
}
