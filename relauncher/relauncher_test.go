package relauncher

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"
)

func TestBoot(t *testing.T) {
	const info = `{"name":"v2","time":"0001-01-01T00:00:00Z","height":123,"info":"x"}`
	baseArgs := []string{"/usr/bin/appd", "start", "--home", "/h", "arg with space"}
	baseEnv := []string{"PATH=/bin", "MYVAR=kept", "EMPTY="}

	tests := []struct {
		name       string
		setup      func(h *testHome, v *hashVerifier, f *fakeOS, c *Config)
		wantErr    error  // errors.Is target; nil means no error
		wantErrSub string // substring of the error message
		wantExec   bool
		wantLink   string
	}{
		{
			name:     "no upgrade-info runs as is",
			setup:    func(h *testHome, v *hashVerifier, f *fakeOS, c *Config) { v.trust(t, "v2", h.v2) },
			wantLink: GenesisDir,
		},
		{
			name:     "empty upgrade-info runs as is",
			setup:    func(h *testHome, v *hashVerifier, f *fakeOS, c *Config) { h.writeUpgradeInfo(" \n") },
			wantLink: GenesisDir,
		},
		{
			name:     "malformed upgrade-info refuses",
			setup:    func(h *testHome, v *hashVerifier, f *fakeOS, c *Config) { h.writeUpgradeInfo(`{"name":`) },
			wantErr:  ErrMalformedUpgradeInfo,
			wantLink: GenesisDir,
		},
		{
			name: "hostile name in upgrade-info refuses",
			setup: func(h *testHome, v *hashVerifier, f *fakeOS, c *Config) {
				h.writeUpgradeInfo(`{"name":"..","height":5}`)
			},
			wantErr:  ErrMalformedUpgradeInfo,
			wantLink: GenesisDir,
		},
		{
			name: "executable is the trusted binary",
			setup: func(h *testHome, v *hashVerifier, f *fakeOS, c *Config) {
				h.writeUpgradeInfo(info)
				v.trust(t, "v2", h.v2)
				f.self = h.v2
			},
			wantLink: GenesisDir,
		},
		{
			name: "executable reached through current symlink is the trusted binary",
			setup: func(h *testHome, v *hashVerifier, f *fakeOS, c *Config) {
				h.writeUpgradeInfo(info)
				v.trust(t, "v2", h.v2)
				l := filepath.Join(t.TempDir(), "appd")
				must(t, os.Symlink(h.v2, l))
				f.self = l
			},
			wantLink: GenesisDir,
		},
		{
			name: "executable is a copy with the same sha256",
			setup: func(h *testHome, v *hashVerifier, f *fakeOS, c *Config) {
				h.writeUpgradeInfo(info)
				v.trust(t, "v2", h.v2)
				b, _ := os.ReadFile(h.v2)
				p := filepath.Join(t.TempDir(), "appd")
				must(t, os.WriteFile(p, b, 0o755))
				f.self = p
			},
			wantLink: GenesisDir,
		},
		{
			name: "old binary redirects to trusted binary",
			setup: func(h *testHome, v *hashVerifier, f *fakeOS, c *Config) {
				h.writeUpgradeInfo(info)
				v.trust(t, "v2", h.v2)
			},
			wantExec: true,
			wantLink: "upgrades/v2",
		},
		{
			name: "not trusted: no exec, says what to install where",
			setup: func(h *testHome, v *hashVerifier, f *fakeOS, c *Config) {
				h.writeUpgradeInfo(info)
			},
			wantErr:    ErrBinaryNotReady,
			wantErrSub: `upgrade "v2" at height 123 needs ` + "%HOME%/cosmovisor/upgrades/v2/bin/appd; place the binary there and run `appd invisor stage v2 --file <path>`",
			wantLink:   GenesisDir,
		},
		{
			name: "staged binary modified: verifier refuses, no exec",
			setup: func(h *testHome, v *hashVerifier, f *fakeOS, c *Config) {
				h.writeUpgradeInfo(info)
				v.trust(t, "v2", h.v2)
				h.writeExec(h.v2, "#!/bin/sh\necho evil\n")
			},
			wantErr:    ErrBinaryNotReady,
			wantErrSub: "checksum mismatch",
			wantLink:   GenesisDir,
		},
		{
			name: "not trusted but running from the upgrade path runs as is",
			setup: func(h *testHome, v *hashVerifier, f *fakeOS, c *Config) {
				h.writeUpgradeInfo(info)
				f.self = filepath.Join(h.home, RootDir, CurrentLink, BinDir, daemon) // resolves to genesis
				must(t, os.Remove(filepath.Join(h.home, RootDir, CurrentLink)))
				must(t, os.Symlink(filepath.Join(h.home, RootDir, UpgradesDir, "v2"), filepath.Join(h.home, RootDir, CurrentLink)))
			},
			wantLink: "%HOME%/cosmovisor/upgrades/v2",
		},
		{
			name: "loop guard: second redirect to the same target refused",
			setup: func(h *testHome, v *hashVerifier, f *fakeOS, c *Config) {
				h.writeUpgradeInfo(info)
				v.trust(t, "v2", h.v2)
				f.env = append(f.env, EnvRedirectTarget+"="+h.v2, EnvExecGeneration+"=1")
			},
			wantErr:  ErrExecLoop,
			wantLink: GenesisDir,
		},
		{
			name: "generation limit refused",
			setup: func(h *testHome, v *hashVerifier, f *fakeOS, c *Config) {
				h.writeUpgradeInfo(info)
				v.trust(t, "v2", h.v2)
				c.MaxExecGeneration = 3
				f.env = append(f.env, EnvExecGeneration+"=3")
			},
			wantErr:  ErrExecLoop,
			wantLink: GenesisDir,
		},
		{
			name: "absolute current link already at target: no preparation, exec",
			setup: func(h *testHome, v *hashVerifier, f *fakeOS, c *Config) {
				h.writeUpgradeInfo(info)
				v.trust(t, "v2", h.v2)
				link := filepath.Join(h.home, RootDir, CurrentLink)
				must(t, os.Remove(link))
				must(t, os.Symlink(filepath.Join(h.home, RootDir, UpgradesDir, "v2"), link))
				c.RunPreUpgrade = true // v2's script would "succeed", so make it fail if run
				h.writeExec(h.v2, "#!/bin/sh\nexit 30\n")
				v.trust(t, "v2", h.v2)
			},
			wantExec: true,
			wantLink: "%HOME%/cosmovisor/upgrades/v2",
		},
		{
			name: "trusted binary outside the layout refused",
			setup: func(h *testHome, v *hashVerifier, f *fakeOS, c *Config) {
				h.writeUpgradeInfo(info)
				p := filepath.Join(t.TempDir(), "bin", daemon)
				h.writeExec(p, "#!/bin/sh\n")
				v.trust(t, "v2", p)
			},
			wantErr:  ErrLayout,
			wantLink: GenesisDir,
		},
		{
			name: "trusted path is a symlink: refused",
			setup: func(h *testHome, v *hashVerifier, f *fakeOS, c *Config) {
				h.writeUpgradeInfo(info)
				real := filepath.Join(t.TempDir(), "real")
				h.writeExec(real, "#!/bin/sh\n")
				must(t, os.Remove(h.v2))
				must(t, os.Symlink(real, h.v2))
				v.trust(t, "v2", h.v2)
			},
			wantErr:  ErrLayout,
			wantLink: GenesisDir,
		},
		{
			name: "exec ENOENT mapped to ExecError",
			setup: func(h *testHome, v *hashVerifier, f *fakeOS, c *Config) {
				h.writeUpgradeInfo(info)
				v.trust(t, "v2", h.v2)
				f.execErr = syscall.ENOENT
			},
			wantErr:    syscall.ENOENT,
			wantErrSub: "ENOENT",
			wantExec:   true,
			wantLink:   "upgrades/v2",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := newTestHome(t)
			v := &hashVerifier{}
			f := &fakeOS{self: h.genesis, args: baseArgs, env: append([]string(nil), baseEnv...)}
			c := testConfig(h.home)
			tc.setup(h, v, f, &c)
			r, err := New(c, v, &testLogger{}, f.OS())
			must(t, err)
			err = r.Boot()
			if tc.wantErr == nil && err != nil {
				t.Fatalf("Boot: %v", err)
			}
			if tc.wantErr != nil && !errors.Is(err, tc.wantErr) {
				t.Fatalf("Boot error = %v, want %v", err, tc.wantErr)
			}
			if sub := strings.ReplaceAll(tc.wantErrSub, "%HOME%", h.home); sub != "" && !strings.Contains(err.Error(), sub) {
				t.Fatalf("Boot error %q does not contain %q", err, sub)
			}
			calls := f.calls()
			if got := len(calls) == 1; got != tc.wantExec || len(calls) > 1 {
				t.Fatalf("exec calls = %d, want exec %v", len(calls), tc.wantExec)
			}
			if want := strings.ReplaceAll(tc.wantLink, "%HOME%", h.home); h.current() != want {
				t.Fatalf("current -> %q, want %q", h.current(), want)
			}
			if !tc.wantExec {
				return
			}
			ex := calls[0]
			if ex.argv0 != h.v2 {
				t.Errorf("argv0 = %q, want %q", ex.argv0, h.v2)
			}
			if !reflect.DeepEqual(ex.argv, baseArgs) {
				t.Errorf("argv = %q, want %q", ex.argv, baseArgs)
			}
			env := envMap(ex.env)
			for _, kv := range baseEnv {
				k, val, _ := strings.Cut(kv, "=")
				if got, ok := env[k]; !ok || got != val {
					t.Errorf("env %s = %q, want %q", k, got, val)
				}
			}
			if env[EnvExecGeneration] != "1" || env[EnvRedirectTarget] != h.v2 || env[EnvExecedFrom] != h.genesis {
				t.Errorf("markers = %v", env)
			}
			if len(ex.env) != len(baseEnv)+3 {
				t.Errorf("env has %d entries, want %d: %q", len(ex.env), len(baseEnv)+3, ex.env)
			}
			if tc.wantErr != nil {
				var ee *ExecError
				if !errors.As(err, &ee) || ee.Errno != syscall.ENOENT || ee.Path != h.v2 || !errors.Is(err, ErrExecFailed) {
					t.Errorf("error %#v is not an ExecError with ENOENT", err)
				}
			}
		})
	}
}

