package localnet

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Containers without a container runtime
//
// A container is, to the node inside it, a PID namespace in which it is PID 1,
// a mount namespace with the image's files (read-only here) and a volume for
// its home. StartContainer builds exactly that with util-linux's unshare, as
// root: `unshare --pid --fork --mount-proc` makes the node PID 1 of a new PID
// namespace with that namespace's own /proc, and a private bind mount shows
// the image directory read-only at its mount point, inside the node's mount
// namespace only. The home stays an ordinary directory (the volume). When the
// namespace's PID 1 exits, the kernel kills whatever else runs in it, as a
// container runtime does.

// ContainerSupport says whether this machine can start containers so: root,
// with unshare and mount, and a PID namespace that works. why says what is
// missing.
func ContainerSupport() (ok bool, why string) {
	if os.Geteuid() != 0 {
		return false, "not root: unshare --pid --mount needs CAP_SYS_ADMIN"
	}
	for _, tool := range []string{"unshare", "mount", "nsenter"} {
		if _, err := exec.LookPath(tool); err != nil {
			return false, tool + " not found: " + err.Error()
		}
	}
	out, err := exec.Command("unshare", "--pid", "--fork", "--mount-proc", "/bin/sh", "-c", "echo $$").CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "1" {
		return false, fmt.Sprintf("unshare --pid --fork --mount-proc does not give a PID namespace here: %v: %s", err, out)
	}
	return true, ""
}

// StartContainer starts `<bin> start` (bin as the node sees it, usually under
// mount) as PID 1 of a new PID namespace, with the host directory image
// bind-mounted read-only at mount (an existing, empty directory) in the node's
// mount namespace only. Output goes to LogPath; Exited and Kill work as for
// Start. Use InitPid for the node's PID, StopContainer to stop it.
func (n *Node) StartContainer(image, mount, bin string, args ...string) error {
	// sh is PID 1 only while it mounts; exec makes the node PID 1.
	const script = `mount --bind "$1" "$2" && mount -o remount,bind,ro "$2" && shift 2 && exec "$@"`
	argv := append([]string{"--pid", "--fork", "--mount-proc", "--propagation", "private",
		"/bin/sh", "-c", script, "sh", image, mount, bin, "start", "--home", n.Home, "--log_no_color"}, args...)
	return n.startProcess("unshare", argv...)
}

// InitPid returns the host PID of the container's PID 1 (unshare's child),
// waiting up to timeout for it to exist.
func (n *Node) InitPid(timeout time.Duration) (int, error) {
	parent := n.Pid()
	deadline := time.Now().Add(timeout)
	for {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", parent, parent))
		if err == nil {
			if f := strings.Fields(string(b)); len(f) > 0 {
				return strconv.Atoi(f[0])
			}
		}
		if done, err := n.Exited(); done {
			return 0, fmt.Errorf("%s exited (%v) before its PID 1 appeared", n.Name, err)
		}
		if time.Now().After(deadline) {
			return 0, fmt.Errorf("no child of unshare (pid %d) after %s", parent, timeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// NSPid returns the PID that host PID pid has in its own PID namespace (the
// last NSpid of /proc/<pid>/status).
func NSPid(pid int) (int, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "NSpid:"); ok {
			f := strings.Fields(rest)
			if len(f) == 0 {
				break
			}
			return strconv.Atoi(f[len(f)-1])
		}
	}
	return 0, fmt.Errorf("/proc/%d/status has no NSpid line", pid)
}

// Zombie is a zombie process, by host PID, with its command name.
type Zombie struct {
	Pid  int
	Comm string
}

// ZombiesInNamespace lists the zombies in the PID namespace of host PID init.
func ZombiesInNamespace(init int) ([]Zombie, error) {
	ns, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/pid", init))
	if err != nil {
		return nil, err
	}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	var out []Zombie
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if other, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/pid", pid)); err != nil || other != ns {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		open, end := bytes.IndexByte(b, '('), bytes.LastIndexByte(b, ')')
		if err != nil || open < 0 || end < open || end+3 > len(b) {
			continue
		}
		if b[end+2] == 'Z' {
			out = append(out, Zombie{Pid: pid, Comm: string(b[open+1 : end])})
		}
	}
	return out, nil
}

// Orphan runs, inside the PID namespace of host PID init (as `kubectl exec`
// would), a shell that starts `sleep <d>` in the background and exits at once:
// the sleep is an orphan, reparented to the namespace's PID 1, and a zombie of
// it once it ends unless PID 1 reaps it. It returns the sleep's host PID.
func Orphan(init int, d time.Duration) (int, error) {
	// The sleep's PID as the namespace sees it is printed; its host PID is found
	// by the namespace's PID 1 being its parent.
	secs := strconv.FormatFloat(d.Seconds(), 'f', 3, 64)
	out, err := exec.Command("nsenter", "--target", strconv.Itoa(init), "--pid", "--mount", "--",
		"/bin/sh", "-c", "sleep "+secs+" </dev/null >/dev/null 2>&1 & echo $!").Output()
	if err != nil {
		return 0, fmt.Errorf("nsenter: %w", err)
	}
	nsPid, err := strconv.Atoi(strings.TrimSpace(string(out)))
	if err != nil {
		return 0, fmt.Errorf("orphan pid %q: %w", out, err)
	}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return 0, err
	}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if got, err := NSPid(pid); err == nil && got == nsPid && sameNamespace(pid, init) {
			return pid, nil
		}
	}
	return 0, errors.New("the orphan ended before it was found")
}

func sameNamespace(a, b int) bool {
	x, err1 := os.Readlink(fmt.Sprintf("/proc/%d/ns/pid", a))
	y, err2 := os.Readlink(fmt.Sprintf("/proc/%d/ns/pid", b))
	return err1 == nil && err2 == nil && x == y
}

// StopContainer stops the container as a runtime does: SIGTERM to its PID 1
// (unshare itself ignores it), then SIGKILL to the process group after timeout.
func (n *Node) StopContainer(timeout time.Duration) error {
	return n.stopWith(timeout, " to its PID 1", func() {
		if init, err := n.InitPid(time.Second); err == nil {
			_ = syscall.Kill(init, syscall.SIGTERM)
		}
	})
}
