package config

import (
	"github.com/spf13/cobra"
	"github.com/spf13/viper"

	cmtcfg "github.com/cometbft/cometbft/config"
)

// Server is the part of the SDK's server context (server.Context) invisor
// reads once the chain's config interceptor ran: the viper it filled from
// app.toml, the flags and the environment; CometBFT's configuration (its
// RootDir is the node home); and a logger for invisor's lines. The adapter of
// each SDK line fills it from its own server.GetServerContextFromCmd, so that
// this package, the operator commands and the node logic link no SDK:
// server.Context's fields have the same meaning on every line, only its
// Logger's type differs.
type Server struct {
	Viper  *viper.Viper
	Comet  *cmtcfg.Config
	Logger Logger
}

// Logger is what invisor logs through: the SDK's loggers of every line
// satisfy it.
type Logger interface {
	Info(msg string, kv ...any)
	Warn(msg string, kv ...any)
	Error(msg string, kv ...any)
}

// ServerOf returns cmd's server context (see Server).
type ServerOf func(cmd *cobra.Command) Server
