package invisor

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/invisor/invisor/hook"
	"github.com/invisor/invisor/internal/notify"
	"github.com/invisor/invisor/relauncher"
	"github.com/invisor/invisor/staging"
)

// webhook is a loopback receiver; every document it takes is sent on docs.
func webhook(t *testing.T) (string, chan notify.Document) {
	t.Helper()
	docs := make(chan notify.Document, 64)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var d notify.Document
		if err := json.NewDecoder(r.Body).Decode(&d); err != nil {
			t.Errorf("the webhook got a document it cannot read: %v", err)
		}
		docs <- d
	}))
	t.Cleanup(srv.Close)
	return srv.URL + "/hook?token=s3cret", docs
}

// next returns the next document the webhook took.
func next(t *testing.T, docs chan notify.Document) notify.Document {
	t.Helper()
	select {
	case d := <-docs:
		return d
	case <-time.After(waitLimit):
		t.Fatal("the webhook got no further document")
		return notify.Document{}
	}
}

func notifiedNode(t *testing.T, url string) *scheduledNode {
	t.Helper()
	sn := newScheduledNode(t, 40, 39)
	sn.halt = nil // the plan comes from governance here
	c := notify.DefaultConfig()
	c.URL, c.Home, c.ChainID = url, sn.layout.Home(), "test-1"
	nt, err := notify.New(c, sn.log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = nt.Close(context.Background()) })
	sn.notifier = nt
	return sn
}

// A node with webhook-url set tells the webhook, in order and numbered, that
// the plan is seen, that its binary is staged and verified, and that the chain
// halted for it, with the halt path taken (the clean stop: CometBFT is in
// consensus). Being near the height with the binary ready says nothing more.
func TestWebhookGetsPlanSeenReadyAndHalted(t *testing.T) {
	url, docs := webhook(t)
	sn := notifiedNode(t, url)
	p := sn.s.Plan
	plan := hook.Plan{Name: p.Name, Height: p.Height, Info: p.Info}

	sn.PlanChanged(&plan, 10)
	seen := next(t, docs)
	ready := next(t, docs) // the binary is staged already: watchReady proves it
	for _, h := range []int64{11, 39} {
		sn.Height(h)
	}
	sn.Halted(plan, p.Height)
	sn.Halted(plan, p.Height) // x/upgrade refuses the block again: one event
	halted := next(t, docs)
	if err := sn.notifier.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	select {
	case d := <-docs:
		t.Fatalf("an event more: %+v", d)
	default:
	}

	for i, tc := range []struct {
		d    notify.Document
		kind notify.Kind
	}{{seen, notify.KindPlanSeen}, {ready, notify.KindBinaryReady}, {halted, notify.KindHalted}} {
		d := tc.d
		if d.Kind != tc.kind || d.Seq != uint64(i+1) || d.Version != notify.Version || d.Upgrade != "v3" || d.Height != 40 ||
			d.Home != sn.layout.Home() || d.ChainID != "test-1" || d.Message == "" || d.Process != seen.Process {
			t.Errorf("document %d: %+v, want %s, seq %d", i, d, tc.kind, i+1)
		}
	}
	if len(ready.SHA256) != 64 {
		t.Errorf("binary-ready without the binary's sha256: %+v", ready)
	}
	if halted.Path != string(relauncher.PathCleanStop) || halted.Reason == "" {
		t.Errorf("halted: path %q, reason %q; want %s and how it was chosen", halted.Path, halted.Reason, relauncher.PathCleanStop)
	}
	if sn.logs.has("s3cret") {
		t.Error("the webhook's token is in the node's log")
	}
}

// Within staging.HurryWithinBlocks of the height without a ready binary, the
// webhook hears it once; a block that crosses no line allocates nothing; the
// plan's end says whether it was applied or cancelled.
func TestWebhookNotReadyNearHeightAndPlanGone(t *testing.T) {
	url, docs := webhook(t)
	sn := notifiedNode(t, url)
	plan := staging.Plan{Name: "v9", Height: 1000}
	sn.notePlan(&hook.Plan{Name: plan.Name, Height: plan.Height}, 5)
	if d := next(t, docs); d.Kind != notify.KindPlanSeen || d.Upgrade != "v9" {
		t.Fatalf("first: %+v", d)
	}
	if a := testing.AllocsPerRun(100, func() { sn.nearHeight(800) }); a != 0 {
		t.Errorf("nearHeight allocates %v per block far from the height", a)
	}
	for _, h := range []int64{899, 900, 901, 950} {
		sn.nearHeight(h)
	}
	d := next(t, docs)
	if d.Kind != notify.KindNotReadyNearHeight || d.Upgrade != "v9" || d.Height != 1000 {
		t.Fatalf("near: %+v", d)
	}
	if a := testing.AllocsPerRun(100, func() { sn.nearHeight(960) }); a != 0 {
		t.Errorf("nearHeight allocates %v per block once it has spoken", a)
	}
	sn.notePlan(nil, 1000) // the chain reached the height: applied
	if d := next(t, docs); d.Kind != notify.KindPlanGone || d.Reason != "applied" {
		t.Errorf("gone at the height: %+v", d)
	}
	sn.notePlan(&hook.Plan{Name: "v10", Height: 2000}, 1001)
	next(t, docs)
	sn.notePlan(nil, 1500)
	if d := next(t, docs); d.Kind != notify.KindPlanGone || d.Reason != "cancelled" || d.Upgrade != "v10" {
		t.Errorf("gone before the height: %+v", d)
	}
}

// The status reporter's snapshots tell the webhook of a failed attempt once
// per distinct error, and of a refusal once.
func TestWebhookStagingFailures(t *testing.T) {
	url, docs := webhook(t)
	sn := notifiedNode(t, url)
	w := &stagingWatcher{Stager: sn.stager, n: sn.node}
	p := &staging.Plan{Name: "v9", Height: 1000}
	for _, st := range []staging.Status{
		{State: staging.StateDownloading, Plan: p},
		{State: staging.StateFailed, Plan: p, Attempt: 1, Err: "connection refused"},
		{State: staging.StateFailed, Plan: p, Attempt: 1, Err: "connection refused"}, // the next snapshot
		{State: staging.StateFailed, Plan: p, Attempt: 2, Err: "connection refused"}, // the same cause again
		{State: staging.StateFailed, Plan: p, Attempt: 3, Err: "checksum mismatch"},
		{State: staging.StateRefused, Plan: p, Attempt: 4, Err: "no binary for this platform"},
		{State: staging.StateRefused, Plan: p, Attempt: 4, Err: "no binary for this platform"},
	} {
		w.observe(st)
	}
	for _, want := range []struct {
		kind   notify.Kind
		reason string
	}{{notify.KindStagingFailed, "connection refused"}, {notify.KindStagingFailed, "checksum mismatch"},
		{notify.KindStagingRefused, "no binary for this platform"}} {
		if d := next(t, docs); d.Kind != want.kind || d.Reason != want.reason || d.Upgrade != "v9" {
			t.Errorf("%+v, want %s (%s)", d, want.kind, want.reason)
		}
	}
	if err := sn.notifier.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	select {
	case d := <-docs:
		t.Fatalf("an event more: %+v", d)
	default:
	}
}
