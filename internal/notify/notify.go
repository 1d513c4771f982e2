package notify

import (
	"bytes"
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/invisor/invisor/internal/home"
	"github.com/invisor/invisor/staging"
)

// Version names the document format; a receiver checks it before reading the rest.
const Version = "invisor.event/1"

// Kind says what happened. Receivers must ignore kinds they do not know: new
// ones are added as the edge learns to tell them.
type Kind string

// The kinds the edge sends today.
const (
	// KindPlanSeen: an upgrade plan is in force.
	KindPlanSeen Kind = "plan-seen"
	// KindPlanGone: the plan in force vanished; Reason is "applied" or "cancelled".
	KindPlanGone Kind = "plan-gone"
	// KindBinaryReady: the plan's binary is staged and verified (SHA256 set).
	KindBinaryReady Kind = "binary-ready"
	// KindStagingFailed: a staging attempt failed and will be retried (Reason set).
	KindStagingFailed Kind = "staging-failed"
	// KindStagingRefused: staging refused the plan and will not retry it (Reason set).
	KindStagingRefused Kind = "staging-refused"
	// KindNotReadyNearHeight: the plan's height is near and its binary is not ready.
	KindNotReadyNearHeight Kind = "not-ready-near-height"
	// KindHalted: the chain halted at the plan's height (Path: the halt path taken).
	KindHalted Kind = "halted"
	// KindSwitched: the upgrade binary runs, after a switch (sent by the new binary).
	KindSwitched Kind = "switched"
	// KindHealthy: after the switch, the block after the upgrade height was
	// committed (and this validator signed after it).
	KindHealthy Kind = "healthy"
	// KindStalled: after the switch, the block after the upgrade height was not
	// committed in time; Reason says whether the handler failed here or the node
	// waits for the network.
	KindStalled Kind = "stalled"
	// KindProposalChecked: a software-upgrade proposal in its voting period was
	// checked for this node's platform (Reason: the failure, if any).
	KindProposalChecked Kind = "proposal-checked"
)

// Defaults of Config.
const (
	DefaultQueueSize  = 256
	DefaultAttempts   = 4
	DefaultTimeout    = 5 * time.Second
	DefaultBackoffMin = 500 * time.Millisecond
	DefaultBackoffMax = 8 * time.Second
)

// CloseWait is how long the edge lets Close drain at a stop and before an exec:
// long enough for a receiver that answers to take the last events (a POST on
// the loopback or a LAN takes milliseconds), short enough that a receiver that
// is down adds little to the switch's downtime.
const CloseWait = 300 * time.Millisecond

// Config says where documents go and how hard to try.
type Config struct {
	// URL is the webhook, http or https; empty means no notifications (New
	// returns a nil Notifier, whose methods do nothing).
	URL string
	// Home and ChainID identify the node in every document ("" leaves them out).
	Home, ChainID string
	// QueueSize bounds the events waiting to be sent; more are dropped.
	QueueSize int
	// Attempts is how many POSTs one event gets in all (at least 1).
	Attempts int
	// Timeout bounds one POST, from dial to the response's status.
	Timeout time.Duration
	// BackoffMin is the first wait before a retry; each further wait doubles,
	// up to BackoffMax. Each wait is jittered down by up to half.
	BackoffMin, BackoffMax time.Duration
	// Journal is a file that remembers which events this home has queued
	// (JournalKeep of them), so that a restart, or the new binary after a
	// switch, does not send an event it already sent ("" remembers nothing: each
	// process sends what it sees). The edge puts it under <home>/cosmovisor.
	Journal string
}

// JournalKeep is how many event keys the journal keeps.
const JournalKeep = 512

// JournalFile is the journal's name under <home>/cosmovisor.
const JournalFile = "invisor-webhook.json"

// JournalPath returns <home>/cosmovisor/invisor-webhook.json.
func JournalPath(nodeHome string) string { return filepath.Join(nodeHome, home.RootDir, JournalFile) }

// DefaultConfig returns the defaults, with no URL.
func DefaultConfig() Config {
	return Config{QueueSize: DefaultQueueSize, Attempts: DefaultAttempts, Timeout: DefaultTimeout,
		BackoffMin: DefaultBackoffMin, BackoffMax: DefaultBackoffMax}
}

