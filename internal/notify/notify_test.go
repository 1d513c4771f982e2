package notify

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/invisor/invisor/staging"
)

// receiver is a loopback webhook that records every POST it reads, in order,
// and answers with what answer says for the n-th POST (from 1).
type receiver struct {
	mu     sync.Mutex
	posts  []Document
	answer func(n int, d Document) int
}

func (r *receiver) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	var d Document
	body, _ := io.ReadAll(req.Body)
	if req.Method != http.MethodPost || req.Header.Get("Content-Type") != "application/json" || json.Unmarshal(body, &d) != nil {
		http.Error(w, "bad request", http.StatusBadRequest)
		return
	}
	r.mu.Lock()
	r.posts = append(r.posts, d)
	n := len(r.posts)
	r.mu.Unlock()
	code := http.StatusNoContent
	if r.answer != nil {
		code = r.answer(n, d)
	}
	w.WriteHeader(code)
}

func (r *receiver) got() []Document {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Document(nil), r.posts...)
}

// testConfig is DefaultConfig for url with backoffs short enough for tests.
func testConfig(url string) Config {
	c := DefaultConfig()
	c.URL, c.Home, c.ChainID = url, "/nodes/a", "test-1"
	c.BackoffMin, c.BackoffMax = time.Millisecond, 4*time.Millisecond
	return c
}

func newNotifier(t *testing.T, c Config, log *recLog) *Notifier {
	t.Helper()
	var l interface {
		Info(string, ...any)
		Warn(string, ...any)
		Error(string, ...any)
	}
	if log != nil {
		l = log
	}
	n, err := New(c, l)
	if err != nil || n == nil {
		t.Fatalf("New: %v, %v", n, err)
	}
	return n
}

func closeNow(t *testing.T, n *Notifier) {
	t.Helper()
	if err := n.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// Every event arrives once, in Notify's order, numbered from 1, with the
// document's fixed fields.
func TestOrderAndSequence(t *testing.T) {
	r := &receiver{}
	srv := httptest.NewServer(r)
	defer srv.Close()
	n := newNotifier(t, testConfig(srv.URL), nil)
	kinds := []Kind{KindPlanSeen, KindBinaryReady, KindNotReadyNearHeight, KindHalted, KindSwitched}
	const total = 50
	for i := 0; i < total; i++ {
		n.Notify(Event{Kind: kinds[i%len(kinds)], Upgrade: "v2", Height: int64(1000 + i), Message: fmt.Sprint("event ", i),
			SHA256: "ab", Path: "clean-stop"})
	}
	closeNow(t, n)
	got := r.got()
	if len(got) != total {
		t.Fatalf("%d documents, want %d", len(got), total)
	}
	for i, d := range got {
		if d.Seq != uint64(i+1) || d.Kind != kinds[i%len(kinds)] || d.Height != int64(1000+i) || d.Message != fmt.Sprint("event ", i) {
			t.Errorf("document %d: seq %d kind %s height %d %q", i, d.Seq, d.Kind, d.Height, d.Message)
		}
		if d.Version != Version || d.Process == "" || d.Process != got[0].Process || d.Home != "/nodes/a" || d.ChainID != "test-1" ||
			d.Upgrade != "v2" || d.SHA256 != "ab" || d.Path != "clean-stop" || d.Time.IsZero() {
			t.Errorf("document %d: %+v", i, d)
		}
	}
	if s := n.Stats(); s.Sent != total || s.Dropped+s.Failed+s.Lost != 0 {
		t.Errorf("stats %+v", s)
	}
}

// A 500 is retried until the receiver takes the document. The receiver here
// reads every POST before it answers 500, so it sees retried documents twice:
// (process, seq) lets it keep each event once, and the kept ones are in order.
func TestRetriesThenSuccessDeduplicate(t *testing.T) {
	r := &receiver{answer: func(n int, d Document) int {
		if d.Seq%2 == 1 && n%3 != 0 { // odd events: refused with 500 until a third POST
			return http.StatusInternalServerError
		}
		return http.StatusOK
	}}
	srv := httptest.NewServer(r)
	defer srv.Close()
	n := newNotifier(t, testConfig(srv.URL), nil)
	const total = 10
	for i := 1; i <= total; i++ {
		n.Notify(Event{Kind: KindPlanSeen, Message: fmt.Sprint(i)})
	}
	closeNow(t, n)
	posts := r.got()
	if len(posts) <= total {
		t.Fatalf("%d POSTs for %d events: nothing was retried", len(posts), total)
	}
	seen := map[string]bool{}
	var kept []uint64
	for _, d := range posts {
		key := fmt.Sprint(d.Process, "/", d.Seq)
		if !seen[key] {
			seen[key] = true
			kept = append(kept, d.Seq)
		}
	}
	if len(kept) != total {
		t.Fatalf("de-duplicated by (process, seq): %v, want 1..%d", kept, total)
	}
	for i, s := range kept {
		if s != uint64(i+1) {
			t.Fatalf("de-duplicated by (process, seq): %v, want 1..%d in order", kept, total)
		}
	}
	if s := n.Stats(); s.Sent != total || s.Failed != 0 {
		t.Errorf("stats %+v, want %d sent", s, total)
	}
}

// A 4xx other than 408 and 429 is not retried; 5xx past Attempts fails the
// event, and the next one is still sent.
func TestRefusedAndExhausted(t *testing.T) {
	r := &receiver{answer: func(n int, d Document) int {
		switch d.Message {
		case "refused":
			return http.StatusBadRequest
		case "broken":
			return http.StatusBadGateway
		}
		return http.StatusOK
	}}
	srv := httptest.NewServer(r)
	defer srv.Close()
	c := testConfig(srv.URL)
	c.Attempts = 3
	n := newNotifier(t, c, nil)
	for _, m := range []string{"refused", "broken", "fine"} {
		n.Notify(Event{Kind: KindHalted, Message: m})
	}
	closeNow(t, n)
	count := map[string]int{}
	for _, d := range r.got() {
		count[d.Message]++
	}
	if count["refused"] != 1 || count["broken"] != 3 || count["fine"] != 1 {
		t.Errorf("POSTs per event %v, want refused 1, broken 3 (Attempts), fine 1", count)
	}
	if s := n.Stats(); s.Sent != 1 || s.Failed != 2 {
		t.Errorf("stats %+v, want 1 sent, 2 failed", s)
	}
}

// hanging is a receiver that signals each POST on entered and answers only
// once release is closed.
func hanging() (srv *httptest.Server, entered chan struct{}, release chan struct{}) {
	entered, release = make(chan struct{}, 100), make(chan struct{})
	srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		entered <- struct{}{}
		select {
		case <-release:
		case <-req.Context().Done():
		}
	}))
	return srv, entered, release
}

