package probe

import (
	"bytes"
	"errors"
	"testing"
)

func TestRespondParseRoundTrip(t *testing.T) {
	var buf bytes.Buffer
	buf.WriteString("some log line\n")
	if err := Respond(&buf, Answer{InvisorVersion: "v1", Protocols: Protocols(), Handlers: map[string]bool{"v2": true, "v3": false}}); err != nil {
		t.Fatal(err)
	}
	a, err := Parse(buf.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	if !a.Speaks(ProtocolAwaitPreUpgrade) || a.Speaks("other/1") {
		t.Fatalf("protocols: %v", a.Protocols)
	}
	if has, known := a.HasHandler("v2"); !has || !known {
		t.Fatalf("v2: %v %v", has, known)
	}
	if has, known := a.HasHandler("v3"); has || !known {
		t.Fatalf("v3: %v %v", has, known)
	}
	if _, known := a.HasHandler("v4"); known {
		t.Fatal("v4 was not asked for and must be unknown")
	}
}

func TestParseRefusesWhatIsNoAnswer(t *testing.T) {
	for name, out := range map[string]string{
		"help text":   "Usage:\n  appd [command]\n",
		"empty":       "",
		"prefix only": "INVISOR_PROBE_ANSWERS {}\n",
	} {
		if _, err := Parse([]byte(out)); !errors.Is(err, ErrNoAnswer) {
			t.Errorf("%s: got %v, want ErrNoAnswer", name, err)
		}
	}
	if _, err := Parse([]byte(Prefix + "{not json\n")); err == nil || errors.Is(err, ErrNoAnswer) {
		t.Errorf("garbled answer: got %v", err)
	}
	if _, err := Parse([]byte(Prefix + `{"probe":2}` + "\n")); err == nil {
		t.Error("unknown format accepted")
	}
	var nilAnswer *Answer
	if nilAnswer.Speaks(ProtocolAwaitPreUpgrade) {
		t.Error("nil answer speaks")
	}
}

func TestRequested(t *testing.T) {
	plans, ok, err := Requested(append([]string{"PATH=/bin"}, RequestEnv([]string{"v2", `Ünï "q"`})...))
	if err != nil || !ok || len(plans) != 2 || plans[1] != `Ünï "q"` {
		t.Fatalf("got %v %v %v", plans, ok, err)
	}
	if _, ok, _ := Requested([]string{Env + "=0"}); ok {
		t.Fatal("INVISOR_PROBE=0 is not a request")
	}
	if _, ok, err := Requested([]string{Env + "=1", EnvPlans + "=v2"}); !ok || err == nil {
		t.Fatalf("malformed plan list: ok %v err %v", ok, err)
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte(Prefix + `{"probe":1,"protocols":["await-pre-upgrade/1"],"handlers":{"a":true}}` + "\n"))
	f.Add([]byte("noise\n" + Prefix + "{}\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		a, err := Parse(b)
		if err == nil && a.Probe != Version {
			t.Fatalf("accepted format %d", a.Probe)
		}
	})
}
