package cli

import (
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"

	"github.com/invisor/invisor/internal/config"
	"github.com/invisor/invisor/internal/status"
)

// ConfigEntry is one line of `invisor config`. Value and Source are this
// shell's (what the commands run from it use); Node is the running node's.
type ConfigEntry struct {
	Key     string `json:"key"`
	Value   string `json:"value"`
	Source  string `json:"source"` // default, app.toml, env NAME, flag --invisor.KEY
	Env     string `json:"env"`
	Default string `json:"default"`
	Meaning string `json:"meaning"`
	// Node is the running node's value and source (nil: no node runs, or it
	// publishes none); Differs says its value is not this shell's.
	Node    *NodeSetting `json:"node,omitempty"`
	Differs bool         `json:"differs,omitempty"`
}

// NodeSetting is a setting's value and source in the running node.
type NodeSetting struct {
	Value  string `json:"value"`
	Source string `json:"source"`
}

// ConfigReport is `invisor config -o json`.
type ConfigReport struct {
	Home     string        `json:"home"`
	Daemon   string        `json:"daemon"`
	Settings []ConfigEntry `json:"settings"`
	// Node says whether a running node's settings are beside this shell's.
	Node SettingsView `json:"node_settings"`
}

// SettingsView says whose invisor settings `invisor status` decides with: the
// running node's, which its status file publishes, or this shell's (its
// environment, app.toml, flags) when no node runs or it publishes none. A node
// started by a service unit need not share the shell's environment.
type SettingsView struct {
	// From is "node" or "shell".
	From    string    `json:"from"`
	PID     int       `json:"pid,omitempty"`    // the running node's
	Started time.Time `json:"started,omitzero"` // when it loaded them
	// Note says in one sentence whose settings these are and why.
	Note string `json:"note"`
	// Differences are the settings whose value in the running node is not this
	// shell's (From "node" only); the shell's are what `stage`,
	// `check-proposal` and the other commands run from the shell use.
	Differences []SettingDifference `json:"differences"`
}

// SettingDifference is a setting the running node and this shell disagree on.
type SettingDifference struct {
	Key         string `json:"key"`
	Node        string `json:"node"`
	NodeSource  string `json:"node_source"`
	Shell       string `json:"shell"`
	ShellSource string `json:"shell_source"`
}

// String is the difference in words: "allow-download: node true (env
// DAEMON_ALLOW_DOWNLOAD_BINARIES), this shell false (default)".
func (d SettingDifference) String() string {
	shell := fmt.Sprintf("this shell %s (%s)", quoteEmpty(d.Shell), d.ShellSource)
	if d.ShellSource == "" {
		shell = "not a setting of this binary"
	}
	return fmt.Sprintf("%s: node %s (%s), %s", d.Key, quoteEmpty(d.Node), d.NodeSource, shell)
}

func quoteEmpty(v string) string {
	if v == "" {
		return `""`
	}
	return v
}

// nodeSettings returns the env whose configuration says what the running node
// does (the node's settings when its status file ns is live and publishes
// them, else shell itself) and the view that says which it is. shell is not
// changed: it stays what the commands run from the shell use.
func nodeSettings(shell *env, ns status.Node, live bool) (*env, SettingsView) {
	sv := SettingsView{From: "shell", Differences: []SettingDifference{}}
	switch {
	case !live:
		sv.Note = "this shell's (its environment, app.toml and flags): no node runs on this home; one started elsewhere, by a service unit say, may run with others"
		return shell, sv
	case len(ns.Settings) == 0:
		sv.Note = fmt.Sprintf("this shell's: the running node (PID %d) does not publish its settings (an invisor before they were published) and may run with others", ns.PID)
		return shell, sv
	}
	cfg, err := config.FromEffective(ns.Settings, shell.home, shell.opts)
	if err != nil {
		sv.Note = fmt.Sprintf("this shell's: the running node's (PID %d) do not read: %v", ns.PID, err)
		return shell, sv
	}
	sv.From, sv.PID, sv.Started = "node", ns.PID, ns.Started
	sv.Note = fmt.Sprintf("those of the running node (PID %d%s)", ns.PID, startedText(ns.Started))
	node := *shell
	node.cfg, node.cfgErr = cfg, nil
	if shell.cfgErr != nil {
		sv.Note += "; this shell's configuration does not load, so they are not compared"
		return &node, sv
	}
	sv.Differences = differences(ns.Settings, shell.cfg)
	return &node, sv
}

