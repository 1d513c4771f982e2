package config

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	cmtcfg "github.com/cometbft/cometbft/config"
	"github.com/spf13/cobra"
	"github.com/spf13/viper"

	"github.com/cosmos/cosmos-sdk/client"
	"github.com/cosmos/cosmos-sdk/client/flags"
	"github.com/cosmos/cosmos-sdk/server"
	svrcmd "github.com/cosmos/cosmos-sdk/server/cmd"
	serverconfig "github.com/cosmos/cosmos-sdk/server/config"
	"github.com/cosmos/cosmos-sdk/types/module"
	genutilcli "github.com/cosmos/cosmos-sdk/x/genutil/client/cli"
)

// chainAppConfig is app.toml as a chain with a section of its own declares it:
// the SDK's server config plus its [custom] section.
type chainAppConfig struct {
	serverconfig.Config `mapstructure:",squash"`

	Custom struct {
		Greeting string `mapstructure:"greeting"`
	} `mapstructure:"custom"`
}

const chainAppTemplate = serverconfig.DefaultConfigTemplate + `
###############################################################################
###                          The chain's own section                        ###
###############################################################################

[custom]
greeting = "{{ .Custom.Greeting }}"
`

// loaded is what the `show` command saw: invisor's configuration as the server
// context's viper and the command's flags give it.
type loaded struct {
	cfg Config
	err error
}

// chainRoot is a chain's root command as the SDK's templates build it: a
// client context from --home, the real config interceptor with the chain's
// template and custom config (minimum-gas-prices set), the real genutil `init`,
// and `show`, which reads invisor's configuration like `start` does. tmpl
// replaces the chain's template when not "".
func chainRoot(defaultHome, tmpl string, seen *loaded) *cobra.Command {
	if tmpl == "" {
		tmpl = chainAppTemplate
	}
	root := &cobra.Command{
		Use: "appd",
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			clientCtx, err := client.ReadPersistentCommandFlags(client.Context{}, cmd.Flags())
			if err != nil {
				return err
			}
			if err := client.SetCmdClientContextHandler(clientCtx, cmd); err != nil {
				return err
			}
			cfg := chainAppConfig{Config: *serverconfig.DefaultConfig()}
			cfg.MinGasPrices = "0.025stake"
			cfg.Custom.Greeting = "hello"
			return server.InterceptConfigsPreRunHandler(cmd, tmpl, cfg, cmtcfg.DefaultConfig())
		},
	}
	root.PersistentFlags().String(flags.FlagHome, defaultHome, "node home")
	show := &cobra.Command{
		Use: "show",
		RunE: func(cmd *cobra.Command, _ []string) error {
			sctx := server.GetServerContextFromCmd(cmd)
			seen.cfg, seen.err = LoadConfigFlags(sctx.Viper, cmd.Flags(), sctx.Config.RootDir, Options{DaemonName: "appd"})
			return nil
		},
	}
	AddFlags(show.Flags())
	root.AddCommand(genutilcli.InitCmd(module.NewBasicManager(), defaultHome), show)
	WrapPreRun(root, func(cmd *cobra.Command) Server {
		sctx := server.GetServerContextFromCmd(cmd)
		return Server{Viper: sctx.Viper, Comet: sctx.Config, Logger: sctx.Logger}
	})
	return root
}

func run(t *testing.T, root *cobra.Command, args ...string) {
	t.Helper()
	root.SetArgs(args)
	root.SilenceUsage = true
	if err := root.ExecuteContext(svrcmd.CreateExecuteContext(context.Background())); err != nil {
		t.Fatalf("appd %s: %v", strings.Join(args, " "), err)
	}
}

