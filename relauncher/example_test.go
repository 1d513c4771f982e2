package relauncher_test

import (
	"fmt"
	"os"

	"github.com/invisor/invisor/relauncher"
)

// Example shows the wiring in an app's main: stage-only under cosmovisor, otherwise
// lay out, boot-redirect, run the node, and switch when the halt armed the relauncher.
func Example() {
	cfg := relauncher.DefaultConfig()
	cfg.Home = os.TempDir()
	cfg.DaemonName = "exampled"
	cfg.Backup = false
	verifier := relauncher.VerifierFunc(func(name string) (relauncher.Binary, error) {
		return relauncher.Binary{}, fmt.Errorf("upgrade %q not staged", name) // staging.Stager in the app
	})
	r, err := relauncher.New(cfg, verifier, nil, relauncher.OS{})
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
