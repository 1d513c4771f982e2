package relauncher

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/invisor/invisor/internal/history"
	"github.com/invisor/invisor/internal/home"
)

// switched is a home after a real Switch to v2 at height 5 with backups on: a
// data directory (makeData), its backup and manifest in backupDir, `current` ->
// upgrades/v2, one attempt in the ledger.
type switched struct {
	*testHome
	cfg     Config
	plan    home.Plan
	backup  string
	tables  []string
	mutable []string // but the signing state
	log     *testLogger
}

func newSwitched(t *testing.T) *switched {
	t.Helper()
	h := newTestHome(t)
	tables, mutable := makeData(t, h.l.DataDir())
	p := h.haltAndStage(5, `{"binaries":{}}`)
	c := testConfig(h.home)
	c.Backup = true
	c.BackupDir = t.TempDir()
	s := &switched{testHome: h, cfg: c, plan: p, tables: tables, log: &testLogger{}}
	for _, f := range mutable {
		if f != ValidatorStateFile {
			s.mutable = append(s.mutable, f)
		}
	}
	s.backup = s.doSwitch()
	return s
}

// doSwitch runs a Switch to v2 (the exec is a fake) and returns the backup it took.
func (s *switched) doSwitch() string {
	s.t.Helper()
	r, err := New(s.cfg, nil, s.log, (&fakeOS{self: s.genesis, args: []string{"appd", "start"}}).OS())
	must(s.t, err)
	must(s.t, r.Switch("v2"))
	if s.current() != "upgrades/v2" {
		s.t.Fatalf("current -> %s after the switch", s.current())
	}
	att := s.l.Attempts(s.plan)
	if att.Count == 0 || att.Backup == "" {
		s.t.Fatalf("ledger after the switch: %+v", att)
	}
	return att.Backup
}

// runBad stands for the upgrade binary that ran on the data: it signed a later
// height, wrote a table and compacted one away.
func (s *switched) runBad() {
	s.t.Helper()
	d := s.l.DataDir()
	must(s.t, os.WriteFile(filepath.Join(d, ValidatorStateFile), []byte(`{"height":"6","round":0,"step":3}`), 0o600))
	must(s.t, os.WriteFile(filepath.Join(d, "application.db", "000010.ldb"), []byte("written by the bad binary"), 0o644))
	must(s.t, os.Remove(filepath.Join(d, "application.db", "000001.ldb")))
}

func readFile(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	must(t, err)
	return string(b)
}

// Each backup invisor takes describes itself, in a file no copy of the tree takes.
func TestSwitchDescribesBackup(t *testing.T) {
	s := newSwitched(t)
	ms, err := ListBackups(s.cfg.BackupDir)
	must(t, err)
	if len(ms) != 1 {
		t.Fatalf("backups: %+v", ms)
	}
	m := ms[0]
	want := BackupManifest{Format: BackupManifestFormat, Kind: BackupKind, Upgrade: "v2", Height: 5, InfoHash: s.plan.InfoHash(),
		Previous: s.l.GenesisTarget(), PreviousBin: s.genesis, Path: s.backup, Data: s.l.DataDir()}
	if m.Format != want.Format || m.Kind != want.Kind || m.Upgrade != want.Upgrade || m.Height != want.Height || m.InfoHash != want.InfoHash ||
		m.Previous != want.Previous || m.PreviousBin != want.PreviousBin || m.PreviousSHA256 != "" || m.Path != want.Path || m.Data != want.Data {
		t.Errorf("manifest\n got %+v\nwant %+v", m, want)
	}
	if m.Time.IsZero() || time.Since(m.Time) > time.Minute || m.Stats.Linked != len(s.tables) {
		t.Errorf("manifest time %v, stats %+v", m.Time, m.Stats)
	}
	if m.ManifestPath() != filepath.Join(s.backup, BackupManifestFile) {
		t.Errorf("manifest at %s", m.ManifestPath())
	}
	// A manifest that a restore by hand copied into data/ is neither backed up
	// nor restored.
	must(t, os.WriteFile(filepath.Join(s.l.DataDir(), BackupManifestFile), []byte(`{"kind":"stale"}`), 0o644))
	again, st, err := BackupData(context.Background(), s.l.DataDir(), t.TempDir(), "v2", time.Now())
	must(t, err)
	if _, err := os.Stat(filepath.Join(again, BackupManifestFile)); !errors.Is(err, os.ErrNotExist) || st.Skipped != 3 {
		t.Errorf("a manifest in data/ was backed up (%v), stats %+v", err, st)
	}
}

