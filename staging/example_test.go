package staging_test

import (
	"context"
	"fmt"
	"time"

	"github.com/invisor/invisor/staging"
)

// Example shows the wiring: one Stager per home, created under the home lock the
// process edge holds (home.Layout.Acquire), Run in the background, Offer from the
// consensus hook every block, WaitReady from the relauncher (which proves the file
// again with home.Layout.Open right before running it).
func Example() {
	cfg := staging.DefaultConfig()
	cfg.Home = "/var/lib/exampled"
	cfg.DaemonName = "exampled"

	s, err := staging.New(cfg, staging.NopLogger{})
	if err != nil {
		fmt.Println("refuse to start:", err) // unwritable home, noexec, bad config, ...
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go s.Run(ctx)

	// In the PreBlocker wrapper, every block (cheap when unchanged, never blocks):
	plan := staging.Plan{Name: "v2", Height: 1000, Info: `{"binaries":{"linux/amd64":"https://example.com/exampled?checksum=sha256:..."}}`}
	s.Offer(&plan)

	// In the relauncher at the halt height:
	wctx, wcancel := context.WithTimeout(ctx, time.Minute)
	defer wcancel()
	if inst, err := s.WaitReady(wctx, plan); err == nil {
		fmt.Println("exec", inst.Path, "recorded as", inst.Record.Source)
	}
}
