package invisor

import (
	"fmt"
	"io"
	"os"
	"path/filepath"

	dbm "github.com/cosmos/cosmos-db"
	"github.com/spf13/viper"

	"cosmossdk.io/log/v2"

	"github.com/cosmos/cosmos-sdk/client/flags"
	serverconfig "github.com/cosmos/cosmos-sdk/server/config"

	"github.com/invisor/invisor/hook"
	"github.com/invisor/invisor/internal/probe"
)

// answerProbe answers invisor's probe (package internal/probe) when environ asks
// for it: the invisor version, the protocols this build speaks and, for each
// plan asked about, whether the app carries its upgrade handler (only with
// Options.NewApp). It reports whether it answered; the caller then returns.
func answerProbe(environ []string, opts Options, w io.Writer) (bool, error) {
	plans, ok, err := probe.Requested(environ)
	if !ok {
		return false, nil
	}
	if err != nil {
		return true, err
	}
	a := probe.Answer{InvisorVersion: probe.InvisorVersion(), Protocols: probe.Protocols()}
	if opts.NewApp != nil && len(plans) > 0 {
		a.Handlers = handlersOf(opts, plans)
	}
	return true, probe.Respond(w, a)
}

// handles reports whether this build carries the upgrade handler name, and
// whether it could tell (only with Options.NewApp): the boot redirect asks it
// of the running binary (relauncher.OS.Handles).
func (opts Options) handles(name string) (has, known bool) {
	if opts.NewApp == nil {
		return false, false
	}
	h := handlersOf(opts, []string{name})
	if h == nil {
		return false, false
	}
	return h[name], true
}

// handlersOf builds the app on an in-memory database, in a scratch home, and
// asks its upgrade keeper (handed over by hook.Install through hook.ProbeKey)
// for each plan's handler. Any failure (the constructor panics, or the chain
// does not wire the hook) leaves the handlers unknown, never "missing".
func handlersOf(opts Options, plans []string) (out map[string]bool) {
	defer func() {
		if r := recover(); r != nil {
			fmt.Fprintf(os.Stderr, "invisor probe: building the app panicked: %v\n", r)
			out = nil
		}
	}()
	dir, err := os.MkdirTemp("", "invisor-probe-")
	if err != nil {
		return nil
	}
	defer os.RemoveAll(dir)
	var src hook.PlanSource
	appOpts, err := probeAppOptions(dir)
	if err != nil {
		fmt.Fprintf(os.Stderr, "invisor probe: %v\n", err)
		return nil
	}
	appOpts.Set(hook.ProbeKey, func(s hook.PlanSource) { src = s })
	app := opts.NewApp(log.NewNopLogger(), dbm.NewMemDB(), appOpts)
	if app != nil {
		defer app.Close()
	}
	keeper, ok := src.(interface{ HasHandler(name string) bool })
	if !ok {
		return nil
	}
	out = make(map[string]bool, len(plans))
	for _, p := range plans {
		out[p] = keeper.HasHandler(p)
	}
	return out
}

// probeAppOptions are the app options a node would pass, with the SDK's default
// app.toml (written into the scratch home dir, as `init` would) and a chain-id,
// so that a constructor reading them (server.DefaultBaseappOptions: pruning,
// chain-id, ...) builds the app as for a fresh node.
func probeAppOptions(dir string) (*viper.Viper, error) {
	path := filepath.Join(dir, "config", "app.toml")
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, err
	}
	serverconfig.WriteConfigFile(path, serverconfig.DefaultConfig())
	v := viper.New()
	v.SetConfigFile(path)
	if err := v.ReadInConfig(); err != nil {
		return nil, fmt.Errorf("reading the default app.toml: %w", err)
	}
	v.Set(flags.FlagHome, dir)
	v.Set(flags.FlagChainID, "invisor-probe")
	return v, nil
}