// The binary that ran before is an upgrade's: its sha256 comes from its record.
func TestSwitchDescribesPreviousUpgrade(t *testing.T) {
	h := newTestHome(t)
	makeData(t, h.l.DataDir())
	v1 := home.Plan{Name: "v1", Height: 2}
	h.writeExec(h.bin("v1"), "#!/bin/sh\necho v1\n")
	h.stage(v1)
	dir, _ := h.l.UpgradeDir("v1")
	must(t, home.Symlink(dir, h.l.Current()))
	rec, err := h.l.ReadRecord("v1")
	must(t, err)
	h.haltAndStage(5, "")
	c := testConfig(h.home)
	c.Backup, c.BackupDir = true, t.TempDir()
	r, err := New(c, nil, nil, (&fakeOS{self: h.bin("v1"), args: []string{"appd"}}).OS())
	must(t, err)
	must(t, r.Switch("v2"))
	ms, err := ListBackups(c.BackupDir)
	must(t, err)
	if len(ms) != 1 || ms[0].Previous != dir || ms[0].PreviousBin != h.bin("v1") || ms[0].PreviousSHA256 != rec.SHA256 {
		t.Fatalf("manifest %+v, want previous %s with sha256 %s", ms, dir, rec.SHA256)
	}
}

// writeManifest puts an invisor backup of upgrade name, taken at t, in dir.
func writeManifest(t *testing.T, dir, name string, height int64, at time.Time, mutate func(*BackupManifest)) BackupManifest {
	t.Helper()
	_, p := freeName(dir, backupPrefix, name, at)
	must(t, os.MkdirAll(filepath.Join(p, "application.db"), 0o755))
	must(t, os.WriteFile(filepath.Join(p, "application.db", "000001.ldb"), []byte(name), 0o644))
	m := BackupManifest{Format: BackupManifestFormat, Kind: BackupKind, Upgrade: name, Height: height, Time: at.UTC(), Path: p}
	if mutate != nil {
		mutate(&m)
	}
	must(t, writeBackupManifest(p, m))
	return m
}

