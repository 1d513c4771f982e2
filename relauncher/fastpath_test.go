package relauncher

import (
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/invisor/invisor/internal/home"
)

// armAt drives OnHalt until the relauncher is armed for name.
func armAt(t *testing.T, r *Relauncher, name string, height int64) {
	t.Helper()
	r.OnHalt(name, height)
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

// The proof the halt waiter got is the descriptor Switch runs, without a second
// verification while the chain is down, as long as Recheck holds.
func TestSwitchReusesHaltVerification(t *testing.T) {
	h := newTestHome(t)
	h.haltAndStage(100, "")
	v := &countingVerifier{l: h.l}
	f := &fakeOS{self: h.genesis, args: []string{"appd", "start"}}
	c := testConfig(h.home)
	c.HaltPollInterval = time.Millisecond
	r, err := New(c, v, &testLogger{}, f.OS())
	must(t, err)
	defer r.Close()
	armAt(t, r, "v2", 100)
	before := v.calls.Load()
	must(t, r.Switch("v2"))
	if n := v.calls.Load() - before; n != 0 {
		t.Fatalf("Switch verified again (%d verifier calls after arming)", n)
	}
	if len(f.calls()) != 1 || f.calls()[0].target != h.v2 {
		t.Fatalf("execs %+v, want one of %s", f.calls(), h.v2)
	}
}

// TestFault28ModifiedAfterVerification: a staged binary modified after staging
// verified it is re-hashed and refused; one only touched (same bytes) is re-hashed
// and runs; one modified after the halt's proof is verified again and refused.
func TestFault28ModifiedAfterVerification(t *testing.T) {
	t.Run("modified after staging: refused at boot", func(t *testing.T) {
		h := newTestHome(t)
		h.haltAndStage(100, "")
		h.writeExec(h.v2, "#!/bin/sh\necho evil\n")
		f := &fakeOS{self: h.genesis}
		r, err := New(testConfig(h.home), nil, nil, f.OS())
		must(t, err)
		err = r.Boot()
		if !errors.Is(err, ErrBinaryNotReady) || !errors.Is(err, home.ErrChanged) || len(f.calls()) != 0 {
			t.Fatalf("Boot: %v, execs %d", err, len(f.calls()))
		}
	})
	t.Run("touched, same bytes: re-hashed and run", func(t *testing.T) {
		h := newTestHome(t)
		h.haltAndStage(100, "")
		must(t, os.Chmod(h.v2, 0o755)) // ctime changes
		v := &countingVerifier{l: h.l}
		f := &fakeOS{self: h.genesis}
		r, err := New(testConfig(h.home), v, nil, f.OS())
		must(t, err)
		must(t, r.Boot())
		if v.rehashed.Load() != 1 || len(f.calls()) != 1 {
			t.Fatalf("rehashes %d, execs %d", v.rehashed.Load(), len(f.calls()))
		}
	})
	t.Run("modified after the halt's proof: refused by Switch", func(t *testing.T) {
		h := newTestHome(t)
		h.haltAndStage(100, "")
		f := &fakeOS{self: h.genesis}
		c := testConfig(h.home)
		c.HaltPollInterval = time.Millisecond
		r, err := New(c, nil, &testLogger{}, f.OS())
		must(t, err)
		defer r.Close()
		armAt(t, r, "v2", 100)
		fh, err := os.OpenFile(h.v2, os.O_WRONLY|os.O_APPEND, 0)
		must(t, err)
		_, err = fh.WriteString("# tampered\n")
		must(t, err)
		must(t, fh.Close())
		err = r.Switch("v2")
		if !errors.Is(err, home.ErrChanged) || !errors.Is(err, ErrBinaryNotReady) {
			t.Fatalf("Switch after tampering: %v, want a refusal naming the change", err)
		}
		if len(f.calls()) != 0 {
			t.Fatalf("exec'd a tampered binary: %+v", f.calls())
		}
	})
}

// A process exec'd by invisor into the upgrade's binary boots after a proof that
// costs no hash (the stamp is unchanged) and requires that it is that very file;
// a process manager starting it gets the same check.
func TestBootAfterOwnExecIsAProof(t *testing.T) {
	for _, tc := range []struct {
		name string
		env  []string
	}{
		{"exec'd by invisor", []string{EnvExecedFrom + "=/old/appd", EnvExecGeneration + "=1"}},
		{"started by a process manager", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newTestHome(t)
			h.haltAndStage(100, "")
			v := &countingVerifier{l: h.l}
			f := &fakeOS{self: h.v2, env: tc.env}
			r, err := New(testConfig(h.home), v, &testLogger{}, f.OS())
			must(t, err)
			must(t, r.Boot())
			if v.calls.Load() != 1 || v.rehashed.Load() != 0 || len(f.calls()) != 0 {
				t.Fatalf("verifier calls %d, rehashes %d, execs %d", v.calls.Load(), v.rehashed.Load(), len(f.calls()))
			}
		})
	}
	t.Run("exec'd, but the staged file was swapped since: redirected to the proven one", func(t *testing.T) {
		h := newTestHome(t)
		p := h.haltAndStage(100, "")
		// The running image is an old inode; the path now holds a newly staged file.
		old := h.v2 + ".running"
		must(t, os.Link(h.v2, old))
		must(t, os.Remove(h.v2))
		h.writeExec(h.v2, "#!/bin/sh\necho v2 restaged\n")
		h.stage(p)
		f := &fakeOS{self: old, env: []string{EnvExecedFrom + "=/old/appd", EnvExecGeneration + "=1"}}
		r, err := New(testConfig(h.home), nil, &testLogger{}, f.OS())
		must(t, err)
		must(t, r.Boot())
		if c := f.calls(); len(c) != 1 || !strings.Contains(c[0].content, "restaged") {
			t.Fatalf("execs %+v, want the restaged binary", c)
		}
	})
}