// TestBootRedirectThenTargetBoots chains two Boots: the redirect, then the target's
// own Boot, which must recognise itself and run.
func TestBootRedirectThenTargetBoots(t *testing.T) {
	h := newTestHome(t)
	h.writeUpgradeInfo(`{"name":"v2","height":9}`)
	v := &hashVerifier{}
	v.trust(t, "v2", h.v2)
	f := &fakeOS{self: h.genesis, args: []string{"appd", "start"}, env: []string{"A=1"}}
	r, err := New(testConfig(h.home), v, nil, f.OS())
	must(t, err)
	must(t, r.Boot())
	ex := f.calls()[0]
	f2 := &fakeOS{self: ex.argv0, args: ex.argv, env: ex.env}
	r2, err := New(testConfig(h.home), v, nil, f2.OS())
	must(t, err)
	must(t, r2.Boot())
	if n := len(f2.calls()); n != 0 {
		t.Fatalf("target redirected again (%d execs)", n)
	}
}

func TestSwitch(t *testing.T) {
	const info = `{"name":"v2","height":"77"}`
	args := []string{"appd", "start"}
	tests := []struct {
		name     string
		switchTo string
		setup    func(h *testHome, v *hashVerifier, f *fakeOS, c *Config)
		wantErr  error
		wantExec bool
		wantLink string
	}{
		{
			name: "switch execs and flips", switchTo: "v2",
			setup: func(h *testHome, v *hashVerifier, f *fakeOS, c *Config) {
				h.writeUpgradeInfo(info)
				v.trust(t, "v2", h.v2)
				f.env = append(f.env, EnvRedirectTarget+"="+h.v2, EnvExecGeneration+"=2")
			},
			wantExec: true, wantLink: "upgrades/v2",
		},
		{
			name: "no upgrade-info refused", switchTo: "v2",
			setup:   func(h *testHome, v *hashVerifier, f *fakeOS, c *Config) { v.trust(t, "v2", h.v2) },
			wantErr: ErrNoUpgradeInfo, wantLink: GenesisDir,
		},
		{
			name: "upgrade-info names another upgrade", switchTo: "v2",
			setup: func(h *testHome, v *hashVerifier, f *fakeOS, c *Config) {
				h.writeUpgradeInfo(`{"name":"v3","height":1}`)
				v.trust(t, "v2", h.v2)
			},
			wantErr: ErrUpgradeMismatch, wantLink: GenesisDir,
		},
		{
			name: "invalid name", switchTo: "..",
			setup:   func(h *testHome, v *hashVerifier, f *fakeOS, c *Config) {},
			wantErr: ErrInvalidName, wantLink: GenesisDir,
		},
		{
			name: "hash mismatch refused", switchTo: "v2",
			setup: func(h *testHome, v *hashVerifier, f *fakeOS, c *Config) {
				h.writeUpgradeInfo(info)
				v.trust(t, "v2", h.v2)
				must(t, os.WriteFile(h.v2, []byte("#!/bin/sh\necho tampered\n"), 0o755))
			},
			wantErr: ErrBinaryNotReady, wantLink: GenesisDir,
		},
		{
			name: "binary modified during pre-upgrade refused", switchTo: "v2",
			setup: func(h *testHome, v *hashVerifier, f *fakeOS, c *Config) {
				h.writeUpgradeInfo(info)
				h.writeExec(h.v2, "#!/bin/sh\necho '# changed' >> \"$0\"\nexit 0\n")
				v.trust(t, "v2", h.v2)
				c.RunPreUpgrade = true
			},
			wantErr: ErrBinaryChanged, wantLink: GenesisDir,
		},
		{
			name: "not executable refused", switchTo: "v2",
			setup: func(h *testHome, v *hashVerifier, f *fakeOS, c *Config) {
				h.writeUpgradeInfo(info)
				must(t, os.Chmod(h.v2, 0o644))
				v.trust(t, "v2", h.v2)
			},
			wantErr: ErrLayout, wantLink: GenesisDir,
		},
		{
			name: "pre-upgrade failure: current untouched", switchTo: "v2",
			setup: func(h *testHome, v *hashVerifier, f *fakeOS, c *Config) {
				h.writeUpgradeInfo(info)
				h.writeExec(h.v2, "#!/bin/sh\nexit 30\n")
				v.trust(t, "v2", h.v2)
				c.RunPreUpgrade = true
			},
			wantErr: ErrPreUpgrade, wantLink: GenesisDir,
		},
	}
	for _, errno := range []syscall.Errno{syscall.ENOENT, syscall.EACCES, syscall.ENOEXEC, syscall.ETXTBSY} {
		tests = append(tests, struct {
			name     string
			switchTo string
			setup    func(h *testHome, v *hashVerifier, f *fakeOS, c *Config)
			wantErr  error
			wantExec bool
			wantLink string
		}{
			name: "exec " + errno.Error(), switchTo: "v2",
			setup: func(h *testHome, v *hashVerifier, f *fakeOS, c *Config) {
				h.writeUpgradeInfo(info)
				v.trust(t, "v2", h.v2)
				f.execErr = errno
			},
			wantErr: errno, wantExec: true, wantLink: "upgrades/v2",
		})
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := newTestHome(t)
			v := &hashVerifier{}
			f := &fakeOS{self: h.genesis, args: args, env: []string{"MYVAR=1"}}
			c := testConfig(h.home)
			tc.setup(h, v, f, &c)
			r, err := New(c, v, nil, f.OS())
			must(t, err)
			err = r.Switch(tc.switchTo)
			if tc.wantErr == nil && err != nil {
				t.Fatalf("Switch: %v", err)
			}
			if tc.wantErr != nil && !errors.Is(err, tc.wantErr) {
				t.Fatalf("Switch error = %v, want %v", err, tc.wantErr)
			}
			calls := f.calls()
			if (len(calls) == 1) != tc.wantExec || len(calls) > 1 {
				t.Fatalf("exec calls = %d, want exec %v", len(calls), tc.wantExec)
			}
			if h.current() != tc.wantLink {
				t.Fatalf("current -> %q, want %q", h.current(), tc.wantLink)
			}
			if !tc.wantExec {
				return
			}
			ex := calls[0]
			env := envMap(ex.env)
			if ex.argv0 != h.v2 || !reflect.DeepEqual(ex.argv, args) || env["MYVAR"] != "1" {
				t.Errorf("exec = %+v", ex)
			}
			if _, ok := env[EnvRedirectTarget]; ok {
				t.Errorf("Switch kept %s", EnvRedirectTarget)
			}
			if want := "1"; f.env[len(f.env)-1] == EnvExecGeneration+"=2" {
				want = "3"
				if env[EnvExecGeneration] != want {
					t.Errorf("generation = %q, want %q", env[EnvExecGeneration], want)
				}
			}
			if errno, ok := tc.wantErr.(syscall.Errno); ok {
				var ee *ExecError
				if !errors.As(err, &ee) || ee.Errno != errno || !errors.Is(err, ErrExecFailed) || !strings.Contains(err.Error(), ee.Reason()) {
					t.Errorf("error %v not mapped to ExecError{%v}", err, errno)
				}
			}
		})
	}
}