// Retention keeps the newest BackupKeep of invisor's own backups and removes the
// older ones with their manifests, logging each; nothing else in the directory
// is touched.
func TestBackupRetention(t *testing.T) {
	h := newTestHome(t)
	makeData(t, h.l.DataDir())
	h.haltAndStage(5, "")
	bdir := t.TempDir()
	t0 := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	old1 := writeManifest(t, bdir, "v0", 1, t0, nil)
	old2 := writeManifest(t, bdir, "v1", 2, t0.Add(time.Hour), nil)
	kept := writeManifest(t, bdir, "v1b", 3, t0.Add(2*time.Hour), nil)

	// Not invisor's, or not describing the directory beside it: never removed.
	foreign := []string{
		filepath.Join(bdir, "data-backup-2020-01-01_000000"),            // cosmovisor's, no manifest
		filepath.Join(bdir, "data-backup-2020-01-02_000000-v1"),         // a manifest of another kind
		filepath.Join(bdir, "data-backup-2020-01-03_000000-v1"),         // a manifest naming another path
		filepath.Join(bdir, "precious"),                                 // the path that manifest names
		filepath.Join(bdir, "data-rolledback-2020-01-04_000000-v1"),     // data a rollback moved aside
		filepath.Join(bdir, "data-backup-2020-01-05_000000-v1.restore"), // something of the operator's
		filepath.Join(bdir, ".data-backup-2020-01-06_000000-v1"),        // and another
	}
	for _, d := range foreign {
		must(t, os.MkdirAll(d, 0o755))
		must(t, os.WriteFile(filepath.Join(d, "f"), []byte("x"), 0o644))
	}
	must(t, os.WriteFile(filepath.Join(foreign[1], BackupManifestFile), []byte(`{"format":1,"kind":"something-else","path":"`+foreign[1]+`"}`), 0o644))
	elsewhere := BackupManifest{Format: 1, Kind: BackupKind, Upgrade: "v1", Time: t0.Add(-48 * time.Hour), Path: foreign[3]}
	b, _ := json.Marshal(elsewhere)
	must(t, os.WriteFile(filepath.Join(foreign[2], BackupManifestFile), b, 0o644))

	c := testConfig(h.home)
	c.Backup, c.BackupDir, c.BackupKeep = true, bdir, 2
	log := &testLogger{}
	r, err := New(c, nil, log, (&fakeOS{self: h.genesis, args: []string{"appd"}}).OS())
	must(t, err)
	must(t, r.Switch("v2"))

	ms, err := ListBackups(bdir)
	must(t, err)
	if len(ms) != 2 || ms[0].Upgrade != "v2" || ms[1].Path != kept.Path {
		t.Fatalf("after the switch: %+v; want the new v2 backup and %s", ms, kept.Path)
	}
	for _, m := range []BackupManifest{old1, old2} {
		if _, err := os.Lstat(m.Path); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s not removed: %v", m.Path, err)
		}
		if !strings.Contains(log.text(), "removed an old data backup (backup-keep) path"+m.Path+"upgrade") {
			t.Errorf("removal of %s not logged:\n%s", m.Path, log.text())
		}
	}
	for _, d := range append(foreign, kept.Path) {
		if _, err := os.Stat(filepath.Join(d, "f")); err != nil && d != kept.Path {
			t.Errorf("%s touched: %v", d, err)
		}
	}
	if _, err := os.Stat(kept.ManifestPath()); err != nil {
		t.Error(err)
	}
	ents, _ := os.ReadDir(bdir)
	for _, e := range ents {
		if strings.Contains(e.Name(), home.TempMarker) {
			t.Errorf("temp left: %s", e.Name())
		}
	}
}

// PruneBackups refuses to keep nothing.
func TestPruneBackupsKeepsAtLeastOne(t *testing.T) {
	bdir := t.TempDir()
	m := writeManifest(t, bdir, "v2", 5, time.Now(), nil)
	if _, err := PruneBackups(bdir, 0); err == nil {
		t.Fatal("keep 0 accepted")
	}
	pruned, err := PruneBackups(bdir, 1)
	if err != nil || len(pruned) != 0 {
		t.Fatalf("keep 1 of 1: %+v, %v", pruned, err)
	}
	if _, err := os.Stat(m.Path); err != nil {
		t.Fatal(err)
	}
	c := testConfig(t.TempDir())
	c.BackupKeep = -1
	if err := c.Validate(); err == nil {
		t.Fatal("BackupKeep -1 valid")
	}
}

