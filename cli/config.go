package cli

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/invisor/invisor/internal/config"
)

// ConfigEntry is one line of `invisor config`.
type ConfigEntry struct {
	Key     string `json:"key"`
	Value   string `json:"value"`
	Source  string `json:"source"` // default, app.toml, env NAME, flag --invisor.KEY
	Env     string `json:"env"`
	Default string `json:"default"`
	Meaning string `json:"meaning"`
}

// ConfigReport is `invisor config -o json`.
type ConfigReport struct {
	Home     string        `json:"home"`
	Daemon   string        `json:"daemon"`
	Settings []ConfigEntry `json:"settings"`
}

func configCmd(opts config.Options) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "config",
		Short: "Show invisor's effective configuration and where each value came from",
		Long: `Show the configuration ` + "`start`" + ` would use: app.toml's [invisor] section, overridden by
the environment, overridden by --invisor.* flags (which this command also accepts, to
preview them). A bad value or an unknown key is an error naming the key, as at boot.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			e, err := loadValidEnv(cmd, opts)
			if err != nil {
				return err
			}
			rep := configReport(e.cfg)
			if e.json {
				return e.printJSON(rep)
			}
			fmt.Fprintf(e.out, "home    %s\ndaemon  %s\n\n", rep.Home, rep.Daemon)
			rows := make([][]string, 0, len(rep.Settings))
			for _, s := range rep.Settings {
				rows = append(rows, []string{s.Key, s.Value, s.Source, s.Env})
			}
			return table(e.out, []string{"KEY", "VALUE", "SOURCE", "ENV"}, rows)
		},
	}
	addOutputFlag(cmd)
	config.AddFlags(cmd.Flags())
	return cmd
}

func configReport(c config.Config) ConfigReport {
	rep := ConfigReport{Home: c.Staging.Home, Daemon: c.Staging.DaemonName}
	for _, s := range config.Settings() {
		rep.Settings = append(rep.Settings, ConfigEntry{Key: s.Key, Value: c.Values[s.Key], Source: c.Sources[s.Key],
			Env: s.Env, Default: s.Default, Meaning: s.Doc})
	}
	return rep
}
