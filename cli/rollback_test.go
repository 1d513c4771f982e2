package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/spf13/cobra"

	"github.com/cosmos/cosmos-sdk/server"

	"github.com/invisor/invisor/internal/config"
	"github.com/invisor/invisor/internal/home"
	"github.com/invisor/invisor/relauncher"
)

// switchedHome is a home where the relauncher switched to v2 at height 5 with
// backups on (the exec is a fake): data backed up, `current` -> upgrades/v2.
func switchedHome(t *testing.T) home.Layout {
	t.Helper()
	l, err := home.New(t.TempDir(), "appd", home.Options{})
	if err != nil {
		t.Fatal(err)
	}
	write := func(p, content string, mode os.FileMode) {
		t.Helper()
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), mode); err != nil {
			t.Fatal(err)
		}
	}
	p := home.Plan{Name: "v2", Height: 5}
	write(l.GenesisBin(), "#!/bin/sh\necho v1\n", 0o755)
	bin, _ := l.UpgradeBin("v2")
	write(bin, "#!/bin/sh\necho v2\n", 0o755)
	f, err := os.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	d, err := home.HashFile(context.Background(), f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	if err := l.WriteRecord(home.Record{Plan: "v2", Height: 5, InfoHash: p.InfoHash(), Source: home.SourcePlanChecksum,
		SHA256: d.SHA256, Size: d.Size, Stamp: d.Stamp}); err != nil {
		t.Fatal(err)
	}
	write(filepath.Join(l.DataDir(), "application.db", "000001.ldb"), "table", 0o644)
	write(filepath.Join(l.DataDir(), relauncher.ValidatorStateFile), `{"height":"4"}`, 0o600)
	write(l.UpgradeInfo(), `{"name":"v2","height":5}`, 0o644)
	if err := home.Symlink(l.GenesisTarget(), l.Current()); err != nil {
		t.Fatal(err)
	}
	c := relauncher.DefaultConfig()
	c.Home, c.DaemonName, c.RunPreUpgrade = l.Home(), "appd", false
	r, err := relauncher.New(c, nil, nil, relauncher.OS{
		Exec:       func(string, []string, []string) error { return nil },
		Executable: func() (string, error) { return l.GenesisBin(), nil },
		Args:       func() []string { return []string{"appd", "start"} },
		Environ:    func() []string { return nil },
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Switch("v2"); err != nil {
		t.Fatal(err)
	}
	// The upgrade's binary signed a later height before it failed.
	write(filepath.Join(l.DataDir(), relauncher.ValidatorStateFile), `{"height":"5"}`, 0o600)
	return l
}

// runInvisor runs `appd invisor args...` on home as the chain binary would.
func runInvisor(t *testing.T, nodeHome string, args ...string) (string, error) {
	t.Helper()
	root := &cobra.Command{Use: "appd"}
	root.AddCommand(Command(config.Options{DaemonName: "appd", DefaultHome: nodeHome, ServerOf: sdkServerOf}))
	sctx := server.NewDefaultContext()
	sctx.Config.SetRoot(nodeHome)
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs(append([]string{"invisor"}, args...))
	err := root.ExecuteContext(context.WithValue(context.Background(), server.ServerContextKey, sctx))
	return out.String(), err
}

func TestRollbackCommand(t *testing.T) {
	l := switchedHome(t)

	// While the node runs: refused, naming the PID.
	lk, err := l.Acquire(nil)
	if err != nil {
		t.Fatal(err)
	}
	_, err = runInvisor(t, l.Home(), "rollback")
	if err == nil || !strings.Contains(err.Error(), "process "+strconv.Itoa(os.Getpid())) || !strings.Contains(err.Error(), "stop the node first") {
		t.Fatalf("rollback with the node running: %v", err)
	}
	lk.Release()

	out, err := runInvisor(t, l.Home(), "rollback", "--dry-run")
	if err != nil || !strings.Contains(out, `would roll back the switch to upgrade "v2" at height 5`) || !strings.Contains(out, "dry run: nothing was changed") {
		t.Fatalf("dry run: %v\n%s", err, out)
	}
	if d, _, _ := l.CurrentDir(); filepath.Base(d) != "v2" {
		t.Fatalf("dry run moved current to %s", d)
	}

	out, err = runInvisor(t, l.Home(), "rollback")
	if err != nil {
		t.Fatalf("rollback: %v\n%s", err, out)
	}
	for _, want := range []string{
		`rolled back the switch to upgrade "v2" at height 5`,
		"the live priv_validator_state.json was kept",
		"data-rolledback-",
		"-> " + l.GenesisTarget(),
		"appd invisor stage v2 --replace --file /path/to/fixed/appd",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if d, _, _ := l.CurrentDir(); d != l.GenesisTarget() {
		t.Errorf("current -> %s", d)
	}
	if b, _ := os.ReadFile(filepath.Join(l.DataDir(), relauncher.ValidatorStateFile)); string(b) != `{"height":"5"}` {
		t.Errorf("signing state %s, want the live one", b)
	}

	// Again: nothing left to undo, and the JSON form of the refusal is an error too.
	if _, err := runInvisor(t, l.Home(), "rollback", "-o", "json"); err == nil || !strings.Contains(err.Error(), "rolled back already") {
		t.Fatalf("second rollback: %v", err)
	}
}

func TestRollbackCommandJSON(t *testing.T) {
	l := switchedHome(t)
	out, err := runInvisor(t, l.Home(), "rollback", "--dry-run", "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	var rep relauncher.RollbackReport
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("%v:\n%s", err, out)
	}
	if !rep.DryRun || rep.Upgrade.Name != "v2" || rep.Backup.Upgrade != "v2" || rep.CurrentAfter != l.GenesisTarget() {
		t.Fatalf("report %+v", rep)
	}
}

func TestShellWord(t *testing.T) {
	for in, want := range map[string]string{"v2": "v2", "v2.0.1-rc1": "v2.0.1-rc1", "my upgrade": "'my upgrade'", "it's": `'it'\''s'`, "": "''"} {
		if got := shellWord(in); got != want {
			t.Errorf("shellWord(%q) = %s, want %s", in, got, want)
		}
	}
}
