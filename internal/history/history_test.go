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