func startedText(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return ", started " + t.Local().Format(time.DateTime)
}

// differences lists the settings whose published value differs from shell's,
// in the node's order; both sides are compared redacted, as published.
func differences(node []status.Setting, shell config.Config) []SettingDifference {
	mine := map[string]config.Effective{}
	for _, s := range shell.EffectiveSettings() {
		mine[s.Key] = s
	}
	out := []SettingDifference{}
	for _, n := range node {
		s, known := mine[n.Key]
		if known && s.Value == n.Value {
			continue
		}
		out = append(out, SettingDifference{Key: n.Key, Node: n.Value, NodeSource: n.Source, Shell: s.Value, ShellSource: s.Source})
	}
	return out
}

func configCmd(opts config.Options) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "config",
		Short: "Show invisor's effective configuration and where each value came from",
		Long: `Show the configuration ` + "`start`" + ` would use: app.toml's [invisor] section, overridden by
the environment, overridden by --invisor.* flags (which this command also accepts, to
preview them). A bad value or an unknown key is an error naming the key, as at boot.

These are this shell's settings, which the commands run from it use. When a node runs
on the home, the settings it runs with (published in its status file) are shown beside
them where they differ: a node started by a service unit need not share this shell's
environment.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			e, err := loadValidEnv(cmd, opts)
			if err != nil {
				return err
			}
			ns, why := runningStatus(e, e.layout())
			_, sv := nodeSettings(e, ns, why == "")
			rep := configReport(e.cfg).withNode(ns.Settings, sv)
			if e.json {
				return e.printJSON(rep)
			}
			return printConfig(e.out, rep)
		},
	}
	addOutputFlag(cmd)
	config.AddFlags(cmd.Flags())
	return cmd
}

// printConfig prints rep as a table, with the running node's value beside
// this shell's where they differ.
func printConfig(w io.Writer, rep ConfigReport) error {
	sv := rep.Node
	fmt.Fprintf(w, "home    %s\ndaemon  %s\n", rep.Home, rep.Daemon)
	header := []string{"KEY", "VALUE", "SOURCE", "ENV"}
	if sv.From == "node" {
		fmt.Fprintf(w, "shown   this shell's settings, which commands run from it use; NODE: the running node's (PID %d%s) where they differ (%d)\n\n",
			sv.PID, startedText(sv.Started), len(sv.Differences))
		header = append(header, "NODE")
	} else {
		fmt.Fprintf(w, "shown   %s\n\n", sv.Note)
	}
	rows := make([][]string, 0, len(rep.Settings))
	for _, s := range rep.Settings {
		row := []string{s.Key, s.Value, s.Source, s.Env}
		if sv.From == "node" {
			node := ""
			if s.Differs {
				node = fmt.Sprintf("%s (%s)", quoteEmpty(s.Node.Value), s.Node.Source)
			}
			row = append(row, node)
		}
		rows = append(rows, row)
	}
	if err := table(w, header, rows); err != nil {
		return err
	}
	for _, d := range sv.Differences {
		if d.ShellSource == "" { // a newer node's key: no row above
			fmt.Fprintf(w, "node only: %s\n", d)
		}
	}
	return nil
}

// configReport is c's settings: this shell's.
func configReport(c config.Config) ConfigReport {
	rep := ConfigReport{Home: c.Staging.Home, Daemon: c.Staging.DaemonName}
	for _, s := range config.Settings() {
		rep.Settings = append(rep.Settings, ConfigEntry{Key: s.Key, Value: c.Values[s.Key], Source: c.Sources[s.Key],
			Env: s.Env, Default: s.Default, Meaning: s.Doc})
	}
	return rep
}

// withNode puts sv in rep and, when sv is the running node's, the node's
// setting from node beside each of the shell's.
func (rep ConfigReport) withNode(node []status.Setting, sv SettingsView) ConfigReport {
	rep.Node = sv
	if sv.From != "node" {
		return rep
	}
	published := map[string]status.Setting{}
	for _, s := range node {
		published[s.Key] = s
	}
	differs := map[string]bool{}
	for _, d := range sv.Differences {
		differs[d.Key] = true
	}
	entries := make([]ConfigEntry, len(rep.Settings))
	for i, ce := range rep.Settings {
		if n, ok := published[ce.Key]; ok {
			ce.Node, ce.Differs = &NodeSetting{Value: n.Value, Source: n.Source}, differs[ce.Key]
		}
		entries[i] = ce
	}
	rep.Settings = entries
	return rep
}
