package relauncher

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/invisor/invisor/internal/home"
)

func inode(t testing.TB, p string) uint64 {
	t.Helper()
	fi, err := os.Lstat(p)
	must(t, err)
	return fi.Sys().(*syscall.Stat_t).Ino
}

// makeData writes a small CometBFT/SDK-like data directory and returns the files by kind.
func makeData(t *testing.T, data string) (tables, mutable []string) {
	t.Helper()
	files := map[string]string{
		"application.db/000001.ldb":    "table-1",
		"application.db/000002.ldb":    "table-2",
		"application.db/MANIFEST-0003": "manifest",
		"application.db/CURRENT":       "MANIFEST-0003\n",
		"application.db/LOCK":          "",
		"application.db/LOG":           "log",
		"application.db/000004.log":    "wal",
		"blockstore.db/000005.sst":     "pebble-table",
		"blockstore.db/OPTIONS-000001": "opts",
		"blockstore.db/LOCK":           "",
		"cs.wal/wal":                   "consensus wal",
		"priv_validator_state.json":    `{"height":"5"}`,
		"upgrade-info.json":            `{"name":"v2","height":5}`,
	}
	for p, c := range files {
		full := filepath.Join(data, p)
		must(t, os.MkdirAll(filepath.Dir(full), 0o755))
		must(t, os.WriteFile(full, []byte(c), 0o644))
		switch {
		case strings.HasSuffix(p, "LOCK"):
		case isTable(p):
			tables = append(tables, p)
		default:
			mutable = append(mutable, p)
		}
	}
	must(t, os.Symlink("application.db", filepath.Join(data, "app-link")))
	return tables, mutable
}

func checkBackup(t *testing.T, data, dst string, tables, mutable []string, wantLinked bool) {
	t.Helper()
	for _, p := range tables {
		same := inode(t, filepath.Join(data, p)) == inode(t, filepath.Join(dst, p))
		if same != wantLinked {
			t.Errorf("%s: hard-linked %v, want %v", p, same, wantLinked)
		}
	}
	for _, p := range append(tables, mutable...) {
		a, _ := os.ReadFile(filepath.Join(data, p))
		b, err := os.ReadFile(filepath.Join(dst, p))
		if err != nil || !bytes.Equal(a, b) {
			t.Errorf("%s: content differs (%v)", p, err)
		}
	}
	for _, p := range mutable {
		if inode(t, filepath.Join(data, p)) == inode(t, filepath.Join(dst, p)) {
			t.Errorf("%s: mutable file hard-linked", p)
		}
	}
	for _, p := range []string{"application.db/LOCK", "blockstore.db/LOCK"} {
		if _, err := os.Lstat(filepath.Join(dst, p)); !os.IsNotExist(err) {
			t.Errorf("%s copied: %v", p, err)
		}
	}
	if l, err := os.Readlink(filepath.Join(dst, "app-link")); err != nil || l != "application.db" {
		t.Errorf("symlink: %q %v", l, err)
	}
}

func TestBackupData(t *testing.T) {
	data := filepath.Join(t.TempDir(), "data")
	tables, mutable := makeData(t, data)
	bdir := filepath.Join(filepath.Dir(data), "backups")
	now := time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC)

	dst, st, err := BackupData(context.Background(), data, bdir, "v2", now)
	must(t, err)
	if filepath.Base(dst) != "data-backup-2026-03-04_050607-v2" {
		t.Fatalf("backup name %q", dst)
	}
	checkBackup(t, data, dst, tables, mutable, true)
	if st.Linked != len(tables) || st.Copied != len(mutable) || st.Skipped != 2 || st.LinkFallbacks != 0 {
		t.Errorf("stats %+v", st)
	}
	// A second backup in the same second gets its own name; no temp dirs are left.
	dst2, _, err := BackupData(context.Background(), data, bdir, "v2", now)
	must(t, err)
	if dst2 == dst {
		t.Fatal("backup overwritten")
	}
	ents, _ := os.ReadDir(bdir)
	for _, e := range ents {
		if strings.Contains(e.Name(), home.TempMarker) {
			t.Errorf("temp left: %s", e.Name())
		}
	}
}

func TestBackupCrossDeviceFallsBackToCopy(t *testing.T) {
	data := filepath.Join(t.TempDir(), "data")
	tables, mutable := makeData(t, data)
	var a, b syscall.Stat_t
	must(t, syscall.Stat(data, &a))
	if err := syscall.Stat("/dev/shm", &b); err != nil || a.Dev == b.Dev {
		t.Skip("no second filesystem at /dev/shm")
	}
	bdir, err := os.MkdirTemp("/dev/shm", "invisor-test-")
	if err != nil {
		t.Skip(err)
	}
	t.Cleanup(func() { os.RemoveAll(bdir) })
	dst, st, err := BackupData(context.Background(), data, bdir, "", time.Now())
	must(t, err)
	checkBackup(t, data, dst, tables, mutable, false)
	if st.LinkFallbacks != len(tables) {
		t.Errorf("stats %+v", st)
	}
}

