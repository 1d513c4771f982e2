package home

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
)

// EnvLock hands the home lock across syscall.Exec: "<fd>:<dev>:<ino>" of the lock
// file's descriptor, which the exec keeps open (close-on-exec cleared just before).
const EnvLock = "INVISOR_HOME_LOCK"

// LockedError is returned when another process holds the home lock.
type LockedError struct {
	Path string
	PID  int // 0 when the lock file names none
}

func (e *LockedError) Error() string {
	who := "another process"
	if e.PID > 0 {
		who = fmt.Sprintf("process %d", e.PID)
	}
	return fmt.Sprintf("%s holds %s: an invisor node (or an invisor command) already runs on this home; stop it first, or use another --home", who, e.Path)
}

// Lock is the held home lock: one invisor process per home, from the start of the
// boot through the exec into the next binary.
type Lock struct {
	f    *os.File
	path string
}

// Acquire takes the home lock without waiting. environ is the process environment:
// when it hands over a lock (EnvLock) whose descriptor is open here and is this
// home's lock file, that lock is adopted, since the image that exec'd this one held
// it. Another holder is a *LockedError.
func (l Layout) Acquire(environ []string) (*Lock, error) {
	path := l.LockPath()
	if err := os.MkdirAll(l.Root(), 0o755); err != nil {
		return nil, fmt.Errorf("home: %s is not writable: %w", l.Root(), err)
	}
	if lk := adopt(path, environ); lk != nil {
		return lk, nil
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|syscall.O_NOFOLLOW, 0o644)
	if err != nil {
		return nil, fmt.Errorf("home: lock file %s: %w; check that the node home is writable by this user and not mounted read-only", path, err)
	}
	if err := flock(f); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			b, _ := os.ReadFile(path)
			pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
			return nil, &LockedError{Path: path, PID: pid}
		}
		return nil, fmt.Errorf("home: lock %s: %w", path, err)
	}
	lk := &Lock{f: f, path: path}
	lk.writePID()
	return lk, nil
}

func adopt(path string, environ []string) *Lock {
	v := ""
	for _, kv := range environ {
		if k, val, ok := strings.Cut(kv, "="); ok && k == EnvLock {
			v = val
		}
	}
	parts := strings.Split(v, ":")
	if len(parts) != 3 {
		return nil
	}
	fd, err1 := strconv.Atoi(parts[0])
	dev, err2 := strconv.ParseUint(parts[1], 10, 64)
	ino, err3 := strconv.ParseUint(parts[2], 10, 64)
	if err1 != nil || err2 != nil || err3 != nil || fd < 3 {
		return nil
	}
	// Check the raw descriptor first: an *os.File would close it when collected,
	// and a descriptor that is not our lock file is not ours to close.
	var st syscall.Stat_t
	if err := syscall.Fstat(fd, &st); err != nil || uint64(st.Dev) != dev || uint64(st.Ino) != ino {
		return nil
	}
	if want, err := StampOf(path); err != nil || want.Dev != dev || want.Ino != ino {
		return nil
	}
	syscall.CloseOnExec(fd)
	lk := &Lock{f: os.NewFile(uintptr(fd), path), path: path}
	lk.writePID()
	return lk
}

func (lk *Lock) writePID() {
	_ = lk.f.Truncate(0)
	_, _ = lk.f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
}

// InheritEnv prepares the lock to survive the next syscall.Exec and returns the
// EnvLock entry for the new image's environment. Call it right before the exec,
// after every child process was started (a child started later would inherit the
// descriptor), and Keep if the exec failed.
func (lk *Lock) InheritEnv() (string, error) {
	st, err := StampFile(lk.f)
	if err != nil {
		return "", err
	}
	fd := int(lk.f.Fd())
	if err := ClearCloseOnExec(fd); err != nil {
		return "", fmt.Errorf("home: keep the lock across exec: %w", err)
	}
	return fmt.Sprintf("%s=%d:%d:%d", EnvLock, fd, st.Dev, st.Ino), nil
}

// Keep undoes InheritEnv after a failed exec.
func (lk *Lock) Keep() { syscall.CloseOnExec(int(lk.f.Fd())) }

// Path is the lock file.
func (lk *Lock) Path() string { return lk.path }

// Release drops the lock.
func (lk *Lock) Release() error {
	if lk == nil || lk.f == nil {
		return nil
	}
	err := lk.f.Close()
	lk.f = nil
	return err
}

// HolderPID returns the PID written in the home's lock file and whether a live
// process holds the lock, without taking it.
func (l Layout) HolderPID() (pid int, held bool) {
	f, err := os.OpenFile(l.LockPath(), os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return 0, false
	}
	defer f.Close()
	b := make([]byte, 32)
	n, _ := f.ReadAt(b, 0)
	pid, _ = strconv.Atoi(strings.TrimSpace(string(b[:n])))
	if err := flockShared(f); err != nil {
		return pid, errors.Is(err, syscall.EWOULDBLOCK)
	}
	return pid, false
}
