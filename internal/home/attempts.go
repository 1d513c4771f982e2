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

// Attempt counts the switches (exec or boot redirect) into one upgrade's binary,
// across restarts: a binary that halts again after the exec is found out here.
type Attempt struct {
	Plan   string    `json:"plan"`
	Height int64     `json:"height"`
	Count  int       `json:"count"`
	First  time.Time `json:"first"`
	Last   time.Time `json:"last"`
	// Backup is the data backup taken before the first attempt; later attempts
	// take none.
	Backup string `json:"backup,omitempty"`
}

type attemptsFile struct {
	Upgrades map[string]Attempt `json:"upgrades"`
}

func attemptKey(p Plan) string { return fmt.Sprintf("%s@%d", p.Name, p.Height) }

func (l Layout) attemptsPath() string { return filepath.Join(l.Root(), AttemptsFile) }

func (l Layout) readAttempts() (attemptsFile, error) {
	var af attemptsFile
	b, err := os.ReadFile(l.attemptsPath())
	if errors.Is(err, fs.ErrNotExist) || len(b) == 0 {
		return attemptsFile{Upgrades: map[string]Attempt{}}, nil
	}
	if err != nil {
		return af, err
	}
	if err := json.Unmarshal(b, &af); err != nil {
		// A corrupt ledger must not stop a node from booting; it only loses counts.
		return attemptsFile{Upgrades: map[string]Attempt{}}, nil
	}
	if af.Upgrades == nil {
		af.Upgrades = map[string]Attempt{}
	}
	return af, nil
}

func (l Layout) writeAttempts(af attemptsFile) error {
	b, err := json.MarshalIndent(af, "", "  ")
	if err != nil {
		return err
	}
	return WriteFile(l.attemptsPath(), append(b, '\n'), 0o644)
}

// Attempts returns the attempts recorded for plan p (Count 0 if none).
func (l Layout) Attempts(p Plan) Attempt {
	af, _ := l.readAttempts()
	a, ok := af.Upgrades[attemptKey(p)]
	if !ok {
		return Attempt{Plan: p.Name, Height: p.Height}
	}
	return a
}

// NoteAttempt records one more switch into plan p's binary, with the backup taken
// for it (empty if none), and returns the updated count. Call it with the home lock
// held, before the exec.
func (l Layout) NoteAttempt(p Plan, backup string) (Attempt, error) {
	af, err := l.readAttempts()
	if err != nil {
		return Attempt{}, err
	}
	now := time.Now().UTC()
	a, ok := af.Upgrades[attemptKey(p)]
	if !ok {
		a = Attempt{Plan: p.Name, Height: p.Height, First: now}
	}
	a.Count++
	a.Last = now
	if backup != "" {
		a.Backup = backup
	}
	af.Upgrades[attemptKey(p)] = a
	return a, l.writeAttempts(af)
}

// ClearAttempts forgets plan p's attempts: the upgrade went through (the new binary
// committed a block past the height) or the operator reset it.
func (l Layout) ClearAttempts(p Plan) error {
	af, err := l.readAttempts()
	if err != nil {
		return err
	}
	if _, ok := af.Upgrades[attemptKey(p)]; !ok {
		return nil
	}
	delete(af.Upgrades, attemptKey(p))
	return l.writeAttempts(af)
}
