package cli

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/spf13/viper"

	"github.com/invisor/invisor/internal/config"
	"github.com/invisor/invisor/internal/history"
	"github.com/invisor/invisor/internal/home"
	"github.com/invisor/invisor/internal/status"
	"github.com/invisor/invisor/staging"
)

func TestAverageBlockSeconds(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		name    string
		pts     []blockPoint
		want    float64
		wantErr bool
	}{
		{"two blocks", []blockPoint{{10, t0}, {11, t0.Add(2 * time.Second)}}, 2, false},
		{"unordered", []blockPoint{{20, t0.Add(10 * time.Second)}, {10, t0}, {15, t0.Add(3 * time.Second)}}, 1, false},
		{"one block", []blockPoint{{10, t0}}, 0, true},
		{"no time", []blockPoint{{10, t0}, {11, t0}}, 0, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := averageBlockSeconds(tc.pts)
			if (err != nil) != tc.wantErr || got != tc.want {
				t.Fatalf("got %v, %v; want %v (err %v)", got, err, tc.want, tc.wantErr)
			}
		})
	}
}

func TestETA(t *testing.T) {
	latest := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	e := eta(110, 100, 0.5, latest)
	if e.BlocksLeft != 10 || e.Seconds != 5 || !e.At.Equal(latest.Add(5*time.Second)) {
		t.Fatalf("eta = %+v", e)
	}
	if e := eta(100, 100, 0.5, latest); e.BlocksLeft != 0 || e.Seconds != 0 {
		t.Fatalf("eta at the height = %+v", e)
	}
	if e := eta(110, 100, 0, latest); e.Seconds != 0 {
		t.Fatalf("eta without block times = %+v", e)
	}
}

