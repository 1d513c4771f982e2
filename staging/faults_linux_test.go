package staging

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
)

// Tests that need Linux mounts (tmpfs with a size, noexec, read-only remount). They
// skip with the reason when the process may not mount.

// mountTmpfs mounts a tmpfs at dir for the test, or skips the test when this process
// may not mount (not root, or no CAP_SYS_ADMIN in a container).
func mountTmpfs(t *testing.T, dir string, flags uintptr, data string) {
	t.Helper()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", flags, data); err != nil {
		t.Skipf("cannot mount a tmpfs at %s (%v); this test needs root or CAP_SYS_ADMIN", dir, err)
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(dir, 0); err != nil {
			syscall.Unmount(dir, syscall.MNT_DETACH)
		}
	})
}

func TestFault25DiskFull(t *testing.T) {
	good := testBins.good
	// setup mounts an 8 MiB tmpfs as the home and stages plan v1 there, so the test
	// can check that a failure for v2 leaves the existing install untouched.
	setup := func(t *testing.T) (Config, *blobServer, Plan) {
		cfg := testConfig(t)
		mountTmpfs(t, cfg.Home, 0, "size=8m")
		srv := newServer(t)
		v1 := Plan{Name: "v1", Info: infoJSON(pinned(srv.blob("/v1", good), good))}
		if _, err := Fetch(context.Background(), cfg, v1, nil); err != nil {
			t.Fatal(err)
		}
		return cfg, srv, v1
	}
	after := func(t *testing.T, cfg Config, v1 Plan, err error, substr ...string) {
		t.Helper()
		t.Logf("error: %v", err)
		if !errors.Is(err, ErrNoSpace) {
			t.Fatalf("err = %v, want ErrNoSpace", err)
		}
		for _, s := range substr {
			if !strings.Contains(err.Error(), s) {
				t.Errorf("error %q does not say %q", err, s)
			}
		}
		assertNothingInstalled(t, cfg, "v2")
		if inst, err := trusted(t, cfg, v1); err != nil || inst.SHA256 != sha(good) {
			t.Errorf("the v1 install was disturbed: %+v, %v", inst, err)
		}
		if ents, _ := os.ReadDir(layoutOf(t, cfg).UpgradesRoot()); len(ents) != 1 {
			t.Errorf("upgrades/ holds %d entries, want only v1", len(ents))
		}
	}
	big := make([]byte, 16<<20)
	copy(big, good)

	t.Run("body of unknown length fills the disk", func(t *testing.T) {
		cfg, srv, v1 := setup(t)
		u := srv.handle("/v2", func(w http.ResponseWriter, r *http.Request) {
			for i := 0; i < len(big); i += 32 << 10 {
				if _, err := w.Write(big[i : i+32<<10]); err != nil {
					return
				}
				w.(http.Flusher).Flush() // no Content-Length: chunked
			}
		})
		_, err := Fetch(context.Background(), cfg, Plan{Name: "v2", Info: infoJSON(pinned(u, big))}, nil)
		after(t, cfg, v1, err, "disk full", "no space left")
	})
	t.Run("Content-Length over free space refused before the body", func(t *testing.T) {
		cfg, srv, v1 := setup(t)
		var sent atomic.Int64
		u := srv.handle("/v2", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Length", fmt.Sprint(len(big)))
			for i := 0; i < len(big); i += 32 << 10 {
				n, err := w.Write(big[i : i+32<<10])
				sent.Add(int64(n))
				if err != nil {
					return
				}
			}
		})
		_, err := Fetch(context.Background(), cfg, Plan{Name: "v2", Info: infoJSON(pinned(u, big))}, nil)
		after(t, cfg, v1, err, fmt.Sprintf("needs %d bytes", len(big)), "available")
		var se *SpaceError
		if !errors.As(err, &se) || se.Need != int64(len(big)) || se.Avail >= se.Need || se.Avail <= 0 {
			t.Errorf("SpaceError = %+v", se)
		}
	})
	t.Run("archive unpacks beyond the disk", func(t *testing.T) {
		cfg, srv, v1 := setup(t)
		arc := gz(makeTar(t, []tarEntry{{Name: "bin/exampled", Body: good}, {Name: "lib/big", Body: make([]byte, 12<<20)}}))
		u := srv.blob("/v2.tar.gz", arc)
		_, err := Fetch(context.Background(), cfg, Plan{Name: "v2", Info: infoJSON(pinned(u, arc))}, nil)
		after(t, cfg, v1, err, "disk full")
		if errors.Is(err, ErrUnsafeArchive) {
			t.Error("a full disk is reported as a bad archive")
		}
	})
}

func TestFault26HomeUnusable(t *testing.T) {
	t.Run("home not writable", func(t *testing.T) {
		cfg := testConfig(t)
		if os.Geteuid() == 0 {
			// Root ignores modes: make it a read-only mount instead.
			mountTmpfs(t, cfg.Home, 0, "size=1m")
			os.MkdirAll(layoutOf(t, cfg).UpgradesRoot(), 0o755)
			if err := syscall.Mount("", cfg.Home, "", syscall.MS_REMOUNT|syscall.MS_RDONLY, ""); err != nil {
				t.Skipf("cannot remount read-only: %v", err)
			}
		} else {
			os.Chmod(cfg.Home, 0o500)
			t.Cleanup(func() { os.Chmod(cfg.Home, 0o700) })
		}
		_, err := New(cfg, nil)
		if err == nil || !strings.Contains(err.Error(), "not writable") {
			t.Fatalf("New on an unwritable home: %v", err)
		}
	})
	t.Run("upgrades on another filesystem", func(t *testing.T) {
		cfg := testConfig(t)
		upgrades := layoutOf(t, cfg).UpgradesRoot()
		os.MkdirAll(upgrades, 0o755)
		mountTmpfs(t, upgrades, 0, "size=1m")
		_, err := New(cfg, nil)
		if err == nil || !strings.Contains(err.Error(), "different filesystems") {
			t.Fatalf("New with upgrades/ on its own mount: %v", err)
		}
		assertNoTemp(t, cfg)
	})
}

func TestFault13NoexecMount(t *testing.T) {
	cfg := testConfig(t)
	mountTmpfs(t, cfg.Home, syscall.MS_NOEXEC, "size=8m")
	_, err := New(cfg, nil)
	if err == nil || !strings.Contains(err.Error(), "noexec") {
		t.Fatalf("New on a noexec home: %v", err)
	}
	// Without New's boot check, preflight still fails before anything is trusted.
	srv := newServer(t)
	p := Plan{Name: "v2", Info: infoJSON(pinned(srv.blob("/exampled", testBins.good), testBins.good))}
	_, err = Fetch(context.Background(), cfg, p, nil)
	if !errors.Is(err, ErrPreflight) || !strings.Contains(err.Error(), "permission denied") {
		t.Fatalf("Fetch on a noexec home: %v", err)
	}
	assertNothingInstalled(t, cfg, "v2")
}
