package config

import (
	"strings"
	"testing"

	"github.com/spf13/viper"
)

// What a node publishes (EffectiveSettings) rebuilds (FromEffective) into the
// decisions the node takes, and keeps the webhook's token out.
func TestEffectiveSettingsRoundTrip(t *testing.T) {
	const token = "s3cr3t-t0ken"
	for _, tc := range []struct {
		name  string
		env   map[string]string
		toml  map[string]any
		check func(t *testing.T, c Config)
	}{
		{name: "defaults", check: func(t *testing.T, c Config) {
			if c.Staging.AllowDownload || !c.Staging.RequireChecksum || !c.Relauncher.Backup || !c.Relauncher.RunPreUpgrade || c.Staging.DaemonName != "appd" {
				t.Errorf("defaults rebuilt as %+v / %+v", c.Staging, c.Relauncher)
			}
		}},
		{name: "env and app.toml", env: map[string]string{"DAEMON_ALLOW_DOWNLOAD_BINARIES": "true", "UNSAFE_SKIP_BACKUP": "true", "DAEMON_NAME": "otherd"},
			toml: map[string]any{"require-checksum": false, "disable-recase": true, "pre-upgrade": false},
			check: func(t *testing.T, c Config) {
				if !c.Staging.AllowDownload || !c.Relauncher.DownloadsEnabled || c.Staging.RequireChecksum || c.Relauncher.Backup ||
					c.Relauncher.RunPreUpgrade || !c.Staging.DisableRecase || c.Staging.DaemonName != "otherd" || c.Relauncher.DaemonName != "otherd" {
					t.Errorf("rebuilt as %+v / %+v", c.Staging, c.Relauncher)
				}
				if c.Sources["allow-download"] != "env DAEMON_ALLOW_DOWNLOAD_BINARIES" || c.Sources["pre-upgrade"] != "app.toml" {
					t.Errorf("sources %v", c.Sources)
				}
			}},
		{name: "webhook with a token", env: map[string]string{"INVISOR_WEBHOOK_URL": "https://bot:" + token + "@hooks.example.com/invisor?token=" + token},
			check: func(t *testing.T, c Config) {
				if c.Notify.URL != "" {
					t.Errorf("a secret was restored: Notify.URL %q", c.Notify.URL)
				}
				if got := c.Values["webhook-url"]; !strings.HasPrefix(got, "(redacted: https://hooks.example.com/…, sha256 ") || strings.Contains(got, "invisor") {
					t.Errorf("webhook-url rebuilt as %q, want scheme, host and digest only", got)
				}
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			v := viper.New()
			for k, val := range tc.toml {
				v.Set(sectionName+"."+k, val)
			}
			nodeHome := t.TempDir()
			loaded, err := LoadConfig(v, nodeHome, Options{DaemonName: "appd"})
			if err != nil {
				t.Fatal(err)
			}
			published := loaded.EffectiveSettings()
			if len(published) != len(settings) {
				t.Fatalf("%d settings published, want %d", len(published), len(settings))
			}
			for i, e := range published {
				if e.Key != settings[i].key || e.Source != loaded.Sources[e.Key] {
					t.Errorf("published #%d = %+v, want key %s from %q", i, e, settings[i].key, loaded.Sources[e.Key])
				}
				if strings.Contains(e.Value, token) {
					t.Errorf("%s published with its token: %q", e.Key, e.Value)
				}
			}
			rebuilt, err := FromEffective(published, nodeHome, Options{DaemonName: "appd"})
			if err != nil {
				t.Fatal(err)
			}
			if rebuilt.Staging.Home != nodeHome || rebuilt.Relauncher.Home != nodeHome {
				t.Errorf("home %q / %q, want %q", rebuilt.Staging.Home, rebuilt.Relauncher.Home, nodeHome)
			}
			for _, e := range rebuilt.EffectiveSettings() {
				if want := published[indexOf(e.Key)]; e != want {
					t.Errorf("published again as %+v, first as %+v", e, want)
				}
			}
			tc.check(t, rebuilt)
		})
	}
}

func indexOf(key string) int {
	for i, s := range settings {
		if s.key == key {
			return i
		}
	}
	return -1
}

// A node built before a key existed publishes without it (the default holds);
// a newer node's key is ignored; a value this build cannot parse names the key.
func TestFromEffectiveVersionSkew(t *testing.T) {
	nodeHome := t.TempDir()
	c, err := FromEffective([]Effective{{Key: "allow-download", Value: "true", Source: "env DAEMON_ALLOW_DOWNLOAD_BINARIES"},
		{Key: "a-key-from-the-future", Value: "x", Source: "app.toml"}}, nodeHome, Options{DaemonName: "appd"})
	if err != nil {
		t.Fatal(err)
	}
	if !c.Staging.AllowDownload || c.Sources["retry-min"] != "default" || c.Staging.RetryMin.String() != "5s" {
		t.Errorf("rebuilt: allow-download %v, retry-min %v from %q", c.Staging.AllowDownload, c.Staging.RetryMin, c.Sources["retry-min"])
	}
	if _, ok := c.Values["a-key-from-the-future"]; ok {
		t.Error("an unknown key was kept")
	}
	_, err = FromEffective([]Effective{{Key: "retry-min", Value: "soon", Source: "app.toml"}}, nodeHome, Options{DaemonName: "appd"})
	if err == nil || !strings.Contains(err.Error(), "retry-min (app.toml)") {
		t.Fatalf("bad published value: %v", err)
	}
}

// EffectiveSettings redacts whatever Values holds: the list goes to a file
// every user can read.
func TestEffectiveSettingsRedactsRawValues(t *testing.T) {
	raw := "https://bot:pw@hooks.example.com/x?token=abc&checksum=sha256:00"
	c := Config{Values: map[string]string{"webhook-url": raw}, Sources: map[string]string{"webhook-url": "app.toml"}}
	for _, e := range c.EffectiveSettings() {
		if e.Key == "webhook-url" && (!strings.HasPrefix(e.Value, "(redacted: https://hooks.example.com/…, sha256 ") ||
			strings.Contains(e.Value, "pw") || strings.Contains(e.Value, "abc") || strings.Contains(e.Value, "/x")) {
			t.Fatalf("webhook-url published as %q, want scheme, host and digest only", e.Value)
		}
	}
}
