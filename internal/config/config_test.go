package config

import (
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
	"github.com/spf13/viper"

	"github.com/invisor/invisor/relauncher"
)

// TestSectionReadsBackAsDefaults renders the [invisor] section from the settings
// table, reads it back as the SDK does (viper, TOML) and checks that LoadConfig
// sees every key, from app.toml, at its default, and that the section names
// each key's environment variable.
func TestSectionReadsBackAsDefaults(t *testing.T) {
	sec := section("appd")
	values, ok, err := parseSection([]byte(sec))
	if err != nil || !ok {
		t.Fatalf("the rendered section does not parse (%v, %v):\n%s", ok, err, sec)
	}
	v := viper.New()
	v.Set(sectionName, values)
	c, err := LoadConfig(v, t.TempDir(), Options{DaemonName: "appd"})
	if err != nil {
		t.Fatal(err)
	}
	d, err := LoadConfig(nil, t.TempDir(), Options{DaemonName: "appd"})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range Settings() {
		if c.Sources[s.Key] != "app.toml" {
			t.Errorf("%s: source %q, want app.toml (missing from the section?)", s.Key, c.Sources[s.Key])
		}
		if s.Default != "" && c.Values[s.Key] != s.Default {
			t.Errorf("%s: section value %q, default %q", s.Key, c.Values[s.Key], s.Default)
		}
		if c.Values[s.Key] != d.Values[s.Key] && s.Key != "backup-dir" { // backup-dir shows the (different) home
			t.Errorf("%s: section gives %q, no section gives %q", s.Key, c.Values[s.Key], d.Values[s.Key])
		}
		if !strings.Contains(sec, "# env "+s.Env+"\n"+s.Key+" = ") {
			t.Errorf("%s: the section does not name its env %s above the key", s.Key, s.Env)
		}
	}
	if strings.Contains(sec, "<appd>") || !strings.Contains(sec, "`appd invisor config`") {
		t.Error("the section does not name the chain binary")
	}
	for _, line := range strings.Split(sec, "\n") {
		if len(line) > 80 {
			t.Errorf("line longer than 80 columns: %q", line)
		}
	}
}

// TestOperatorGuideMatchesSettings keeps docs/operator.md's reference table
// honest: one row per setting, with its flag, environment variable and default.
func TestOperatorGuideMatchesSettings(t *testing.T) {
	doc, err := os.ReadFile("../../docs/operator.md")
	if err != nil {
		t.Fatal(err)
	}
	rows := map[string]string{}
	for _, line := range strings.Split(string(doc), "\n") {
		if cells := strings.Split(line, "|"); len(cells) > 5 {
			rows[strings.Trim(strings.TrimSpace(cells[1]), "`")] = line
		}
	}
	for _, s := range Settings() {
		row, ok := rows[s.Key]
		if !ok {
			t.Errorf("docs/operator.md has no row for %s", s.Key)
			continue
		}
		for _, want := range []string{"`--" + FlagPrefix + s.Key + "`", "`" + s.Env + "`", s.Default} {
			if !strings.Contains(row, want) {
				t.Errorf("docs/operator.md row %s lacks %q: %s", s.Key, want, row)
			}
		}
	}
}

func TestLoadConfigPrecedenceAndErrors(t *testing.T) {
	v := viper.New()
	v.Set("invisor.retry-min", "7s")
	v.Set("invisor.retry-max", "9m")
	t.Setenv("INVISOR_RETRY_MAX", "8m")
	fs := pflag.NewFlagSet("start", pflag.ContinueOnError)
	AddFlags(fs)
	if err := fs.Parse([]string{"--invisor.allow-download"}); err != nil {
		t.Fatal(err)
	}
	c, err := LoadConfigFlags(v, fs, t.TempDir(), Options{DaemonName: "appd"})
	if err != nil {
		t.Fatal(err)
	}
	for key, want := range map[string][2]string{
		"retry-min":      {"7s", "app.toml"},
		"retry-max":      {"8m", "env INVISOR_RETRY_MAX"},
		"allow-download": {"true", "flag --invisor.allow-download"},
		"daemon-name":    {"appd", "default"},
	} {
		if c.Values[key] != want[0] || c.Sources[key] != want[1] {
			t.Errorf("%s = %q from %q, want %q from %q", key, c.Values[key], c.Sources[key], want[0], want[1])
		}
	}
	if !c.Staging.AllowDownload || !c.Relauncher.DownloadsEnabled || c.Staging.RetryMin.String() != "7s" {
		t.Errorf("typed config does not follow the values: %+v", c.Staging)
	}

	for _, tc := range []struct {
		name, key string
		val       any
		want      string
	}{
		{"unknown key", "invisor.allow-downloads", true, `unknown key "allow-downloads"`},
		{"bad duration", "invisor.retry-min", "soon", "bad value for invisor.retry-min in app.toml"},
		{"relative path", "invisor.backup-dir", "backups", "want an absolute path"},
		{"bad share", "invisor.staging-disk-share", 2, "want a fraction in (0, 1]"},
	} {
		v := viper.New()
		v.Set(tc.key, tc.val)
		if _, err := LoadConfig(v, t.TempDir(), Options{DaemonName: "appd"}); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error containing %q", tc.name, err, tc.want)
		}
	}
}

