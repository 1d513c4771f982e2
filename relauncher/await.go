package relauncher

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/invisor/invisor/internal/home"
)

// markerProtocol names the overlapped pre-upgrade's marker format (the value of
// EnvExecPreUpgrade). A binary announces that it waits for such a pre-upgrade in
// its probe answer (probe.ProtocolAwaitPreUpgrade); the name of the marker format
// stays what earlier releases write.
const markerProtocol = "invisor-awaits-pre-upgrade/1"

// preUpgradeMarker is the value of EnvExecPreUpgrade, as JSON.
type preUpgradeMarker struct {
	Protocol   string        `json:"protocol"`        // markerProtocol
	Pid        int           `json:"pid"`             // the pre-upgrade child, inherited across the exec
	Output     string        `json:"output"`          // its stdout and stderr; removed by the waiter
	Path       string        `json:"path"`            // the binary: the child's, and the exec's
	Attempt    int           `json:"attempt"`         // the child's attempt number, from 1
	MaxRetries int           `json:"max_retries"`     // Config.PreUpgradeMaxRetries
	Timeout    time.Duration `json:"timeout_ns"`      // Config.PreUpgradeTimeout, per run
	Started    int64         `json:"started_unix_ns"` // when the child started (wall clock)
	Args       []string      `json:"args"`            // Config.PreUpgradeArgs
	Link       string        `json:"link"`            // absolute path of `current`
	Target     string        `json:"target"`          // <root>/upgrades/<dir> (absolute, as cosmovisor reads it), written into Link on success
}

func encodeMarker(m preUpgradeMarker) string {
	b, err := json.Marshal(m)
	if err != nil {
		panic(err) // strings and numbers only
	}
	return string(b)
}

// decodeMarker parses and checks an EnvExecPreUpgrade value. Only AwaitPreUpgrade
// may call it (see markerProtocol).
func decodeMarker(v string) (preUpgradeMarker, error) {
	var m preUpgradeMarker
	var probe struct {
		Protocol string `json:"protocol"`
	}
	if err := json.Unmarshal([]byte(v), &probe); err != nil {
		return m, fmt.Errorf("%w: not JSON: %v", ErrMalformedPreUpgradeMarker, err)
	}
	if probe.Protocol != markerProtocol {
		return m, fmt.Errorf("%w: protocol %q, this binary speaks %q only; not starting the node without knowing pre-upgrade finished",
			ErrMalformedPreUpgradeMarker, probe.Protocol, markerProtocol)
	}
	dec := json.NewDecoder(strings.NewReader(v))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&m); err != nil {
		return m, fmt.Errorf("%w: %v", ErrMalformedPreUpgradeMarker, err)
	}
	bad := func(what string, v any) (preUpgradeMarker, error) {
		return preUpgradeMarker{}, fmt.Errorf("%w: invalid %s %v", ErrMalformedPreUpgradeMarker, what, v)
	}
	switch {
	case m.Pid <= 0:
		return bad("pid", m.Pid)
	case !filepath.IsAbs(m.Output) || !strings.Contains(filepath.Base(m.Output), home.TempMarker):
		return bad("output file", m.Output)
	case !filepath.IsAbs(m.Path):
		return bad("path", m.Path)
	case m.Attempt < 1:
		return bad("attempt", m.Attempt)
	case m.MaxRetries < 0:
		return bad("max_retries", m.MaxRetries)
	case m.Timeout <= 0:
		return bad("timeout", m.Timeout)
	case m.Started <= 0:
		return bad("start time", m.Started)
	case !filepath.IsAbs(m.Link) || filepath.Base(m.Link) != home.CurrentLink:
		return bad("link", m.Link)
	case filepath.Dir(m.Target) != filepath.Join(filepath.Dir(m.Link), home.UpgradesDir) || filepath.Clean(m.Target) != m.Target || strings.HasPrefix(filepath.Base(m.Target), "."):
		return bad("target", m.Target)
	}
	return m, nil
}

// PreUpgradeOutcome is what AwaitPreUpgrade did.
type PreUpgradeOutcome struct {
	Path       string          // the binary whose pre-upgrade ran (this executable)
	MaxRetries int             // retries allowed after exit 31
	Runs       []PreUpgradeRun // in order; the first was started by the previous binary
	Flipped    string          // what `current` now points to; "" if it was not flipped
	// Err is nil when pre-upgrade succeeded (exit 0 or 1) and `current` was flipped;
	// a *PreUpgradeError when pre-upgrade failed or the marker was unreadable.
	Err error
}

