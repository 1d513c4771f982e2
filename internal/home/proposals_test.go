package home

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// keepProposal writes an executable and its record into proposal id's area, the
// way staging keeps a checked binary.
func keepProposal(t *testing.T, l Layout, id uint64, p Plan, body string) string {
	t.Helper()
	bin := l.ProposalBin(id)
	if err := os.MkdirAll(filepath.Dir(bin), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, []byte(body), 0o755); err != nil {
		t.Fatal(err)
	}
	d, err := hashAt(context.Background(), bin)
	if err != nil {
		t.Fatal(err)
	}
	rec := Record{Plan: p.Name, Height: p.Height, InfoHash: p.InfoHash(), Source: SourceDownload, SHA256: d.SHA256, Size: d.Size, Stamp: d.Stamp}
	if err := l.WriteProposalRecord(id, rec); err != nil {
		t.Fatal(err)
	}
	return bin
}

func TestProposalPaths(t *testing.T) {
	l := newLayout(t)
	root := filepath.Join(l.Home(), "cosmovisor", "invisor-proposals")
	if l.ProposalsRoot() != root || l.ProposalDir(12) != filepath.Join(root, "12") ||
		l.ProposalBin(12) != filepath.Join(root, "12", "bin", "appd") || l.ProposalRecordPath(12) != l.ProposalBin(12)+RecordSuffix {
		t.Fatalf("paths %s %s %s", l.ProposalsRoot(), l.ProposalDir(12), l.ProposalBin(12))
	}
	if strings.HasPrefix(l.ProposalsRoot(), l.UpgradesRoot()) || strings.Contains(ProposalsDir, TempMarker) {
		t.Error("the proposal area must be outside upgrades/ and carry no temp marker")
	}
	for name, want := range map[string]bool{"0": true, "12": true, "18446744073709551615": true, "012": false, "+1": false, "x": false, "": false, "18446744073709551616": false} {
		if _, ok := ParseProposalDir(name); ok != want {
			t.Errorf("ParseProposalDir(%q) ok=%v", name, ok)
		}
	}
}

func TestProposalRecordAndAreas(t *testing.T) {
	l := newLayout(t)
	p := Plan{Name: "V5", Height: 120, Info: `{"binaries":{}}`}
	keepProposal(t, l, 3, p, "#!/bin/sh\necho v5\n")
	rec, err := l.ReadProposalRecord(3)
	if err != nil || rec.Proposal != 3 || rec.Format != RecordFormat || rec.Plan != "V5" || rec.Time.IsZero() {
		t.Fatalf("record %+v, %v", rec, err)
	}
	// The area is no upgrade: nothing that lists or proves upgrades sees it.
	if ins := l.Installs(); len(ins) != 0 {
		t.Errorf("Installs lists %+v", ins)
	}
	if _, err := l.Open(context.Background(), p); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Open of the plan: %v", err)
	}
	if _, err := l.ReadProposalRecord(4); !errors.Is(err, fs.ErrNotExist) || !errors.Is(err, ErrNotTrusted) {
		t.Errorf("missing record: %v", err)
	}

	// OpenProposal: exactly the plan, and the recorded bytes.
	v, err := l.OpenProposal(context.Background(), 3, p)
	if err != nil {
		t.Fatal(err)
	}
	v.Close()
	for _, q := range []Plan{{Name: "V5", Height: 121, Info: p.Info}, {Name: "V5", Height: 120, Info: "other"}, {Name: "v6", Height: 120, Info: p.Info}} {
		if _, err := l.OpenProposal(context.Background(), 3, q); !errors.Is(err, ErrNotTrusted) {
			t.Errorf("plan %+v: %v", q, err)
		}
	}
	if err := os.WriteFile(l.ProposalBin(3), []byte("#!/bin/sh\necho evil\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := l.OpenProposal(context.Background(), 3, p); !errors.Is(err, ErrChanged) {
		t.Errorf("tampered binary: %v", err)
	}

	// Areas: valid, without a record, for another proposal, a planted bin/ link.
	keepProposal(t, l, 5, p, "#!/bin/sh\necho v5\n")
	os.MkdirAll(filepath.Dir(l.ProposalBin(6)), 0o755)
	os.WriteFile(l.ProposalBin(6), []byte("x"), 0o755)
	keepProposal(t, l, 7, p, "#!/bin/sh\necho v5\n")
	os.Rename(l.ProposalDir(7), l.ProposalDir(8)) // its record says 7
	elsewhere := t.TempDir()
	keepProposal(t, l, 9, p, "#!/bin/sh\necho v5\n")
	os.Rename(filepath.Join(l.ProposalDir(9), BinDir), filepath.Join(elsewhere, BinDir))
	os.Symlink(filepath.Join(elsewhere, BinDir), filepath.Join(l.ProposalDir(9), BinDir))
	os.WriteFile(filepath.Join(l.ProposalsRoot(), "README"), []byte("not invisor's"), 0o644)
	temp := TempName(l.ProposalRecordPath(5))
	os.WriteFile(temp, []byte("{"), 0o644)

	areas := l.ProposalAreas()
	var ids []uint64
	valid := map[uint64]bool{}
	for _, a := range areas {
		ids = append(ids, a.ID)
		valid[a.ID] = a.Err == nil
	}
	if len(ids) != 5 || ids[0] != 3 || ids[4] != 9 {
		t.Fatalf("areas %v", ids)
	}
	if !valid[3] || !valid[5] || valid[6] || valid[8] || valid[9] {
		t.Errorf("valid %v", valid)
	}

	removed, err := l.RemoveStaleProposalAreas()
	if err != nil || len(removed) != 3 {
		t.Fatalf("removed %v, %v", removed, err)
	}
	for _, id := range []uint64{6, 8, 9} {
		if _, err := os.Lstat(l.ProposalDir(id)); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("stale area %d survived", id)
		}
	}
	if _, err := os.Stat(filepath.Join(elsewhere, BinDir, "appd")); err != nil {
		t.Errorf("the removal followed a planted link: %v", err)
	}
	if _, err := os.Lstat(temp); !errors.Is(err, fs.ErrNotExist) {
		t.Error("a record temp survived")
	}
	for _, keep := range []string{l.ProposalBin(3), l.ProposalBin(5), filepath.Join(l.ProposalsRoot(), "README")} {
		if _, err := os.Stat(keep); err != nil {
			t.Errorf("%s removed: %v", keep, err)
		}
	}
}

func TestProposalAreaPlantedRoot(t *testing.T) {
	l := newLayout(t)
	elsewhere := t.TempDir()
	os.MkdirAll(l.Root(), 0o755)
	if err := os.Symlink(elsewhere, l.ProposalsRoot()); err != nil {
		t.Fatal(err)
	}
	os.MkdirAll(filepath.Join(elsewhere, "1"), 0o755)
	if _, err := l.RemoveStaleProposalAreas(); !errors.Is(err, ErrNotTrusted) {
		t.Errorf("a symlinked proposal area: %v", err)
	}
	if _, err := os.Stat(filepath.Join(elsewhere, "1")); err != nil {
		t.Errorf("removed through the link: %v", err)
	}
	if err := l.WriteProposalRecord(1, Record{Plan: "v5"}); !errors.Is(err, ErrNotTrusted) {
		t.Errorf("record write through a planted link: %v", err)
	}
}