func TestNewValidates(t *testing.T) {
	home := t.TempDir()
	file := filepath.Join(home, "f")
	must(t, os.WriteFile(file, nil, 0o644))
	v := VerifierFunc(func(string) (Binary, error) { return Binary{}, errors.New("no") })
	tests := []struct {
		name string
		mod  func(*Config)
		v    Verifier
	}{
		{"empty home", func(c *Config) { c.Home = "" }, v},
		{"missing home", func(c *Config) { c.Home = filepath.Join(home, "nope") }, v},
		{"home is a file", func(c *Config) { c.Home = file }, v},
		{"bad daemon", func(c *Config) { c.DaemonName = "../x" }, v},
		{"empty daemon", func(c *Config) { c.DaemonName = "" }, v},
		{"negative retries", func(c *Config) { c.PreUpgradeMaxRetries = -1 }, v},
		{"relative backup dir", func(c *Config) { c.BackupDir = "rel" }, v},
		{"missing backup dir", func(c *Config) { c.Backup = true; c.BackupDir = filepath.Join(home, "nope") }, v},
		{"nil verifier", func(c *Config) {}, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := testConfig(home)
			tc.mod(&c)
			if _, err := New(c, tc.v, nil, OS{}); err == nil {
				t.Fatal("New accepted a bad config")
			}
		})
	}
	if _, err := New(testConfig(home), v, nil, OS{}); err != nil {
		t.Fatal(err)
	}
}