func readAppToml(t *testing.T, nodeHome string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(nodeHome, "config", "app.toml"))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// loadFile reads app.toml from disk with a fresh viper, as the next start does.
func loadFile(t *testing.T, nodeHome string) Config {
	t.Helper()
	v := viper.New()
	v.SetConfigFile(filepath.Join(nodeHome, "config", "app.toml"))
	if err := v.ReadInConfig(); err != nil {
		t.Fatal(err)
	}
	c, err := LoadConfig(v, nodeHome, Options{DaemonName: "appd"})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestInitWritesTheSectionAfterTheChainsAppToml runs the real SDK `init` on a
// fresh home through the chain's own interceptor: app.toml keeps the chain's
// [custom] section and minimum-gas-prices and gets invisor's section, once;
// LoadConfig reads invisor's values back from it, and flags the interceptor
// filled from app.toml are not taken for command-line flags.
func TestInitWritesTheSectionAfterTheChainsAppToml(t *testing.T) {
	nodeHome := filepath.Join(t.TempDir(), "node")
	var seen loaded
	run(t, chainRoot(nodeHome, "", &seen), "init", "moniker", "--home", nodeHome)

	written := readAppToml(t, nodeHome)
	for _, want := range []string{"\n[custom]\n", "greeting = \"hello\"", "minimum-gas-prices = \"0.025stake\"", "\n[invisor]\n", "\nallow-download = false\n"} {
		if !strings.Contains(written, want) {
			t.Errorf("app.toml after init lacks %q", want)
		}
	}
	if n := strings.Count(written, "\n[invisor]\n"); n != 1 {
		t.Fatalf("[invisor] %d times after init", n)
	}
	if strings.Index(written, "\n[invisor]\n") < strings.Index(written, "\n[custom]\n") {
		t.Error("the [invisor] section is not after the chain's own sections")
	}
	c := loadFile(t, nodeHome)
	for _, s := range Settings() {
		if c.Sources[s.Key] != "app.toml" || (s.Default != "" && c.Values[s.Key] != s.Default) {
			t.Errorf("%s = %q from %s, want the default %q from app.toml", s.Key, c.Values[s.Key], c.Sources[s.Key], s.Default)
		}
	}

	// A second run on the same home: nothing appended, nothing rewritten; the
	// command sees app.toml's values, and --invisor.retry-min as the only flag.
	run(t, chainRoot(nodeHome, "", &seen), "show", "--home", nodeHome, "--invisor.retry-min", "3s")
	if again := readAppToml(t, nodeHome); again != written {
		t.Fatalf("a second run changed app.toml:\n%s", again)
	}
	if seen.err != nil {
		t.Fatal(seen.err)
	}
	if got := seen.cfg.Sources["retry-max"]; got != "app.toml" {
		t.Errorf("retry-max from %q, want app.toml (the interceptor's copy into the flag is no flag)", got)
	}
	if got := seen.cfg.Sources["retry-min"]; got != "flag --invisor.retry-min" || seen.cfg.Values["retry-min"] != "3s" {
		t.Errorf("retry-min = %q from %q, want 3s from the flag", seen.cfg.Values["retry-min"], got)
	}
}

// On a fresh home any command that creates app.toml gets the section, and that
// same run already reads invisor's values from it.
func TestFirstCommandOnAFreshHomeReadsTheNewSection(t *testing.T) {
	nodeHome := filepath.Join(t.TempDir(), "node")
	var seen loaded
	run(t, chainRoot(nodeHome, "", &seen), "show") // the default home
	if seen.err != nil {
		t.Fatal(seen.err)
	}
	if got := seen.cfg.Sources["allow-download"]; got != "app.toml" {
		t.Errorf("allow-download from %q on the run that wrote the section, want app.toml", got)
	}
	if n := strings.Count(readAppToml(t, nodeHome), "\n[invisor]\n"); n != 1 {
		t.Fatalf("[invisor] %d times", n)
	}
}

// An app.toml that existed before the command ran is never rewritten, with or
// without a section; a chain template that writes its own section gets no second.
func TestExistingAppTomlIsNeverRewritten(t *testing.T) {
	nodeHome := filepath.Join(t.TempDir(), "node")
	var seen loaded
	// A home initialised before invisor: the chain's interceptor alone wrote app.toml.
	plain := chainRoot(nodeHome, "", &seen)
	plain.PersistentPreRunE = func(cmd *cobra.Command, _ []string) error {
		cfg := chainAppConfig{Config: *serverconfig.DefaultConfig()}
		return server.InterceptConfigsPreRunHandler(cmd, chainAppTemplate, cfg, cmtcfg.DefaultConfig())
	}
	run(t, plain, "show")
	before := readAppToml(t, nodeHome)
	if strings.Contains(before, "[invisor]") {
		t.Fatal("the unwrapped root wrote a section")
	}
	run(t, chainRoot(nodeHome, "", &seen), "show")
	if after := readAppToml(t, nodeHome); after != before {
		t.Fatalf("an existing app.toml was rewritten:\n%s", after)
	}
	if seen.err != nil || seen.cfg.Sources["enabled"] != "default" {
		t.Fatalf("without a section: %v, enabled from %q; want the defaults", seen.err, seen.cfg.Sources["enabled"])
	}

	own := filepath.Join(t.TempDir(), "node")
	run(t, chainRoot(own, chainAppTemplate+section("appd"), &seen), "show")
	if n := strings.Count(readAppToml(t, own), "\n[invisor]\n"); n != 1 {
		t.Fatalf("a template with its own section: [invisor] %d times", n)
	}
}