// Validate checks c; an empty URL is valid (off).
func (c Config) Validate() error {
	if c.URL != "" {
		if err := ValidateURL(c.URL); err != nil {
			return err
		}
	}
	switch {
	case c.QueueSize < 1:
		return fmt.Errorf("notify: QueueSize %d, want at least 1", c.QueueSize)
	case c.Attempts < 1:
		return fmt.Errorf("notify: Attempts %d, want at least 1", c.Attempts)
	case c.Timeout <= 0:
		return fmt.Errorf("notify: Timeout %v, want a positive duration", c.Timeout)
	case c.BackoffMin <= 0 || c.BackoffMax < c.BackoffMin:
		return fmt.Errorf("notify: backoff %v..%v, want 0 < BackoffMin <= BackoffMax", c.BackoffMin, c.BackoffMax)
	}
	return nil
}

// ValidateURL says whether raw can be a webhook: an absolute http or https URL
// with a host. The error does not repeat the URL: a malformed one may put its
// credentials where no redaction finds them.
func ValidateURL(raw string) error {
	u, err := url.Parse(raw)
	if err != nil {
		return errors.New("the webhook URL does not parse; want http://host/path or https://host/path")
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return errors.New("the webhook URL is not an http:// or https:// URL; want http://host/path or https://host/path")
	}
	if u.Host == "" {
		return errors.New("the webhook URL has no host; want an http:// or https:// URL with a host")
	}
	return nil
}

// Event is what the edge reports. Time, when zero, is set by Notify. Two events
// with the same Kind, Upgrade, Height, SHA256 and Reason are the same event: a
// Notifier with a Journal sends it once.
type Event struct {
	Kind    Kind
	Time    time.Time
	Upgrade string // plan name
	Height  int64  // plan height
	Message string // one sentence an operator can act on
	// Optional detail.
	SHA256 string // the binary's sha256
	Reason string // why (a staging error, how the plan went, how the halt path was chosen)
	Path   string // the halt path taken
}

// key identifies ev for the journal.
func (ev Event) key() string {
	var h [20]byte
	height := strconv.AppendInt(h[:0], ev.Height, 10)
	var b strings.Builder
	b.Grow(len(ev.Kind) + len(ev.Upgrade) + len(height) + len(ev.SHA256) + len(ev.Reason) + 4)
	for i, part := range [...]string{string(ev.Kind), ev.Upgrade, string(height), ev.SHA256, ev.Reason} {
		if i > 0 {
			b.WriteByte(0)
		}
		b.WriteString(part)
	}
	return b.String()
}

// Document is the JSON POSTed for one event (Version "invisor.event/1").
type Document struct {
	Version string    `json:"version"`
	Process string    `json:"process"` // drawn once per process
	Seq     uint64    `json:"seq"`     // from 1 per process, in Notify's order
	Kind    Kind      `json:"kind"`
	Time    time.Time `json:"time"`
	Home    string    `json:"home,omitempty"`
	ChainID string    `json:"chain_id,omitempty"`
	Upgrade string    `json:"upgrade,omitempty"`
	Height  int64     `json:"height,omitempty"`
	Message string    `json:"message"`
	SHA256  string    `json:"sha256,omitempty"`
	Reason  string    `json:"reason,omitempty"`
	Path    string    `json:"path,omitempty"`

	key string // Event.key, for the journal
}

// Stats counts what became of the events Notify took.
type Stats struct {
	Queued  int    // waiting now (the one being sent not included)
	Sent    uint64 // delivered (a 2xx answer)
	Dropped uint64 // not queued: the queue was full, or the Notifier closed
	Failed  uint64 // every attempt failed, or the receiver refused it (4xx)
	Lost    uint64 // still queued or in flight when Close's context ended
	// Repeated counts events not sent because the journal says this home sent
	// them already (a restart, or the new binary after a switch).
	Repeated uint64
}

// Notifier sends events to one webhook. One goroutine, started by New, owns
// delivery; Notify and Stats may be called from any goroutine. A nil *Notifier
// is a Notifier that is off.
type Notifier struct {
	cfg     Config
	log     staging.Logger
	client  *http.Client
	target  string // the URL, redacted, for logs and errors
	process string

	mu     sync.Mutex // orders seq with the queue; guards closed and seen
	seq    uint64
	closed bool
	queue  chan Document
	// seen holds the journal's keys (nil without a journal); journal is their
	// order, oldest first, written by the delivery goroutine only.
	seen    map[string]bool
	journal []string

	abort     chan struct{} // closed when Close's context ends: stop sending
	abortOnce sync.Once
	done      chan struct{} // closed when the delivery goroutine returned

	sent, dropped, failed, lost, repeated atomic.Uint64
}

