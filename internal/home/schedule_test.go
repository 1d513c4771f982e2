package home

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func scheduleLayout(t *testing.T) Layout {
	t.Helper()
	l, err := New(t.TempDir(), "appd", Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(l.Root(), 0o755); err != nil {
		t.Fatal(err)
	}
	return l
}

func at(name string, height int64) Scheduled {
	return Scheduled{Plan: Plan{Name: name, Height: height, Info: `{"binaries":{"any":"file:///x/` + name + `"}}`}}
}

func names(s []Scheduled) string {
	var b []string
	for _, e := range s {
		b = append(b, e.Plan.Name)
	}
	return strings.Join(b, ",")
}

// The schedule file: no file is an empty schedule, entries come back lowest
// height first with what was added, and every refusal leaves the file as it was.
func TestScheduleFile(t *testing.T) {
	l := scheduleLayout(t)
	if s, err := l.Schedule(); err != nil || s != nil {
		t.Fatalf("no file: %v, %v", s, err)
	}
	added := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	v3 := at("v3", 300)
	v3.Added, v3.Source = added, "file:///opt/v3/appd"
	for _, s := range []Scheduled{v3, at("v2", 200), at("V4", 400)} {
		if err := l.AddScheduled(s); err != nil {
			t.Fatalf("AddScheduled(%s): %v", s.Plan.Name, err)
		}
	}
	got, err := l.Schedule()
	if err != nil || names(got) != "v2,v3,V4" {
		t.Fatalf("Schedule = %s, %v; want v2,v3,V4", names(got), err)
	}
	if got[1].Plan != v3.Plan || !got[1].Added.Equal(added) || got[1].Source != v3.Source {
		t.Errorf("v3 read back as %+v, want %+v", got[1], v3)
	}
	if got[0].Added.IsZero() {
		t.Error("an entry added without a time has none")
	}

	before, err := os.ReadFile(l.SchedulePath())
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		s        Scheduled
		conflict bool // ErrScheduleConflict, else ErrBadName
		want     string
	}{
		{at("v3", 500), true, `"v3" is already scheduled at height 300`},
		{at("v5", 200), true, `"v2" is already scheduled at height 200`},
		{at("v5", 0), true, "height 0"},
		{at("v5", -7), true, "height -7"},
		{at("..", 600), false, "cannot be mapped"},
		{at("", 600), false, "empty plan name"},
	} {
		err := l.AddScheduled(tc.s)
		if tc.conflict && !errors.Is(err, ErrScheduleConflict) || !tc.conflict && !errors.Is(err, ErrBadName) {
			t.Errorf("AddScheduled(%q at %d) = %v", tc.s.Plan.Name, tc.s.Plan.Height, err)
			continue
		}
		if !strings.Contains(err.Error(), tc.want) {
			t.Errorf("AddScheduled(%q at %d) = %v, want it to say %q", tc.s.Plan.Name, tc.s.Plan.Height, err, tc.want)
		}
	}
	if after, _ := os.ReadFile(l.SchedulePath()); !bytes.Equal(after, before) {
		t.Errorf("a refused AddScheduled changed the file:\n%s\nwas\n%s", after, before)
	}

	// Remove: unknown name, then each one; the file stays and parses when empty.
	if s, ok, err := l.RemoveScheduled("v9"); ok || err != nil || s != (Scheduled{}) {
		t.Fatalf("RemoveScheduled(unknown) = %+v, %v, %v", s, ok, err)
	}
	if after, _ := os.ReadFile(l.SchedulePath()); !bytes.Equal(after, before) {
		t.Error("removing an unknown name rewrote the file")
	}
	s, ok, err := l.RemoveScheduled("v3")
	if !ok || err != nil || s.Plan != v3.Plan || s.Source != v3.Source {
		t.Fatalf("RemoveScheduled(v3) = %+v, %v, %v", s, ok, err)
	}
	if got, err := l.Schedule(); err != nil || names(got) != "v2,V4" {
		t.Fatalf("after removing v3: %s, %v", names(got), err)
	}
	// A removed name (and its height) can be scheduled again.
	if err := l.AddScheduled(at("v3", 300)); err != nil {
		t.Fatalf("v3 again after its removal: %v", err)
	}
	for _, n := range []string{"v2", "v3", "V4"} {
		if _, ok, err := l.RemoveScheduled(n); !ok || err != nil {
			t.Fatalf("RemoveScheduled(%s) = %v, %v", n, ok, err)
		}
	}
	if got, err := l.Schedule(); err != nil || len(got) != 0 {
		t.Fatalf("emptied schedule: %+v, %v", got, err)
	}
	noTempsLeft(t, l.Root())
}

