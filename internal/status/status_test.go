package status

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/invisor/invisor/internal/home"
	"github.com/invisor/invisor/staging"
)

// fakeSource is a Stager as the reporter sees it, set by the test.
type fakeSource struct {
	st staging.Status
	h  int64
}

func (f *fakeSource) Status() staging.Status { return f.st }
func (f *fakeSource) Height() int64          { return f.h }

var _ Source = (*staging.Stager)(nil)

func testHome(t *testing.T) string {
	t.Helper()
	h := t.TempDir()
	if err := os.MkdirAll(filepath.Join(h, home.RootDir), 0o755); err != nil {
		t.Fatal(err)
	}
	return h
}

// The reporter publishes the height the hook passed to the stager, with no RPC,
// and the plan, state and warnings; Read gives back what it wrote.
func TestReporterPublishesHeightFromTheHook(t *testing.T) {
	nodeHome := testHome(t)
	if _, ok, err := Read(nodeHome); ok || err != nil {
		t.Fatalf("before the first report: %v, %v", ok, err)
	}
	warn := []string{"the plan name cannot be mapped"}
	src := &fakeSource{st: staging.Status{State: staging.StateDownloading, Plan: &staging.Plan{Name: "v2", Height: 1000}, BytesTotal: -1}, h: 990}
	r := NewReporter(nodeHome, src, func() []string { return warn })
	r.Once()

	ns, ok, err := Read(nodeHome)
	if err != nil || !ok {
		t.Fatalf("Read: %v, %v", ok, err)
	}
	if ns.Height != 990 || ns.State != staging.StateDownloading || ns.Plan == nil || ns.Plan.Name != "v2" || ns.PID != os.Getpid() || len(ns.Warnings) != 1 || ns.Warnings[0] != warn[0] {
		t.Fatalf("status %+v; want height 990, this PID and the warning", ns)
	}
	if got := value(t, r.g.blocksTo); got != 10 {
		t.Fatalf("%s = %v, want 10", MetricBlocksToUpgrade, got)
	}
	if got := value(t, r.g.unmappable); got != 1 {
		t.Fatalf("%s = %v, want 1", MetricNameUnmappable, got)
	}
	if got := value(t, r.g.planHeight); got != 1000 {
		t.Fatalf("%s = %v, want 1000", MetricPlanHeight, got)
	}

	// A new height alone does not rewrite the file (it changes every block);
	// the gauge follows at once.
	src.h = 995
	r.Once()
	if ns, _, _ := Read(nodeHome); ns.Height != 990 {
		t.Fatalf("rewritten for a height change alone: height %d", ns.Height)
	}
	if got := value(t, r.g.blocksTo); got != 5 {
		t.Fatalf("%s = %v, want 5", MetricBlocksToUpgrade, got)
	}
	warn = nil
	r.Once()
	if ns, _, _ := Read(nodeHome); ns.Height != 995 || len(ns.Warnings) != 0 {
		t.Fatalf("after the warning cleared: %+v", ns)
	}
}

func TestReadNamesABrokenFile(t *testing.T) {
	nodeHome := testHome(t)
	if err := os.WriteFile(Path(nodeHome), []byte("{not json"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, _, err := Read(nodeHome); err == nil {
		t.Fatal("a broken status file read as valid")
	}
}

// value reads gauge g.
func value(t *testing.T, g prometheus.Gauge) float64 {
	t.Helper()
	var m dto.Metric
	if err := g.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetGauge().GetValue()
}