// New validates cfg and starts the delivery goroutine; with cfg.URL empty it
// returns nil (off). log may be nil.
func New(cfg Config, log staging.Logger) (*Notifier, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.URL == "" {
		return nil, nil
	}
	if log == nil {
		log = staging.NopLogger{}
	}
	var id [8]byte
	_, _ = crand.Read(id[:])
	tr := http.DefaultTransport.(*http.Transport).Clone()
	n := &Notifier{cfg: cfg, log: log, target: staging.Redact(cfg.URL), process: hex.EncodeToString(id[:]),
		client: &http.Client{Transport: tr, Timeout: cfg.Timeout,
			// A webhook that redirects is misconfigured; following it would turn the POST into a GET.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }},
		queue: make(chan Document, cfg.QueueSize), abort: make(chan struct{}), done: make(chan struct{})}
	if cfg.Journal != "" {
		n.journal = readJournal(cfg.Journal, log)
		n.seen = make(map[string]bool, len(n.journal))
		for _, k := range n.journal {
			n.seen[k] = true
		}
	}
	go n.run()
	return n, nil
}

// Notify queues ev and returns at once; it never blocks and never fails. When
// the queue is full or the Notifier is closed, ev is dropped and counted.
func (n *Notifier) Notify(ev Event) {
	if n == nil {
		return
	}
	if ev.Time.IsZero() {
		ev.Time = time.Now()
	}
	queued := false
	var key string
	n.mu.Lock()
	if n.seen != nil {
		key = ev.key()
		if n.seen[key] {
			n.mu.Unlock()
			n.repeated.Add(1)
			return
		}
	}
	n.seq++
	if !n.closed {
		select {
		case n.queue <- Document{Version: Version, Process: n.process, Seq: n.seq, Kind: ev.Kind, Time: ev.Time.UTC(),
			Home: n.cfg.Home, ChainID: n.cfg.ChainID, Upgrade: ev.Upgrade, Height: ev.Height, Message: ev.Message,
			SHA256: ev.SHA256, Reason: ev.Reason, Path: ev.Path, key: key}:
			queued = true
			if n.seen != nil {
				n.seen[key] = true
			}
		default:
		}
	}
	n.mu.Unlock()
	if !queued {
		n.dropped.Add(1)
	}
}

// Stats returns the counters; the zero Stats for a nil Notifier.
func (n *Notifier) Stats() Stats {
	if n == nil {
		return Stats{}
	}
	return Stats{Queued: len(n.queue), Sent: n.sent.Load(), Dropped: n.dropped.Load(), Failed: n.failed.Load(),
		Lost: n.lost.Load(), Repeated: n.repeated.Load()}
}

// Close stops taking events and waits, until ctx is done, for the queued ones
// to be sent. When ctx ends first, the POST in flight is cancelled and what
// was still queued is counted as lost; the error says how many. Close returns
// promptly after ctx ends; later calls only wait for the same end.
func (n *Notifier) Close(ctx context.Context) error {
	if n == nil {
		return nil
	}
	n.mu.Lock()
	if !n.closed {
		n.closed = true
		close(n.queue)
	}
	n.mu.Unlock()
	select {
	case <-n.done:
		return nil
	case <-ctx.Done():
	}
	before := n.lost.Load()
	n.abortOnce.Do(func() { close(n.abort) })
	<-n.done
	return fmt.Errorf("notify: %d event(s) for %s not delivered before the shutdown bound: %w",
		n.lost.Load()-before, n.target, context.Cause(ctx))
}

// run delivers the queue in order until it is closed and empty, or aborted.
func (n *Notifier) run() {
	defer close(n.done)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-n.abort:
			cancel()
		case <-ctx.Done():
		}
	}()
	var reported uint64
	for doc := range n.queue {
		if ctx.Err() != nil {
			n.lost.Add(1)
			continue
		}
		n.remember(doc.key)
		attempts, err := n.deliver(ctx, doc)
		switch {
		case err == nil:
			n.sent.Add(1)
		case ctx.Err() != nil:
			n.lost.Add(1)
			continue
		default:
			n.failed.Add(1)
			n.log.Warn("invisor: the webhook did not take an event; it is not sent again", "url", n.target,
				"kind", string(doc.Kind), "seq", doc.Seq, "attempts", attempts, "err", err)
		}
		if d := n.dropped.Load(); d != reported {
			n.log.Warn("invisor: webhook events were dropped because the queue was full (the receiver is slow or down)",
				"url", n.target, "dropped_since_last_report", d-reported, "dropped_total", d)
			reported = d
		}
	}
}