// The whole rollback: data restored from the backup with the live signing state,
// the replaced data moved aside, `current` back at genesis, the ledger cleared, a
// history entry, and the backup as it was.
func TestRollback(t *testing.T) {
	s := newSwitched(t)
	s.runBad()
	liveState := readFile(t, filepath.Join(s.l.DataDir(), ValidatorStateFile))
	backupState := readFile(t, filepath.Join(s.backup, ValidatorStateFile))
	if liveState == backupState {
		t.Fatal("test setup: the live signing state must differ from the backup's")
	}

	rep, err := Rollback(context.Background(), s.cfg, RollbackOptions{})
	must(t, err)
	d := s.l.DataDir()
	if rep.Upgrade.Name != "v2" || rep.Upgrade.Height != 5 || rep.Backup.Path != s.backup || rep.Data != d ||
		rep.CurrentAfter != s.l.GenesisTarget() || rep.PreviousBin != s.genesis || rep.ValidatorState != filepath.Join(d, ValidatorStateFile) {
		t.Errorf("report %+v", rep)
	}
	if len(rep.Warnings) != 0 {
		t.Errorf("warnings: %v", rep.Warnings)
	}
	// The restored data is the backup's, tables linked to it, except the signing state.
	checkBackup(t, s.backup, d, s.tables, s.mutable, true)
	if _, err := os.Stat(filepath.Join(d, BackupManifestFile)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the backup's manifest was restored into data/: %v", err)
	}
	if _, err := os.Stat(filepath.Join(d, "application.db", "000010.ldb")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the bad binary's table survived the rollback: %v", err)
	}
	if got := readFile(t, filepath.Join(d, ValidatorStateFile)); got != liveState {
		t.Errorf("%s = %s, want the live %s (the backup's is %s)", ValidatorStateFile, got, liveState, backupState)
	}
	// Nothing is lost: the replaced data, whole, in the backup dir.
	if filepath.Dir(rep.MovedAside) != s.cfg.BackupDir || !strings.HasPrefix(filepath.Base(rep.MovedAside), "data-rolledback-") ||
		!strings.HasSuffix(rep.MovedAside, "-v2") {
		t.Errorf("moved aside to %s", rep.MovedAside)
	}
	if got := readFile(t, filepath.Join(rep.MovedAside, "application.db", "000010.ldb")); got != "written by the bad binary" {
		t.Errorf("moved-aside data: %q", got)
	}
	if got := readFile(t, filepath.Join(rep.MovedAside, ValidatorStateFile)); got != liveState {
		t.Errorf("moved-aside signing state %s", got)
	}
	if s.current() != home.GenesisDir {
		t.Errorf("current -> %s, want genesis", s.current())
	}
	if t2, _ := os.Readlink(s.l.Current()); !filepath.IsAbs(t2) {
		t.Errorf("current -> %q: cosmovisor needs an absolute target", t2)
	}
	if att := s.l.Attempts(s.plan); att.Count != 0 || att.Backup != "" {
		t.Errorf("ledger not cleared: %+v", att)
	}
	hist, err := history.Read(s.home)
	must(t, err)
	if n := len(hist); n == 0 || hist[n-1].Event != history.EventRollback || hist[n-1].Upgrade != "v2" || hist[n-1].Height != 5 ||
		hist[n-1].Backup != s.backup || hist[n-1].MovedAside != rep.MovedAside || hist[n-1].To != s.genesis || hist[n-1].From != s.v2 {
		t.Errorf("history: %+v", hist)
	}
	// The backup is as it was, manifest and all: usable for another rollback.
	if ms, _ := ListBackups(s.cfg.BackupDir); len(ms) != 1 || ms[0].Path != s.backup {
		t.Errorf("backups after the rollback: %+v", ms)
	}
	if got := readFile(t, filepath.Join(s.backup, ValidatorStateFile)); got != backupState {
		t.Errorf("the backup changed: %s", got)
	}
	if _, err := os.Stat(filepath.Join(s.backup, "application.db", "000001.ldb")); err != nil {
		t.Error(err)
	}

	// A second rollback finds nothing to undo: `current` is back at genesis.
	if _, err := Rollback(context.Background(), s.cfg, RollbackOptions{}); !errors.Is(err, ErrNothingToRollBack) {
		t.Fatalf("second rollback: %v, want ErrNothingToRollBack", err)
	}
	// The next attempt switches again (a new backup, the ledger counts from 1), and
	// can be rolled back in turn.
	b2 := s.doSwitch()
	if b2 == s.backup || s.l.Attempts(s.plan).Count != 1 {
		t.Fatalf("second switch: backup %s, ledger %+v", b2, s.l.Attempts(s.plan))
	}
	rep2, err := Rollback(context.Background(), s.cfg, RollbackOptions{})
	if err != nil || rep2.Backup.Path != b2 || rep2.MovedAside == rep.MovedAside {
		t.Fatalf("rollback of the second switch: %+v, %v", rep2, err)
	}
}

