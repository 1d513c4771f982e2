// Package history is the upgrade log of a node home: one JSON line per halt and
// per switch, under <home>/cosmovisor, that `invisor history` and the
// last-switch gauge read.
//
// Guarantees: each entry is appended and fsynced in one write; readers skip lines
// that do not parse, so a torn last line (a crash mid-append) costs that line only.
// Nothing else reads the file: losing it loses only history, never the ability to
// switch. It does not rotate or trim the file (a few lines per upgrade).
package history

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

// File is the JSON-lines log of upgrades under <home>/cosmovisor. The old binary
// appends a "halt" line after the node stopped at the upgrade height; the new
// binary appends a "switched" line when it boots after the exec.
const File = "invisor-history.jsonl"

// Events of an Entry.
const (
	EventHalt     = "halt"
	EventSwitched = "switched"
)

// Entry is one line of File.
type Entry struct {
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

// Path returns <home>/cosmovisor/invisor-history.jsonl.
func Path(nodeHome string) string {
	return filepath.Join(nodeHome, home.RootDir, File)
}

// Append appends e to the home's history file.
func Append(nodeHome string, e Entry) error {
	b, err := json.Marshal(e)
	if err != nil {
		return err
	}
	f, err := os.OpenFile(Path(nodeHome), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
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

// Read returns the entries of the home's history file, oldest first. A missing
// file is an empty history; lines that do not parse are skipped.
func Read(nodeHome string) ([]Entry, error) {
	f, err := os.Open(Path(nodeHome))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []Entry
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		var e Entry
		if json.Unmarshal(sc.Bytes(), &e) == nil && e.Event != "" {
			out = append(out, e)
		}
	}
	return out, sc.Err()
}

// RecordHalt appends a "halt" entry for upgrade name at height, written by this
// executable.
func RecordHalt(nodeHome, name string, height int64) error {
	e := Entry{Event: EventHalt, Upgrade: name, Height: height, Time: time.Now().UTC(), PID: os.Getpid()}
	if exe, err := os.Executable(); err == nil {
		e.From = exe
	}
	return Append(nodeHome, e)
}

// RecordSwitch appends a "switched" entry when the last entry is a halt written
// by another binary than this one: this boot follows that halt (after invisor's
// exec, a boot redirect, or cosmovisor's restart). It returns the entry and
// whether it appended one.
func RecordSwitch(l home.Layout) (Entry, bool, error) {
	nodeHome := l.Home()
	hist, err := Read(nodeHome)
	if err != nil || len(hist) == 0 {
		return Entry{}, false, err
	}
	last := hist[len(hist)-1]
	exe, _ := os.Executable()
	if last.Event != EventHalt || exe == "" || exe == last.From {
		return Entry{}, false, nil
	}
	now := time.Now().UTC()
	e := Entry{Event: EventSwitched, Upgrade: last.Upgrade, Height: last.Height, Time: now,
		PID: os.Getpid(), From: last.From, To: exe, Seconds: now.Sub(last.Time).Seconds()}
	// The completion record's hash: the switch verified the binary just before
	// the exec, and hashing it again here would delay the node's start.
	if rec, err := l.ReadRecord(last.Upgrade); err == nil {
		e.SHA256 = rec.SHA256
	}
	if err := Append(nodeHome, e); err != nil {
		return e, false, fmt.Errorf("append %s: %w", Path(nodeHome), err)
	}
	return e, true, nil
}

// LastSwitch returns the most recent "switched" entry, if any.
func LastSwitch(nodeHome string) (Entry, bool) {
	hist, _ := Read(nodeHome)
	for i := len(hist) - 1; i >= 0; i-- {
		if hist[i].Event == EventSwitched {
			return hist[i], true
		}
	}
	return Entry{}, false
}
