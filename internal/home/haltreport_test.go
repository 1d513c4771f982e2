package home

import (
	"os"
	"strings"
	"testing"
	"time"
)

func TestHaltReportRoundTrip(t *testing.T) {
	l, err := New(t.TempDir(), "appd", Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(l.Root(), 0o755); err != nil {
		t.Fatal(err)
	}
	if _, ok, err := l.ReadHaltReport(); ok || err != nil {
		t.Fatalf("no report yet: ok %v, %v", ok, err)
	}
	want := HaltReport{Upgrade: "v3", Height: 71, ExitCode: 10, Time: time.Unix(1, 0).UTC(), BinaryMissing: "not staged"}
	if err := l.WriteHaltReport(want); err != nil {
		t.Fatal(err)
	}
	got, ok, err := l.ReadHaltReport()
	if err != nil || !ok || got.Upgrade != want.Upgrade || got.Height != want.Height || got.BinaryMissing != want.BinaryMissing || !got.Time.Equal(want.Time) {
		t.Fatalf("read %+v %v %v, want %+v", got, ok, err, want)
	}
	if err := os.WriteFile(l.HaltReport(), []byte("{"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, _, err := l.ReadHaltReport(); err == nil || !strings.Contains(err.Error(), HaltReportFile) {
		t.Fatalf("a damaged report: %v, want an error naming the file", err)
	}
}