// --dry-run says what would happen and changes nothing.
func TestRollbackDryRun(t *testing.T) {
	s := newSwitched(t)
	s.runBad()
	before := snapshot(t, s)
	rep, err := Rollback(context.Background(), s.cfg, RollbackOptions{DryRun: true})
	must(t, err)
	if !rep.DryRun || rep.Backup.Path != s.backup || rep.MovedAside == "" || rep.CurrentAfter != s.l.GenesisTarget() {
		t.Errorf("report %+v", rep)
	}
	if _, err := os.Lstat(rep.MovedAside); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("dry run moved the data: %v", err)
	}
	if after := snapshot(t, s); after != before {
		t.Errorf("dry run changed the home:\nbefore %s\nafter  %s", before, after)
	}
}

// snapshot is what a refused or dry rollback must not change.
func snapshot(t *testing.T, s *switched) string {
	t.Helper()
	var b strings.Builder
	b.WriteString("current=" + s.current() + "\n")
	for _, p := range []string{ValidatorStateFile, "application.db/000010.ldb", "upgrade-info.json"} {
		c, _ := os.ReadFile(filepath.Join(s.l.DataDir(), p))
		b.WriteString(p + "=" + string(c) + "\n")
	}
	ents, _ := os.ReadDir(s.cfg.BackupDir)
	for _, e := range ents {
		b.WriteString(e.Name() + "\n")
	}
	b.WriteString("attempts=" + strconv.Itoa(s.l.Attempts(s.plan).Count))
	hist, _ := history.Read(s.home)
	b.WriteString(" history=" + strconv.Itoa(len(hist)))
	return b.String()
}

// Every refusal changes nothing and says what to do.
func TestRollbackRefusals(t *testing.T) {
	for _, tc := range []struct {
		name  string
		setup func(t *testing.T, s *switched) (cleanup func())
		want  error
		says  []string
	}{
		{"node running", func(t *testing.T, s *switched) func() {
			lk, err := s.l.Acquire(nil)
			must(t, err)
			return func() { lk.Release() }
		}, ErrNodeRunning, []string{"process " + strconv.Itoa(os.Getpid()), "stop the node first"}},
		{"no upgrade-info", func(t *testing.T, s *switched) func() {
			must(t, os.Remove(s.l.UpgradeInfo()))
			return nil
		}, ErrNothingToRollBack, []string{"has not halted for an upgrade"}},
		{"switch not made", func(t *testing.T, s *switched) func() {
			must(t, home.Symlink(s.l.GenesisTarget(), s.l.Current()))
			return nil
		}, ErrNothingToRollBack, []string{"not made, or it was rolled back already"}},
		{"backups were off", func(t *testing.T, s *switched) func() {
			removeAll(t, s.cfg.BackupDir)
			must(t, s.l.ClearAttempts(s.plan))
			s.cfg.Backup = false
			return nil
		}, ErrNoBackup, []string{"backups are off", "unsafe-skip-backup = false"}},
		{"no backup in the directory", func(t *testing.T, s *switched) func() {
			removeAll(t, s.cfg.BackupDir)
			must(t, s.l.ClearAttempts(s.plan)) // the upgrade got past the height once
			return nil
		}, ErrNoBackup, []string{"holds no backup invisor took", "another backup-dir"}},
		{"newest backup for another upgrade", func(t *testing.T, s *switched) func() {
			writeManifest(t, s.cfg.BackupDir, "v3", 9, time.Now().Add(time.Hour), nil)
			return nil
		}, ErrBackupMismatch, []string{`switch to "v3" at height 9`, `"v2" at height 5`}},
		{"same name, other height", func(t *testing.T, s *switched) func() {
			s.halt(home.Plan{Name: "v2", Height: 7})
			return nil
		}, ErrBackupMismatch, []string{`"v2" at height 7`}},
		{"backup gone", func(t *testing.T, s *switched) func() {
			must(t, os.RemoveAll(s.backup))
			return nil
		}, ErrNoBackup, []string{"is gone", "the switch attempts ledger names it"}},
		{"previous binary gone", func(t *testing.T, s *switched) func() {
			must(t, os.Remove(s.genesis))
			return nil
		}, nil, []string{"is missing", "put it back"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newSwitched(t)
			s.runBad()
			if c := tc.setup(t, s); c != nil {
				defer c()
			}
			before := snapshot(t, s)
			for _, dry := range []bool{true, false} {
				_, err := Rollback(context.Background(), s.cfg, RollbackOptions{DryRun: dry})
				if err == nil || (tc.want != nil && !errors.Is(err, tc.want)) {
					t.Fatalf("dry run %v: err = %v, want %v", dry, err, tc.want)
				}
				for _, w := range tc.says {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error does not say %q: %v", w, err)
					}
				}
			}
			if after := snapshot(t, s); after != before {
				t.Errorf("a refused rollback changed the home:\nbefore %s\nafter  %s", before, after)
			}
		})
	}
}

