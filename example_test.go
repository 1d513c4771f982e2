package invisor_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	cmtcfg "github.com/cometbft/cometbft/config"
	"github.com/spf13/cobra"

	"github.com/cosmos/cosmos-sdk/server"
	serverconfig "github.com/cosmos/cosmos-sdk/server/config"

	"github.com/invisor/invisor"
)

// The second of the two lines, in main.go; the first, hook.Install, is in the
// chain's app.go. The root command here stands for the chain's own: its config
// interceptor with the chain's app.toml template, and a `start` (which
// server.AddCommands provides in a real chain). The example runs one operator
// command on a fresh home: Execute added `invisor`, and the app.toml the
// chain's interceptor created got invisor's section.
func ExampleExecute() {
	nodeHome, err := os.MkdirTemp("", "appd-home-")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer os.RemoveAll(nodeHome)

	rootCmd := &cobra.Command{
		Use: "appd",
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			return server.InterceptConfigsPreRunHandler(cmd, serverconfig.DefaultConfigTemplate, serverconfig.DefaultConfig(), cmtcfg.DefaultConfig())
		},
	}
	rootCmd.AddCommand(&cobra.Command{Use: "start", RunE: func(*cobra.Command, []string) error { return nil }})
	rootCmd.SetArgs([]string{"invisor", "history"})

	err = invisor.Execute(rootCmd, invisor.Options{DaemonName: "appd", DefaultHome: nodeHome})
	if err != nil {
		fmt.Println(err)
		return
	}
	appToml, _ := os.ReadFile(filepath.Join(nodeHome, "config", "app.toml"))
	fmt.Println("app.toml has an [invisor] section:", strings.Contains(string(appToml), "\n[invisor]\n"))
	// Output:
	// no upgrades on this home yet
	// app.toml has an [invisor] section: true
}
