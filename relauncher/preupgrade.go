package relauncher

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"time"

	"github.com/invisor/invisor/internal/home"
)

// Exit codes of `<bin> pre-upgrade`, as cosmovisor defines them.
const (
	PreUpgradeOK             = 0
	PreUpgradeNotImplemented = 1
	PreUpgradeFail           = 30
	PreUpgradeRetry          = 31
)

// preUpgradeOutputMax is how much of pre-upgrade's combined output is kept.
const preUpgradeOutputMax = 16 << 10

// preUpgrade runs `<bin> pre-upgrade` with cosmovisor's exit code semantics, unlike
// cosmovisor treating unknown exit codes as failures. Every run is of the proven
// descriptor, right after a Recheck.
func (r *Relauncher) preUpgrade(ctx context.Context, v *home.Verified) error {
	args := append([]string{"pre-upgrade"}, r.preUpgradeArgs()...)
	for attempt := 1; ; attempt++ {
		if err := v.Recheck(); err != nil {
			return err
		}
		start := time.Now()
		code, out, err := runPreUpgradeCmd(ctx, runnableOf(v), args, preUpgradeEnv(r.os.Environ()), r.cfg.PreUpgradeTimeout)
		r.log.Info("invisor: pre-upgrade ran", "path", v.Path, "attempt", attempt, "exit", code, "took", time.Since(start), "output", out)
		switch {
		case err == nil:
			return nil
		case code == PreUpgradeNotImplemented:
			r.log.Info("invisor: pre-upgrade not implemented (exit 1); continuing", "path", v.Path)
			return nil
		case code == PreUpgradeRetry && attempt <= r.cfg.PreUpgradeMaxRetries && ctx.Err() == nil:
			r.log.Warn("invisor: pre-upgrade asked for a retry (exit 31)", "attempt", attempt, "max_retries", r.cfg.PreUpgradeMaxRetries)
			continue
		}
		return &PreUpgradeError{Path: v.Path, ExitCode: code, Attempts: attempt, Output: out, Err: err}
	}
}

// preUpgradeArgs are the arguments after "pre-upgrade": Config.PreUpgradeArgs,
// then --home with the node home, so that pre-upgrade works on this node's home
// and nowhere else (cosmovisor passes none, and a node started with --home would
// have its pre-upgrade edit the chain's default home instead).
func (r *Relauncher) preUpgradeArgs() []string {
	return append(append([]string{}, r.cfg.PreUpgradeArgs...), "--home", r.layout.Home())
}

// runPreUpgradeCmd runs one `<bin> pre-upgrade` to its end or its timeout.
func runPreUpgradeCmd(ctx context.Context, bin runnable, args, env []string, timeout time.Duration) (code int, out string, err error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin.path, args...)
	cmd.Args[0] = bin.argv0
	cmd.ExtraFiles = bin.extra
	cmd.Env = env
	buf := &tailBuffer{max: preUpgradeOutputMax}
	cmd.Stdout, cmd.Stderr = buf, buf
	cmd.WaitDelay = 5 * time.Second // grandchildren holding the pipes must not hang us
	err = cmd.Run()
	out = buf.String()
	if err == nil {
		return 0, out, nil
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else {
		code = -1
	}
	if ctx.Err() != nil {
		code = -1
		err = errors.Join(err, ctx.Err())
	}
	return code, out, err
}

// preUpgradeEnv is env without EnvExecPreUpgrade and home.EnvLock: a pre-upgrade
// child must not take itself for a binary that awaits one, nor for the lock holder.
func preUpgradeEnv(env []string) []string {
	out := make([]string, 0, len(env))
	for _, kv := range env {
		if !strings.HasPrefix(kv, EnvExecPreUpgrade+"=") && !strings.HasPrefix(kv, home.EnvLock+"=") {
			out = append(out, kv)
		}
	}
	return out
}

// preUpgradeChild is a `pre-upgrade` this process started and does not wait for:
// the binary it execs waits for it (AwaitPreUpgrade), as described by marker.
type preUpgradeChild struct {
	proc   *os.Process
	marker preUpgradeMarker
}

