package relauncher_test

import (
	"fmt"
	"os"

	"github.com/invisor/invisor/internal/home"
	"github.com/invisor/invisor/relauncher"
)

// Example shows the wiring in an app's main: take the home lock for the whole
// process, stage-only under cosmovisor, otherwise lay out, boot-redirect, run the
// node, and switch when the halt armed the relauncher.
func Example() {
	dir, _ := os.MkdirTemp("", "example-home-")
	defer os.RemoveAll(dir)
	cfg := relauncher.DefaultConfig()
	cfg.Home = dir
	cfg.DaemonName = "exampled"
	cfg.Backup = false
	layout, err := home.New(cfg.Home, cfg.DaemonName, home.Options{DisableRecase: cfg.DisableRecase})
	if err != nil {
		fmt.Println(err)
		return
	}
	lock, err := layout.Acquire(os.Environ()) // adopts the lock a previous image handed over
	if err != nil {
		fmt.Println(err)
		return
	}
	defer lock.Release()
	// A nil Verifier is the completion record's proof (home.Layout.Open); the
	// edge wires staging as OS.Fetch for the fetch at boot.
	r, err := relauncher.New(cfg, nil, nil, relauncher.OS{Lock: lock})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer r.Close()
	if relauncher.UnderCosmovisor() {
		return // stage only; cosmovisor swaps binaries
	}
	// r.Layout() and r.Boot() run here, before any database is opened.
	// The node runs; the consensus hook calls r.OnHalt(name, height) at the halt.
	// After the start command returned:
	if name, ok := r.Armed(); ok {
		err := r.Switch(name) // returns only on failure
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Println("not armed")
	// Output: not armed
}
