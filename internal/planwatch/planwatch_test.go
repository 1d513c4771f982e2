package planwatch

import (
	"errors"
	"fmt"
	"strings"
	"testing"
)

// recorder is a FailureSink that writes down what it hears.
type recorder struct {
	events  []string
	heights []int64
	panicOn string // an event kind whose call panics
}

func (r *recorder) note(kind, what string) {
	r.events = append(r.events, kind+" "+what)
	if kind == r.panicOn {
		panic("sink " + kind)
	}
}

func (r *recorder) PlanChanged(p *Plan, h int64) {
	if p == nil {
		r.note("changed", fmt.Sprintf("none@%d", h))
		return
	}
	r.note("changed", fmt.Sprintf("%s/%d@%d", p.Name, p.Height, h))
}
func (r *recorder) Halted(p Plan, h int64) { r.note("halted", fmt.Sprintf("%s@%d", p.Name, h)) }
func (r *recorder) Height(h int64)         { r.heights = append(r.heights, h) }
func (r *recorder) UpgradeFailed(p Plan, h int64, err error) {
	r.note("failed", fmt.Sprintf("%s@%d: %v", p.Name, h, err))
}

// sinkFuncs is a Sink that is no FailureSink.
type sinkFuncs struct{ r *recorder }

func (s sinkFuncs) PlanChanged(p *Plan, h int64) { s.r.PlanChanged(p, h) }
func (s sinkFuncs) Halted(p Plan, h int64)       { s.r.Halted(p, h) }
func (s sinkFuncs) Height(h int64)               { s.r.Height(h) }

type logs struct{ errs []string }

func (l *logs) Info(string, ...any) {}
func (l *logs) Error(msg string, kv ...any) {
	l.errs = append(l.errs, msg+" "+fmt.Sprint(kv...))
}

var errHalt = errors.New("UPGRADE \"v2\" NEEDED at height: 10")

// verdicts returns a judge with a fixed answer that counts its calls.
func verdicts(v Verdict, calls *int) func() Verdict {
	return func() Verdict { *calls++; return v }
}

func TestWatcherReportsEachChangeOnce(t *testing.T) {
	r, l := &recorder{}, &logs{}
	w := New(r, l)
	calls := 0
	never := verdicts(Verdict{}, &calls)
	v2 := &Plan{Name: "v2", Height: 10, Info: "a"}
	steps := []struct {
		h    int64
		plan *Plan
	}{
		{5, nil}, // first block: "none" is reported once, so the node knows
		{6, nil}, // unchanged
		{7, v2},  // scheduled
		{8, &Plan{Name: "v2", Height: 10, Info: "a"}}, // same plan, another pointer: unchanged
		{9, &Plan{Name: "v2", Height: 10, Info: "b"}}, // replaced (same name, new info)
		{10, nil}, // applied or cancelled
	}
	for _, s := range steps {
		w.Height(s.h)
		w.Observe(s.h, s.plan, nil, never)
	}
	want := "changed none@5|changed v2/10@7|changed v2/10@9|changed none@10"
	if got := strings.Join(r.events, "|"); got != want {
		t.Fatalf("events %q, want %q", got, want)
	}
	if calls != 0 {
		t.Errorf("the judge was asked %d times in blocks without an error", calls)
	}
	if fmt.Sprint(r.heights) != "[5 6 7 8 9 10]" {
		t.Errorf("heights %v", r.heights)
	}
}

func TestWatcherHaltAndFailure(t *testing.T) {
	v2 := &Plan{Name: "v2", Height: 10}
	for _, tc := range []struct {
		name    string
		verdict Verdict
		sink    func(*recorder) Sink
		want    string
	}{
		{"halt, told once", Verdict{Due: true, Halt: true}, nil, "changed v2/10@10|halted v2@10"},
		{"handler failed, told once", Verdict{Due: true}, nil, "changed v2/10@10|failed v2@10: boom"},
		{"not due: another block's error", Verdict{}, nil, "changed v2/10@10"},
		{"halt message but not due (skip height)", Verdict{Halt: true}, nil, "changed v2/10@10"},
		{"failure, sink without UpgradeFailed", Verdict{Due: true},
			func(r *recorder) Sink { return sinkFuncs{r} }, "changed v2/10@10"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := &recorder{}
			var sink Sink = r
			if tc.sink != nil {
				sink = tc.sink(r)
			}
			w := New(sink, &logs{})
			calls := 0
			err := errors.New("boom")
			if tc.verdict.Halt {
				err = errHalt
			}
			for range 3 { // a halted block is retried by CometBFT: said once
				w.Observe(10, v2, err, verdicts(tc.verdict, &calls))
			}
			if got := strings.Join(r.events, "|"); got != tc.want {
				t.Fatalf("events %q, want %q", got, tc.want)
			}
			if calls != 3 {
				t.Errorf("judge asked %d times, want 3 (once per failing block with a plan)", calls)
			}
		})
	}
}

// A new plan after a halt is told again: halts are keyed by plan.
func TestWatcherHaltPerPlan(t *testing.T) {
	r := &recorder{}
	w := New(r, &logs{})
	calls := 0
	halt := verdicts(Verdict{Due: true, Halt: true}, &calls)
	w.Observe(10, &Plan{Name: "v2", Height: 10}, errHalt, halt)
	w.Observe(10, &Plan{Name: "v2b", Height: 10}, errHalt, halt)
	want := "changed v2/10@10|halted v2@10|changed v2b/10@10|halted v2b@10"
	if got := strings.Join(r.events, "|"); got != want {
		t.Fatalf("events %q, want %q", got, want)
	}
}

// A panicking sink is recovered and logged; the watcher goes on.
func TestWatcherRecoversSinkPanics(t *testing.T) {
	r, l := &recorder{panicOn: "changed"}, &logs{}
	w := New(r, l)
	w.Observe(1, &Plan{Name: "v2", Height: 5}, nil, nil)
	if len(l.errs) != 1 || !strings.Contains(l.errs[0], "sink changed") {
		t.Fatalf("logged %q, want the recovered panic", l.errs)
	}
	r.panicOn = ""
	w.Observe(2, nil, nil, nil)
	if got := strings.Join(r.events, "|"); got != "changed v2/5@1|changed none@2" {
		t.Fatalf("events after the panic %q", got)
	}
}

// BenchmarkObserveUnchanged is the cost in every block where nothing changed:
// it must not allocate.
func BenchmarkObserveUnchanged(b *testing.B) {
	w := New(&recorder{}, &logs{})
	p := &Plan{Name: "v2", Height: 1 << 40}
	w.Observe(1, p, nil, nil)
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		w.Observe(int64(i), p, nil, nil)
	}
}