// startPreUpgrade starts `<bin> pre-upgrade [PreUpgradeArgs]` from the proven
// descriptor v (the caller rechecked it) and returns at once. Its output goes to a
// private temp file under the cosmovisor root (a name Layout removes after a
// crash), not to a pipe, so that it survives the exec. link and target are what
// the new binary flips `current` to once the run succeeded.
func (r *Relauncher) startPreUpgrade(v *home.Verified, link, target string) (*preUpgradeChild, error) {
	bin := v.Path
	f, err := os.CreateTemp(r.layout.Root(), ".pre-upgrade"+home.TempMarker+"*")
	if err != nil {
		return nil, fmt.Errorf("relauncher: pre-upgrade output file: %w", err)
	}
	run := runnableOf(v)
	cmd := exec.Command(run.path, append([]string{"pre-upgrade"}, r.preUpgradeArgs()...)...)
	cmd.Args[0], cmd.ExtraFiles = run.argv0, run.extra
	cmd.Env = preUpgradeEnv(r.os.Environ())
	cmd.Stdout, cmd.Stderr = f, f
	start := time.Now()
	err = cmd.Start()
	f.Close() // the child has its own descriptor
	if err != nil {
		os.Remove(f.Name())
		r.log.Info("invisor: pre-upgrade ran", "path", bin, "attempt", 1, "exit", -1, "took", time.Since(start), "output", "")
		return nil, &PreUpgradeError{Path: bin, ExitCode: -1, Attempts: 1, Err: err}
	}
	return &preUpgradeChild{proc: cmd.Process, marker: preUpgradeMarker{
		Protocol: markerProtocol, Pid: cmd.Process.Pid, Output: f.Name(), Path: bin,
		Attempt: 1, MaxRetries: r.cfg.PreUpgradeMaxRetries, Timeout: r.cfg.PreUpgradeTimeout,
		Started: start.UnixNano(), Args: r.preUpgradeArgs(), Link: link, Target: target,
	}}, nil
}

// reap is for a switch that did not exec after starting c: it waits for c (killing
// it at its timeout or when ctx ends), logs the run and removes its output, so no
// pre-upgrade is left running mid-write. `current` stays as it is.
func (r *Relauncher) reap(ctx context.Context, c *preUpgradeChild) {
	code, out, took, err := waitPreUpgrade(ctx, c.proc, c.marker)
	r.log.Info("invisor: pre-upgrade ran", "path", c.marker.Path, "attempt", c.marker.Attempt, "exit", code, "took", took, "output", out)
	if err != nil && code != PreUpgradeNotImplemented {
		r.log.Warn("invisor: pre-upgrade started for the switch failed; the next boot redoes it", "path", c.marker.Path, "err", err)
	}
}

// waitPreUpgrade waits for the pre-upgrade process p described by m until
// m.Started+m.Timeout or the end of ctx, then kills it; it returns the run's exit
// code (-1 if it did not exit normally), the tail of its output (the file is
// removed) and its duration since it started.
func waitPreUpgrade(ctx context.Context, p *os.Process, m preUpgradeMarker) (code int, out string, took time.Duration, err error) {
	started := time.Unix(0, m.Started)
	type result struct {
		st  *os.ProcessState
		err error
	}
	done := make(chan result, 1)
	go func() {
		st, err := p.Wait()
		done <- result{st, err}
	}()
	timer := time.NewTimer(time.Until(started.Add(m.Timeout)))
	defer timer.Stop()
	var res result
	var stopped error
	select {
	case res = <-done:
	case <-timer.C:
		stopped = fmt.Errorf("relauncher: pre-upgrade timed out after %s: %w", m.Timeout, context.DeadlineExceeded)
	case <-ctx.Done():
		stopped = fmt.Errorf("relauncher: pre-upgrade stopped: %w", ctx.Err())
	}
	if stopped != nil {
		_ = p.Kill()
		res = <-done
	}
	took = time.Since(started)
	out = readTail(m.Output, preUpgradeOutputMax)
	_ = os.Remove(m.Output)
	switch {
	case stopped != nil:
		return -1, out, took, errors.Join(stopped, res.err)
	case res.err != nil:
		return -1, out, took, fmt.Errorf("relauncher: wait for pre-upgrade (pid %d): %w", m.Pid, res.err)
	case !res.st.Success():
		return res.st.ExitCode(), out, took, &exec.ExitError{ProcessState: res.st}
	}
	return 0, out, took, nil
}

// readTail returns the last max bytes of the file at p, or "" if it cannot be read.
func readTail(p string, max int64) string {
	f, err := os.Open(p)
	if err != nil {
		return ""
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil && fi.Size() > max {
		_, _ = f.Seek(fi.Size()-max, io.SeekStart)
	}
	b, _ := io.ReadAll(io.LimitReader(f, max))
	return string(b)
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	mu  sync.Mutex
	max int
	b   []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.b = append(t.b, p...)
	if len(t.b) > t.max {
		t.b = append(t.b[:0], t.b[len(t.b)-t.max:]...)
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.b)
}