// While the receiver holds the one POST in flight, 10k Notify calls return
// (this test would hang otherwise): QueueSize of them are queued, the rest are
// dropped and counted; after Close, Notify drops too.
func TestHangingReceiverDoesNotBlockNotify(t *testing.T) {
	srv, entered, release := hanging()
	defer srv.Close()
	c := testConfig(srv.URL)
	c.QueueSize, c.Timeout = 16, time.Hour
	n := newNotifier(t, c, nil)
	n.Notify(Event{Kind: KindPlanSeen, Message: "first"})
	<-entered // the receiver holds this POST until release
	const calls = 10000
	for i := 0; i < calls; i++ {
		n.Notify(Event{Kind: KindPlanSeen, Message: "more"})
	}
	s := n.Stats()
	if s.Queued != c.QueueSize || s.Dropped != calls-uint64(c.QueueSize) || s.Sent != 0 {
		t.Errorf("while the receiver hangs: %+v, want %d queued, %d dropped", s, c.QueueSize, calls-c.QueueSize)
	}
	close(release)
	closeNow(t, n)
	n.Notify(Event{Kind: KindSwitched})
	if s := n.Stats(); s.Sent != uint64(c.QueueSize)+1 || s.Dropped != calls-uint64(c.QueueSize)+1 {
		t.Errorf("after release and Close: %+v, want %d sent, %d dropped", s, c.QueueSize+1, calls-c.QueueSize+1)
	}
}

// Close returns once its context ends, even with a receiver that never
// answers: the POST in flight is cancelled and the queued events are lost,
// counted, and named in the error.
func TestCloseBoundsItsWait(t *testing.T) {
	srv, entered, release := hanging()
	defer srv.Close()
	defer close(release)
	c := testConfig(srv.URL)
	c.Timeout = time.Hour
	n := newNotifier(t, c, nil)
	for i := 0; i < 3; i++ {
		n.Notify(Event{Kind: KindHalted})
	}
	<-entered
	ctx, cancel := context.WithCancel(context.Background())
	res := make(chan error, 1)
	go func() { res <- n.Close(ctx) }()
	cancel()
	err := <-res
	if !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), "3 event(s)") {
		t.Errorf("Close: %v, want context.Canceled and 3 events lost", err)
	}
	if s := n.Stats(); s.Lost != 3 || s.Sent != 0 {
		t.Errorf("stats %+v, want 3 lost", s)
	}
}

