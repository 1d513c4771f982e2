package main

import (
	"errors"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestHangingReceiverHoldsEachPOSTUntilTheClientGivesUp(t *testing.T) {
	h, err := newHangingReceiver()
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	// A raw connection that sends no POST is held too, but not counted.
	raw, err := net.Dial("tcp", strings.TrimSuffix(strings.TrimPrefix(h.URL(), "http://"), "/hook"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := raw.Write([]byte("GET / HTTP/1.1\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	defer raw.Close()

	const timeout = 150 * time.Millisecond
	c := &http.Client{Timeout: timeout}
	from := time.Now()
	for range 2 {
		resp, err := c.Post(h.URL(), "application/json", strings.NewReader(`{"kind":"plan-seen"}`))
		if err == nil {
			resp.Body.Close()
			t.Fatalf("the receiver answered %s; it must never answer", resp.Status)
		}
		var ne net.Error
		if !errors.As(err, &ne) || !ne.Timeout() {
			t.Fatalf("POST: %v, want the client's timeout", err)
		}
	}
	to := time.Now()
	posts, busy := h.activity(from, to)
	if posts != 2 {
		t.Errorf("activity counted %d POSTs, want 2", posts)
	}
	if busy < 2*timeout || busy > to.Sub(from) {
		t.Errorf("busy %v, want between %v (two POSTs held until their timeout) and the span %v", busy, 2*timeout, to.Sub(from))
	}
	if p, _ := h.activity(to.Add(time.Hour), to.Add(2*time.Hour)); p != 0 {
		t.Errorf("activity after the POSTs counted %d, want 0", p)
	}
}

func TestRefusedURLRefuses(t *testing.T) {
	u, err := refusedURL()
	if err != nil {
		t.Fatal(err)
	}
	_, err = (&http.Client{Timeout: 5 * time.Second}).Post(u, "application/json", strings.NewReader("{}"))
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("POST %s: %v, want connection refused", u, err)
	}
}

func TestUnion(t *testing.T) {
	t0 := time.Unix(1000, 0)
	at := func(a, b int) [2]time.Time {
		return [2]time.Time{t0.Add(time.Duration(a) * time.Second), t0.Add(time.Duration(b) * time.Second)}
	}
	for _, tc := range []struct {
		name  string
		spans [][2]time.Time
		want  time.Duration
	}{
		{"none", nil, 0},
		{"one", [][2]time.Time{at(0, 5)}, 5 * time.Second},
		{"disjoint, out of order", [][2]time.Time{at(10, 12), at(0, 5)}, 7 * time.Second},
		{"overlapping", [][2]time.Time{at(0, 5), at(3, 8)}, 8 * time.Second},
		{"nested", [][2]time.Time{at(0, 10), at(2, 3), at(12, 13)}, 11 * time.Second},
		{"touching", [][2]time.Time{at(0, 5), at(5, 6)}, 6 * time.Second},
	} {
		if got := union(tc.spans); got != tc.want {
			t.Errorf("%s: union = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestGaveUp(t *testing.T) {
	t0 := time.Unix(1000, 0)
	lines := []logLine{
		{t0, "WRN invisor: the webhook did not take an event; it is not sent again attempts=4 err=\"context deadline exceeded\" kind=plan-seen seq=1 url=http://127.0.0.1:1/hook"},
		{t0.Add(time.Second), "INF staging: downloading"},
		{t0.Add(2 * time.Second), "WRN invisor: the webhook did not take an event; it is not sent again attempts=1 kind=binary-ready seq=2"},
		{t0.Add(time.Hour), "WRN invisor: the webhook did not take an event; it is not sent again attempts=4 kind=halted seq=3"},
	}
	got := gaveUp(lines, t0.Add(time.Minute))
	if want := []string{"plan-seen×4", "binary-ready×1"}; !slices.Equal(got, want) {
		t.Errorf("gaveUp = %q, want %q (the line after the window left out)", got, want)
	}
}

func TestReplaceSection(t *testing.T) {
	const b5, e5 = webhookBegin, webhookEnd
	section := "## Scenario 5\n\n" + b5 + "\nnew\n" + e5 + "\n"
	for _, tc := range []struct {
		name, old, want string
	}{
		{"replaces only between its markers",
			"# T\n\n<!-- bench:results:begin -->\nkeep\n<!-- bench:results:end -->\n\n## Scenario 5\n\n" + b5 + "\nold\n" + e5 + "\n\ntail\n",
			"# T\n\n<!-- bench:results:begin -->\nkeep\n<!-- bench:results:end -->\n\n## Scenario 5\n\n" + b5 + "\nnew\n" + e5 + "\n\ntail\n"},
		{"appends to a file without its markers",
			"# T\n\n<!-- bench:results:begin -->\nkeep\n<!-- bench:results:end -->\n\n",
			"# T\n\n<!-- bench:results:begin -->\nkeep\n<!-- bench:results:end -->\n\n" + section},
		{"starts a missing file with the title", "",
			"# Benchmarks: invisor vs cosmovisor v1.5.0\n\n" + section},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "BENCHMARKS.md")
			if tc.old != "" {
				if err := os.WriteFile(p, []byte(tc.old), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			if err := replaceSection(p, b5, e5, section); err != nil {
				t.Fatal(err)
			}
			got, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tc.want {
				t.Errorf("file:\n%s\nwant:\n%s", got, tc.want)
			}
		})
	}
}

func TestWriteMarkdownScenario5AloneKeepsTheResults(t *testing.T) {
	p := filepath.Join(t.TempDir(), "BENCHMARKS.md")
	old := "# T\n\n<!-- bench:results:begin -->\nscenarios 1-4\n<!-- bench:results:end -->\n\n## Scenario 5\n\n" +
		webhookBegin + "\nold\n" + webhookEnd + "\n"
	if err := os.WriteFile(p, []byte(old), 0o644); err != nil {
		t.Fatal(err)
	}
	t0 := time.Unix(1000, 0)
	w := webhookResult{Variant: hookHang, Round: 1, POSTs: 3, Busy: 15 * time.Second,
		consensusResult: consensusResult{P50: 300 * time.Millisecond, P99: 320 * time.Millisecond, Max: 330 * time.Millisecond,
			WindowStart: t0, WindowEnd: t0.Add(45 * time.Second)}}
	r := &results{opts: options{work: t.TempDir(), blocks: 150}, start: t0, end: t0.Add(time.Minute), hooks: []webhookResult{w}}
	if err := r.writeMarkdown(p); err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(p)
	s := string(got)
	if !strings.HasPrefix(s, "# T\n\n<!-- bench:results:begin -->\nscenarios 1-4\n<!-- bench:results:end -->\n\n## Scenario 5\n\n"+webhookBegin) {
		t.Errorf("the results section or what precedes scenario 5's changed:\n%s", s)
	}
	if strings.Contains(s, "\nold\n") || !strings.Contains(s, "3 POSTs held open, a POST in flight 33% of the window") ||
		strings.Count(s, "## Scenario 5") != 1 {
		t.Errorf("scenario 5's section not replaced as expected:\n%s", s)
	}
}