// remember adds key to the journal before its event is sent, so a process that
// follows this one does not send it again; an event queued but never taken off
// the queue (the process ended) is not remembered and a later process may send
// it. A journal that cannot be written costs repeats, never an event.
func (n *Notifier) remember(key string) {
	if key == "" || n.cfg.Journal == "" {
		return
	}
	n.journal = append(n.journal, key)
	if drop := len(n.journal) - JournalKeep; drop > 0 {
		// What the journal forgets, this process forgets too: seen stays bounded.
		n.mu.Lock()
		for _, k := range n.journal[:drop] {
			delete(n.seen, k)
		}
		n.mu.Unlock()
		n.journal = append([]string(nil), n.journal[drop:]...)
	}
	b, _ := json.Marshal(journalFile{Version: 1, Keys: n.journal})
	if err := home.WriteFile(n.cfg.Journal, b, 0o644); err != nil {
		n.log.Warn("invisor: could not write the webhook journal; a restart may send this event again", "file", n.cfg.Journal, "err", err)
	}
}

// journalFile is the content of Config.Journal.
type journalFile struct {
	Version int      `json:"version"`
	Keys    []string `json:"keys"`
}

// readJournal returns the keys in file (none when it is missing or unreadable:
// the worst that costs is an event sent again).
func readJournal(file string, log staging.Logger) []string {
	b, err := os.ReadFile(file)
	if err != nil {
		if !errors.Is(err, os.ErrNotExist) {
			log.Warn("invisor: could not read the webhook journal; events may be sent again", "file", file, "err", err)
		}
		return nil
	}
	var j journalFile
	if err := json.Unmarshal(b, &j); err != nil || j.Version != 1 {
		log.Warn("invisor: the webhook journal is not readable; events may be sent again", "file", file, "err", err)
		return nil
	}
	if len(j.Keys) > JournalKeep {
		j.Keys = j.Keys[len(j.Keys)-JournalKeep:]
	}
	return j.Keys
}

// errRefused marks an answer a retry cannot change.
var errRefused = errors.New("the receiver refused the document")

// deliver POSTs doc until it is taken, refused, its attempts are spent or ctx
// ends, and says how many POSTs it made.
func (n *Notifier) deliver(ctx context.Context, doc Document) (int, error) {
	body, err := json.Marshal(doc)
	if err != nil {
		return 0, fmt.Errorf("encoding the document: %w", err)
	}
	wait := n.cfg.BackoffMin
	for attempt := 1; ; attempt++ {
		err := n.post(ctx, body)
		if err == nil || errors.Is(err, errRefused) || attempt >= n.cfg.Attempts || ctx.Err() != nil {
			return attempt, err
		}
		t := time.NewTimer(wait/2 + rand.N(wait/2+1))
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return attempt, err
		}
		wait = min(2*wait, n.cfg.BackoffMax)
	}
}

// post makes one POST, bounded by Config.Timeout. Its errors never hold the
// URL unredacted (net/http's *url.Error keeps the user name and the query).
func (n *Notifier) post(ctx context.Context, body []byte) error {
	ctx, cancel := context.WithTimeout(ctx, n.cfg.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, n.cfg.URL, bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("POST %s: %w", n.target, stripURL(err))
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "invisor-notify/1")
	resp, err := n.client.Do(req)
	if err != nil {
		return fmt.Errorf("POST %s: %w", n.target, stripURL(err))
	}
	// Read a little so the connection can be reused, and no more.
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4<<10))
	_ = resp.Body.Close()
	switch c := resp.StatusCode; {
	case c >= 200 && c < 300:
		return nil
	case c == http.StatusRequestTimeout || c == http.StatusTooManyRequests || c >= 500:
		return fmt.Errorf("POST %s: the receiver answered %s", n.target, resp.Status)
	default:
		return fmt.Errorf("POST %s: answered %s: %w", n.target, resp.Status, errRefused)
	}
}

// stripURL drops the *url.Error wrapper, whose text repeats the URL.
func stripURL(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}
