package invisor

import (
	"bytes"
	"strings"
	"testing"
	"text/template"

	"github.com/spf13/viper"

	serverconfig "github.com/cosmos/cosmos-sdk/server/config"
)

// TestAppConfigTemplate renders the app.toml `init` writes, reads it back as the
// SDK does (viper, TOML) and checks that LoadConfig sees every key with its default.
func TestAppConfigTemplate(t *testing.T) {
	tmpl, cfg := InitAppConfig(serverconfig.DefaultConfig())
	var buf bytes.Buffer
	if err := template.Must(template.New("app").Parse(tmpl)).Execute(&buf, cfg); err != nil {
		t.Fatal(err)
	}
	v := viper.New()
	v.SetConfigType("toml")
	if err := v.ReadConfig(&buf); err != nil {
		t.Fatalf("rendered app.toml does not parse: %v", err)
	}
	c, err := LoadConfig(v, t.TempDir(), Options{DaemonName: "appd"})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range Settings() {
		if c.Sources[s.Key] != "app.toml" {
			t.Errorf("%s: source %q, want app.toml (missing from the template?)", s.Key, c.Sources[s.Key])
		}
		if s.Default != "" && c.Values[s.Key] != s.Default {
			t.Errorf("%s: template value %q, default %q", s.Key, c.Values[s.Key], s.Default)
		}
		if !strings.Contains(AppConfigTemplate, s.Env) {
			t.Errorf("%s: the template does not name its env %s", s.Key, s.Env)
		}
	}
	d, _ := LoadConfig(nil, t.TempDir(), Options{DaemonName: "appd"})
	c.Staging.Home, c.Relauncher.Home, c.Relauncher.BackupDir = d.Staging.Home, d.Relauncher.Home, d.Relauncher.BackupDir
	if c.Staging.AllowDownload != d.Staging.AllowDownload || c.Staging.Deadline != d.Staging.Deadline ||
		c.Relauncher.Backup != d.Relauncher.Backup || c.Staging.DaemonName != "appd" {
		t.Errorf("app.toml defaults differ from LoadConfig's defaults")
	}
}
