package relauncher

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"

	"github.com/invisor/invisor/internal/home"
)

func TestBoot(t *testing.T) {
	const info = `{"name":"v2","time":"0001-01-01T00:00:00Z","height":123,"info":"x"}`
	plan := home.Plan{Name: "v2", Height: 123, Info: "x"}
	baseArgs := []string{"/usr/bin/appd", "start", "--home", "/h", "arg with space"}
	baseEnv := []string{"PATH=/bin", "MYVAR=kept", "EMPTY=", home.EnvLock + "=9:1:2"}

	tests := []struct {
		name       string
		setup      func(h *testHome, f *fakeOS, c *Config) Verifier // nil: the default proof
		wantErr    error                                            // errors.Is target; nil means no error
		wantErrSub string                                           // substring of the error message
		wantExec   bool
		wantLink   string
	}{
		{
			name:     "no upgrade-info runs as is",
			setup:    func(h *testHome, f *fakeOS, c *Config) Verifier { h.stage(plan); return nil },
			wantLink: home.GenesisDir,
		},
		{
			name:     "empty upgrade-info runs as is",
			setup:    func(h *testHome, f *fakeOS, c *Config) Verifier { h.writeUpgradeInfo(" \n"); return nil },
			wantLink: home.GenesisDir,
		},
		{
			name:     "malformed upgrade-info refuses",
			setup:    func(h *testHome, f *fakeOS, c *Config) Verifier { h.writeUpgradeInfo(`{"name":`); return nil },
			wantErr:  home.ErrMalformedUpgradeInfo,
			wantLink: home.GenesisDir,
		},
		{
			name: "unmappable name in upgrade-info runs as is",
			setup: func(h *testHome, f *fakeOS, c *Config) Verifier {
				h.writeUpgradeInfo(`{"name":"..","height":5}`)
				return nil
			},
			wantLink: home.GenesisDir,
		},
		{
			name: "executable is the trusted binary",
			setup: func(h *testHome, f *fakeOS, c *Config) Verifier {
				h.writeUpgradeInfo(info)
				h.stage(plan)
				f.self = h.v2
				return nil
			},
			wantLink: "upgrades/v2", // no switch prepared it: settle flips current (after backup and pre-upgrade)
		},
		{
			name: "executable reached through current symlink is the trusted binary",
			setup: func(h *testHome, f *fakeOS, c *Config) Verifier {
				h.writeUpgradeInfo(info)
				h.stage(plan)
				l := filepath.Join(t.TempDir(), "appd")
				must(t, os.Symlink(h.v2, l))
				f.self = l
				return nil
			},
			wantLink: "upgrades/v2", // no switch prepared it: settle flips current (after backup and pre-upgrade)
		},
		{
			name: "executable is a copy with the same sha256",
			setup: func(h *testHome, f *fakeOS, c *Config) Verifier {
				h.writeUpgradeInfo(info)
				h.stage(plan)
				b, _ := os.ReadFile(h.v2)
				p := filepath.Join(t.TempDir(), "appd")
				must(t, os.WriteFile(p, b, 0o755))
				f.self = p
				return nil
			},
			wantLink: "upgrades/v2", // no switch prepared it: settle flips current (after backup and pre-upgrade)
		},
		{
			name: "old binary redirects to trusted binary",
			setup: func(h *testHome, f *fakeOS, c *Config) Verifier {
				h.writeUpgradeInfo(info)
				h.stage(plan)
				return nil
			},
			wantExec: true,
			wantLink: "upgrades/v2",
		},
		{
			name: "not trusted: no exec, says what to install where",
			setup: func(h *testHome, f *fakeOS, c *Config) Verifier {
				h.writeUpgradeInfo(info)
				return nil
			},
			wantErr:    ErrBinaryNotReady,
			wantErrSub: `upgrade "v2" at height 123 needs ` + "%HOME%/cosmovisor/upgrades/v2/bin/appd; place the binary there and run `appd invisor stage v2 --file <path>`",
			wantLink:   home.GenesisDir,
		},
		{
			name: "record for another plan under the same name: no exec",
			setup: func(h *testHome, f *fakeOS, c *Config) Verifier {
				h.writeUpgradeInfo(info)
				h.stage(home.Plan{Name: "v2", Height: 123, Info: "other"})
				return nil
			},
			wantErr:    home.ErrNotTrusted,
			wantErrSub: "a replaced plan never inherits a binary",
			wantLink:   home.GenesisDir,
		},
		{
			name: "not trusted but running from the upgrade path runs as is",
			setup: func(h *testHome, f *fakeOS, c *Config) Verifier {
				h.writeUpgradeInfo(info)
				f.self = filepath.Join(h.l.Current(), home.BinDir, daemon)
				must(t, os.Remove(h.l.Current()))
				must(t, os.Symlink(filepath.Dir(filepath.Dir(h.v2)), h.l.Current()))
				return nil
			},
			wantLink: "upgrades/v2",
		},
		{
			name: "loop guard: second redirect to the same target refused",
			setup: func(h *testHome, f *fakeOS, c *Config) Verifier {
				h.writeUpgradeInfo(info)
				h.stage(plan)
				f.env = append(f.env, EnvRedirectTarget+"="+h.v2, EnvExecGeneration+"=1")
				return nil
			},
			wantErr:  ErrExecLoop,
			wantLink: home.GenesisDir,
		},
		{
			name: "generation limit refused",
			setup: func(h *testHome, f *fakeOS, c *Config) Verifier {
				h.writeUpgradeInfo(info)
				h.stage(plan)
				c.MaxExecGeneration = 3
				f.env = append(f.env, EnvExecGeneration+"=3")
				return nil
			},
			wantErr:  ErrExecLoop,
			wantLink: home.GenesisDir,
		},
		{
			name: "absolute current link already at target: no preparation, exec",
			setup: func(h *testHome, f *fakeOS, c *Config) Verifier {
				h.writeUpgradeInfo(info)
				must(t, os.Remove(h.l.Current()))
				must(t, os.Symlink(filepath.Dir(filepath.Dir(h.v2)), h.l.Current()))
				c.RunPreUpgrade = true // v2's script would "succeed", so make it fail if run
				h.writeExec(h.v2, "#!/bin/sh\nexit 30\n")
				h.stage(plan)
				return nil
			},
			wantExec: true,
			wantLink: "upgrades/v2",
		},
		{
			name: "verifier's binary outside the layout refused",
			setup: func(h *testHome, f *fakeOS, c *Config) Verifier {
				h.writeUpgradeInfo(info)
				other := newTestHome(t)
				other.stage(plan)
				return LayoutVerifier(other.l)
			},
			wantErr:  ErrLayout,
			wantLink: home.GenesisDir,
		},
		{
			name: "verifier's proof for another plan refused",
			setup: func(h *testHome, f *fakeOS, c *Config) Verifier {
				h.writeUpgradeInfo(info)
				q := home.Plan{Name: "v2", Height: 123, Info: "y"}
				h.stage(q)
				return VerifierFunc(func(ctx context.Context, _ home.Plan) (Binary, error) {
					return LayoutVerifier(h.l).Verify(ctx, q)
				})
			},
			wantErr:  ErrLayout,
			wantLink: home.GenesisDir,
		},
		{
			name: "staged path is a symlink: refused",
			setup: func(h *testHome, f *fakeOS, c *Config) Verifier {
				h.writeUpgradeInfo(info)
				h.stage(plan)
				real := filepath.Join(t.TempDir(), "real")
				b, _ := os.ReadFile(h.v2)
				must(t, os.WriteFile(real, b, 0o755))
				must(t, os.Remove(h.v2))
				must(t, os.Symlink(real, h.v2))
				return nil
			},
			wantErr:    home.ErrNotTrusted,
			wantErrSub: "symlink",
			wantLink:   home.GenesisDir,
		},
		{
			name: "exec ENOENT mapped to ExecError",
			setup: func(h *testHome, f *fakeOS, c *Config) Verifier {
				h.writeUpgradeInfo(info)
				h.stage(plan)
				f.execErr = syscall.ENOENT
				return nil
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
			f := &fakeOS{self: h.genesis, args: baseArgs, env: append([]string(nil), baseEnv...)}
			c := testConfig(h.home)
			v := tc.setup(h, f, &c)
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
			if ex.target != h.v2 || !strings.HasPrefix(ex.argv0, "/proc/self/fd/") {
				t.Errorf("exec %q (-> %q), want the descriptor of %q", ex.argv0, ex.target, h.v2)
			}
			if !reflect.DeepEqual(ex.argv, baseArgs) {
				t.Errorf("argv = %q, want %q", ex.argv, baseArgs)
			}
			env := envMap(ex.env)
			for _, kv := range baseEnv[:3] {
				k, val, _ := strings.Cut(kv, "=")
				if got, ok := env[k]; !ok || got != val {
					t.Errorf("env %s = %q, want %q", k, got, val)
				}
			}
			if _, ok := env[home.EnvLock]; ok {
				t.Errorf("a stale %s was passed on without a lock", home.EnvLock)
			}
			if env[EnvExecGeneration] != "1" || env[EnvRedirectTarget] != h.v2 || env[EnvExecedFrom] != h.genesis {
				t.Errorf("markers = %v", env)
			}
			if len(ex.env) != 3+3 {
				t.Errorf("env has %d entries, want %d: %q", len(ex.env), 6, ex.env)
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
// own Boot, which must recognise itself (a proof, cheap: no rehash) and run.
func TestBootRedirectThenTargetBoots(t *testing.T) {
	h := newTestHome(t)
	h.haltAndStage(9, "")
	v := &countingVerifier{l: h.l}
	f := &fakeOS{self: h.genesis, args: []string{"appd", "start"}, env: []string{"A=1"}}
	r, err := New(testConfig(h.home), v, nil, f.OS())
	must(t, err)
	must(t, r.Boot())
	ex := f.calls()[0]
	f2 := &fakeOS{self: ex.target, args: ex.argv, env: ex.env}
	r2, err := New(testConfig(h.home), v, nil, f2.OS())
	must(t, err)
	must(t, r2.Boot())
	if n := len(f2.calls()); n != 0 {
		t.Fatalf("target redirected again (%d execs)", n)
	}
	if v.calls.Load() != 2 || v.rehashed.Load() != 0 {
		t.Fatalf("verifier calls %d, rehashes %d; want 2 proofs, no rehash", v.calls.Load(), v.rehashed.Load())
	}
}

func TestSwitch(t *testing.T) {
	const info = `{"name":"v2","height":"77"}`
	plan := home.Plan{Name: "v2", Height: 77}
	args := []string{"appd", "start"}
	type tcase struct {
		name     string
		switchTo string
		setup    func(h *testHome, f *fakeOS, c *Config)
		wantErr  error
		wantExec bool
		wantLink string
	}
	tests := []tcase{
		{
			name: "switch execs and flips", switchTo: "v2",
			setup: func(h *testHome, f *fakeOS, c *Config) {
				h.writeUpgradeInfo(info)
				h.stage(plan)
				f.env = append(f.env, EnvRedirectTarget+"="+h.v2, EnvExecGeneration+"=2")
			},
			wantExec: true, wantLink: "upgrades/v2",
		},
		{
			name: "upper-case plan name: cosmovisor's lower-cased directory", switchTo: "V2",
			setup: func(h *testHome, f *fakeOS, c *Config) {
				h.writeUpgradeInfo(`{"name":"V2","height":"77"}`)
				h.stage(home.Plan{Name: "V2", Height: 77})
			},
			wantExec: true, wantLink: "upgrades/v2",
		},
		{
			name: "no upgrade-info refused", switchTo: "v2",
			setup:   func(h *testHome, f *fakeOS, c *Config) { h.stage(plan) },
			wantErr: ErrNoUpgradeInfo, wantLink: home.GenesisDir,
		},
		{
			name: "upgrade-info names another upgrade", switchTo: "v2",
			setup: func(h *testHome, f *fakeOS, c *Config) {
				h.writeUpgradeInfo(`{"name":"v3","height":1}`)
				h.stage(plan)
			},
			wantErr: ErrUpgradeMismatch, wantLink: home.GenesisDir,
		},
		{
			name: "unmappable name", switchTo: "..",
			setup:   func(h *testHome, f *fakeOS, c *Config) {},
			wantErr: home.ErrBadName, wantLink: home.GenesisDir,
		},
		{
			name: "hash mismatch refused", switchTo: "v2",
			setup: func(h *testHome, f *fakeOS, c *Config) {
				h.writeUpgradeInfo(info)
				h.stage(plan)
				must(t, os.WriteFile(h.v2, []byte("#!/bin/sh\necho tampered\n"), 0o755))
			},
			wantErr: home.ErrChanged, wantLink: home.GenesisDir,
		},
		{
			name: "binary modified during pre-upgrade refused", switchTo: "v2",
			setup: func(h *testHome, f *fakeOS, c *Config) {
				h.writeUpgradeInfo(info)
				h.writeExec(h.v2, "#!/bin/sh\necho '# changed' >> \"$0\"\nexit 0\n")
				h.stage(plan)
				c.RunPreUpgrade = true
			},
			wantErr: home.ErrChanged, wantLink: home.GenesisDir,
		},
		{
			name: "not executable refused", switchTo: "v2",
			setup: func(h *testHome, f *fakeOS, c *Config) {
				h.writeUpgradeInfo(info)
				must(t, os.Chmod(h.v2, 0o644))
				h.stage(plan)
			},
			wantErr: home.ErrNotTrusted, wantLink: home.GenesisDir,
		},
		{
			name: "pre-upgrade failure: current untouched", switchTo: "v2",
			setup: func(h *testHome, f *fakeOS, c *Config) {
				h.writeUpgradeInfo(info)
				h.writeExec(h.v2, "#!/bin/sh\nexit 30\n")
				h.stage(plan)
				c.RunPreUpgrade = true
			},
			wantErr: ErrPreUpgrade, wantLink: home.GenesisDir,
		},
	}
	for _, errno := range []syscall.Errno{syscall.ENOENT, syscall.EACCES, syscall.ENOEXEC, syscall.ETXTBSY} {
		tests = append(tests, tcase{
			name: "exec " + errno.Error(), switchTo: "v2",
			setup: func(h *testHome, f *fakeOS, c *Config) {
				h.writeUpgradeInfo(info)
				h.stage(plan)
				f.execErr = errno
			},
			wantErr: errno, wantExec: true, wantLink: "upgrades/v2",
		})
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := newTestHome(t)
			f := &fakeOS{self: h.genesis, args: args, env: []string{"MYVAR=1", "PATH=" + os.Getenv("PATH")}}
			c := testConfig(h.home)
			tc.setup(h, f, &c)
			r, err := New(c, nil, nil, f.OS())
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
			if ex.target != h.v2 || !reflect.DeepEqual(ex.argv, args) || env["MYVAR"] != "1" {
				t.Errorf("exec = %+v", ex)
			}
			if _, ok := env[EnvRedirectTarget]; ok {
				t.Errorf("Switch kept %s", EnvRedirectTarget)
			}
			if f.env[len(f.env)-1] == EnvExecGeneration+"=2" && env[EnvExecGeneration] != "3" {
				t.Errorf("generation = %q, want 3", env[EnvExecGeneration])
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
	dir := t.TempDir()
	file := filepath.Join(dir, "f")
	must(t, os.WriteFile(file, nil, 0o644))
	tests := []struct {
		name string
		mod  func(*Config)
	}{
		{"empty home", func(c *Config) { c.Home = "" }},
		{"missing home", func(c *Config) { c.Home = filepath.Join(dir, "nope") }},
		{"home is a file", func(c *Config) { c.Home = file }},
		{"bad daemon", func(c *Config) { c.DaemonName = "../x" }},
		{"empty daemon", func(c *Config) { c.DaemonName = "" }},
		{"negative retries", func(c *Config) { c.PreUpgradeMaxRetries = -1 }},
		{"negative attempts", func(c *Config) { c.MaxSwitchAttempts = -1 }},
		{"negative fetch timeout", func(c *Config) { c.BootFetchTimeout = -1 }},
		{"relative backup dir", func(c *Config) { c.BackupDir = "rel" }},
		{"missing backup dir", func(c *Config) { c.Backup = true; c.BackupDir = filepath.Join(dir, "nope") }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := testConfig(dir)
			tc.mod(&c)
			if _, err := New(c, noVerifier, nil, OS{}); err == nil {
				t.Fatal("New accepted a bad config")
			}
		})
	}
	r, err := New(testConfig(dir), nil, nil, OS{})
	must(t, err)
	if c := r.Config(); c.MaxSwitchAttempts != DefaultMaxSwitchAttempts || c.BootFetchTimeout != DefaultBootFetchTimeout {
		t.Fatalf("defaults not filled: %+v", c)
	}
}

func TestLayout(t *testing.T) {
	dir := t.TempDir()
	self := filepath.Join(t.TempDir(), "appd")
	must(t, os.WriteFile(self, []byte("#!/bin/sh\necho self\n"), 0o700))
	f := &fakeOS{self: self}
	r, err := New(testConfig(dir), noVerifier, nil, f.OS())
	must(t, err)
	l := r.Home()
	must(t, os.MkdirAll(l.Root(), 0o755))
	stale := filepath.Join(l.Root(), "."+home.CurrentLink+home.TempMarker+"abc")
	must(t, os.Symlink("nowhere", stale))

	must(t, r.Layout())
	gen := l.GenesisBin()
	got, err := os.ReadFile(gen)
	must(t, err)
	if string(got) != "#!/bin/sh\necho self\n" {
		t.Fatalf("genesis = %q", got)
	}
	if fi, _ := os.Stat(gen); fi.Mode().Perm() != 0o755 {
		t.Fatalf("genesis mode %v", fi.Mode())
	}
	// Absolute, as cosmovisor writes it and reads it (os.Readlink, used as is).
	if tgt, _ := os.Readlink(l.Current()); tgt != l.GenesisTarget() {
		t.Fatalf("current -> %q, want %s", tgt, l.GenesisTarget())
	}
	if _, err := os.Lstat(stale); !os.IsNotExist(err) {
		t.Fatalf("stale temp link survived: %v", err)
	}
	if fi, err := os.Stat(l.UpgradesRoot()); err != nil || !fi.IsDir() {
		t.Fatalf("upgrades dir: %v", err)
	}

	// Second run keeps the existing genesis binary and where current points.
	must(t, os.WriteFile(self, []byte("other"), 0o700))
	must(t, os.Remove(l.Current()))
	must(t, os.MkdirAll(filepath.Join(l.UpgradesRoot(), "v2"), 0o755))
	must(t, os.Symlink("upgrades/v2", l.Current()))
	must(t, r.Layout())
	if got, _ := os.ReadFile(gen); string(got) != "#!/bin/sh\necho self\n" {
		t.Fatalf("genesis overwritten: %q", got)
	}
	// A relative link of an earlier release keeps its target, written absolute.
	if tgt, _ := os.Readlink(l.Current()); tgt != filepath.Join(l.Root(), "upgrades", "v2") {
		t.Fatalf("current -> %q, want the same target as an absolute path", tgt)
	}
	ents, _ := os.ReadDir(filepath.Dir(gen))
	if len(ents) != 1 {
		t.Fatalf("genesis/bin has %d entries", len(ents))
	}
}

// The relauncher's paths are internal/home's, with cosmovisor's recase unless disabled.
func TestUpgradeDirMapping(t *testing.T) {
	for _, tc := range []struct {
		disable bool
		want    string
	}{{false, "a%2Fb"}, {true, "A%2FB"}} {
		c := testConfig(t.TempDir())
		c.DisableRecase = tc.disable
		r, err := New(c, nil, nil, OS{})
		must(t, err)
		d, err := r.Home().UpgradeDir("A/B")
		must(t, err)
		if filepath.Base(d) != tc.want || filepath.Dir(d) != r.Home().UpgradesRoot() {
			t.Fatalf("DisableRecase %v: UpgradeDir(A/B) = %q, want base %q", tc.disable, d, tc.want)
		}
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
	r, err := New(c, nil, nil, OS{})
	must(t, err)
	if err := r.Check(); err == nil {
		t.Fatal("Check accepted an unwritable backup dir")
	}
}