// PreUpgradeRun is one run of `<bin> pre-upgrade`.
type PreUpgradeRun struct {
	Attempt  int
	ExitCode int           // -1 if it did not exit normally (did not start, killed, timeout)
	Took     time.Duration // since its start; the first run started in the previous binary
	Output   string        // tail of its combined output
	Err      error
}

// AwaitPreUpgrade finishes a switch that exec'd this binary while its pre-upgrade
// still ran. It must be the first thing main does, before any configuration is
// read (pre-upgrade may rewrite it); environ is the process environment.
//
// Without EnvExecPreUpgrade in environ it returns nil at once. Otherwise it waits
// for the pre-upgrade child the previous binary started (killing it at its
// timeout), reads and removes its output, and applies cosmovisor's exit codes as
// Switch does: 0 and 1 succeed, 31 reruns `<this binary> pre-upgrade` here while
// retries remain, anything else fails. On success it flips `current` to the
// upgrade. It logs nothing (the caller has no logger yet): the caller hands the
// outcome to the Relauncher (OS.AwaitedPreUpgrade), whose Boot logs it and refuses
// to start the node after a failure. It never returns a nil outcome with the
// marker present.
func AwaitPreUpgrade(environ []string) *PreUpgradeOutcome {
	v, ok := "", false
	for _, kv := range environ {
		if k, val, _ := strings.Cut(kv, "="); k == EnvExecPreUpgrade {
			v, ok = val, true
		}
	}
	if !ok {
		return nil
	}
	m, err := decodeMarker(v)
	if err != nil {
		return &PreUpgradeOutcome{Err: &PreUpgradeError{Path: "(unknown)", ExitCode: -1, Err: err}}
	}
	o := &PreUpgradeOutcome{Path: m.Path, MaxRetries: m.MaxRetries}
	env := preUpgradeEnv(environ)
	args := append([]string{"pre-upgrade"}, m.Args...)
	for attempt := m.Attempt; ; attempt++ {
		var run PreUpgradeRun
		if attempt == m.Attempt {
			run.ExitCode, run.Output, run.Took, run.Err = awaitChild(m)
		} else {
			start := time.Now()
			run.ExitCode, run.Output, run.Err = runPreUpgradeCmd(context.Background(), runnable{path: m.Path, argv0: m.Path}, args, env, m.Timeout)
			run.Took = time.Since(start)
		}
		run.Attempt = attempt
		o.Runs = append(o.Runs, run)
		switch {
		case run.Err == nil, run.ExitCode == PreUpgradeNotImplemented:
			if err := home.Symlink(m.Target, m.Link); err != nil {
				o.Err = err
				return o
			}
			o.Flipped = m.Target
			return o
		case run.ExitCode == PreUpgradeRetry && attempt-m.Attempt < m.MaxRetries:
			continue
		}
		o.Err = &PreUpgradeError{Path: m.Path, ExitCode: run.ExitCode, Attempts: len(o.Runs), Output: run.Output, Err: run.Err}
		return o
	}
}

// awaitChild waits for the pre-upgrade child the previous binary started. It is
// our child: exec keeps the PID, and with it the parenthood.
func awaitChild(m preUpgradeMarker) (code int, out string, took time.Duration, err error) {
	p, err := os.FindProcess(m.Pid)
	if err != nil {
		_ = os.Remove(m.Output)
		return -1, "", time.Since(time.Unix(0, m.Started)), fmt.Errorf("relauncher: pre-upgrade pid %d: %w", m.Pid, err)
	}
	return waitPreUpgrade(context.Background(), p, m)
}

// Report logs o as Switch logs a pre-upgrade it waited for, and returns o.Err.
// A nil o reports nothing.
func (o *PreUpgradeOutcome) Report(log Logger) error {
	if o == nil {
		return nil
	}
	for i, run := range o.Runs {
		log.Info("invisor: pre-upgrade ran", "path", o.Path, "attempt", run.Attempt, "exit", run.ExitCode, "took", run.Took, "output", run.Output)
		switch {
		case run.Err != nil && run.ExitCode == PreUpgradeNotImplemented:
			log.Info("invisor: pre-upgrade not implemented (exit 1); continuing", "path", o.Path)
		case run.ExitCode == PreUpgradeRetry && i < len(o.Runs)-1:
			log.Warn("invisor: pre-upgrade asked for a retry (exit 31)", "attempt", run.Attempt, "max_retries", o.MaxRetries)
		}
	}
	if o.Flipped != "" {
		log.Info("invisor: current link flipped", "target", o.Flipped)
	}
	return o.Err
}
