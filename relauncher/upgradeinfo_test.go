package relauncher

import (
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/invisor/invisor/internal/home"
)

// FuzzBootUpgradeInfo: whatever x/upgrade (or a crash, or an operator) left in
// data/upgrade-info.json, Boot with nothing staged either runs the node as is,
// says which binary is missing, or refuses a malformed file; it never execs and
// never fails over a plan name.
func FuzzBootUpgradeInfo(f *testing.F) {
	for _, s := range []string{`{"name":"v2","height":123}`, `{"name":".."}`, `{"name":"` + strings.Repeat("/", 90) + `"}`,
		`{"name":"A/B\u0000"}`, `{"name":"."}`, ``, `{"name":""}`, `{"name":"V2","height":"5"}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		h := newTestHome(t)
		must(t, os.WriteFile(h.l.UpgradeInfo(), b, 0o644))
		fo := &fakeOS{self: h.genesis}
		r, err := New(testConfig(h.home), nil, nil, fo.OS())
		must(t, err)
		err = r.Boot()
		if len(fo.calls()) != 0 {
			t.Fatal("exec'd with nothing staged")
		}
		switch {
		case err == nil, errors.Is(err, ErrBinaryNotReady), errors.Is(err, home.ErrMalformedUpgradeInfo):
		default:
			t.Fatalf("Boot: %v", err)
		}
		if errors.Is(err, home.ErrBadName) {
			t.Fatalf("Boot failed over a name: %v", err)
		}
	})
}