func TestLayout(t *testing.T) {
	home := t.TempDir()
	self := filepath.Join(t.TempDir(), "appd")
	must(t, os.WriteFile(self, []byte("#!/bin/sh\necho self\n"), 0o700))
	f := &fakeOS{self: self}
	r, err := New(testConfig(home), VerifierFunc(func(string) (Binary, error) { return Binary{}, errors.New("x") }), nil, f.OS())
	must(t, err)
	root := filepath.Join(home, RootDir)
	must(t, os.MkdirAll(root, 0o755))
	stale := filepath.Join(root, "."+CurrentLink+tmpMarker+"abc")
	must(t, os.Symlink("nowhere", stale))

	must(t, r.Layout())
	gen := filepath.Join(root, GenesisDir, BinDir, daemon)
	got, err := os.ReadFile(gen)
	must(t, err)
	if string(got) != "#!/bin/sh\necho self\n" {
		t.Fatalf("genesis = %q", got)
	}
	if fi, _ := os.Stat(gen); fi.Mode().Perm() != 0o755 {
		t.Fatalf("genesis mode %v", fi.Mode())
	}
	if l, _ := os.Readlink(filepath.Join(root, CurrentLink)); l != GenesisDir {
		t.Fatalf("current -> %q", l)
	}
	if _, err := os.Lstat(stale); !os.IsNotExist(err) {
		t.Fatalf("stale temp link survived: %v", err)
	}
	if fi, err := os.Stat(filepath.Join(root, UpgradesDir)); err != nil || !fi.IsDir() {
		t.Fatalf("upgrades dir: %v", err)
	}

	// Second run changes nothing: existing genesis and current are kept.
	must(t, os.WriteFile(self, []byte("other"), 0o700))
	must(t, os.Remove(filepath.Join(root, CurrentLink)))
	must(t, os.Symlink("upgrades/v2", filepath.Join(root, CurrentLink)))
	must(t, r.Layout())
	if got, _ := os.ReadFile(gen); string(got) != "#!/bin/sh\necho self\n" {
		t.Fatalf("genesis overwritten: %q", got)
	}
	if l, _ := os.Readlink(filepath.Join(root, CurrentLink)); l != "upgrades/v2" {
		t.Fatalf("current changed to %q", l)
	}
	ents, _ := os.ReadDir(filepath.Join(root, GenesisDir, BinDir))
	if len(ents) != 1 {
		t.Fatalf("genesis/bin has %d entries", len(ents))
	}
}