func TestSourceURL(t *testing.T) {
	f := filepath.Join(t.TempDir(), "appd")
	if err := os.WriteFile(f, []byte("binary"), 0o755); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256([]byte("binary"))
	hexsum := hex.EncodeToString(sum[:])
	pin := "sha256:" + strings.Repeat("a", 64)
	for _, tc := range []struct {
		name, url, file, checksum string
		want                      string // substring of the result
		wantErr                   string
	}{
		{name: "file pins its own hash", file: f, want: "file://" + f + "?checksum=sha256%3A" + hexsum},
		{name: "file with checksum", file: f, checksum: pin, want: "checksum=sha256%3A" + strings.Repeat("a", 64)},
		{name: "url with checksum flag", url: "https://example.com/appd", checksum: pin, want: "https://example.com/appd?checksum="},
		{name: "url with its own checksum", url: "https://example.com/appd?checksum=" + pin, want: "https://example.com/appd?checksum=" + pin},
		{name: "url and flag disagree", url: "https://example.com/appd?checksum=" + pin, checksum: "sha256:" + strings.Repeat("b", 64), wantErr: "differs"},
		{name: "bad checksum", url: "https://example.com/appd", checksum: "sha256:xyz", wantErr: "--checksum"},
		{name: "both", url: "https://x", file: f, wantErr: "exactly one"},
		{name: "neither", wantErr: "exactly one"},
		{name: "missing file", file: f + ".nope", wantErr: "no such file"},
		{name: "directory", file: filepath.Dir(f), wantErr: "not a regular file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := sourceURL(tc.url, tc.file, tc.checksum)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil || !strings.Contains(got, tc.want) {
				t.Fatalf("got %q, %v; want it to contain %q", got, err, tc.want)
			}
			if _, err := url.Parse(got); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestPlanInfoParses checks that the synthetic plan info of `stage` is accepted by
// staging's own parser and resolves to the source for this platform.
func TestPlanInfoParses(t *testing.T) {
	src := "https://example.com/appd?checksum=sha256:" + strings.Repeat("c", 64)
	bins, err := staging.ParseInfo(planInfo(src))
	if err != nil {
		t.Fatal(err)
	}
	got, err := bins.Pick(runtime.GOOS, runtime.GOARCH)
	if err != nil || got != src {
		t.Fatalf("Pick = %q, %v", got, err)
	}
}

func TestConfigReportSources(t *testing.T) {
	v := viper.New()
	v.Set("invisor.allow-download", true)
	t.Setenv("INVISOR_RETRY_MIN", "2s")
	home := t.TempDir()
	c, err := config.LoadConfig(v, home, config.Options{DaemonName: "appd"})
	if err != nil {
		t.Fatal(err)
	}
	rep := configReport(c)
	got := map[string]ConfigEntry{}
	for _, s := range rep.Settings {
		got[s.Key] = s
	}
	if len(got) != len(config.Settings()) {
		t.Fatalf("%d entries, want %d", len(got), len(config.Settings()))
	}
	for key, want := range map[string][2]string{
		"allow-download": {"true", "app.toml"},
		"retry-min":      {"2s", "env INVISOR_RETRY_MIN"},
		"retry-max":      {"5m", "default"},
		"daemon-name":    {"appd", "default"},
		"backup-dir":     {home, "default"},
	} {
		if e := got[key]; e.Value != want[0] || e.Source != want[1] {
			t.Errorf("%s = %q from %q, want %q from %q", key, e.Value, e.Source, want[0], want[1])
		}
	}
}

func testLayout(t *testing.T) home.Layout {
	t.Helper()
	l, err := home.New(t.TempDir(), "appd", home.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func TestHomeViews(t *testing.T) {
	l := testLayout(t)
	bin, _ := l.UpgradeBin("V2")
	if err := os.MkdirAll(filepath.Dir(bin), 0o755); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if b := binaryView(ctx, l, "V2", nil); b.Present || b.Trusted || homeState(b) != "missing" {
		t.Fatalf("empty: %+v", b)
	}
	if err := os.WriteFile(bin, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	b := binaryView(ctx, l, "V2", nil)
	if !b.Present || b.Trusted || homeState(b) != "placed" || !strings.Contains(b.Error, "no completion record") {
		t.Fatalf("placed: %+v", b)
	}
	if got := stagedBinaries(l); len(got) != 1 || got[0].Name != "v2" || got[0].Path != bin {
		t.Fatalf("stagedBinaries = %+v", got)
	}
	// current -> upgrades/v2, relative.
	if err := os.Symlink("upgrades/v2", l.Current()); err != nil {
		t.Fatal(err)
	}
	if cur, err := currentTarget(l); err != nil || cur != "upgrades/v2" {
		t.Fatalf("currentTarget = %q, %v", cur, err)
	}
	os.Remove(l.Current())
	os.Symlink("upgrades/nope", l.Current())
	if _, err := currentTarget(l); err == nil {
		t.Fatal("dangling current link not reported")
	}
}

func TestHistoryJoin(t *testing.T) {
	l := testLayout(t)
	os.MkdirAll(l.Root(), 0o755)
	t0 := time.Now().UTC().Truncate(time.Second)
	appendHistory(t, l,
		history.Entry{Event: history.EventHalt, Upgrade: "v2", Height: 30, Time: t0},
		history.Entry{Event: history.EventSwitched, Upgrade: "v2", Height: 30, Time: t0.Add(time.Second), Seconds: 1, SHA256: "abc"})
	rows, err := historyRows(l)
	if err != nil || len(rows) != 1 {
		t.Fatalf("historyRows = %+v, %v", rows, err)
	}
	r := rows[0]
	if r.Upgrade != "v2" || r.Height != 30 || r.SHA256 != "abc" || r.Halted == nil || r.Switched == nil || r.SwitchSeconds != 1 {
		t.Fatalf("row = %+v", r)
	}
}

// appendHistory appends entries to l's history, in order.
func appendHistory(t *testing.T, l home.Layout, entries ...history.Entry) {
	t.Helper()
	for _, e := range entries {
		if err := history.Append(l.Home(), e); err != nil {
			t.Fatal(err)
		}
	}
}

// TestHistoryRollback: a rollback is shown on the upgrade's row, and the boot
// after it is a switch with no halt to time it from.
func TestHistoryRollback(t *testing.T) {
	l := testLayout(t)
	os.MkdirAll(l.Root(), 0o755)
	t0 := time.Now().UTC().Truncate(time.Second)
	appendHistory(t, l,
		history.Entry{Event: history.EventHalt, Upgrade: "v2", Height: 30, Time: t0},
		history.Entry{Event: history.EventSwitched, Upgrade: "v2", Height: 30, Time: t0.Add(time.Second), Seconds: 1, SHA256: "bad"},
		history.Entry{Event: history.EventRollback, Upgrade: "v2", Height: 30, Time: t0.Add(time.Minute)},
		history.Entry{Event: history.EventSwitched, Upgrade: "v2", Height: 30, Time: t0.Add(2 * time.Minute), SHA256: "good", AfterRollback: true})
	rows, err := historyRows(l)
	if err != nil || len(rows) != 1 {
		t.Fatalf("historyRows = %+v, %v", rows, err)
	}
	r := rows[0]
	if r.RolledBack == nil || !r.RolledBack.Equal(t0.Add(time.Minute)) || !r.AfterRollback || r.SHA256 != "good" {
		t.Fatalf("row = %+v, want rolled back at %s, then switched to good after the rollback", r, t0.Add(time.Minute))
	}
}

// TestFault36PlanOnlyFromOwnState: prepare takes the plan from the node's own
// state (data/upgrade-info.json, or the status file of the process holding the
// home lock), never from whatever answers an RPC address.
func TestFault36PlanOnlyFromOwnState(t *testing.T) {
	l := testLayout(t)
	os.MkdirAll(l.Root(), 0o755)
	e := &env{home: l.Home(), opts: config.Options{DaemonName: "appd"}, cfgErr: errors.New("unused")}
	if p, from := ownPlan(e); p != nil || !strings.Contains(from, "no node status") {
		t.Fatalf("empty home: %v (%s)", p, from)
	}
	// A status file whose writer does not hold the lock (stale, or forged) is no source.
	writeStatus := func(pid int, p *staging.Plan) {
		b, _ := json.Marshal(status.Node{PID: pid, Plan: p})
		if err := os.WriteFile(status.Path(l.Home()), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	plan := &staging.Plan{Name: "v2", Height: 50, Info: "{}"}
	writeStatus(os.Getpid(), plan)
	if p, from := ownPlan(e); p != nil || !strings.Contains(from, "no node runs") {
		t.Fatalf("status without the lock holder: %v (%s)", p, from)
	}
	lock, err := l.Acquire(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Release()
	if p, from := ownPlan(e); p == nil || *p != *plan || !strings.Contains(from, "running node") {
		t.Fatalf("status of the lock holder: %v (%s)", p, from)
	}
	writeStatus(os.Getpid()+1, plan)
	if p, _ := ownPlan(e); p != nil {
		t.Fatalf("status written by another PID than the lock holder: %v", p)
	}
	// After a halt, upgrade-info.json is the source.
	os.MkdirAll(l.DataDir(), 0o755)
	os.WriteFile(l.UpgradeInfo(), []byte(`{"name":"v3","height":"60","info":"i"}`), 0o644)
	if p, from := ownPlan(e); p == nil || p.Name != "v3" || p.Height != 60 || from != home.UpgradeInfoFile {
		t.Fatalf("after a halt: %v (%s)", p, from)
	}
	if knownPlan(e, "v2") != nil || knownPlan(e, "v3") == nil {
		t.Fatal("knownPlan disagrees with ownPlan")
	}
}
