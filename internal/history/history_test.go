package history

import (
	"os"
	"testing"
	"time"

	"github.com/invisor/invisor/internal/home"
)

func testLayout(t *testing.T) home.Layout {
	t.Helper()
	l, err := home.New(t.TempDir(), "appd", home.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(l.Root(), 0o755); err != nil {
		t.Fatal(err)
	}
	return l
}

// A torn last line (a crash mid-append) costs that line only.
func TestReadSkipsTornLines(t *testing.T) {
	l := testLayout(t)
	if got, err := Read(l.Home()); err != nil || len(got) != 0 {
		t.Fatalf("no file: %v, %v; want an empty history", got, err)
	}
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	if err := Append(l.Home(), Entry{Event: EventHalt, Upgrade: "v2", Height: 30, Time: t0}); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(Path(l.Home()), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString(`{"event":"switched","upgr`)
	f.Close()
	got, err := Read(l.Home())
	if err != nil || len(got) != 1 || got[0].Upgrade != "v2" || !got[0].Time.Equal(t0) {
		t.Fatalf("Read = %+v, %v; want the one whole entry", got, err)
	}
}

// A switch is recorded only when this boot follows a halt of another binary,
// and only once.
func TestRecordSwitch(t *testing.T) {
	l := testLayout(t)
	if _, ok, err := RecordSwitch(l); ok || err != nil {
		t.Fatalf("empty history: recorded %v, %v", ok, err)
	}
	if err := RecordHalt(l.Home(), "v2", 30); err != nil {
		t.Fatal(err)
	}
	if _, ok, _ := RecordSwitch(l); ok {
		t.Fatal("a restart of the binary that halted recorded a switch")
	}
	if err := Append(l.Home(), Entry{Event: EventHalt, Upgrade: "v3", Height: 60, Time: time.Now().UTC(), From: "/old/appd"}); err != nil {
		t.Fatal(err)
	}
	e, ok, err := RecordSwitch(l)
	if err != nil || !ok || e.Event != EventSwitched || e.Upgrade != "v3" || e.Height != 60 || e.From != "/old/appd" || e.To == "" {
		t.Fatalf("RecordSwitch = %+v, %v, %v", e, ok, err)
	}
	if _, ok, _ := RecordSwitch(l); ok {
		t.Fatal("the same switch recorded twice")
	}
	last, ok := LastSwitch(l.Home())
	if !ok || last.Upgrade != "v3" {
		t.Fatalf("LastSwitch = %+v, %v", last, ok)
	}
}

// After a rollback, the boot of another binary than the one the rollback pointed
// `current` back to is a switch (with no halt to time it from); the rolled-back
// binary booting is not. LastSwitch keeps reporting the last timed switch.
func TestRecordSwitchAfterRollback(t *testing.T) {
	l := testLayout(t)
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Now().UTC().Add(-time.Minute)
	for _, e := range []Entry{
		{Event: EventHalt, Upgrade: "v2", Height: 30, Time: t0, From: "/old/appd"},
		{Event: EventSwitched, Upgrade: "v2", Height: 30, Time: t0.Add(time.Second), From: "/old/appd", To: "/bad/appd", Seconds: 1},
	} {
		if err := Append(l.Home(), e); err != nil {
			t.Fatal(err)
		}
	}
	// The rolled-back-to binary (this one) boots: no switch.
	if err := RecordRollback(l.Home(), Rollback{Upgrade: "v2", Height: 30, From: "/bad/appd", To: exe, Backup: "/b", MovedAside: "/a"}); err != nil {
		t.Fatal(err)
	}
	if _, ok, err := RecordSwitch(l); ok || err != nil {
		t.Fatalf("the binary the rollback restored recorded a switch (%v)", err)
	}
	hist, err := Read(l.Home())
	if err != nil || len(hist) != 3 || hist[2].Event != EventRollback || hist[2].Backup != "/b" || hist[2].MovedAside != "/a" || hist[2].PID != os.Getpid() {
		t.Fatalf("history %+v, %v", hist, err)
	}
	// Another binary boots after the rollback: a switch, untimed.
	if err := RecordRollback(l.Home(), Rollback{Upgrade: "v2", Height: 30, From: "/bad/appd", To: "/old/appd"}); err != nil {
		t.Fatal(err)
	}
	e, ok, err := RecordSwitch(l)
	if err != nil || !ok || e.Event != EventSwitched || e.Upgrade != "v2" || e.Height != 30 || e.From != "/old/appd" || e.To != exe ||
		!e.AfterRollback || e.Seconds != 0 {
		t.Fatalf("RecordSwitch after a rollback = %+v, %v, %v", e, ok, err)
	}
	if _, ok, _ := RecordSwitch(l); ok {
		t.Fatal("the same switch recorded twice")
	}
	if last, ok := LastSwitch(l.Home()); !ok || last.To != "/bad/appd" || last.Seconds != 1 {
		t.Fatalf("LastSwitch = %+v, %v; want the last timed switch", last, ok)
	}
}