func TestUpgradeDirMapping(t *testing.T) {
	r, err := New(testConfig(t.TempDir()), VerifierFunc(func(string) (Binary, error) { return Binary{}, nil }), nil, OS{})
	must(t, err)
	if got := filepath.Base(r.UpgradeDir("a/b")); got != "a%2Fb" {
		t.Fatalf("UpgradeDir(a/b) base = %q", got)
	}
	if got := r.ExpectedBinary("v2"); got != filepath.Join(r.Root(), "upgrades", "v2", "bin", daemon) {
		t.Fatalf("ExpectedBinary = %q", got)
	}
}

func TestCheckBackupDirUnwritable(t *testing.T) {
	if os.Geteuid() == 0 {
		t.Skip("root writes anywhere")
	}
	h := newTestHome(t)
	c := testConfig(h.home)
	c.Backup = true
	c.BackupDir = t.TempDir()
	must(t, os.Chmod(c.BackupDir, 0o500))
	t.Cleanup(func() { os.Chmod(c.BackupDir, 0o700) })
	r, err := New(c, VerifierFunc(func(string) (Binary, error) { return Binary{}, nil }), nil, OS{})
	must(t, err)
	if err := r.Check(); err == nil {
		t.Fatal("Check accepted an unwritable backup dir")
	}
}
