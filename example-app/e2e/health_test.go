package e2e

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/invisor/invisor/example-app/localnet"
	"github.com/invisor/invisor/internal/health"
	"github.com/invisor/invisor/internal/status"
)

// healthOf is the health gate's report in the status file node's process wrote
// (nil when none, or when the file is from another process than the running one).
func healthOf(n *localnet.Node) *status.Health {
	st, ok, err := status.Read(n.Home)
	if err != nil || !ok || st.PID != n.Pid() || st.Health == nil {
		return nil
	}
	return st.Health
}

// waitHealth waits until every node's gate reports upgrade name in state want
// (and, if cause is not empty, with that cause).
func waitHealth(ctx context.Context, t *testing.T, nodes []*localnet.Node, name string, want health.State, cause health.Cause) map[string]*status.Health {
	t.Helper()
	got := map[string]*status.Health{}
	for {
		all := true
		for _, n := range nodes {
			h := healthOf(n)
			got[n.Name] = h
			if h == nil || h.Upgrade != name || h.State != want || (cause != "" && h.Cause != cause) {
				all = false
			}
		}
		if all {
			return got
		}
		select {
		case <-ctx.Done():
			var b strings.Builder
			for _, n := range nodes {
				fmt.Fprintf(&b, "\n  %s: %+v", n.Name, got[n.Name])
			}
			t.Fatalf("waiting for %s %s%s on %d node(s):%s", name, want, cause, len(nodes), b.String())
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// TestHealthGateAfterSwitch runs the post-upgrade health gate on four validators
// of equal power, with a 5 s deadline. val0 and val1 download their binaries;
// val2 and val3 have downloads off and are given theirs by hand:
//   - upgrade v2: val2 gets its binary before the height, val3 only after the
//     others went on: val0..val2 report healthy (3 of 4 is more than 2/3), each
//     having signed after H, while val3 still waits on v1; once given v2, val3
//     switches and reports healthy too;
//   - upgrade v3: val2 and val3 are held on v2 past the height: val0 and val1
//     report stalled, waiting for the network, 2 of 4 validators (50% of the
//     power) online on the new version; given v3, val2 and val3 switch and all
//     four report healthy.
func TestHealthGateAfterSwitch(t *testing.T) {
	dir := builds(t)
	v1, v2, v3 := filepath.Join(dir, "exampled-v1"), filepath.Join(dir, "exampled-v2"), filepath.Join(dir, "exampled-v3")
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	work := t.TempDir()
	net, err := localnet.NewTestnet(ctx, v1, work, 4, 0, localnet.Settings{ChainID: "invisor-e2e-health"})
	if err != nil {
		t.Fatal(err)
	}
	vals := net.Validators
	for i, n := range vals {
		n.Env = []string{"UNSAFE_SKIP_BACKUP=true", "INVISOR_HEALTH_DEADLINE=5s",
			fmt.Sprintf("DAEMON_ALLOW_DOWNLOAD_BINARIES=%v", i < 2)}
	}
	stopOnCleanup(t, net)
	srv, err := localnet.ServeDir(filepath.Join(work, "www"))
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	for _, n := range vals {
		if err := n.Start(); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := vals[0].WaitHeight(ctx, 3); err != nil {
		t.Fatal(err)
	}
	stage := func(n *localnet.Node, name, bin string) {
		t.Helper()
		if out, err := n.CLI(ctx, "invisor", "stage", name, "--file", bin); err != nil {
			t.Fatalf("%s: stage %s: %v\n%s", n.Name, name, err, out)
		}
	}

	// Upgrade v2, val3 held back.
	sc, _, err := net.ScheduleUpgrade(ctx, srv, "v2", v2, 25)
	if err != nil {
		t.Fatal(err)
	}
	stage(vals[2], "v2", v2)
	reps := waitHealth(ctx, t, vals[:3], "v2", health.StateHealthy, "")
	for name, r := range reps {
		if r.Height != sc.Height || r.CommittedAt == nil || !r.Validator || r.SignedHeight <= sc.Height || r.SignedAt == nil {
			t.Errorf("%s: %+v, want H+1 committed and a signature after H=%d", name, r, sc.Height)
		}
	}
	// Each switched node waited, before its clean stop, until its peers (all
	// halted at H, val3 too) had the halting block's commit, as CometBFT saw them.
	for _, n := range vals[:3] {
		log := n.LogTail(64 << 20)
		i := strings.Index(log, "every peer has the halting block's commit")
		if i < 0 {
			t.Errorf("%s: no \"every peer has the halting block's commit\" before its stop at %d:\n%s", n.Name, sc.Height, keyLines(log, 40))
			continue
		}
		line, _, _ := strings.Cut(log[i:], "\n")
		t.Logf("%s: %s", n.Name, line)
	}
	if info, err := vals[3].AppInfo(ctx); err != nil || info.Height >= sc.Height || info.Version != "v1.0.0" {
		t.Errorf("val3 (held back): %+v %v, want it still on v1 below %d", info, err, sc.Height)
	}
	stage(vals[3], "v2", v2)
	if r := waitHealth(ctx, t, vals[3:], "v2", health.StateHealthy, "")["val3"]; r.SignedHeight <= sc.Height {
		t.Errorf("val3: %+v, want a signature after H", r)
	}

	// Upgrade v3, val2 and val3 held back.
	sc3, _, err := net.ScheduleUpgrade(ctx, srv, "v3", v3, 25)
	if err != nil {
		t.Fatal(err)
	}
	reps = waitHealth(ctx, t, vals[:2], "v3", health.StateStalled, health.CauseNetwork)
	for name, r := range reps {
		o := r.Online
		if o == nil || o.Validators != 2 || o.Of != 4 || o.Fraction < 0.49 || o.Fraction > 0.51 || r.CommittedAt != nil {
			t.Errorf("%s: %+v (online %+v), want waiting for the network with 2 of 4 validators, 50%% of the power, online", name, r, o)
		}
		if !strings.Contains(r.Message, "2 of 4") || r.Advice == "" {
			t.Errorf("%s: message %q advice %q, want the online validators named and what to do", name, r.Message, r.Advice)
		}
	}
	if out, err := vals[0].CLI(ctx, "invisor", "status"); err != nil || !strings.Contains(string(out), "STALLED") ||
		!strings.Contains(string(out), "2 of 4 validators, 50.0% of the voting power") {
		t.Errorf("invisor status on val0 while stalled: %v\n%s", err, out)
	}
	stage(vals[2], "v3", v3)
	stage(vals[3], "v3", v3)
	reps = waitHealth(ctx, t, vals, "v3", health.StateHealthy, "")
	for name, r := range reps {
		if r.SignedHeight <= sc3.Height {
			t.Errorf("%s: %+v, want a signature after H=%d", name, r, sc3.Height)
		}
	}
	for _, n := range vals {
		if info, err := n.AppInfo(ctx); err != nil || info.Version != "v3.0.0" {
			t.Errorf("%s: %+v %v, want v3.0.0", n.Name, info, err)
		}
	}
}