type recLog struct {
	mu    sync.Mutex
	lines []string
}

func (l *recLog) add(level, msg string, kv []any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lines = append(l.lines, fmt.Sprint(level, " ", msg, " ", kv))
}
func (l *recLog) Info(msg string, kv ...any)  { l.add("INF", msg, kv) }
func (l *recLog) Warn(msg string, kv ...any)  { l.add("WRN", msg, kv) }
func (l *recLog) Error(msg string, kv ...any) { l.add("ERR", msg, kv) }
func (l *recLog) text() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.lines, "\n")
}

// The user, password and query of the URL never reach a log line or an error:
// not for a receiver that answers 500, not for one that refuses, not for a
// port nobody listens on (net/http's own error repeats the URL), nor from
// Validate.
func TestURLSecretsStayOutOfLogs(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if req.URL.Query().Get("token") == "" {
			t.Error("the receiver did not get the URL's query")
		}
		http.Error(w, "no", http.StatusInternalServerError)
	}))
	defer srv.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := ln.Addr().String()
	ln.Close()
	const secrets = "hunter2|s3cret|alice"
	for _, base := range []string{srv.URL, "http://" + closed} {
		log := &recLog{}
		u := strings.Replace(base, "http://", "http://alice:hunter2@", 1) + "/hook?token=s3cret"
		c := testConfig(u)
		c.Attempts = 2
		n := newNotifier(t, c, log)
		n.Notify(Event{Kind: KindHalted})
		closeNow(t, n)
		if n.Stats().Failed != 1 {
			t.Fatalf("%s: stats %+v, want 1 failed", base, n.Stats())
		}
		out := log.text()
		if !strings.Contains(out, "did not take an event") {
			t.Errorf("%s: no log line for the failed event:\n%s", base, out)
		}
		for _, s := range strings.Split(secrets, "|") {
			if strings.Contains(out, s) {
				t.Errorf("%s: the log shows %q:\n%s", base, s, out)
			}
		}
	}
	for _, bad := range []string{"ftp://alice:hunter2@host/x?token=s3cret", "http://alice:hunter2@/x?token=s3cret", "alice:hunter2@host"} {
		err := ValidateURL(bad)
		if err == nil {
			t.Errorf("ValidateURL(%q) passed", bad)
			continue
		}
		for _, s := range strings.Split(secrets, "|") {
			if strings.Contains(err.Error(), s) {
				t.Errorf("ValidateURL(%q): the error shows %q: %v", bad, s, err)
			}
		}
	}
}

func TestConfigValidate(t *testing.T) {
	if n, err := New(DefaultConfig(), nil); n != nil || err != nil {
		t.Errorf("no URL: %v, %v; want a nil Notifier (off)", n, err)
	}
	var off *Notifier
	off.Notify(Event{Kind: KindHalted})
	if off.Stats() != (Stats{}) || off.Close(context.Background()) != nil {
		t.Error("a nil Notifier is not a quiet no-op")
	}
	for _, tc := range []struct {
		name string
		mod  func(c *Config)
		want string
	}{
		{"ok", func(c *Config) {}, ""},
		{"https", func(c *Config) { c.URL = "https://hooks.example/x" }, ""},
		{"scheme", func(c *Config) { c.URL = "file:///tmp/x" }, "not an http:// or https:// URL"},
		{"queue", func(c *Config) { c.QueueSize = 0 }, "QueueSize"},
		{"attempts", func(c *Config) { c.Attempts = 0 }, "Attempts"},
		{"timeout", func(c *Config) { c.Timeout = 0 }, "Timeout"},
		{"backoff", func(c *Config) { c.BackoffMax = c.BackoffMin / 2 }, "backoff"},
	} {
		c := testConfig("http://127.0.0.1:1/hook")
		tc.mod(&c)
		err := c.Validate()
		if (tc.want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("%s: %v, want %q", tc.name, err, tc.want)
		}
	}
}

// BenchmarkNotifyReceiverDown is Notify's cost when nobody listens at the URL:
// the delivery goroutine is busy failing to connect, the queue is full, and
// every call is a numbered drop.
func BenchmarkNotifyReceiverDown(b *testing.B) {
	b.Run("no-journal", func(b *testing.B) { benchNotifyDown(b, "") })
	// As the node runs it: every event is keyed for the journal.
	b.Run("journal", func(b *testing.B) { benchNotifyDown(b, filepath.Join(b.TempDir(), JournalFile)) })
}