func noTempsLeft(t *testing.T, dir string) {
	t.Helper()
	if ents, _ := filepath.Glob(filepath.Join(dir, "*"+TempMarker+"*")); len(ents) != 0 {
		t.Errorf("temp files left: %v", ents)
	}
}

// A schedule file that does not parse is an error naming the file (an upgrade
// silently dropped would let the node run past its height); an empty file, as a
// crash before the first write leaves it, is an empty schedule.
func TestScheduleFileDamaged(t *testing.T) {
	l := scheduleLayout(t)
	if err := os.WriteFile(l.SchedulePath(), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if s, err := l.Schedule(); err != nil || s != nil {
		t.Fatalf("empty file: %v, %v", s, err)
	}
	for _, bad := range []string{`{"format":1,"scheduled":[{"plan":{"name":"v2","height":"x"}}]}`, `{"format":1,`, "garbage"} {
		if err := os.WriteFile(l.SchedulePath(), []byte(bad), 0o644); err != nil {
			t.Fatal(err)
		}
		_, err := l.Schedule()
		if err == nil || !strings.Contains(err.Error(), l.SchedulePath()) || !strings.Contains(err.Error(), "does not parse") {
			t.Errorf("%s: err = %v", bad, err)
		}
		if err := l.AddScheduled(at("v2", 10)); err == nil {
			t.Errorf("%s: AddScheduled wrote over a damaged schedule", bad)
		}
		if _, _, err := l.RemoveScheduled("v2"); err == nil {
			t.Errorf("%s: RemoveScheduled wrote over a damaged schedule", bad)
		}
		if b, _ := os.ReadFile(l.SchedulePath()); string(b) != bad {
			t.Errorf("%s: the damaged file was rewritten: %s", bad, b)
		}
	}
}

// ScheduleAt at every state height around a schedule of three upgrades.
func TestScheduleAt(t *testing.T) {
	s := []Scheduled{at("a", 10), at("b", 20), at("c", 21)}
	h := func(e *Scheduled) string {
		if e == nil {
			return "-"
		}
		return e.Plan.Name
	}
	for _, tc := range []struct {
		last            int64
		due, next, past string
	}{
		{last: 0, due: "-", next: "a", past: ""},
		{last: 8, due: "-", next: "a", past: ""},
		// The chain's next block is a's: its binary runs it; the node halts at b.
		{last: 9, due: "a", next: "b", past: ""},
		// Block 10 ran (on a's binary): a is applied.
		{last: 10, due: "-", next: "b", past: "a"},
		{last: 18, due: "-", next: "b", past: "a"},
		// b is due and c is the very next block: the node halts at c.
		{last: 19, due: "b", next: "c", past: "a"},
		{last: 20, due: "c", next: "-", past: "a,b"},
		{last: 21, due: "-", next: "-", past: "a,b,c"},
		{last: 1000, due: "-", next: "-", past: "a,b,c"},
	} {
		due, next, past := ScheduleAt(s, tc.last)
		if h(due) != tc.due || h(next) != tc.next || names(past) != tc.past {
			t.Errorf("ScheduleAt(last %d) = due %s, next %s, past [%s]; want due %s, next %s, past [%s]",
				tc.last, h(due), h(next), names(past), tc.due, tc.next, tc.past)
		}
		if due != nil && due.Plan != s[strings.Index("abc", due.Plan.Name)].Plan {
			t.Errorf("last %d: due %+v is not the scheduled entry", tc.last, due.Plan)
		}
	}
	if due, next, past := ScheduleAt(nil, 5); due != nil || next != nil || past != nil {
		t.Errorf("empty schedule: %v %v %v", due, next, past)
	}
	// The results are copies: the caller's schedule is not aliased.
	due, _, _ := ScheduleAt(s, 9)
	due.Plan.Name = "changed"
	if s[0].Plan.Name != "a" {
		t.Error("ScheduleAt returned a pointer into the schedule")
	}
}

// WriteUpgradeInfo writes what x/upgrade writes at a halt (DumpUpgradeInfoToDisk:
// json.Marshal of its Plan, whose fields are name, time, height, info), so that
// ReadUpgradeInfo, cosmovisor and the new binary's store loader read it as a
// governance halt. The root package's tests compare it with x/upgrade's own type.
func TestWriteUpgradeInfo(t *testing.T) {
	l, err := New(filepath.Join(t.TempDir(), "node"), "appd", Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(l.Home(), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		p    Plan
		want string // the file's bytes
		read Plan   // what ReadUpgradeInfo returns
	}{
		{
			p:    Plan{Name: "v3", Height: 120, Info: `{"binaries":{"linux/amd64":"file:///opt/v3?checksum=sha256:ab"}}`},
			want: `{"name":"v3","time":"0001-01-01T00:00:00Z","height":120,"info":"{\"binaries\":{\"linux/amd64\":\"file:///opt/v3?checksum=sha256:ab\"}}"}`,
		},
		{
			// encoding/json escapes <, > and & and turns invalid UTF-8 into U+FFFD, as in x/upgrade's file.
			p:    Plan{Name: "a/b <&> \xff", Height: 1, Info: "i"},
			want: `{"name":"a/b \u003c\u0026\u003e \ufffd","time":"0001-01-01T00:00:00Z","height":1,"info":"i"}`,
			read: Plan{Name: "a/b <&> \uFFFD", Height: 1, Info: "i"},
		},
		{
			// x/upgrade omits an empty info ("info,omitempty"); an empty one written reads the same.
			p:    Plan{Name: "v4", Height: 9223372036854775807},
			want: `{"name":"v4","time":"0001-01-01T00:00:00Z","height":9223372036854775807,"info":""}`,
		},
	} {
		if err := l.WriteUpgradeInfo(tc.p); err != nil {
			t.Fatalf("%q: %v", tc.p.Name, err)
		}
		b, err := os.ReadFile(l.UpgradeInfo())
		if err != nil {
			t.Fatal(err)
		}
		if string(b) != tc.want {
			t.Errorf("%q: wrote\n%s\nwant\n%s", tc.p.Name, b, tc.want)
		}
		want := tc.read
		if want == (Plan{}) {
			want = tc.p
		}
		got, ok, err := l.ReadUpgradeInfo()
		if !ok || err != nil || got != want {
			t.Errorf("%q: ReadUpgradeInfo = %+v, %v, %v; want %+v", tc.p.Name, got, ok, err, want)
		}
		if p, err := ParseUpgradeInfo(b); err != nil || p != want {
			t.Errorf("%q: ParseUpgradeInfo = %+v, %v", tc.p.Name, p, err)
		}
		if p, err := ParseUpgradeInfo([]byte(strings.Replace(tc.want, `,"info":""`, "", 1))); err != nil || p != want {
			t.Errorf("%q: x/upgrade's form parses as %+v, %v", tc.p.Name, p, err)
		}
		fi, err := os.Stat(l.UpgradeInfo())
		if err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("%q: mode %v, %v; x/upgrade writes 0600", tc.p.Name, fi.Mode(), err)
		}
	}
	noTempsLeft(t, l.DataDir())
}
