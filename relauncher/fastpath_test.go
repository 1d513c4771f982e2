package relauncher

import (
	"os"
	"strings"
	"testing"
	"time"
)

// armAt drives OnHalt until the relauncher is armed for name.
func armAt(t *testing.T, r *Relauncher, name string) {
	t.Helper()
	r.OnHalt(name, 100)
	deadline := time.Now().Add(5 * time.Second)
	for {
		if got, ok := r.Armed(); ok && got == name {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("never armed")
		}
		time.Sleep(time.Millisecond)
	}
}

// The binary hashed by the halt waiter is not hashed again by Switch while the
// chain is down, as long as its stamp is unchanged.
func TestSwitchReusesHaltVerification(t *testing.T) {
	h := newTestHome(t)
	h.writeUpgradeInfo(`{"name":"v2","height":100}`)
	v := &hashVerifier{}
	v.trust(t, "v2", h.v2)
	f := &fakeOS{self: h.genesis, args: []string{"appd", "start"}}
	c := testConfig(h.home)
	c.HaltPollInterval = time.Millisecond
	r, err := New(c, v, &testLogger{}, f.OS())
	must(t, err)
	defer r.Close()
	armAt(t, r, "v2")
	before := v.calls
	must(t, r.Switch("v2"))
	if v.calls != before {
		t.Fatalf("Switch hashed the binary again (%d verifier calls after arming)", v.calls-before)
	}
	if len(f.calls()) != 1 || f.calls()[0].argv0 != h.v2 {
		t.Fatalf("execs %+v, want one of %s", f.calls(), h.v2)
	}
}

// A binary modified after the halt verification is verified again, and refused.
func TestSwitchReverifiesWhenModifiedAfterHalt(t *testing.T) {
	h := newTestHome(t)
	h.writeUpgradeInfo(`{"name":"v2","height":100}`)
	v := &hashVerifier{}
	v.trust(t, "v2", h.v2)
	f := &fakeOS{self: h.genesis}
	c := testConfig(h.home)
	c.HaltPollInterval = time.Millisecond
	r, err := New(c, v, &testLogger{}, f.OS())
	must(t, err)
	defer r.Close()
	armAt(t, r, "v2")
	time.Sleep(10 * time.Millisecond) // a later mtime even on coarse clocks
	fh, err := os.OpenFile(h.v2, os.O_WRONLY|os.O_APPEND, 0)
	must(t, err)
	_, err = fh.WriteString("# tampered\n")
	must(t, err)
	must(t, fh.Close())
	err = r.Switch("v2")
	if err == nil || !strings.Contains(err.Error(), "checksum mismatch") {
		t.Fatalf("Switch after tampering: %v, want a checksum refusal", err)
	}
	if len(f.calls()) != 0 {
		t.Fatalf("exec'd a tampered binary: %+v", f.calls())
	}
}

// A process exec'd by invisor into the upgrade's binary boots without hashing
// itself again; without the marker (systemd starting it) it is verified.
func TestBootTrustsItsOwnExec(t *testing.T) {
	for _, tc := range []struct {
		name      string
		env       []string
		wantCalls int
	}{
		{"exec'd by invisor", []string{EnvExecedFrom + "=/old/appd", EnvExecGeneration + "=1"}, 0},
		{"started by a process manager", nil, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newTestHome(t)
			h.writeUpgradeInfo(`{"name":"v2","height":100}`)
			v := &hashVerifier{}
			v.trust(t, "v2", h.v2)
			f := &fakeOS{self: h.v2, env: tc.env}
			r, err := New(testConfig(h.home), v, &testLogger{}, f.OS())
			must(t, err)
			must(t, r.Boot())
			if v.calls != tc.wantCalls || len(f.calls()) != 0 {
				t.Fatalf("verifier calls %d (want %d), execs %d", v.calls, tc.wantCalls, len(f.calls()))
			}
		})
	}
}
