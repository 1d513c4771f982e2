//go:build tools

// Package tools pins cosmovisor v1.5.0; the harness builds it with
// `go build -o ../work/cosmovisor cosmossdk.io/tools/cosmovisor/cmd/cosmovisor`.
package tools

import _ "cosmossdk.io/tools/cosmovisor/cmd/cosmovisor"