// backup-keep lands in the relauncher's config from every source, and a value
// that would keep no backup is refused with the key named.
func TestBackupKeep(t *testing.T) {
	c, err := LoadConfig(nil, t.TempDir(), Options{DaemonName: "appd"})
	if err != nil {
		t.Fatal(err)
	}
	if c.Relauncher.BackupKeep != relauncher.DefaultBackupKeep || c.Values["backup-keep"] != strconv.Itoa(relauncher.DefaultBackupKeep) {
		t.Errorf("default: BackupKeep %d, value %q; want %d", c.Relauncher.BackupKeep, c.Values["backup-keep"], relauncher.DefaultBackupKeep)
	}
	v := viper.New()
	v.Set("invisor.backup-keep", 5)
	if c, err := LoadConfig(v, t.TempDir(), Options{DaemonName: "appd"}); err != nil || c.Relauncher.BackupKeep != 5 {
		t.Errorf("app.toml 5: %d, %v", c.Relauncher.BackupKeep, err)
	}
	t.Setenv("INVISOR_BACKUP_KEEP", "1")
	if c, err := LoadConfig(v, t.TempDir(), Options{DaemonName: "appd"}); err != nil || c.Relauncher.BackupKeep != 1 || c.Sources["backup-keep"] != "env INVISOR_BACKUP_KEEP" {
		t.Errorf("env 1 over app.toml: %d from %q, %v", c.Relauncher.BackupKeep, c.Sources["backup-keep"], err)
	}
	for _, bad := range []string{"0", "-1", "two"} {
		t.Setenv("INVISOR_BACKUP_KEEP", bad)
		if _, err := LoadConfig(nil, t.TempDir(), Options{DaemonName: "appd"}); err == nil ||
			!strings.Contains(err.Error(), "INVISOR_BACKUP_KEEP") || !strings.Contains(err.Error(), ">= 1") {
			t.Errorf("INVISOR_BACKUP_KEEP=%s: %v, want a refusal naming the variable", bad, err)
		}
	}
}

// webhook-url lands in the notifier's config, is refused unless it is an
// http(s) URL with a host (without repeating it), and `invisor config` shows it
// without its credentials or token.
func TestWebhookURL(t *testing.T) {
	c, err := LoadConfig(nil, t.TempDir(), Options{DaemonName: "appd"})
	if err != nil || c.Notify.URL != "" || c.Values["webhook-url"] != "" {
		t.Fatalf("default: %q, %q, %v; want off", c.Notify.URL, c.Values["webhook-url"], err)
	}
	const u = "https://bot:hunter2@hooks.example/invisor?token=s3cret"
	t.Setenv("INVISOR_WEBHOOK_URL", u)
	c, err = LoadConfig(nil, t.TempDir(), Options{DaemonName: "appd"})
	if err != nil || c.Notify.URL != u || c.Sources["webhook-url"] != "env INVISOR_WEBHOOK_URL" {
		t.Fatalf("env: %q from %q, %v", c.Notify.URL, c.Sources["webhook-url"], err)
	}
	if v := c.Values["webhook-url"]; strings.Contains(v, "hunter2") || strings.Contains(v, "s3cret") || !strings.Contains(v, "hooks.example/invisor") {
		t.Errorf("the value `invisor config` shows is %q, want it without credentials and token", v)
	}
	for _, bad := range []string{"ftp://bot:hunter2@hooks.example/x", "hooks.example/x?token=s3cret", "http://bot:hunter2@/x"} {
		t.Setenv("INVISOR_WEBHOOK_URL", bad)
		_, err := LoadConfig(nil, t.TempDir(), Options{DaemonName: "appd"})
		if err == nil || !strings.Contains(err.Error(), "INVISOR_WEBHOOK_URL") || strings.Contains(err.Error(), "hunter2") || strings.Contains(err.Error(), "s3cret") {
			t.Errorf("INVISOR_WEBHOOK_URL=%s: %v, want a refusal naming the variable and not the secrets", bad, err)
		}
	}
	t.Setenv("INVISOR_WEBHOOK_URL", "")
	if c, err := LoadConfig(nil, t.TempDir(), Options{DaemonName: "appd"}); err != nil || c.Notify.URL != "" {
		t.Errorf("empty env: %q, %v; want off", c.Notify.URL, err)
	}
}

// health-deadline lands in the gate's config from every source; 0 is allowed
// (no stall report), a negative or malformed value is refused naming the source.
func TestHealthDeadline(t *testing.T) {
	c, err := LoadConfig(nil, t.TempDir(), Options{DaemonName: "appd"})
	if err != nil || c.Health.Deadline != time.Minute || c.Values["health-deadline"] != "60s" {
		t.Fatalf("default: %v (%q), %v; want 1m", c.Health.Deadline, c.Values["health-deadline"], err)
	}
	v := viper.New()
	v.Set("invisor.health-deadline", "0s")
	if c, err := LoadConfig(v, t.TempDir(), Options{DaemonName: "appd"}); err != nil || c.Health.Deadline != 0 {
		t.Errorf("app.toml 0s: %v, %v", c.Health.Deadline, err)
	}
	t.Setenv("INVISOR_HEALTH_DEADLINE", "5m")
	if c, err := LoadConfig(v, t.TempDir(), Options{DaemonName: "appd"}); err != nil || c.Health.Deadline != 5*time.Minute ||
		c.Sources["health-deadline"] != "env INVISOR_HEALTH_DEADLINE" {
		t.Errorf("env 5m over app.toml: %v from %q, %v", c.Health.Deadline, c.Sources["health-deadline"], err)
	}
	for _, bad := range []string{"-1s", "soon", "60"} {
		t.Setenv("INVISOR_HEALTH_DEADLINE", bad)
		if _, err := LoadConfig(nil, t.TempDir(), Options{DaemonName: "appd"}); err == nil || !strings.Contains(err.Error(), "INVISOR_HEALTH_DEADLINE") {
			t.Errorf("INVISOR_HEALTH_DEADLINE=%s: %v, want a refusal naming the variable", bad, err)
		}
	}
}