// removeAll empties dir (a t.TempDir the test keeps).
func removeAll(t *testing.T, dir string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	must(t, err)
	for _, e := range ents {
		must(t, os.RemoveAll(filepath.Join(dir, e.Name())))
	}
}

// A data directory that is a symlink (data on another disk) is restored where it
// really is; the link stays.
func TestRollbackDataSymlink(t *testing.T) {
	h := newTestHome(t)
	real := filepath.Join(t.TempDir(), "chaindata")
	must(t, os.Remove(h.l.DataDir()))
	must(t, os.MkdirAll(real, 0o700))
	must(t, os.Symlink(real, h.l.DataDir()))
	tables, _ := makeData(t, real)
	p := h.haltAndStage(5, "")
	c := testConfig(h.home)
	c.Backup, c.BackupDir = true, t.TempDir()
	s := &switched{testHome: h, cfg: c, plan: p, tables: tables, log: &testLogger{}}
	s.backup = s.doSwitch()
	s.runBad()
	rep, err := Rollback(context.Background(), c, RollbackOptions{})
	must(t, err)
	if l, err := os.Readlink(h.l.DataDir()); err != nil || l != real || rep.Data != real {
		t.Fatalf("data -> %q (%v), restored %s; want the link to %s kept", l, err, rep.Data, real)
	}
	if _, err := os.Stat(filepath.Join(real, "application.db", "000001.ldb")); err != nil {
		t.Fatalf("not restored: %v", err)
	}
	if got := readFile(t, filepath.Join(real, ValidatorStateFile)); !strings.Contains(got, `"6"`) {
		t.Fatalf("signing state %s, want the live one", got)
	}
	if fi, err := os.Stat(real); err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("restored data mode %v (%v), want the live 0700", fi.Mode(), err)
	}
}

// What an interrupted rollback left is reported, never removed.
func TestRollbackReportsInterrupted(t *testing.T) {
	s := newSwitched(t)
	left := filepath.Join(s.cfg.BackupDir, "data-rolledback-2026-01-01_000000-v2"+restoringSuffix)
	must(t, os.MkdirAll(left, 0o755))
	rep, err := Rollback(context.Background(), s.cfg, RollbackOptions{})
	must(t, err)
	if len(rep.Warnings) != 1 || !strings.Contains(rep.Warnings[0], left) {
		t.Fatalf("warnings %v, want one naming %s", rep.Warnings, left)
	}
	if _, err := os.Stat(left); err != nil {
		t.Fatal(err)
	}
}

// The moved-aside name never reuses a name the backup directory holds.
func TestRollbackAsideNameIsFree(t *testing.T) {
	s := newSwitched(t)
	now := time.Date(2026, 5, 6, 7, 8, 9, 0, time.UTC)
	taken := filepath.Join(s.cfg.BackupDir, "data-rolledback-2026-05-06_070809-v2")
	must(t, os.MkdirAll(taken, 0o755))
	must(t, os.WriteFile(filepath.Join(taken, "keep"), []byte("mine"), 0o644))
	rep, err := Rollback(context.Background(), s.cfg, RollbackOptions{Now: now})
	must(t, err)
	if rep.MovedAside != taken+"-1" {
		t.Fatalf("moved aside to %s", rep.MovedAside)
	}
	if b, _ := os.ReadFile(filepath.Join(taken, "keep")); !bytes.Equal(b, []byte("mine")) {
		t.Fatal("an existing directory was replaced")
	}
}
