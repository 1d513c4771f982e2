package home

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

func TestDirName(t *testing.T) {
	long := strings.Repeat("a", MaxDirBytes)
	cases := []struct {
		name, want    string
		disableRecase bool
		unmappable    bool
	}{
		{name: "v2", want: "v2"},
		{name: "V2-Upgrade", want: "v2-upgrade"},
		{name: "V2-Upgrade", want: "V2-Upgrade", disableRecase: true},
		{name: "a/b", want: "a%2Fb"},
		{name: `say "hi"`, want: "say%20%22hi%22"},
		{name: "zero\x00width\u200b", want: "zero%00width%E2%80%8B"},
		{name: "Ünï", want: "%C3%BCn%C3%AF"},
		{name: "..a", want: "..a"},
		{name: `c:\x`, want: "c:%5Cx"},
		{name: "\xff", want: "%EF%BF%BD"},                      // strings.ToLower turns invalid UTF-8 into U+FFFD, in cosmovisor too
		{name: "\xff", want: "%EF%BF%BD", disableRecase: true}, // upgrade-info.json (encoding/json) holds U+FFFD
		{name: long, want: long},
		{name: ".", unmappable: true},
		{name: "..", unmappable: true},
		{name: long + "a", unmappable: true},
		{name: strings.Repeat("/", 86), unmappable: true}, // 258 bytes escaped
	}
	for _, c := range cases {
		got, err := DirName(c.name, c.disableRecase)
		if c.unmappable {
			var ue *UnmappableNameError
			if !errors.As(err, &ue) || !errors.Is(err, ErrBadName) || ue.Advice() == "" {
				t.Errorf("DirName(%q) = %q, %v; want an UnmappableNameError", c.name, got, err)
			}
			continue
		}
		if err != nil || got != c.want {
			t.Errorf("DirName(%q, %v) = %q, %v; want %q", c.name, c.disableRecase, got, err, c.want)
		}
	}
	if _, err := DirName("", false); !errors.Is(err, ErrBadName) {
		t.Errorf("empty name: %v", err)
	}
}

// FuzzDirName: every name maps to one directory entry right under upgrades/ or is
// refused as unmappable; never a path that leaves it.
func FuzzDirName(f *testing.F) {
	for _, s := range []string{"v2", "a/b", "..", ".", "V2", "\x00", "%2F", strings.Repeat("x", 300)} {
		f.Add(s, false)
	}
	f.Fuzz(func(t *testing.T, name string, disableRecase bool) {
		l, err := New(t.TempDir(), "appd", Options{DisableRecase: disableRecase})
		if err != nil {
			t.Fatal(err)
		}
		dir, err := l.UpgradeDir(name)
		if err != nil {
			if name != "" && !errors.As(err, new(*UnmappableNameError)) {
				t.Fatalf("%q: %v is neither empty nor unmappable", name, err)
			}
			return
		}
		if filepath.Dir(dir) != l.UpgradesRoot() || filepath.Base(dir) == "." || filepath.Base(dir) == ".." {
			t.Fatalf("%q maps to %q, outside %s", name, dir, l.UpgradesRoot())
		}
		if !disableRecase {
			if d2, _ := l.DirName(strings.ToLower(name)); d2 != filepath.Base(dir) {
				t.Fatalf("%q and its lower case map apart: %q vs %q", name, filepath.Base(dir), d2)
			}
		}
	})
}

func TestValidDaemonName(t *testing.T) {
	for _, n := range []string{"", ".", "..", "a/b", "a\x00"} {
		if ValidDaemonName(n) == nil {
			t.Errorf("%q accepted", n)
		}
	}
	if err := ValidDaemonName("gaiad"); err != nil {
		t.Error(err)
	}
}

func newLayout(t *testing.T) Layout {
	t.Helper()
	l, err := New(t.TempDir(), "appd", Options{})
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// stage writes an executable for p and its record, the way staging does.
func stage(t *testing.T, l Layout, p Plan, body string) string {
	t.Helper()
	bin, err := l.UpgradeBin(p.Name)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(bin), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, []byte(body), 0o755); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	d, err := HashFile(context.Background(), f)
	if err != nil {
		t.Fatal(err)
	}
	rec := Record{Plan: p.Name, Height: p.Height, InfoHash: p.InfoHash(), Source: SourceDownload, SHA256: d.SHA256, Size: d.Size, Stamp: d.Stamp}
	if err := l.WriteRecord(rec); err != nil {
		t.Fatal(err)
	}
	return bin
}

