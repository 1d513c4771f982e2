// Package history is the upgrade log of a node home: one JSON line per halt, per
// switch and per rollback, under <home>/cosmovisor, that `invisor history` and
// the last-switch gauge read.
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
// binary appends a "switched" line when it boots after the exec; `invisor
// rollback` appends a "rollback" line when it undid a switch.
const File = "invisor-history.jsonl"

// Events of an Entry.
const (
	EventHalt     = "halt"
	EventSwitched = "switched"
	EventRollback = "rollback"
)

// Entry is one line of File.
type Entry struct {
	Event   string    `json:"event"`
	Upgrade string    `json:"upgrade"`
	Height  int64     `json:"height"`
	Time    time.Time `json:"time"`
	PID     int       `json:"pid"`
	From    string    `json:"from,omitempty"`    // binary that halted (halt), exec'd (switched) or was rolled back (rollback)
	To      string    `json:"to,omitempty"`      // binary now running (switched), or that runs next (rollback)
	SHA256  string    `json:"sha256,omitempty"`  // of the binary switched to
	Seconds float64   `json:"seconds,omitempty"` // switched: halt -> new binary booted
	// AfterRollback marks a switch whose boot follows a rollback rather than a
	// halt: it has no halt to measure from (Seconds is 0).
	AfterRollback bool `json:"after_rollback,omitempty"`
	// Backup is the data backup a rollback restored; MovedAside where the data it
	// replaced went.
	Backup     string `json:"backup,omitempty"`
	MovedAside string `json:"moved_aside,omitempty"`
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

// Rollback is what `invisor rollback` did, for RecordRollback.
type Rollback struct {
	Upgrade    string // the upgrade whose switch was undone
	Height     int64
	From       string // the upgrade's binary, which `current` pointed to
	To         string // the binary `current` points to again (the one that ran before)
	Backup     string // the data backup restored
	MovedAside string // where the replaced data directory went
}

// RecordRollback appends a "rollback" entry. The next boot of another binary than
// rb.To (the fixed binary, after a boot redirect) is then recorded as a switch
// (RecordSwitch).
func RecordRollback(nodeHome string, rb Rollback) error {
	return Append(nodeHome, Entry{Event: EventRollback, Upgrade: rb.Upgrade, Height: rb.Height, Time: time.Now().UTC(),
		PID: os.Getpid(), From: rb.From, To: rb.To, Backup: rb.Backup, MovedAside: rb.MovedAside})
}

// RecordSwitch appends a "switched" entry when the last entry is a halt written
// by another binary than this one: this boot follows that halt (after invisor's
// exec, a boot redirect, or cosmovisor's restart); or when the last entry is a
// rollback and this binary is not the one the rollback pointed `current` back
// to (the node booted into the upgrade again; such an entry has no duration). It
// returns the entry and whether it appended one.
func RecordSwitch(l home.Layout) (Entry, bool, error) {
	nodeHome := l.Home()
	hist, err := Read(nodeHome)
	if err != nil || len(hist) == 0 {
		return Entry{}, false, err
	}
	last := hist[len(hist)-1]
	exe, _ := os.Executable()
	now := time.Now().UTC()
	var e Entry
	switch {
	case exe == "":
		return Entry{}, false, nil
	case last.Event == EventHalt && exe != last.From:
		e = Entry{Event: EventSwitched, Upgrade: last.Upgrade, Height: last.Height, Time: now,
			PID: os.Getpid(), From: last.From, To: exe, Seconds: now.Sub(last.Time).Seconds()}
	case last.Event == EventRollback && exe != last.To:
		e = Entry{Event: EventSwitched, Upgrade: last.Upgrade, Height: last.Height, Time: now,
			PID: os.Getpid(), From: last.To, To: exe, AfterRollback: true}
	default:
		return Entry{}, false, nil
	}
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

// LastSwitch returns the most recent "switched" entry that followed a halt (and
// so has a duration), if any.
func LastSwitch(nodeHome string) (Entry, bool) {
	hist, _ := Read(nodeHome)
	for i := len(hist) - 1; i >= 0; i-- {
		if hist[i].Event == EventSwitched && !hist[i].AfterRollback {
			return hist[i], true
		}
	}
	return Entry{}, false
}
