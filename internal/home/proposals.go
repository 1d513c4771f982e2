package home

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
)

// ProposalsDir is the proposal area under <home>/cosmovisor: the binaries staging
// checked while their software-upgrade proposal was in its voting period, one
// directory per proposal ID, each an unpacked tree like an upgrade's with the
// same completion record beside the binary:
//
//	<home>/cosmovisor/invisor-proposals/<id>/bin/<daemon>
//	<home>/cosmovisor/invisor-proposals/<id>/bin/<daemon>.invisor.json
//	<home>/cosmovisor/invisor-proposals/<id>/lib/...   (whatever the archive held)
//
// It lies outside upgrades/, so nothing that lists, proves or runs upgrades
// (Installs, Open, Inspect, the current link, data/upgrade-info.json) ever sees
// it: a record there lets no file run. Its record names the proposal's plan
// (name, height, info) and the proposal (Record.Proposal); staging installs the
// tree into upgrades/ only for exactly that plan, once it is in force.
const ProposalsDir = "invisor-proposals"

// ProposalsRoot is <home>/cosmovisor/invisor-proposals.
func (l Layout) ProposalsRoot() string { return filepath.Join(l.Root(), ProposalsDir) }

// ProposalDir is <home>/cosmovisor/invisor-proposals/<id>.
func (l Layout) ProposalDir(id uint64) string {
	return filepath.Join(l.ProposalsRoot(), strconv.FormatUint(id, 10))
}

// ProposalBin is <ProposalDir(id)>/bin/<daemon>.
func (l Layout) ProposalBin(id uint64) string {
	return filepath.Join(l.ProposalDir(id), BinDir, l.daemon)
}

// ProposalRecordPath is the completion record of proposal id's binary, next to it.
func (l Layout) ProposalRecordPath(id uint64) string { return l.ProposalBin(id) + RecordSuffix }

// ReadProposalRecord reads the record of proposal id's binary. A missing record
// wraps both ErrNotTrusted and fs.ErrNotExist.
func (l Layout) ReadProposalRecord(id uint64) (Record, error) {
	return readRecordFile(l.ProposalRecordPath(id))
}

// WriteProposalRecord writes rec as the record of proposal id's binary,
// crash-safely, with the same writer as WriteRecord; rec.Proposal is set to id.
// It refuses a planted symlink at the area's directories.
func (l Layout) WriteProposalRecord(id uint64, rec Record) error {
	if err := RealDirs(l.ProposalsRoot(), l.ProposalDir(id), filepath.Dir(l.ProposalBin(id))); err != nil {
		return err
	}
	rec.Proposal = id
	return writeRecordFile(l.ProposalRecordPath(id), rec)
}

// ProposalArea is one directory of the proposal area and what its record says.
type ProposalArea struct {
	ID     uint64
	Dir    string // ProposalDir(ID)
	Bin    string // ProposalBin(ID)
	Record Record // as read; check Err first
	// Err says why the area holds no usable binary: no record (a check that did
	// not finish), an unreadable or incomplete one, one of an earlier format, one
	// for another proposal, a symlink planted at its bin/, or no regular file
	// at Bin. Such an area is stale.
	Err error
}

// ProposalAreas lists the areas under ProposalsRoot, sorted by ID. Names that are
// not a proposal ID in canonical decimal are skipped (they are not invisor's).
func (l Layout) ProposalAreas() []ProposalArea {
	ents, err := os.ReadDir(l.ProposalsRoot())
	if err != nil {
		return nil
	}
	var out []ProposalArea
	for _, e := range ents {
		id, ok := ParseProposalDir(e.Name())
		if !ok {
			continue
		}
		a := ProposalArea{ID: id, Dir: l.ProposalDir(id), Bin: l.ProposalBin(id)}
		if !e.IsDir() {
			a.Err = fmt.Errorf("%w: %s is not a directory", ErrNotTrusted, a.Dir)
		} else {
			a.Record, a.Err = l.ReadProposalRecord(id)
			if a.Err == nil {
				a.Err = a.Record.soundFor(id)
			}
			if a.Err == nil {
				a.Err = RealDirs(a.Dir, filepath.Dir(a.Bin))
			}
			if a.Err == nil {
				if fi, err := os.Lstat(a.Bin); err != nil || !fi.Mode().IsRegular() {
					a.Err = fmt.Errorf("%w: %s is not a regular file", ErrNotTrusted, a.Bin)
				}
			}
		}
		out = append(out, a)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// soundFor reports why r is not a complete record of the current format for
// proposal id, whatever its plan.
func (r Record) soundFor(id uint64) error {
	switch {
	case !r.Source.Valid() || r.Format < RecordFormat:
		return fmt.Errorf("%w: the record (source %q, format %d) is not one this version writes", ErrNotTrusted, r.Source, r.Format)
	case r.Proposal != id:
		return fmt.Errorf("%w: the record is for proposal %d, not %d", ErrNotTrusted, r.Proposal, id)
	case r.Plan == "" || len(r.InfoHash) != 64 || len(r.SHA256) != 64 || r.Size <= 0:
		return fmt.Errorf("%w: the record is incomplete", ErrNotTrusted)
	}
	return nil
}

// ParseProposalDir returns the proposal ID a directory name of the proposal area
// stands for; ok is false for any other name.
func ParseProposalDir(name string) (uint64, bool) {
	id, err := strconv.ParseUint(name, 10, 64)
	if err != nil || strconv.FormatUint(id, 10) != name {
		return 0, false
	}
	return id, true
}

// OpenProposal returns proposal id's binary if its record is for exactly plan p
// (Record.For) and proposal id, and the file is provably the recorded one (its
// stamp, or a re-hash through the descriptor), as Open does for an upgrade. It
// is a report on the area (a check already done), never a proof that the file
// may run: nothing runs from the proposal area.
func (l Layout) OpenProposal(ctx context.Context, id uint64, p Plan) (*Verified, error) {
	rec, err := l.ReadProposalRecord(id)
	if err != nil {
		return nil, err
	}
	bin := l.ProposalBin(id)
	if err := rec.For(p); err != nil {
		return nil, fmt.Errorf("%s: %w", bin, err)
	}
	if err := rec.soundFor(id); err != nil {
		return nil, fmt.Errorf("%s: %w", bin, err)
	}
	return l.openRecorded(ctx, p, bin, rec)
}

// RemoveStaleProposalAreas removes the areas that hold no usable binary
// (ProposalArea.Err: a check that did not finish, a damaged record) and the
// temp names a crashed record write left in the others; valid areas stay, so
// that a proposal offered again after a restart is not downloaded again. Only a
// dead process can own what it removes while the caller holds the home lock. A
// symlink at ProposalsRoot is refused, not followed.
func (l Layout) RemoveStaleProposalAreas() (removed []string, err error) {
	if err := RealDirs(l.ProposalsRoot()); err != nil {
		return nil, err
	}
	var errs []error
	for _, a := range l.ProposalAreas() {
		if a.Err == nil {
			errs = append(errs, RemoveStaleTemps(filepath.Dir(a.Bin)))
			continue
		}
		if err := os.RemoveAll(a.Dir); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
			continue
		}
		removed = append(removed, a.Dir)
	}
	if len(removed) > 0 {
		errs = append(errs, SyncDir(l.ProposalsRoot()))
	}
	return removed, errors.Join(errs...)
}
