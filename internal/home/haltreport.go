package home

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"
)

// HaltReportFile is the file, under <home>/cosmovisor, that a node leaving an
// upgrade halt for an orchestrator (on-halt = exit) writes before it exits.
const HaltReportFile = "invisor-halt.json"

// HaltReport is <home>/cosmovisor/invisor-halt.json.
func (l Layout) HaltReport() string { return filepath.Join(l.Root(), HaltReportFile) }

// HaltReport is what a node leaving an upgrade halt with relauncher.ExitUpgradeHalt (10)
// writes to <home>/cosmovisor/invisor-halt.json (Layout.HaltReport)
// before it exits: what an orchestrator needs to start the upgrade's binary,
// and whether invisor has that binary verified on the volume (the one a
// restart of an older binary is redirected to, unless on-halt is
// "exit-always"). It is rewritten at every such exit and never removed:
// compare Height with the chain's before acting on it.
type HaltReport struct {
	Upgrade  string    `json:"upgrade"`
	Height   int64     `json:"height"`
	Info     string    `json:"info,omitempty"`
	ExitCode int       `json:"exit_code"`
	Time     time.Time `json:"time"`
	PID      int       `json:"pid"`
	// Executable is the binary that halted (the one to replace).
	Executable string `json:"executable,omitempty"`
	// NodeState is what CometBFT said at the halt (relauncher.NodeState), and
	// Stop how the process left: "clean-stop" (CometBFT stopped, stores
	// closed) or "exit-in-block" (block sync or the handshake held the block:
	// the process exited from it, as a crash would, with the block unapplied).
	NodeState string `json:"node_state"`
	Stop      string `json:"stop"`
	// Binary is the upgrade's binary staged and verified in the node home for
	// exactly this plan (home.Layout.Open); nil when there is none, and
	// BinaryMissing says why.
	Binary        *HaltBinary `json:"binary,omitempty"`
	BinaryMissing string      `json:"binary_missing,omitempty"`
}

// HaltBinary is the verified upgrade binary a HaltReport names.
type HaltBinary struct {
	Path   string `json:"path"`
	SHA256 string `json:"sha256"`
	Size   int64  `json:"size"`
	Source string `json:"source"` // its completion record's source (home.Source*)
}

// WriteHaltReport writes rep crash-safely (WriteFile): the orchestrator reads
// a whole report or the previous one.
func (l Layout) WriteHaltReport(rep HaltReport) error {
	b, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return err
	}
	return WriteFile(l.HaltReport(), append(b, '\n'), 0o644)
}

// ReadHaltReport reads the halt report; ok is false when there is none.
func (l Layout) ReadHaltReport() (rep HaltReport, ok bool, err error) {
	b, err := os.ReadFile(l.HaltReport())
	if errors.Is(err, fs.ErrNotExist) {
		return HaltReport{}, false, nil
	}
	if err != nil {
		return HaltReport{}, false, err
	}
	if err := json.Unmarshal(b, &rep); err != nil {
		return HaltReport{}, false, fmt.Errorf("%s: %w", l.HaltReport(), err)
	}
	return rep, true, nil
}
