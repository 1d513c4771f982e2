package config

import (
	"crypto/sha256"
	"fmt"
	"net/url"
	"path/filepath"
	"strings"

	"github.com/invisor/invisor/internal/health"
	"github.com/invisor/invisor/internal/notify"
	"github.com/invisor/invisor/relauncher"
	"github.com/invisor/invisor/staging"
)

// Effective is one setting as a node runs with it: the value as text, as
// Config.Values has it, and where it came from, as Config.Sources says. A
// running node publishes its list in its status file (status.Setting is this
// type, so the tags are that file's), so that `invisor status` and `invisor
// config`, run from a shell whose environment is not the node's (a systemd
// unit's Environment=, say), can show what the node does rather than what the
// shell would.
type Effective struct {
	Key    string `json:"key"`    // app.toml key under [invisor]
	Value  string `json:"value"`  // as text, a secret redacted
	Source string `json:"source"` // default, app.toml, env NAME, flag --invisor.KEY
}

// redactors hold, for the settings that may carry a secret, what may be
// written down of them. The status file is readable by every user of the
// machine, and a webhook's secret is often its path (Slack's and Discord's
// hook URLs), not only its user, password or query: only the scheme, the host
// and a digest of the whole URL are written, which still tells two URLs apart
// (node and shell are compared through the same redactor).
var redactors = map[string]func(string) string{
	"webhook-url": func(v string) string {
		if v = strings.TrimSpace(v); v == "" || strings.HasPrefix(v, redactedMark) {
			return v // empty, or published already (FromEffective keeps the published text)
		}
		sum := sha256.Sum256([]byte(v))
		u, err := url.Parse(v)
		if err != nil || u.Host == "" {
			return fmt.Sprintf("%sa URL that does not parse, sha256 %x)", redactedMark, sum[:6])
		}
		return fmt.Sprintf("%s%s://%s/…, sha256 %x)", redactedMark, u.Scheme, u.Host, sum[:6])
	},
}

// redactedMark begins every redacted value.
const redactedMark = "(redacted: "

// EffectiveSettings returns c's settings in app.toml order, each with its value
// as text and its source, secrets redacted (redactors), whatever c.Values
// holds: the list is safe to write to a world-readable file.
func (c Config) EffectiveSettings() []Effective {
	out := make([]Effective, 0, len(settings))
	for _, s := range settings {
		v := c.Values[s.key]
		if r := redactors[s.key]; r != nil {
			v = r(v)
		}
		out = append(out, Effective{Key: s.key, Value: v, Source: c.Sources[s.key]})
	}
	return out
}

// FromEffective rebuilds, for the node at nodeHome, the Config a running node
// published (EffectiveSettings), so that `invisor status` takes the decisions
// that depend on a setting (downloads, backups, pre-upgrade, the home's
// layout) with the node's values. A key the list lacks (a node built before
// the key existed) takes its default; a key this build does not know (a newer
// node) is ignored. A secret is not restored: Notify.URL stays empty, only
// Values has the redacted text, so the result must never be used to send. Nothing
// is validated beyond each value's parse: the node validated them at boot.
// A value that does not parse is an error naming the key.
func FromEffective(list []Effective, nodeHome string, opts Options) (Config, error) {
	nodeHome, err := filepath.Abs(nodeHome)
	if err != nil {
		return Config{}, fmt.Errorf("invisor: node home: %w", err)
	}
	c := Config{Enabled: true, Staging: staging.DefaultConfig(), Relauncher: relauncher.DefaultConfig(), Notify: notify.DefaultConfig(),
		Health: health.DefaultConfig(), Sources: map[string]string{}, Values: map[string]string{}}
	c.Staging.Home, c.Relauncher.Home = nodeHome, nodeHome
	c.Staging.DaemonName, c.Relauncher.DaemonName = opts.DaemonName, opts.DaemonName
	published := make(map[string]Effective, len(list))
	for _, e := range list {
		published[e.Key] = e
	}
	for _, s := range settings {
		val, src := s.def, "default"
		if e, ok := published[s.key]; ok {
			val, src = e.Value, e.Source
		}
		c.Sources[s.key], c.Values[s.key] = src, val
		if redactors[s.key] != nil || (src == "default" && val == "") {
			continue
		}
		if err := s.apply(&c, val); err != nil {
			return Config{}, fmt.Errorf("invisor: the running node's %s (%s): %w", s.key, src, err)
		}
	}
	return c, nil
}
