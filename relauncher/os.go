package relauncher

import (
	"context"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/invisor/invisor/internal/home"
)

// OS is the process surface the Relauncher touches, and what the edge hands over
// with it. Tests replace fields with fakes (tableflip style); a nil function means
// the real call.
type OS struct {
	// Exec replaces the process image (syscall.Exec). It returns only on failure.
	Exec func(argv0 string, argv []string, envv []string) error
	// Executable returns the path of the running executable (os.Executable, on
	// Linux the target of /proc/self/exe).
	Executable func() (string, error)
	// Args returns the process argv (os.Args).
	Args func() []string
	// Environ returns the process environment (os.Environ).
	Environ func() []string
	// Getwd returns the working directory (os.Getwd); used for logs only, since
	// exec keeps the working directory by itself.
	Getwd func() (string, error)
	// Getpid returns the process id (os.Getpid).
	Getpid func() int
	// Stop asks the node to shut down cleanly; OnHalt calls it once armed. The
	// default sends SIGTERM to our own pid, the SDK server's clean shutdown path.
	Stop func() error
	// After is the tick of the halt wait loop (time.After): a test passes a
	// channel it sends on to step the loop.
	After func(d time.Duration) <-chan time.Time
	// StopSignals subscribes to the operator's stop requests (SIGTERM, SIGINT)
	// while the re-exec path waits; stop unsubscribes.
	StopSignals func() (sigs <-chan os.Signal, stop func())
	// Exit ends the process (os.Exit), for a stop request while a halted block waits.
	Exit func(code int)

	// Lock is the home lock the edge holds for the whole process lifetime (taken
	// before Boot). Every exec hands it to the new image (Lock.InheritEnv), so the
	// home is never unlocked across a switch. Nil: exec without it.
	Lock *home.Lock
	// Fetch downloads and stages the binary for p (the edge wires staging); Boot
	// calls it when the chain halted for p, the binary is missing and
	// Config.DownloadsEnabled is set. It logs its own progress. Nil: no fetch at boot.
	Fetch func(ctx context.Context, p home.Plan) error
	// PeersAtHalt reports how many of the node's peers have what they need to
	// halt at height too, as CometBFT's consensus reactor last heard from each
	// (past the height, or in its commit step), of how many, and which lag. The
	// clean stop at an upgrade halt waits for all of them, at most
	// Config.HaltGossip (awaitPeers). Nil: no wait.
	PeersAtHalt func(ctx context.Context, height int64) (ready, total int, lagging []string, err error)
	// Handles reports whether this executable carries the upgrade handler for
	// plan name, and whether it could tell at all (the edge builds the app on an
	// in-memory database and asks its upgrade keeper; unknown when the chain did
	// not pass Options.NewApp). Boot asks it when this executable is not the
	// staged binary of the upgrade the chain's state names. Nil: unknown.
	Handles func(name string) (has, known bool)
	// AwaitedPreUpgrade is what AwaitPreUpgrade did when this process started, or
	// nil. Boot logs it and fails if the pre-upgrade failed. It is no system call:
	// the edge hands it over because the logger did not exist yet at that point.
	AwaitedPreUpgrade *PreUpgradeOutcome
}

// DefaultOS returns the real system calls.
func DefaultOS() OS {
	return OS{
		Exec:       syscall.Exec,
		Executable: os.Executable,
		Args:       func() []string { return append([]string(nil), os.Args...) },
		Environ:    os.Environ,
		Getwd:      os.Getwd,
		Getpid:     os.Getpid,
		Stop:       func() error { return syscall.Kill(os.Getpid(), syscall.SIGTERM) },
		After:      time.After,
		StopSignals: func() (<-chan os.Signal, func()) {
			c := make(chan os.Signal, 1)
			signal.Notify(c, syscall.SIGTERM, os.Interrupt)
			return c, func() { signal.Stop(c) }
		},
		Exit: os.Exit,
	}
}

func (o OS) withDefaults() OS {
	d := DefaultOS()
	if o.Exec == nil {
		o.Exec = d.Exec
	}
	if o.Executable == nil {
		o.Executable = d.Executable
	}
	if o.Args == nil {
		o.Args = d.Args
	}
	if o.Environ == nil {
		o.Environ = d.Environ
	}
	if o.Getwd == nil {
		o.Getwd = d.Getwd
	}
	if o.Getpid == nil {
		o.Getpid = d.Getpid
	}
	if o.Stop == nil {
		o.Stop = d.Stop
	}
	if o.After == nil {
		o.After = d.After
	}
	if o.StopSignals == nil {
		o.StopSignals = d.StopSignals
	}
	if o.Exit == nil {
		o.Exit = d.Exit
	}
	return o
}
