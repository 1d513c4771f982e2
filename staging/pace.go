package staging

import (
	"context"
	"io/fs"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"
)

// maxRest bounds one rest of the pacer, so a single slow flush (a disk hiccup)
// does not park staging for long.
const maxRest = 2 * time.Second

// shrinkStep is how much of a large file removeTreePaced frees per step. Freeing
// blocks is disk work too: on a filesystem mounted with online discard, deleting
// a 1 GiB file and syncing took 0.45 s on the 2-core test machine, and every
// fsync of the node waited for it; 16 MiB steps take about 8 ms each.
const shrinkStep = 16 << 20

// pacer keeps staging's disk writes in the background while the node runs.
// After each window is on disk it rests (1/share - 1) times as long as the
// flush took, so staging keeps the disk busy at most share of the time whatever
// the disk's speed: the node's fsyncs find a short queue. On a disk that
// flushes 2 MiB in 2.5 ms and share 0.1 that is about 80 MB/s. The measure is
// the flush itself, so a disk that is busy with the node's own writes slows
// staging down further. Without sync_file_range (not Linux) flushes take no
// time and nothing is paced.
type pacer struct {
	ctx   context.Context // done: full speed (the work is being cancelled or the node stops)
	share float64         // fraction of disk time; outside (0, 1) means unpaced
	hurry *atomic.Bool    // set: full speed from now on (the chain waits for the binary)
	slept time.Duration
}

func newPacer(ctx context.Context, share float64, hurry *atomic.Bool) *pacer {
	return &pacer{ctx: ctx, share: share, hurry: hurry}
}

func (p *pacer) active() bool {
	return p != nil && p.share > 0 && p.share < 1 && (p.hurry == nil || !p.hurry.Load()) && p.ctx.Err() == nil
}

// rest sleeps after a flush that kept the disk busy for busy.
func (p *pacer) rest(busy time.Duration) {
	d := time.Duration(float64(busy) * (1/p.share - 1))
	d = min(d, maxRest)
	if d <= 0 {
		return
	}
	time.Sleep(d)
	p.slept += d
}

// rested is the total time spent resting (nil-safe).
func (p *pacer) rested() time.Duration {
	if p == nil {
		return 0
	}
	return p.slept
}

// removeTreePaced removes root like os.RemoveAll. While p is active, regular
// files larger than shrinkStep are first shrunk step by step (truncate, fsync,
// rest), so the blocks are freed (and discarded) in small pieces instead of in
// one journal commit that the node's fsyncs would queue behind. Errors of the
// shrinking are ignored: RemoveAll still removes everything.
func removeTreePaced(root string, p *pacer) error {
	if p.active() {
		_ = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
			if err == nil && d.Type().IsRegular() {
				shrinkPaced(path, p)
			}
			return nil
		})
	}
	return os.RemoveAll(root)
}

// shrinkPaced truncates the file at path to zero in shrinkStep steps, each
// synced and followed by a rest, while p stays active.
func shrinkPaced(path string, p *pacer) {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return
	}
	for size := fi.Size(); size > shrinkStep && p.active(); {
		size -= shrinkStep
		start := time.Now()
		if f.Truncate(size) != nil || f.Sync() != nil {
			return
		}
		p.rest(time.Since(start))
	}
}
