package invisor

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/invisor/invisor/internal/home"
)

// HistoryFile is the JSON-lines log of upgrades under <home>/cosmovisor. The old
// binary appends a "halt" line after the node stopped at the upgrade height; the
// new binary appends a "switched" line when it boots after the exec. Nothing else
// reads it: losing it loses only history.
const HistoryFile = "invisor-history.jsonl"

// History events.
const (
	EventHalt     = "halt"
	EventSwitched = "switched"
)

// HistoryEntry is one line of HistoryFile.
type HistoryEntry struct {
	Event   string    `json:"event"`
	Upgrade string    `json:"upgrade"`
	Height  int64     `json:"height"`
	Time    time.Time `json:"time"`
	PID     int       `json:"pid"`
	From    string    `json:"from,omitempty"`    // binary that halted (halt) or exec'd (switched)
	To      string    `json:"to,omitempty"`      // binary now running (switched)
	SHA256  string    `json:"sha256,omitempty"`  // of the binary switched to
	Seconds float64   `json:"seconds,omitempty"` // switched: halt -> new binary booted
}

// HistoryPath returns <home>/cosmovisor/invisor-history.jsonl.
func HistoryPath(nodeHome string) string {
	return filepath.Join(nodeHome, home.RootDir, HistoryFile)
}

// AppendHistory appends e to the home's history file.
func AppendHistory(nodeHome string, e HistoryEntry) error {
	b, err := json.Marshal(e)
	if err != nil {
		return err
	}
	f, err := os.OpenFile(HistoryPath(nodeHome), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	if _, err := f.Write(append(b, '\n')); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// ReadHistory returns the entries of the home's history file, oldest first. A
// missing file is an empty history; lines that do not parse are skipped.
func ReadHistory(nodeHome string) ([]HistoryEntry, error) {
	f, err := os.Open(HistoryPath(nodeHome))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []HistoryEntry
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		var e HistoryEntry
		if json.Unmarshal(sc.Bytes(), &e) == nil && e.Event != "" {
			out = append(out, e)
		}
	}
	return out, sc.Err()
}

// recordSwitch appends a "switched" entry when the last entry is a halt written
// by another binary than this one: this boot follows that halt (after invisor's
// exec, a boot redirect, or cosmovisor's restart). It returns the entry.
func recordSwitch(l home.Layout) (HistoryEntry, bool, error) {
	nodeHome := l.Home()
	hist, err := ReadHistory(nodeHome)
	if err != nil || len(hist) == 0 {
		return HistoryEntry{}, false, err
	}
	last := hist[len(hist)-1]
	exe, _ := os.Executable()
	if last.Event != EventHalt || exe == "" || exe == last.From {
		return HistoryEntry{}, false, nil
	}
	now := time.Now().UTC()
	e := HistoryEntry{Event: EventSwitched, Upgrade: last.Upgrade, Height: last.Height, Time: now,
		PID: os.Getpid(), From: last.From, To: exe, Seconds: now.Sub(last.Time).Seconds()}
	// The completion record's hash: the switch verified the binary just before
	// the exec, and hashing it again here would delay the node's start.
	if rec, err := l.ReadRecord(last.Upgrade); err == nil {
		e.SHA256 = rec.SHA256
	}
	if err := AppendHistory(nodeHome, e); err != nil {
		return e, false, fmt.Errorf("append %s: %w", HistoryPath(nodeHome), err)
	}
	return e, true, nil
}

// lastSwitch returns the most recent "switched" entry, if any.
func lastSwitch(nodeHome string) (HistoryEntry, bool) {
	hist, _ := ReadHistory(nodeHome)
	for i := len(hist) - 1; i >= 0; i-- {
		if hist[i].Event == EventSwitched {
			return hist[i], true
		}
	}
	return HistoryEntry{}, false
}
