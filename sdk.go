package invisor

// Everything the edge takes from Cosmos SDK v0.55, the line this module is
// built on, is in this file and in probe.go (the in-process handler lookup
// through the chain's app constructor): the server context, the SDK's Execute,
// two flag names and the genesis chain id. The rest of the package reads them
// through config.Server and plain values, so that an adapter for another SDK
// line has only these few things to supply (issue 15; design notes in
// docs/sdk-lines.md).

import (
	"os"

	"github.com/spf13/cobra"

	"github.com/cosmos/cosmos-sdk/client/flags"
	"github.com/cosmos/cosmos-sdk/server"
	svrcmd "github.com/cosmos/cosmos-sdk/server/cmd"
	servertypes "github.com/cosmos/cosmos-sdk/server/types"
	genutiltypes "github.com/cosmos/cosmos-sdk/x/genutil/types"

	"github.com/invisor/invisor/internal/config"
)

// Options say how the chain binary is named and where its home is by default.
type Options struct {
	// DaemonName is required: the binary's file name under cosmovisor/*/bin
	// (cosmovisor's DAEMON_NAME, which overrides it). It never depends on the
	// running file's name, so a binary started from another path still finds
	// its upgrades.
	DaemonName string
	// DefaultHome is the node home when --home is not given, usually the
	// chain's app.DefaultNodeHome.
	DefaultHome string
	// EnvPrefix is optional: the prefix of environment variables that set
	// flags, as the SDK's server/cmd.Execute takes it ("" for none).
	EnvPrefix string
	// NewApp is optional: the chain's app constructor, the one it passes to the
	// SDK's server.AddCommands. With it, a staged binary asked by invisor's probe
	// builds its app on an in-memory database and says which upgrade handlers it
	// carries, so a binary staged for a plan it has no handler for is refused
	// days before the height instead of halting again at it.
	NewApp servertypes.AppCreator
}

// The SDK's names of the flags invisor reads or sets.
const (
	flagChainID    = flags.FlagChainID
	flagHaltHeight = server.FlagHaltHeight
)

// serverOf is cmd's server context as invisor reads it (config.Server), with
// invisor's lines under module=invisor.
func serverOf(cmd *cobra.Command) config.Server {
	sctx := server.GetServerContextFromCmd(cmd)
	return config.Server{Viper: sctx.Viper, Comet: sctx.Config, Logger: sctx.Logger.With("module", "invisor")}
}

// executeRoot runs the chain's root command as the SDK's server/cmd.Execute does.
func executeRoot(rootCmd *cobra.Command, envPrefix, defaultHome string) error {
	return svrcmd.Execute(rootCmd, envPrefix, defaultHome)
}

// chainIDFromGenesis is the chain id of the genesis file at path, as the SDK
// finds it (streaming: a genesis may be gigabytes); "" when it cannot tell.
func chainIDFromGenesis(path string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	id, _ := genutiltypes.ParseChainIDFromGenesis(f)
	return id
}