func benchNotifyDown(b *testing.B, journal string) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	c := DefaultConfig()
	c.URL = "http://" + addr + "/hook"
	c.Journal = journal
	n, err := New(c, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), CloseWait)
		defer cancel()
		_ = n.Close(ctx)
	}()
	ev := Event{Kind: KindNotReadyNearHeight, Upgrade: "v2", Height: 1200, Message: "the binary for v2 is not ready 100 blocks before its height"}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		n.Notify(ev)
	}
	b.StopTimer()
	s := n.Stats()
	b.ReportMetric(float64(s.Dropped)/float64(b.N), "dropped/op")
}

// TestJournalSendsOncePerHome: the process after a restart (or the new binary
// after a switch) does not send what the one before it sent; events that differ
// in kind, upgrade, height, sha256 or reason are sent; a damaged journal costs
// repeats only.
func TestJournalSendsOncePerHome(t *testing.T) {
	rec := &receiver{}
	srv := httptest.NewServer(rec)
	defer srv.Close()
	c := testConfig(srv.URL)
	c.Journal = filepath.Join(t.TempDir(), "invisor-webhook.json")

	seen := Event{Kind: KindPlanSeen, Upgrade: "v2", Height: 100, Message: "seen at block 7"}
	ready := Event{Kind: KindBinaryReady, Upgrade: "v2", Height: 100, SHA256: "ab"}
	first := newNotifier(t, c, nil)
	first.Notify(seen)
	first.Notify(ready)
	first.Notify(Event{Kind: KindPlanSeen, Upgrade: "v2", Height: 100, Message: "seen at block 9"}) // same event, other words
	closeNow(t, first)
	if s := first.Stats(); s.Sent != 2 || s.Repeated != 1 {
		t.Fatalf("first process: %+v, want 2 sent and 1 repeated", s)
	}

	// The next process on the home: plan-seen and binary-ready again (its hook
	// sees the plan at boot), then what only it can say.
	second := newNotifier(t, c, nil)
	second.Notify(seen)
	second.Notify(ready)
	second.Notify(Event{Kind: KindBinaryReady, Upgrade: "v2", Height: 100, SHA256: "cd"}) // another binary
	second.Notify(Event{Kind: KindSwitched, Upgrade: "v2", Height: 100})
	closeNow(t, second)
	if s := second.Stats(); s.Sent != 2 || s.Repeated != 2 {
		t.Fatalf("second process: %+v, want 2 sent and 2 repeated", s)
	}
	var kinds []string
	for _, d := range rec.got() {
		kinds = append(kinds, fmt.Sprintf("%s/%s", d.Kind, d.SHA256))
	}
	if got, want := strings.Join(kinds, " "), "plan-seen/ binary-ready/ab binary-ready/cd switched/"; got != want {
		t.Errorf("receiver got %q, want %q", got, want)
	}
	if d := rec.got(); d[2].Seq != 1 || d[3].Seq != 2 {
		t.Errorf("second process seq %d, %d: a repeat must not take a number (a gap means a loss)", d[2].Seq, d[3].Seq)
	}

	if err := os.WriteFile(c.Journal, []byte("{not json"), 0o644); err != nil {
		t.Fatal(err)
	}
	log := &recLog{}
	third := newNotifier(t, c, log)
	third.Notify(seen)
	closeNow(t, third)
	if s := third.Stats(); s.Sent != 1 || !strings.Contains(log.text(), "journal is not readable") {
		t.Errorf("damaged journal: %+v, log %q; want the event sent and the damage logged", s, log.text())
	}
}

func TestJournalKeepsTheLast(t *testing.T) {
	srv := httptest.NewServer(&receiver{})
	defer srv.Close()
	c := testConfig(srv.URL)
	c.Journal = filepath.Join(t.TempDir(), "j.json")
	c.QueueSize = JournalKeep + 10
	n := newNotifier(t, c, nil)
	for i := range JournalKeep + 5 {
		n.Notify(Event{Kind: KindStagingFailed, Upgrade: "v2", Reason: fmt.Sprint("error ", i)})
	}
	closeNow(t, n)
	if len(n.seen) != JournalKeep {
		t.Errorf("the process remembers %d events, want the journal's %d: what the journal forgets, it must forget", len(n.seen), JournalKeep)
	}
	keys := readJournal(c.Journal, staging.NopLogger{})
	if len(keys) != JournalKeep || !strings.HasSuffix(keys[0], "error 5") || !strings.HasSuffix(keys[len(keys)-1], fmt.Sprint("error ", JournalKeep+4)) {
		t.Errorf("journal holds %d keys (%q .. %q), want the newest %d (error 5 .. error %d)", len(keys), keys[0], keys[len(keys)-1], JournalKeep, JournalKeep+4)
	}
}