func TestOpenProof(t *testing.T) {
	p := Plan{Name: "V2", Height: 100, Info: `{"binaries":{}}`}
	t.Run("unchanged: no rehash", func(t *testing.T) {
		l := newLayout(t)
		bin := stage(t, l, p, "#!/bin/sh\necho v2\n")
		v, err := l.Open(context.Background(), p)
		if err != nil {
			t.Fatal(err)
		}
		defer v.Close()
		if v.Rehashed || v.Path != bin || !strings.HasSuffix(filepath.Dir(filepath.Dir(bin)), "upgrades/v2") {
			t.Fatalf("rehashed=%v path=%s", v.Rehashed, v.Path)
		}
		if err := v.Recheck(); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("touched but same bytes: rehashed and trusted", func(t *testing.T) {
		l := newLayout(t)
		bin := stage(t, l, p, "#!/bin/sh\necho v2\n")
		if err := os.Chmod(bin, 0o755); err != nil { // ctime changes
			t.Fatal(err)
		}
		v, err := l.Open(context.Background(), p)
		if err != nil {
			t.Fatal(err)
		}
		defer v.Close()
		if !v.Rehashed {
			t.Fatal("a changed stamp must force a rehash")
		}
	})
	t.Run("modified: refused", func(t *testing.T) {
		l := newLayout(t)
		bin := stage(t, l, p, "#!/bin/sh\necho v2\n")
		if err := os.WriteFile(bin, []byte("#!/bin/sh\necho evil\n"), 0o755); err != nil {
			t.Fatal(err)
		}
		_, err := l.Open(context.Background(), p)
		if !errors.Is(err, ErrNotTrusted) || !errors.Is(err, ErrChanged) {
			t.Fatalf("modified binary: %v", err)
		}
	})
	t.Run("replaced plan never inherits", func(t *testing.T) {
		l := newLayout(t)
		stage(t, l, p, "#!/bin/sh\necho v2\n")
		for _, q := range []Plan{{Name: p.Name, Height: 101, Info: p.Info}, {Name: p.Name, Height: 100, Info: "other"}, {Name: "v3", Height: 100, Info: p.Info}} {
			if _, err := l.Open(context.Background(), q); !errors.Is(err, ErrNotTrusted) {
				t.Errorf("plan %+v: %v", q, err)
			}
		}
	})
	t.Run("old hand-placed record is no proof", func(t *testing.T) {
		l := newLayout(t)
		stage(t, l, p, "#!/bin/sh\necho v2\n")
		rec, _ := l.ReadRecord(p.Name)
		rec.Source = "hand-placed"
		if err := l.WriteRecord(rec); err != nil {
			t.Fatal(err)
		}
		if _, err := l.Open(context.Background(), p); !errors.Is(err, ErrNotTrusted) || !strings.Contains(err.Error(), "hand-placed") {
			t.Fatalf("%v", err)
		}
	})
	t.Run("swapped after open: the descriptor still runs the verified file", func(t *testing.T) {
		l := newLayout(t)
		bin := stage(t, l, p, "#!/bin/sh\necho v2\n")
		v, err := l.Open(context.Background(), p)
		if err != nil {
			t.Fatal(err)
		}
		defer v.Close()
		tmp := bin + ".new"
		os.WriteFile(tmp, []byte("#!/bin/sh\necho evil\n"), 0o755)
		if err := os.Rename(tmp, bin); err != nil {
			t.Fatal(err)
		}
		if err := v.Recheck(); !errors.Is(err, ErrChanged) {
			t.Fatalf("Recheck after a swap: %v", err)
		}
		if v.Is(bin) {
			t.Fatal("Is must tell the swapped file apart")
		}
	})
	t.Run("symlink refused", func(t *testing.T) {
		l := newLayout(t)
		bin := stage(t, l, p, "#!/bin/sh\necho v2\n")
		real := bin + ".real"
		os.Rename(bin, real)
		os.Symlink(real, bin)
		if _, err := l.Open(context.Background(), p); !errors.Is(err, ErrNotTrusted) || !strings.Contains(err.Error(), "symlink") {
			t.Fatalf("%v", err)
		}
	})
}

func TestExecPathRunsTheDescriptor(t *testing.T) {
	l := newLayout(t)
	p := Plan{Name: "v2", Height: 5}
	bin := stage(t, l, p, "")
	// A real ELF, so that exec through /proc/self/fd works as for a chain binary.
	self, err := os.ReadFile("/bin/true")
	if err != nil {
		t.Skip("no /bin/true")
	}
	os.WriteFile(bin, self, 0o755)
	stage2 := func() {
		f, _ := os.Open(bin)
		d, _ := HashFile(context.Background(), f)
		f.Close()
		l.WriteRecord(Record{Plan: p.Name, Height: p.Height, InfoHash: p.InfoHash(), Source: SourceDownload, SHA256: d.SHA256, Size: d.Size, Stamp: d.Stamp})
	}
	stage2()
	v, err := l.Open(context.Background(), p)
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	if !strings.HasPrefix(v.ExecPath(), "/proc/self/fd/") {
		t.Fatalf("ExecPath %s", v.ExecPath())
	}
	if out, err := exec.Command(v.ExecPath()).CombinedOutput(); err != nil {
		t.Fatalf("run %s: %v %s", v.ExecPath(), err, out)
	}
}

func TestLock(t *testing.T) {
	l := newLayout(t)
	a, err := l.Acquire(nil)
	if err != nil {
		t.Fatal(err)
	}
	_, err = l.Acquire(nil)
	var le *LockedError
	if !errors.As(err, &le) || le.PID != os.Getpid() || !strings.Contains(err.Error(), "stop it first") {
		t.Fatalf("second Acquire: %v", err)
	}
	if pid, held := l.HolderPID(); !held || pid != os.Getpid() {
		t.Fatalf("HolderPID = %d, %v", pid, held)
	}
	// Handing over: the inherited descriptor is adopted, not locked twice.
	kv, err := a.InheritEnv()
	if err != nil {
		t.Fatal(err)
	}
	// An exec hands the descriptor to a new image, where a is gone. Here both
	// live in one process: hand over a duplicate (the same open file, so the
	// same lock) and close a's own, so no two *os.File own one descriptor
	// (the second one's finalizer would close a number reused by then).
	fd := int(a.f.Fd())
	dup, err := syscall.Dup(fd)
	if err != nil {
		t.Fatal(err)
	}
	kv = strings.Replace(kv, "="+strconv.Itoa(fd)+":", "="+strconv.Itoa(dup)+":", 1)
	b, err := l.Acquire([]string{kv})
	if err != nil {
		t.Fatalf("adopt: %v", err)
	}
	a.Keep()
	a.Release()
	if _, held := l.HolderPID(); !held {
		t.Fatal("the adopted lock is not held after the original descriptor closed")
	}
	// A forged or stale hand-over is not adopted.
	if _, err := l.Acquire([]string{EnvLock + "=1:2:3"}); !errors.As(err, &le) {
		t.Fatalf("forged hand-over: %v", err)
	}
	b.Release()
	if _, held := l.HolderPID(); held {
		t.Fatal("released lock still held")
	}
	c, err := l.Acquire(nil)
	if err != nil {
		t.Fatal(err)
	}
	c.Release()
}

func TestAttempts(t *testing.T) {
	l := newLayout(t)
	os.MkdirAll(l.Root(), 0o755)
	p := Plan{Name: "v2", Height: 10}
	if a := l.Attempts(p); a.Count != 0 {
		t.Fatal(a)
	}
	l.NoteAttempt(p, "/b/backup-1")
	a, err := l.NoteAttempt(p, "")
	if err != nil || a.Count != 2 || a.Backup != "/b/backup-1" {
		t.Fatalf("%+v %v", a, err)
	}
	if a := l.Attempts(Plan{Name: "v2", Height: 11}); a.Count != 0 {
		t.Fatal("another height shares the count")
	}
	l.ClearAttempts(p)
	if a := l.Attempts(p); a.Count != 0 {
		t.Fatal(a)
	}
	os.WriteFile(filepath.Join(l.Root(), AttemptsFile), []byte("{corrupt"), 0o644)
	if a, err := l.NoteAttempt(p, ""); err != nil || a.Count != 1 {
		t.Fatalf("corrupt ledger: %+v %v", a, err)
	}
}

func TestWriteFileAndSymlink(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "f")
	if err := WriteFile(p, []byte("one"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := WriteFile(p, []byte("two"), 0o644); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(p); string(b) != "two" {
		t.Fatal(string(b))
	}
	link := filepath.Join(dir, "current")
	Symlink("a", link)
	Symlink("b", link)
	if tgt, _ := os.Readlink(link); tgt != "b" {
		t.Fatal(tgt)
	}
	os.WriteFile(filepath.Join(dir, "x"+TempMarker+"1"), nil, 0o644)
	RemoveStaleTemps(dir)
	ents, _ := os.ReadDir(dir)
	if len(ents) != 2 {
		t.Fatalf("left %v", ents)
	}
}

func TestReadUpgradeInfo(t *testing.T) {
	l := newLayout(t)
	if _, ok, err := l.ReadUpgradeInfo(); ok || err != nil {
		t.Fatal(ok, err)
	}
	os.MkdirAll(l.DataDir(), 0o755)
	os.WriteFile(l.UpgradeInfo(), []byte(`{"name":"V2/x","height":"12","info":"i"}`), 0o644)
	p, ok, err := l.ReadUpgradeInfo()
	if err != nil || !ok || p != (Plan{Name: "V2/x", Height: 12, Info: "i"}) {
		t.Fatal(p, ok, err)
	}
	os.WriteFile(l.UpgradeInfo(), []byte(`{"name":""}`), 0o644)
	if _, _, err := l.ReadUpgradeInfo(); !errors.Is(err, ErrMalformedUpgradeInfo) {
		t.Fatal(err)
	}
}
