package home

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"time"
)

// ScheduleFile lists the upgrades at a height without governance (`invisor stage
// NAME --height H`) under <home>/cosmovisor.
const ScheduleFile = "invisor-scheduled.json"

// ErrScheduleConflict is wrapped when an upgrade cannot join the schedule: its name
// or height is taken.
var ErrScheduleConflict = errors.New("schedule conflict")

// Scheduled is one upgrade at a height agreed off-chain: the node halts at Plan.Height
// through the SDK's halt-height and switches to the binary recorded for Plan, as for
// a governance plan. Plan.Info names the binary's source (cosmovisor plan-info
// format), so the completion record ties the bytes to this entry.
type Scheduled struct {
	Plan  Plan      `json:"plan"`
	Added time.Time `json:"added"`
	// Source is where the operator said the binary came from (credentials redacted), for display.
	Source string `json:"source,omitempty"`
}

type scheduleFile struct {
	Format    int         `json:"format"`
	Scheduled []Scheduled `json:"scheduled"`
}

// SchedulePath is <home>/cosmovisor/invisor-scheduled.json.
func (l Layout) SchedulePath() string { return filepath.Join(l.Root(), ScheduleFile) }

// Schedule returns the scheduled upgrades, lowest height first. No file is an
// empty schedule; a file that does not parse is an error (an emergency upgrade
// silently forgotten would let the node run past its height).
func (l Layout) Schedule() ([]Scheduled, error) {
	b, err := os.ReadFile(l.SchedulePath())
	if errors.Is(err, fs.ErrNotExist) || (err == nil && len(b) == 0) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var sf scheduleFile
	if err := json.Unmarshal(b, &sf); err != nil {
		return nil, fmt.Errorf("%s does not parse (%v): fix it, or remove it and schedule the upgrades again", l.SchedulePath(), err)
	}
	sortSchedule(sf.Scheduled)
	return sf.Scheduled, nil
}

func sortSchedule(s []Scheduled) {
	sort.SliceStable(s, func(i, j int) bool { return s[i].Plan.Height < s[j].Plan.Height })
}

func (l Layout) writeSchedule(s []Scheduled) error {
	sortSchedule(s)
	if s == nil {
		s = []Scheduled{}
	}
	b, err := json.MarshalIndent(scheduleFile{Format: 1, Scheduled: s}, "", "  ")
	if err != nil {
		return err
	}
	return WriteFile(l.SchedulePath(), append(b, '\n'), 0o644)
}

// AddScheduled adds s to the schedule. It refuses (ErrScheduleConflict) a name or
// a height already scheduled, and a name no directory can hold. Writers are the
// operator's commands, one at a time; the node only reads.
func (l Layout) AddScheduled(s Scheduled) error {
	if s.Plan.Height <= 0 {
		return fmt.Errorf("%w: height %d: an upgrade at a height needs a height above 0", ErrScheduleConflict, s.Plan.Height)
	}
	dir, err := l.DirName(s.Plan.Name)
	if err != nil {
		return err
	}
	cur, err := l.Schedule()
	if err != nil {
		return err
	}
	for _, c := range cur {
		switch {
		case l.sameDir(c.Plan.Name, dir):
			return fmt.Errorf("%w: upgrade %q is already scheduled at height %d; cancel it first to schedule it again", ErrScheduleConflict, c.Plan.Name, c.Plan.Height)
		case c.Plan.Height == s.Plan.Height:
			return fmt.Errorf("%w: upgrade %q is already scheduled at height %d; one upgrade per height", ErrScheduleConflict, c.Plan.Name, c.Plan.Height)
		}
	}
	if s.Added.IsZero() {
		s.Added = time.Now().UTC()
	}
	return l.writeSchedule(append(cur, s))
}

// sameDir reports whether plan name maps to the upgrades/ directory dir: names
// that share a directory (cosmovisor lower-cases them) are one upgrade.
func (l Layout) sameDir(name, dir string) bool {
	d, err := l.DirName(name)
	return err == nil && d == dir
}

// RemoveScheduled removes the upgrade named name and returns it; ok is false when
// none is scheduled under that name.
func (l Layout) RemoveScheduled(name string) (s Scheduled, ok bool, err error) {
	cur, err := l.Schedule()
	if err != nil {
		return Scheduled{}, false, err
	}
	dir, err := l.DirName(name)
	if err != nil {
		return Scheduled{}, false, err
	}
	keep := cur[:0:0]
	for _, c := range cur {
		if !ok && l.sameDir(c.Plan.Name, dir) {
			s, ok = c, true
			continue
		}
		keep = append(keep, c)
	}
	if !ok {
		return Scheduled{}, false, nil
	}
	return s, true, l.writeSchedule(keep)
}

// ScheduleAt says what the schedule means for a chain whose last block applied is
// last (CometBFT's state height): Due is the upgrade whose binary must run the next
// block (the latest with Height <= last+1; nil if none), Next the first one after it
// (the height to halt at; nil if none), and Past those at or below last other than
// Due: the chain is beyond them. s is in height order, as Schedule returns it.
func ScheduleAt(s []Scheduled, last int64) (due, next *Scheduled, past []Scheduled) {
	for i := range s {
		switch h := s[i].Plan.Height; {
		case h <= last+1:
			if due != nil {
				past = append(past, *due)
			}
			e := s[i]
			due = &e
		case next == nil:
			e := s[i]
			next = &e
		}
	}
	if due != nil && due.Plan.Height <= last {
		// The chain executed the due upgrade's height already: it is applied.
		past = append(past, *due)
		due = nil
	}
	return due, next, past
}

// WriteUpgradeInfo writes data/upgrade-info.json for p in the format x/upgrade
// writes it at a halt, crash-safely. invisor writes it only for a scheduled upgrade
// whose height the chain's state has reached, so that the boot redirect and the
// new binary (its store loader) see the upgrade as they see a governance one.
func (l Layout) WriteUpgradeInfo(p Plan) error {
	b, err := json.Marshal(struct {
		Name   string `json:"name"`
		Time   string `json:"time"`
		Height int64  `json:"height"`
		Info   string `json:"info"`
	}{p.Name, "0001-01-01T00:00:00Z", p.Height, p.Info})
	if err != nil {
		return err
	}
	if err := os.MkdirAll(l.DataDir(), 0o700); err != nil {
		return err
	}
	return WriteFile(l.UpgradeInfo(), b, 0o600)
}
