package staging

import (
	"os"

	"golang.org/x/sys/unix"
)

// startWriteback starts writing [off, off+n) of f to disk without waiting.
// Errors are ignored: it is only a hint, and the final fsync reports failures.
func startWriteback(f *os.File, off, n int64) {
	_ = unix.SyncFileRange(int(f.Fd()), off, n, unix.SYNC_FILE_RANGE_WRITE)
}

// waitWriteback waits until [off, off+n) of f has been written to disk.
func waitWriteback(f *os.File, off, n int64) {
	_ = unix.SyncFileRange(int(f.Fd()), off, n,
		unix.SYNC_FILE_RANGE_WAIT_BEFORE|unix.SYNC_FILE_RANGE_WRITE|unix.SYNC_FILE_RANGE_WAIT_AFTER)
}

// flushWindow writes [off, off+n) of f to stable storage, the device's cache
// included (fdatasync), and waits. A paced write flushes each window this way so
// that what staging wrote is not left in the disk's cache for the node's next
// fsync to flush: with sync_file_range alone, block proposals still came 30-50 ms
// late while staging wrote.
func flushWindow(f *os.File, off, n int64) {
	_ = unix.SyncFileRange(int(f.Fd()), off, n,
		unix.SYNC_FILE_RANGE_WAIT_BEFORE|unix.SYNC_FILE_RANGE_WRITE|unix.SYNC_FILE_RANGE_WAIT_AFTER)
	_ = unix.Fdatasync(int(f.Fd()))
}