// A plan name of the longest mappable length still gets a backup directory.
func TestBackupLongPlanName(t *testing.T) {
	data := filepath.Join(t.TempDir(), "data")
	makeData(t, data)
	dst, _, err := BackupData(context.Background(), data, t.TempDir(), strings.Repeat("/", 85), time.Now())
	if err != nil || len(filepath.Base(dst)) > home.MaxDirBytes {
		t.Fatalf("backup %q: %v", dst, err)
	}
}

func TestBackupCancelledLeavesNothing(t *testing.T) {
	data := filepath.Join(t.TempDir(), "data")
	makeData(t, data)
	bdir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, _, err := BackupData(ctx, data, bdir, "v2", time.Now()); !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v", err)
	}
	if ents, _ := os.ReadDir(bdir); len(ents) != 0 {
		t.Fatalf("left %d entries", len(ents))
	}
}

// TestSwitchBacksUp checks Switch backs up before it flips, into BackupDir.
func TestSwitchBacksUp(t *testing.T) {
	h := newTestHome(t)
	h.haltAndStage(5, "")
	must(t, os.WriteFile(filepath.Join(h.home, "data", "000001.ldb"), []byte("t"), 0o644))
	f := &fakeOS{self: h.genesis, args: []string{"appd"}}
	c := testConfig(h.home)
	c.Backup = true
	c.BackupDir = t.TempDir()
	r, err := New(c, nil, nil, f.OS())
	must(t, err)
	must(t, r.Switch("v2"))
	ents, _ := os.ReadDir(c.BackupDir)
	if len(ents) != 1 || !strings.HasPrefix(ents[0].Name(), "data-backup-") || !strings.HasSuffix(ents[0].Name(), "-v2") {
		t.Fatalf("backups: %v", ents)
	}
	if b, _ := os.ReadFile(filepath.Join(c.BackupDir, ents[0].Name(), "upgrade-info.json")); !bytes.Contains(b, []byte(`"v2"`)) {
		t.Fatalf("upgrade-info not in backup")
	}
	if _, err := os.Stat(h.l.UpgradeInfo()); err != nil {
		t.Fatalf("upgrade-info.json moved: %v", err)
	}
}

// makeBigData writes n MiB of .ldb tables (4 MiB each, like goleveldb's default
// table size) plus some mutable files.
func makeBigData(b *testing.B, data string, mib int) {
	b.Helper()
	db := filepath.Join(data, "application.db")
	must(b, os.MkdirAll(db, 0o755))
	buf := make([]byte, 4<<20)
	for i := range buf {
		buf[i] = byte(i * 7)
	}
	for i := 0; i < mib/4; i++ {
		buf[0], buf[1] = byte(i), byte(i>>8)
		must(b, os.WriteFile(filepath.Join(db, fmt.Sprintf("%06d.ldb", i)), buf, 0o644))
	}
	for _, p := range []string{"MANIFEST-000001", "CURRENT", "LOG", "000999.log"} {
		must(b, os.WriteFile(filepath.Join(db, p), buf[:1<<20], 0o644))
	}
	must(b, os.WriteFile(filepath.Join(db, "LOCK"), nil, 0o644))
	must(b, os.MkdirAll(filepath.Join(data, "cs.wal"), 0o755))
	must(b, os.WriteFile(filepath.Join(data, "cs.wal", "wal"), buf[:2<<20], 0o644))
	must(b, os.WriteFile(filepath.Join(data, "priv_validator_state.json"), []byte(`{}`), 0o644))
}

func BenchmarkBackup1GiB(b *testing.B) {
	dir := b.TempDir()
	data := filepath.Join(dir, "data")
	makeBigData(b, data, 1024)
	b.SetBytes(1 << 30)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		dst, _, err := BackupData(context.Background(), data, dir, fmt.Sprint(i), time.Now())
		must(b, err)
		b.StopTimer()
		must(b, os.RemoveAll(dst))
		b.StartTimer()
	}
}

// BenchmarkFullCopy1GiB is the comparison: a plain recursive copy of every file
// (what cosmovisor's backup does), fsynced like BackupData's copies.
func BenchmarkFullCopy1GiB(b *testing.B) {
	dir := b.TempDir()
	data := filepath.Join(dir, "data")
	makeBigData(b, data, 1024)
	b.SetBytes(1 << 30)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		dst := filepath.Join(dir, fmt.Sprint("copy-", i))
		err := filepath.Walk(data, func(p string, fi os.FileInfo, err error) error {
			if err != nil {
				return err
			}
			rel, _ := filepath.Rel(data, p)
			if fi.IsDir() {
				return os.MkdirAll(filepath.Join(dst, rel), 0o755)
			}
			in, err := os.Open(p)
			if err != nil {
				return err
			}
			defer in.Close()
			out, err := os.Create(filepath.Join(dst, rel))
			if err != nil {
				return err
			}
			if _, err := io.Copy(out, in); err != nil {
				return err
			}
			if err := out.Sync(); err != nil {
				return err
			}
			return out.Close()
		})
		must(b, err)
		b.StopTimer()
		must(b, os.RemoveAll(dst))
		b.StartTimer()
	}
}
