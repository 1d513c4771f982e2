package relauncher

import (
	"context"
	"errors"
	"os/exec"
	"sync"
	"time"
)

// Exit codes of `<bin> pre-upgrade`, as cosmovisor defines them.
const (
	PreUpgradeOK             = 0
	PreUpgradeNotImplemented = 1
	PreUpgradeFail           = 30
	PreUpgradeRetry          = 31
)

// preUpgrade runs `<bin> pre-upgrade` with cosmovisor's exit code semantics, unlike
// cosmovisor treating unknown exit codes as failures.
func (r *Relauncher) preUpgrade(ctx context.Context, bin string) error {
	args := append([]string{"pre-upgrade"}, r.cfg.PreUpgradeArgs...)
	for attempt := 1; ; attempt++ {
		start := time.Now()
		code, out, err := r.runPreUpgrade(ctx, bin, args)
		r.log.Info("invisor: pre-upgrade ran", "path", bin, "attempt", attempt, "exit", code, "took", time.Since(start), "output", out)
		switch {
		case err == nil:
			return nil
		case code == PreUpgradeNotImplemented:
			r.log.Info("invisor: pre-upgrade not implemented (exit 1); continuing", "path", bin)
			return nil
		case code == PreUpgradeRetry && attempt <= r.cfg.PreUpgradeMaxRetries && ctx.Err() == nil:
			r.log.Warn("invisor: pre-upgrade asked for a retry (exit 31)", "attempt", attempt, "max_retries", r.cfg.PreUpgradeMaxRetries)
			continue
		}
		return &PreUpgradeError{Path: bin, ExitCode: code, Attempts: attempt, Output: out, Err: err}
	}
}

func (r *Relauncher) runPreUpgrade(ctx context.Context, bin string, args []string) (code int, out string, err error) {
	ctx, cancel := context.WithTimeout(ctx, r.cfg.PreUpgradeTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = r.os.Environ()
	buf := &tailBuffer{max: 16 << 10}
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
