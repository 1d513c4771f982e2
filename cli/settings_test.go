package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/invisor/invisor/internal/config"
	"github.com/invisor/invisor/internal/home"
	"github.com/invisor/invisor/internal/status"
	"github.com/invisor/invisor/staging"
)

// settingsHome is a node home with config.toml and an empty cosmovisor root,
// and the env of a shell on it whose settings are all defaults (downloads off).
func settingsHome(t *testing.T) (*env, home.Layout, *bytes.Buffer) {
	t.Helper()
	nodeHome := t.TempDir()
	for _, d := range []string{"config", home.RootDir} {
		if err := os.MkdirAll(filepath.Join(nodeHome, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(nodeHome, "config", "config.toml"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	opts := config.Options{DaemonName: "appd"}
	cfg, err := config.LoadConfig(nil, nodeHome, opts)
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	e := &env{opts: opts, home: cfg.Staging.Home, cfg: cfg, out: &out, errOut: &out}
	l, err := home.New(e.home, "appd", home.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return e, l, &out
}

// published is shell's settings with allow-download and unsafe-skip-backup as
// a node started with them in its environment has them.
func published(shell config.Config) []status.Setting {
	var out []status.Setting
	for _, st := range shell.EffectiveSettings() {
		switch st.Key {
		case "allow-download":
			st.Value, st.Source = "true", "env DAEMON_ALLOW_DOWNLOAD_BINARIES"
		case "unsafe-skip-backup":
			st.Value, st.Source = "true", "env UNSAFE_SKIP_BACKUP"
		}
		out = append(out, st)
	}
	return out
}

// `invisor status` decides with the running node's settings, not the shell's,
// says so and lists where the shell differs; with no node running it says the
// settings are the shell's.
func TestStatusUsesTheRunningNodesSettings(t *testing.T) {
	plan := &staging.Plan{Name: "v2", Height: 100, Info: `{"binaries":{"any":"https://example.com/appd?checksum=sha256:` + strings.Repeat("a", 64) + `"}}`}
	started := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		name     string
		lock     bool // this process holds the home lock, as the node that wrote the file
		settings bool // the status file carries the node's settings
		from     string
		diffs    []string
		atHalt   string // in AtHalt
		problem  string // in a problem ("": no download problem)
		text     []string
	}{
		{name: "running node with other settings", lock: true, settings: true, from: "node",
			diffs: []string{"allow-download: node true (env DAEMON_ALLOW_DOWNLOAD_BINARIES), this shell false (default)",
				"unsafe-skip-backup: node true (env UNSAFE_SKIP_BACKUP), this shell false (default)"},
			atHalt: "staging downloads it from the plan info",
			text: []string{"settings   those of the running node (PID ", ", started " + started.Local().Format(time.DateTime),
				"           allow-download: node true (env DAEMON_ALLOW_DOWNLOAD_BINARIES), this shell false (default)\n",
				"commands run from this shell (stage, check-proposal) use the shell's"}},
		{name: "no node runs", lock: false, settings: true, from: "shell",
			atHalt: "downloads are disabled", problem: "downloads are disabled (allow-download = false)",
			text: []string{"settings   this shell's (its environment, app.toml and flags): no node runs on this home"}},
		{name: "running node that publishes none", lock: true, settings: false, from: "shell",
			atHalt: "downloads are disabled", problem: "downloads are disabled",
			text: []string{"does not publish its settings"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e, l, out := settingsHome(t)
			ns := status.Node{PID: os.Getpid(), Time: time.Now().UTC(), State: staging.StateDownloading, Plan: plan, Started: started}
			if tc.settings {
				ns.Settings = published(e.cfg)
			}
			b, _ := json.Marshal(ns)
			if err := os.WriteFile(status.Path(e.home), b, 0o644); err != nil {
				t.Fatal(err)
			}
			if tc.lock {
				lock, err := l.Acquire(nil)
				if err != nil {
					t.Fatal(err)
				}
				defer lock.Release()
			}
			rep := gatherStatus(context.Background(), e)
			if rep.Settings.From != tc.from {
				t.Fatalf("settings from %q (%s), want %q", rep.Settings.From, rep.Settings.Note, tc.from)
			}
			var diffs []string
			for _, d := range rep.Settings.Differences {
				diffs = append(diffs, d.String())
			}
			if strings.Join(diffs, "\n") != strings.Join(tc.diffs, "\n") {
				t.Errorf("differences:\n%s\nwant:\n%s", strings.Join(diffs, "\n"), strings.Join(tc.diffs, "\n"))
			}
			if !strings.Contains(rep.AtHalt, tc.atHalt) {
				t.Errorf("at halt %q, want it to say %q", rep.AtHalt, tc.atHalt)
			}
			var downloadProblems []string
			for _, p := range rep.Problems {
				if strings.Contains(p, "downloads are disabled") {
					downloadProblems = append(downloadProblems, p)
				}
			}
			if (tc.problem == "") != (len(downloadProblems) == 0) || (tc.problem != "" && !strings.Contains(downloadProblems[0], tc.problem)) {
				t.Errorf("download problems %q, want %q", downloadProblems, tc.problem)
			}
			if e.cfg.Staging.AllowDownload || e.cfg.Sources["allow-download"] != "default" {
				t.Error("the shell's own configuration was changed")
			}
			printStatus(e, rep)
			for _, want := range tc.text {
				if !strings.Contains(out.String(), want) {
					t.Errorf("text output lacks %q:\n%s", want, out)
				}
			}
			if tc.from == "shell" && strings.Contains(out.String(), "node true") {
				t.Errorf("the shell's settings shown with a node's difference:\n%s", out)
			}
		})
	}
}

// The shell's bad configuration does not stop status from using the running
// node's settings; the problem says whose configuration is bad.
func TestStatusWithABadShellConfiguration(t *testing.T) {
	e, l, _ := settingsHome(t)
	good := e.cfg
	e.cfg, e.cfgErr = config.Config{}, os.ErrInvalid
	b, _ := json.Marshal(status.Node{PID: os.Getpid(), Time: time.Now().UTC(), State: staging.StateIdle, Settings: published(good)})
	if err := os.WriteFile(status.Path(e.home), b, 0o644); err != nil {
		t.Fatal(err)
	}
	lock, err := l.Acquire(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Release()
	rep := gatherStatus(context.Background(), e)
	if rep.Settings.From != "node" || len(rep.Settings.Differences) != 0 || !strings.Contains(rep.Settings.Note, "not compared") {
		t.Fatalf("settings %+v", rep.Settings)
	}
	if len(rep.Problems) != 1 || !strings.HasPrefix(rep.Problems[0], "configuration in this shell: ") {
		t.Fatalf("problems %q", rep.Problems)
	}
}

// `invisor config` keeps the shell's value and source and puts the node's
// beside them, in the text where they differ and in -o json for every key.
func TestConfigShowsTheRunningNodesSettings(t *testing.T) {
	e, l, _ := settingsHome(t)
	started := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	ns := status.Node{PID: os.Getpid(), Started: started, Settings: published(e.cfg)}
	b, _ := json.Marshal(ns)
	if err := os.WriteFile(status.Path(e.home), b, 0o644); err != nil {
		t.Fatal(err)
	}
	report := func() ConfigReport {
		got, why := runningStatus(e, l)
		_, sv := nodeSettings(e, got, why == "")
		return configReport(e.cfg).withNode(got.Settings, sv)
	}

	// No node holds the lock: the shell's alone, said to be the shell's.
	rep := report()
	var text bytes.Buffer
	if err := printConfig(&text, rep); err != nil {
		t.Fatal(err)
	}
	if rep.Node.From != "shell" || strings.Contains(text.String(), "NODE") || !strings.Contains(text.String(), "shown   this shell's") {
		t.Fatalf("without a node:\n%s", text.String())
	}
	for _, s := range rep.Settings {
		if s.Node != nil || s.Differs {
			t.Fatalf("%s: a node value without a node: %+v", s.Key, s)
		}
	}

	lock, err := l.Acquire(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Release()
	rep = report()
	entries := map[string]ConfigEntry{}
	for _, s := range rep.Settings {
		entries[s.Key] = s
	}
	if a := entries["allow-download"]; a.Value != "false" || a.Source != "default" || !a.Differs || a.Node == nil ||
		*a.Node != (NodeSetting{Value: "true", Source: "env DAEMON_ALLOW_DOWNLOAD_BINARIES"}) {
		t.Errorf("allow-download %+v (node %+v)", a, a.Node)
	}
	if r := entries["retry-min"]; r.Differs || r.Node == nil || r.Node.Value != "5s" {
		t.Errorf("retry-min %+v", r)
	}
	if rep.Node.From != "node" || rep.Node.PID != os.Getpid() || !rep.Node.Started.Equal(started) || len(rep.Node.Differences) != 2 {
		t.Errorf("node settings %+v", rep.Node)
	}
	var js bytes.Buffer
	if err := (&env{out: &js}).printJSON(rep); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"from": "node"`, `"node_source": "env DAEMON_ALLOW_DOWNLOAD_BINARIES"`, `"differs": true`} {
		if !strings.Contains(js.String(), want) {
			t.Errorf("-o json lacks %s:\n%s", want, js.String())
		}
	}
	text.Reset()
	if err := printConfig(&text, rep); err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(text.String(), "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) > 0 && f[0] == "allow-download":
			if strings.Join(f, " ") != "allow-download false default DAEMON_ALLOW_DOWNLOAD_BINARIES true (env DAEMON_ALLOW_DOWNLOAD_BINARIES)" {
				t.Errorf("allow-download row %q", line)
			}
		case len(f) > 0 && f[0] == "retry-min":
			if len(f) != 4 {
				t.Errorf("retry-min row shows a node value it shares: %q", line)
			}
		}
	}
	if !strings.Contains(text.String(), "NODE") || !strings.Contains(text.String(), "the running node's (PID ") {
		t.Errorf("text:\n%s", text.String())
	}
}
