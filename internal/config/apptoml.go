package config

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/viper"

	"github.com/invisor/invisor/internal/home"
)

// FlagHome is the SDK's --home flag (client/flags.FlagHome on every line).
const FlagHome = "home"

// WrapPreRun wraps the root command's persistent pre-run (where a chain calls the
// SDK's server.InterceptConfigsPreRunHandler with its own app.toml template and
// config) for every command of the tree:
//
//   - before it, it records which --invisor.* flags the command line set (the
//     interceptor marks flags it filled from app.toml as changed);
//   - after it, when the pre-run has just created config/app.toml (it did not
//     exist before, it does now) and the file has no [invisor] section, it
//     appends the section with the documented defaults, rendered from the
//     settings table, and merges it into the server context's viper.
//
// So `init` writes the section under whatever the chain's template wrote, and the
// chain neither embeds a struct nor names a field. An app.toml that existed
// before the command ran is never rewritten: operators own it.
func WrapPreRun(root *cobra.Command, serverOf ServerOf) {
	pre, preE := root.PersistentPreRun, root.PersistentPreRunE
	root.PersistentPreRunE = func(cmd *cobra.Command, args []string) error {
		markCommandLineFlags(cmd)
		appToml := ""
		if h := interceptorHome(cmd); h != "" {
			appToml = filepath.Join(h, "config", "app.toml")
			if _, err := os.Lstat(appToml); !errors.Is(err, fs.ErrNotExist) {
				appToml = "" // it exists (or cannot be looked at): not ours to touch
			}
		}
		if preE != nil {
			if err := preE(cmd, args); err != nil {
				return err
			}
		} else if pre != nil {
			pre(cmd, args)
		}
		if appToml == "" {
			return nil
		}
		return addSection(cmd, appToml, serverOf)
	}
	root.PersistentPreRun = nil
}

// interceptorHome is the node home the SDK's config interceptor will use for cmd:
// it reads --home from a fresh viper bound to the command's flags and to the
// environment under the executable's name, before any config file is read
// (server.InterceptConfigsAndCreateContext). "" when the command has no --home.
func interceptorHome(cmd *cobra.Command) string {
	if cmd.Flags().Lookup(FlagHome) == nil && cmd.PersistentFlags().Lookup(FlagHome) == nil {
		return ""
	}
	exe, err := os.Executable()
	if err != nil {
		return ""
	}
	v := viper.New()
	if v.BindPFlags(cmd.Flags()) != nil || v.BindPFlags(cmd.PersistentFlags()) != nil {
		return ""
	}
	v.SetEnvPrefix(path.Base(exe))
	v.SetEnvKeyReplacer(strings.NewReplacer(".", "_", "-", "_"))
	v.AutomaticEnv()
	return v.GetString(FlagHome)
}

// addSection appends the [invisor] section to the app.toml at file, which the
// pre-run has just created, unless the chain's own template already wrote one.
func addSection(cmd *cobra.Command, file string, serverOf ServerOf) error {
	b, err := os.ReadFile(file)
	if errors.Is(err, fs.ErrNotExist) {
		return nil // the command reads no app.toml
	}
	if err != nil {
		return fmt.Errorf("invisor: reading the new %s: %w", file, err)
	}
	if _, has, err := parseSection(b); err != nil || has {
		// A file that does not parse is the chain template's problem, and the
		// interceptor has already reported it; one with a section is complete.
		return nil
	}
	fi, err := os.Stat(file)
	if err != nil {
		return fmt.Errorf("invisor: %w", err)
	}
	if len(b) > 0 && b[len(b)-1] != '\n' {
		b = append(b, '\n')
	}
	sec := section(cmd.Root().Name())
	// Atomic: an interrupted write leaves the chain's file as the interceptor wrote it.
	if err := home.WriteFile(file, append(b, sec...), fi.Mode().Perm()); err != nil {
		return fmt.Errorf("invisor: could not add the [invisor] section to %s: %w; make the file writable and run the command again, or leave it: without the section the documented defaults apply", file, err)
	}
	// The interceptor merged the file before the section existed: show this run
	// the same values the next one reads from the file.
	sctx := serverOf(cmd)
	if sctx.Viper != nil && sctx.Comet != nil && home.SameFile(sctx.Comet.RootDir, filepath.Dir(filepath.Dir(file))) {
		if values, ok, err := parseSection([]byte(sec)); err == nil && ok {
			if err := sctx.Viper.MergeConfigMap(map[string]any{sectionName: values}); err != nil {
				return fmt.Errorf("invisor: reading back the [invisor] section of %s: %w", file, err)
			}
		}
	}
	return nil
}

// parseSection reads TOML b and returns its [invisor] table, and whether it has one.
func parseSection(b []byte) (map[string]any, bool, error) {
	v := viper.New()
	v.SetConfigType("toml")
	if err := v.ReadConfig(bytes.NewReader(b)); err != nil {
		return nil, false, err
	}
	if !v.InConfig(sectionName) {
		return nil, false, nil
	}
	m, ok := v.Get(sectionName).(map[string]any)
	return m, ok, nil
}

// sectionHeader opens the [invisor] section; <appd> stands for the binary's name.
const sectionHeader = `
###############################################################################
###                    invisor (in-process upgrade manager)                 ###
###############################################################################

# invisor stages governance upgrade binaries in the background and, at the
# upgrade height, stops the node cleanly and execs the new binary (same PID).
# Layout and plan-info format are cosmovisor's. Every key can be overridden by
# the environment variable named above it and by the flag --invisor.<key> of
# ` + "`start`" + `: flag > environment > this file > default.
# ` + "`<appd> invisor config`" + ` shows the effective values and where they came from.
[invisor]
`

// section renders the [invisor] section of app.toml from the settings table, with
// every key at its default, for the chain binary called app.
func section(app string) string {
	var b strings.Builder
	b.WriteString(sectionHeader)
	for _, s := range settings {
		b.WriteString("\n")
		writeComment(&b, s.note)
		fmt.Fprintf(&b, "# env %s\n", s.env)
		fmt.Fprintf(&b, "%s = %s\n", s.key, s.tomlDefault())
	}
	out := b.String()
	if app != "" {
		out = strings.ReplaceAll(out, "<appd>", app)
	}
	return out
}

// tomlDefault is the default as a TOML value.
func (s setting) tomlDefault() string {
	if s.quoted {
		return strconv.Quote(s.def)
	}
	return s.def
}

// writeComment writes text as "# " lines of at most 80 columns.
func writeComment(b *strings.Builder, text string) {
	const width = 78
	line := ""
	for _, w := range strings.Fields(text) {
		if line != "" && len(line)+1+len(w) > width {
			b.WriteString("# " + line + "\n")
			line = ""
		}
		if line != "" {
			line += " "
		}
		line += w
	}
	if line != "" {
		b.WriteString("# " + line + "\n")
	}
}
