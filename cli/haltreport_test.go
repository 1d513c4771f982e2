package cli

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/invisor/invisor/internal/home"
)

// A node that left the halt of v3 for its orchestrator (on-halt = exit):
// status shows the halt report while the home still stands at that halt, and
// not once the upgrade's binary was started (current points to it) or another
// halt came.
func TestStatusShowsTheExitForTheOrchestrator(t *testing.T) {
	e, l, out := settingsHome(t)
	if err := os.Symlink(home.GenesisDir, l.Current()); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(l.DataDir(), 0o755); err != nil {
		t.Fatal(err)
	}
	plan := home.Plan{Name: "v3", Height: 71, Info: "x"}
	if err := l.WriteUpgradeInfo(plan); err != nil {
		t.Fatal(err)
	}
	rep := home.HaltReport{Upgrade: "v3", Height: 71, ExitCode: 10, Time: time.Now().UTC(), Stop: "clean-stop",
		Binary: &home.HaltBinary{Path: "/data/cosmovisor/upgrades/v3/bin/appd", SHA256: strings.Repeat("7c", 32), Source: string(home.SourceImage)}}
	if err := l.WriteHaltReport(rep); err != nil {
		t.Fatal(err)
	}
	got := gatherStatus(context.Background(), e)
	if got.Exited == nil || got.Exited.Upgrade != "v3" || got.Exited.Binary == nil {
		t.Fatalf("exited %+v, want the halt report of v3", got.Exited)
	}
	printStatus(e, got)
	if !strings.Contains(out.String(), `exited     at the halt of "v3" at height 71`) || !strings.Contains(out.String(), "verified here: /data/cosmovisor/upgrades/v3/bin/appd") {
		t.Fatalf("status text:\n%s", out)
	}

	// Another halt since (the report is older): not shown.
	if err := l.WriteUpgradeInfo(home.Plan{Name: "v4", Height: 90}); err != nil {
		t.Fatal(err)
	}
	if got := gatherStatus(context.Background(), e); got.Exited != nil {
		t.Fatalf("shown for another halt: %+v", got.Exited)
	}
}
