package config

import (
	"fmt"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// FlagPrefix prefixes the flag of every setting: --invisor.allow-download.
const FlagPrefix = sectionName + "."

// AddFlags adds a --invisor.<key> flag for every setting to fs (the `start`
// command, and the `invisor` commands that show what start would do). A flag
// that is given wins over the environment and app.toml. Boolean settings take
// --invisor.key or --invisor.key=false; values are checked by LoadConfigFlags,
// which names the flag.
func AddFlags(fs *pflag.FlagSet) {
	for _, s := range settings {
		if fs.Lookup(FlagPrefix+s.key) != nil {
			continue
		}
		// pflag reads a `quoted` word of the usage as the value's name: drop backquotes.
		usage := fmt.Sprintf("invisor: %s (app.toml [invisor] %s, env %s)", strings.ReplaceAll(s.doc, "`", ""), s.key, s.env)
		v := &settingValue{s: s.def, isBool: s.def == "true" || s.def == "false"}
		f := fs.VarPF(v, FlagPrefix+s.key, "", usage)
		if v.isBool {
			f.NoOptDefVal = "true"
		}
	}
}

// settingValue is the flag value of a setting. It accepts any text (LoadConfigFlags
// validates it and names the flag) and remembers whether the command line set it:
// the SDK's config interceptor copies app.toml values into unset flags and marks
// them changed, which would otherwise pass app.toml values off as flags.
type settingValue struct {
	s                 string
	isBool            bool
	marked, onCmdLine bool
}

func (v *settingValue) String() string { return v.s }
func (v *settingValue) Set(s string) error {
	v.s = s
	return nil
}

func (v *settingValue) Type() string {
	if v.isBool {
		return "bool"
	}
	return "string"
}

// markCommandLineFlags records, for the command about to run, which --invisor.*
// flags the command line set. It must run after flag parsing and before the SDK's
// config interceptor: WrapPreRun runs it first in the root's PersistentPreRunE.
func markCommandLineFlags(cmd *cobra.Command) {
	cmd.Flags().VisitAll(func(f *pflag.Flag) {
		if v, ok := f.Value.(*settingValue); ok {
			v.marked, v.onCmdLine = true, f.Changed
		}
	})
}

// flagGiven reports whether the command line set flag f.
func flagGiven(f *pflag.Flag) bool {
	if v, ok := f.Value.(*settingValue); ok && v.marked {
		return v.onCmdLine
	}
	return f.Changed
}
