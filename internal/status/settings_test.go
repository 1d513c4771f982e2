package status

import (
	"os"
	"strings"
	"testing"
	"time"

	"github.com/invisor/invisor/internal/config"
	"github.com/invisor/invisor/staging"
)

// The settings the node runs with go through the status file as given, with
// the time this image started; a webhook token, redacted by config's
// EffectiveSettings as the node wiring uses it, never reaches the file.
func TestReporterPublishesSettings(t *testing.T) {
	const token = "s3cr3t-t0ken"
	t.Setenv("DAEMON_ALLOW_DOWNLOAD_BINARIES", "true")
	t.Setenv("INVISOR_WEBHOOK_URL", "https://bot:"+token+"@hooks.example.com/invisor?token="+token)
	nodeHome := testHome(t)
	cfg, err := config.LoadConfig(nil, nodeHome, config.Options{DaemonName: "appd"})
	if err != nil {
		t.Fatal(err)
	}
	settings := cfg.EffectiveSettings()

	before := time.Now().UTC()
	r := NewReporter(nodeHome, &fakeSource{st: staging.Status{State: staging.StateIdle}}, nil)
	r.SetSettings(settings)
	settings[0].Value = "changed by the caller after SetSettings"
	r.Once()

	b, err := os.ReadFile(Path(nodeHome))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(b), token) {
		t.Fatalf("the status file holds the webhook token:\n%s", b)
	}
	ns, ok, err := Read(nodeHome)
	if err != nil || !ok {
		t.Fatalf("Read: %v, %v", ok, err)
	}
	if ns.Started.Before(before.Add(-time.Second)) || ns.Started.After(time.Now()) {
		t.Errorf("started %v, want about %v", ns.Started, before)
	}
	got := map[string]Setting{}
	for _, s := range ns.Settings {
		got[s.Key] = s
	}
	if len(ns.Settings) != len(config.Settings()) || ns.Settings[0].Key != config.Settings()[0].Key {
		t.Fatalf("%d settings, first %+v; want %d in app.toml order", len(ns.Settings), ns.Settings[0], len(config.Settings()))
	}
	for key, want := range map[string]Setting{
		"enabled":        {Key: "enabled", Value: "true", Source: "default"},
		"allow-download": {Key: "allow-download", Value: "true", Source: "env DAEMON_ALLOW_DOWNLOAD_BINARIES"},
	} {
		if got[key] != want {
			t.Errorf("%s = %+v, want %+v", key, got[key], want)
		}
	}

	if w := got["webhook-url"]; w.Source != "env INVISOR_WEBHOOK_URL" || !strings.HasPrefix(w.Value, "(redacted: https://hooks.example.com/…, sha256 ") || strings.Contains(w.Value, "/invisor") {
		t.Errorf("webhook-url = %+v, want scheme, host and digest only, from the env", w)
	}

	// A node that publishes none (no SetSettings) writes no settings.
	other := testHome(t)
	NewReporter(other, &fakeSource{st: staging.Status{State: staging.StateIdle}}, nil).Once()
	if ns, _, _ := Read(other); ns.Settings != nil || ns.Started.IsZero() {
		t.Errorf("without SetSettings: settings %+v, started %v", ns.Settings, ns.Started)
	}
}
