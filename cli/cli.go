// Package cli is the operator's `invisor` command. invisor.Execute adds it to
// the chain's root command (unless the root already has a command of that name),
// and `appd invisor config|status|stage|scheduled|cancel|prepare|verify|check-proposal|history|rollback|export|import`
// then work on the node home (--home), with the node running or stopped.
//
// It reads the same configuration as `start` (app.toml [invisor], environment,
// --invisor.* flags) through internal/config, the home directory, the status
// file a running node publishes (internal/status) and the node's CometBFT RPC
// (config.toml rpc.laddr, or --node). It writes only when asked to stage:
// binaries are verified and recorded by the staging package exactly as an
// automatic download is.
package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	cmtcfg "github.com/cometbft/cometbft/config"

	"github.com/invisor/invisor/internal/config"
	"github.com/invisor/invisor/internal/home"
)

// Command returns the `invisor` command tree for a chain binary named and homed
// as opts says. invisor.Execute calls it; a chain does not.
func Command(opts config.Options) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "invisor",
		Short: "Inspect and drive invisor, the in-process upgrade manager (cosmovisor built in)",
		Long: `invisor stages governance upgrade binaries in the background and, at the upgrade
height, stops the node cleanly and execs the new binary in the same process.

These commands work on the node home (--home) whether the node runs or not.`,
		SilenceUsage: true,
	}
	cmd.AddCommand(
		configCmd(opts),
		statusCmd(opts),
		stageCmd(opts),
		scheduledCmd(opts), cancelCmd(opts),
		prepareCmd(opts),
		verifyCmd(opts),
		checkProposalCmd(opts),
		historyCmd(opts),
		rollbackCmd(opts),
		exportCmd(opts), importCmd(opts),
	)
	for _, c := range cmd.Commands() {
		c.SilenceUsage = true // errors here are about the node, not the command line
	}
	return cmd
}

// env is what every subcommand starts from.
type env struct {
	opts    config.Options
	home    string
	rpc     string // CometBFT rpc.laddr from config.toml
	cmt     *cmtcfg.Config
	cfg     config.Config
	cfgErr  error
	log     interface{ Info(string, ...any) }
	json    bool
	out     io.Writer
	errOut  io.Writer
	execCmd *cobra.Command
}

const flagOutput = "output"

func addOutputFlag(cmd *cobra.Command) {
	cmd.Flags().StringP(flagOutput, "o", "text", "output format: text or json")
}

// loadEnv reads the server context the root command prepared (home, config.toml,
// app.toml through viper) and invisor's configuration with this command's flags.
// loadValidEnv is loadEnv for the commands that need a valid configuration: a
// bad key or value is their error.
func loadValidEnv(cmd *cobra.Command, opts config.Options) (*env, error) {
	e, err := loadEnv(cmd, opts)
	if err != nil {
		return nil, err
	}
	if e.cfgErr != nil {
		return nil, e.cfgErr
	}
	return e, nil
}

func loadEnv(cmd *cobra.Command, opts config.Options) (*env, error) {
	if opts.ServerOf == nil {
		return nil, errors.New("invisor: config.Options.ServerOf is not set (the SDK adapter's Execute sets it)")
	}
	sctx := opts.ServerOf(cmd)
	if sctx.Comet == nil || sctx.Viper == nil {
		return nil, errors.New("invisor: the command has no server context (run it under the chain's root command)")
	}
	e := &env{opts: opts, out: cmd.OutOrStdout(), errOut: cmd.ErrOrStderr(), execCmd: cmd}
	e.home = sctx.Comet.RootDir
	if e.home == "" {
		e.home = opts.DefaultHome
	}
	e.rpc, e.cmt = sctx.Comet.RPC.ListenAddress, sctx.Comet
	if f := cmd.Flags().Lookup(flagNode); f != nil && f.Changed {
		e.rpc = f.Value.String()
	}
	if f := cmd.Flags().Lookup(flagOutput); f != nil {
		switch o := f.Value.String(); o {
		case "json":
			e.json = true
		case "text", "":
		default:
			return nil, fmt.Errorf("--output %q: want text or json", o)
		}
	}
	e.cfg, e.cfgErr = config.LoadConfigFlags(sctx.Viper, cmd.Flags(), e.home, opts)
	if e.cfgErr == nil {
		e.home = e.cfg.Staging.Home
	}
	e.log = sctx.Logger
	return e, nil
}

// layout is the home's layout under the configuration in force (with a bad
// configuration: the defaults, so that read-only commands still say something).
func (e *env) layout() home.Layout {
	opts := home.Options{}
	if e.cfgErr == nil {
		opts.DisableRecase = e.cfg.Staging.DisableRecase
	}
	l, err := home.New(e.home, e.daemon(), opts)
	if err != nil {
		l, _ = home.New(e.home, "invalid-daemon-name", opts)
	}
	return l
}

// daemon returns the binary name in force (the default when the config is bad).
func (e *env) daemon() string {
	if e.cfgErr == nil {
		return e.cfg.Staging.DaemonName
	}
	if d := os.Getenv("DAEMON_NAME"); d != "" {
		return d
	}
	return e.opts.DaemonName
}

func (e *env) printJSON(v any) error {
	enc := json.NewEncoder(e.out)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// table writes rows aligned in columns.
func table(w io.Writer, header []string, rows [][]string) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, strings.Join(header, "\t"))
	for _, r := range rows {
		fmt.Fprintln(tw, strings.Join(r, "\t"))
	}
	return tw.Flush()
}

// appName is how the chain binary is called in hints.
func (e *env) appName() string {
	if e.execCmd != nil && e.execCmd.Root() != nil && e.execCmd.Root().Name() != "" {
		return e.execCmd.Root().Name()
	}
	return e.opts.DaemonName
}
