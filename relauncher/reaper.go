package relauncher

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// DefaultReapGrace is how long a zombie child that this process did not Hold
// stays unreaped before the Reaper reaps it. A child this process started with
// os/exec is reaped by its own Wait the moment it exits (the waiting thread is
// blocked in the kernel), so only orphans (and children nobody waits for) stay
// zombies that long.
const DefaultReapGrace = 2 * time.Second

// Reaper reaps orphaned children when this process is PID 1 of a PID namespace
// (a container's init, or the node under `unshare --pid --fork`): the kernel
// reparents every orphan in the namespace to PID 1, which must wait for it or
// leave a zombie in the process table. A pre-upgrade script that leaves a
// background job, a preflight that forks, a shell of `kubectl exec` that exits
// before its children: all end up here.
//
// It never steals a child this process waits for itself. A reaper calling
// wait4(-1) would take the exit status of exec.Cmd children and fail their
// Wait with ECHILD (a pre-upgrade judged failed, a preflight refused). Instead,
// on each SIGCHLD it lists the zombies whose parent is this process (/proc),
// skips the PIDs held with Hold, and reaps, through a pidfd of exactly that
// process, only a zombie that has stayed one for the grace period: a child
// whose owner waits for it is gone long before.
//
// Only Linux has zombies to find this way; elsewhere Run returns at once. A
// process that is not PID 1 (under systemd, or with `docker run --init`) has
// an init that reaps for it and needs no Reaper. syscall.Exec keeps PID 1 and
// the children; the signal subscription ends with the image, and the new
// image's Reaper, started at its boot, finds what was left.
type Reaper struct {
	log   Logger
	grace time.Duration
	after func(time.Duration) <-chan time.Time

	mu   sync.Mutex
	held map[int]int // pid -> number of holds

	reaped atomic.Int64
}

// NewReaper returns a Reaper that reaps a zombie it does not hold after grace
// (0 means DefaultReapGrace). log may be nil.
func NewReaper(log Logger, grace time.Duration) *Reaper {
	if log == nil {
		log = nopLogger{}
	}
	if grace <= 0 {
		grace = DefaultReapGrace
	}
	return &Reaper{log: log, grace: grace, after: time.After, held: map[int]int{}}
}

// IsInit reports whether this process is PID 1 of its PID namespace, the
// process that must reap orphans (pid is os.Getpid()).
func IsInit(pid int) bool { return pid == 1 }

// Hold marks pid as a child this process waits for itself, later than right
// away (a child started now and waited for after other work): the Reaper
// leaves it alone, however long it stays a zombie, until release is called
// (after its Wait returned). Holding a nil Reaper is a no-op.
func (r *Reaper) Hold(pid int) (release func()) {
	if r == nil {
		return func() {}
	}
	r.mu.Lock()
	r.held[pid]++
	r.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			r.mu.Lock()
			defer r.mu.Unlock()
			if r.held[pid]--; r.held[pid] <= 0 {
				delete(r.held, pid)
			}
		})
	}
}

func (r *Reaper) isHeld(pid int) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.held[pid] > 0
}

// Reaped is how many zombies the Reaper has reaped so far.
func (r *Reaper) Reaped() int64 { return r.reaped.Load() }

// Run reaps until ctx ends: once at start (a zombie left across an exec sent
// its SIGCHLD to the image before), then on every SIGCHLD, and again when the
// grace of a zombie seen runs out. It returns nil when ctx ends, or at once
// where there is nothing to reap this way (not Linux).
func (r *Reaper) Run(ctx context.Context) error { return r.run(ctx) }
