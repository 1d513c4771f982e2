package staging

import "os"

// writeBehindWindow is how much a staging write may leave dirty in the page
// cache before its writeback is started.
const writeBehindWindow = 8 << 20

// writeBehind writes to f and starts the writeback of each full window as soon
// as it is written, waiting for the window before it. Dirty data stays bounded
// (about two windows), so the final fsync is short and the node's own fsyncs
// (consensus WAL, stores) never queue behind a gigabyte of staging data: without
// it, staging a 1 GiB binary stretched block intervals to over a second.
type writeBehind struct {
	f      *os.File
	off    int64 // bytes written
	synced int64 // bytes whose writeback was started
}

func (w *writeBehind) Write(p []byte) (int, error) {
	n, err := w.f.Write(p)
	w.off += int64(n)
	for w.off-w.synced >= writeBehindWindow {
		startWriteback(w.f, w.synced, writeBehindWindow)
		if w.synced >= writeBehindWindow {
			waitWriteback(w.f, w.synced-writeBehindWindow, writeBehindWindow)
		}
		w.synced += writeBehindWindow
	}
	return n, err
}
