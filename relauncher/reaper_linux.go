//go:build linux

package relauncher

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// procRoot is where the process table is read from: the PID namespace's own
// /proc (a container's, or `unshare --mount-proc`), whose PIDs are the ones
// os.Getpid and wait speak.
const procRoot = "/proc"

// zombie is one zombie child as /proc shows it; start (field 22 of stat, in
// clock ticks since boot) tells a reused PID from the process first seen.
type zombie struct {
	pid   int
	start uint64
	comm  string
}

// procStat is what the Reaper reads of /proc/<pid>/stat.
type procStat struct {
	comm  string
	state byte
	ppid  int
	start uint64
}

// parseStat reads /proc/<pid>/stat's line: "pid (comm) state ppid ... starttime
// ...". comm may hold spaces and parentheses, so the fields are counted from
// the last ')'.
func parseStat(b []byte) (procStat, error) {
	open, end := bytes.IndexByte(b, '('), bytes.LastIndexByte(b, ')')
	if open < 0 || end < open {
		return procStat{}, errors.New("no (comm)")
	}
	f := bytes.Fields(b[end+1:])
	// f[0] is field 3 (state), f[1] field 4 (ppid), f[19] field 22 (starttime).
	if len(f) < 20 || len(f[0]) != 1 {
		return procStat{}, fmt.Errorf("%d fields after comm", len(f))
	}
	ppid, err := strconv.Atoi(string(f[1]))
	if err != nil {
		return procStat{}, fmt.Errorf("ppid: %w", err)
	}
	start, err := strconv.ParseUint(string(f[19]), 10, 64)
	if err != nil {
		return procStat{}, fmt.Errorf("starttime: %w", err)
	}
	return procStat{comm: string(b[open+1 : end]), state: f[0][0], ppid: ppid, start: start}, nil
}

func readStat(root string, pid int) (procStat, error) {
	b, err := os.ReadFile(filepath.Join(root, strconv.Itoa(pid), "stat"))
	if err != nil {
		return procStat{}, err
	}
	return parseStat(b)
}

// childZombies lists the zombies under root whose parent is self.
func childZombies(root string, self int) ([]zombie, error) {
	ents, err := os.ReadDir(root)
	if err != nil {
		return nil, err
	}
	var out []zombie
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || !e.IsDir() {
			continue
		}
		st, err := readStat(root, pid)
		if err != nil || st.state != 'Z' || st.ppid != self {
			continue // gone meanwhile, or not ours to reap
		}
		out = append(out, zombie{pid: pid, start: st.start, comm: st.comm})
	}
	return out, nil
}

func (r *Reaper) run(ctx context.Context) error {
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGCHLD)
	defer signal.Stop(sigs)
	seen := map[zombie]time.Time{}
	warned := false
	for {
		next, err := r.sweep(seen, time.Now())
		if err != nil && !warned {
			warned = true
			r.log.Warn("invisor: cannot list this process's zombie children; orphans in this PID namespace stay zombies (mount the namespace's own /proc)",
				"proc", procRoot, "err", err)
		}
		var due <-chan time.Time
		if next > 0 {
			due = r.after(next)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-sigs:
		case <-due:
		}
	}
}

// sweep reaps the zombie children not held whose grace ran out, and returns how
// long until the next one seen is due (0: none is waiting). seen holds when
// each zombie was first seen; zombies gone meanwhile are dropped from it.
func (r *Reaper) sweep(seen map[zombie]time.Time, now time.Time) (time.Duration, error) {
	self := os.Getpid()
	zs, err := childZombies(procRoot, self)
	if err != nil {
		return 0, err
	}
	present := make(map[zombie]bool, len(zs))
	var next time.Duration
	for _, z := range zs {
		present[z] = true
		if r.isHeld(z.pid) {
			continue
		}
		first, ok := seen[z]
		if !ok {
			seen[z], first = now, now
		}
		if left := r.grace - now.Sub(first); left > 0 {
			if next == 0 || left < next {
				next = left
			}
			continue
		}
		delete(seen, z)
		if err := reap(self, z); err != nil {
			r.log.Warn("invisor: could not reap an orphaned child process", "pid", z.pid, "command", z.comm, "err", err)
			continue
		}
		r.reaped.Add(1)
		r.log.Info("invisor: reaped an orphaned child process (this node is PID 1 of its PID namespace)", "pid", z.pid, "command", z.comm)
	}
	for z := range seen {
		if !present[z] {
			delete(seen, z)
		}
	}
	return next, nil
}

// reap waits for exactly the zombie z: through a pidfd, which names one
// process, after checking that the PID still is that zombie (same start time,
// still our child), so a PID its owner reaped and the kernel reused is never
// waited for. Kernels without pidfd_open (before 5.3) get the same check and
// a non-blocking wait4 of the PID.
func reap(self int, z zombie) error {
	same := func() bool {
		st, err := readStat(procRoot, z.pid)
		return err == nil && st.state == 'Z' && st.ppid == self && st.start == z.start
	}
	fd, err := unix.PidfdOpen(z.pid, 0)
	if errors.Is(err, unix.ENOSYS) {
		if !same() {
			return nil
		}
		var ws syscall.WaitStatus
		_, err := syscall.Wait4(z.pid, &ws, syscall.WNOHANG, nil)
		return err
	}
	if errors.Is(err, unix.ESRCH) {
		return nil // reaped by its owner meanwhile
	}
	if err != nil {
		return fmt.Errorf("pidfd_open: %w", err)
	}
	defer unix.Close(fd)
	if !same() {
		return nil
	}
	var info unix.Siginfo
	if err := unix.Waitid(unix.P_PIDFD, fd, &info, unix.WEXITED|unix.WNOHANG, nil); err != nil && !errors.Is(err, unix.ECHILD) {
		return fmt.Errorf("waitid: %w", err)
	}
	return nil
}
