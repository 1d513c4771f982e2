package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/invisor/invisor/example-app/localnet"
	"github.com/invisor/invisor/internal/notify"
	"github.com/invisor/invisor/internal/status"
	"github.com/invisor/invisor/staging"
)

// webhook is a receiver of invisor's events on 127.0.0.1: it keeps every
// document in the order they arrived.
type webhook struct {
	srv  *httptest.Server
	mu   sync.Mutex
	docs []notify.Document
}

func newWebhook(t *testing.T) *webhook {
	w := &webhook{}
	w.srv = httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		var d notify.Document
		b, _ := io.ReadAll(r.Body)
		if err := json.Unmarshal(b, &d); err != nil || d.Version != notify.Version {
			http.Error(rw, "bad document", http.StatusBadRequest)
			return
		}
		w.mu.Lock()
		w.docs = append(w.docs, d)
		w.mu.Unlock()
		rw.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(w.srv.Close)
	return w
}

func (w *webhook) got() []notify.Document {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]notify.Document(nil), w.docs...)
}

// otherArch is a platform key of this OS that this machine cannot run.
func otherArch() string {
	if runtime.GOARCH == "arm64" {
		return runtime.GOOS + "/amd64"
	}
	return runtime.GOOS + "/arm64"
}

// TestProposalChecksDuringVoting has four software-upgrade proposals in their
// voting period at once on a one-validator chain whose node runs invisor with
// downloads allowed and a webhook:
//   - P1 "v2", v2's binary with its checksum (and, under another arch's key, the
//     same file): reported verified, with handler v2, before its vote ends; it
//     passes, and the switch at H needs no further download of its binary;
//   - P2 "v2" with a wrong checksum: reported as a checksum mismatch;
//   - P3 "v2" naming exampled-v1 (no handler v2): reported as refused;
//   - P4 "v3", a good v3 binary, gets no vote and fails: nothing of it is left.
//
// `invisor check-proposal` says the same on demand, for every platform of the
// plan (the other arch's key names an amd64/arm64 file of the wrong arch). The
// webhook gets the upgrade's whole sequence once, in order.
func TestProposalChecksDuringVoting(t *testing.T) {
	t.Parallel() // a one-node chain that mostly waits for blocks: runs beside another (make test-e2e: -parallel 2)
	dir := builds(t)
	ph := newPhases(t)
	v1, v2, v3 := filepath.Join(dir, "exampled-v1"), filepath.Join(dir, "exampled-v2"), filepath.Join(dir, "exampled-v3")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	work := t.TempDir()
	hook := newWebhook(t)

	// Four checks (download, preflight and probe each) must end within it on a
	// loaded 2-core CI machine, beside another test.
	const voting = 40 * time.Second
	node, err := localnet.NewSingle(ctx, v1, filepath.Join(work, "node0"),
		localnet.Settings{ChainID: "invisor-proposals-1", VotingPeriod: voting})
	if err != nil {
		t.Fatal(err)
	}
	// Full disk speed: a real vote lasts days, this one seconds.
	node.Env = []string{"DAEMON_ALLOW_DOWNLOAD_BINARIES=true", "INVISOR_STAGING_DISK_SHARE=1", "INVISOR_WEBHOOK_URL=" + hook.srv.URL + "/hook?token=s3cret"}
	t.Cleanup(func() {
		if err := node.Stop(15 * time.Second); err != nil {
			t.Error(err)
		}
		if t.Failed() {
			t.Logf("---- node: invisor's lines and errors ----\n%s", keyLines(node.LogTail(64<<20), 150))
		}
	})
	srv, err := localnet.ServeDir(filepath.Join(work, "www"))
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	serve := func(name, bin string) (path, sha string) {
		t.Helper()
		path = "/" + name + "/" + localnet.DaemonName
		if err := os.MkdirAll(filepath.Join(srv.Dir, name), 0o755); err != nil {
			t.Fatal(err)
		}
		copyExec(t, bin, filepath.Join(srv.Dir, name, localnet.DaemonName))
		sha, err := localnet.SHA256File(bin)
		if err != nil {
			t.Fatal(err)
		}
		return path, sha
	}
	here := runtime.GOOS + "/" + runtime.GOARCH
	info := func(bins map[string]string) string {
		b, _ := json.Marshal(map[string]any{"binaries": bins})
		return string(b)
	}
	p1Path, v2SHA := serve("p1", v2)
	p2Path, _ := serve("p2", v2)
	p3Path, v1SHA := serve("p3", v1)
	p4Path, v3SHA := serve("p4", v3)
	wrong := strings.Repeat("0", 64)

	if err := node.Start(); err != nil {
		t.Fatal(err)
	}
	now, err := node.WaitHeight(ctx, 2)
	if err != nil {
		t.Fatal(err)
	}
	pid := node.Pid()
	// The plan height comes after every vote ends: the voting period and the
	// submissions at about 0.35 s a block, with room to spare.
	h := now.Height + int64((voting+14*time.Second)/(350*time.Millisecond))
	type prop struct {
		name, what string
		height     int64
		info       string
		id         uint64
	}
	props := []*prop{
		{name: "v2", what: "good", height: h, info: info(map[string]string{
			here: srv.URL + p1Path + "?checksum=sha256:" + v2SHA, otherArch(): srv.URL + p1Path + "?checksum=sha256:" + v2SHA})},
		{name: "v2", what: "wrong checksum", height: h, info: info(map[string]string{here: srv.URL + p2Path + "?checksum=sha256:" + wrong})},
		{name: "v2", what: "no handler", height: h, info: info(map[string]string{here: srv.URL + p3Path + "?checksum=sha256:" + v1SHA})},
		{name: "v3", what: "rejected", height: h + 200, info: info(map[string]string{here: srv.URL + p4Path + "?checksum=sha256:" + v3SHA})},
	}
	ph.step(t, "submitting %d proposals (voting period %s)", len(props), voting)
	submitted := time.Now()
	for _, p := range props {
		if p.id, err = node.ProposeUpgrade(ctx, p.name, p.height, p.info); err != nil {
			t.Fatalf("proposal %s: %v", p.what, err)
		}
		t.Logf("proposal %d (%s): %q at %d", p.id, p.what, p.name, p.height)
	}
	votesEnd := submitted.Add(voting)
	if err := node.Vote(ctx, props[0].id); err != nil {
		t.Fatal(err)
	}

	// During the vote: every proposal checked, from the status file the node writes.
	ph.step(t, "waiting for every proposal to be checked before %s", votesEnd.Format("15:04:05.0"))
	var checks map[uint64]staging.ProposalCheck
	for {
		checks = map[uint64]staging.ProposalCheck{}
		if st, ok, _ := status.Read(node.Home); ok {
			for _, c := range st.Proposals {
				if c.State != staging.CheckQueued && c.State != staging.CheckRunning {
					checks[c.ID] = c
				}
			}
		}
		if len(checks) == len(props) {
			break
		}
		if time.Now().After(votesEnd) {
			t.Fatalf("not every proposal was checked before the first vote ended: %+v", checks)
		}
		select {
		case <-ctx.Done():
			t.Fatalf("not every proposal was checked during the vote: %+v", checks)
		case <-time.After(200 * time.Millisecond):
		}
	}
	hitsChecked := srv.Hits(p1Path)
	for _, p := range props {
		c := checks[p.id]
		t.Logf("%s: %s", p.what, c.Summary())
		if c.VotingEnd.IsZero() || !c.Checked.Before(c.VotingEnd) {
			t.Errorf("%s: checked at %v, voting ends %v: the check must come before the vote ends", p.what, c.Checked, c.VotingEnd)
		}
	}
	if c := checks[props[0].id]; c.State != staging.CheckVerified || c.Handler != "yes" || c.SHA256 != v2SHA || c.Kept == "" {
		t.Errorf("good proposal: %+v, want verified with handler v2 and the binary kept", c)
	}
	if c := checks[props[1].id]; c.State != staging.CheckFailed || !strings.Contains(c.Err, "checksum") || !strings.Contains(c.Err, v2SHA) {
		t.Errorf("wrong checksum: %+v, want failed naming the checksum mismatch and the sha256 it got", c)
	}
	if c := checks[props[2].id]; c.State != staging.CheckRefused || !strings.Contains(c.Summary(), "no upgrade handler") {
		t.Errorf("binary without the handler: %+v (%s), want refused", c, c.Summary())
	}
	if c := checks[props[3].id]; c.State != staging.CheckVerified || c.Kept == "" {
		t.Errorf("v3 proposal: %+v, want verified and kept until its vote ends", c)
	}
	if hitsChecked != 1 {
		t.Errorf("the good proposal's binary was fetched %d times by the checks, want 1", hitsChecked)
	}

	// The same on demand, for every platform the plan names.
	ph.step(t, "invisor check-proposal on demand")
	node2 := fmt.Sprintf("tcp://127.0.0.1:%d", node.RPCPort)
	out, err := node.CLI(ctx, "invisor", "check-proposal", fmt.Sprint(props[0].id), "--platform", "all", "--node", node2)
	if err == nil || !strings.Contains(string(out)+err.Error(), here+" binary verified") || !strings.Contains(string(out)+err.Error(), otherArch()) {
		t.Errorf("check-proposal --platform all on the good proposal: %v\n%s\nwant %s verified and %s failing (the file is not for that arch)", err, out, here, otherArch())
	}
	out, err = node.CLI(ctx, "invisor", "check-proposal", fmt.Sprint(props[1].id), "--node", node2)
	if err == nil || !strings.Contains(string(out), "checksum mismatch") {
		t.Errorf("check-proposal on the wrong checksum: %v\n%s", err, out)
	}
	hitsBeforePass := srv.Hits(p1Path)

	// The vote ends: P1 passes, the others fail.
	ph.step(t, "waiting for the votes to end and the upgrade at %d", h)
	if err := node.WaitPassed(ctx, props[0].id); err != nil {
		t.Fatal(err)
	}
	for _, p := range props[1:] {
		if err := node.WaitPassed(ctx, p.id); err == nil || !strings.Contains(err.Error(), "REJECTED") && !strings.Contains(err.Error(), "FAILED") {
			t.Errorf("proposal %s: %v, want it not to pass", p.what, err)
		}
	}
	if _, err := node.WaitHeight(ctx, h+2); err != nil {
		t.Fatal(err)
	}
	info2, err := node.AppInfo(ctx)
	if err != nil || info2.Version != "v2.0.0" || node.Pid() != pid {
		t.Fatalf("after the upgrade: %+v %v, PID %d (was %d); want v2.0.0 in the same process", info2, err, node.Pid(), pid)
	}
	if n := srv.Hits(p1Path) - hitsBeforePass; n != 0 {
		t.Errorf("the switch downloaded the binary %d more time(s); the one verified during the vote must be installed", n)
	}
	if rec, _, ok := localnet.Staged(node.Home, "v2"); !ok || rec.SHA256 != v2SHA {
		t.Errorf("v2 install: %+v %v, want the verified v2 binary", rec, ok)
	}
	// Nothing of the rejected proposals is left, and the area is empty.
	if _, err := os.Stat(filepath.Join(node.Home, "cosmovisor", "upgrades", "v3")); !os.IsNotExist(err) {
		t.Errorf("upgrades/v3 exists (%v): a proposal that failed its vote must leave nothing staged", err)
	}

	// The webhook: the proposals' checks, then the upgrade's sequence, once each.
	ph.step(t, "waiting for the webhook's sequence to end with healthy")
	var seq []string
	deadline := time.Now().Add(40 * time.Second)
	for {
		seq = seq[:0]
		for _, d := range hook.got() {
			if d.Kind == notify.KindProposalChecked {
				seq = append(seq, string(d.Kind))
				continue
			}
			if d.Upgrade == "v2" {
				seq = append(seq, string(d.Kind))
			}
		}
		if strings.HasSuffix(strings.Join(seq, " "), "switched healthy") || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	got := strings.Join(seq, " ")
	want := "plan-seen binary-ready halted switched healthy"
	if strings.Count(got, string(notify.KindProposalChecked)) != len(props) || !strings.HasSuffix(strings.ReplaceAll(got, "proposal-checked ", ""), want) ||
		strings.Index(got, "proposal-checked") > strings.Index(got, "plan-seen") {
		t.Errorf("webhook got %q; want 4 proposal-checked (the first before plan-seen), then %q once each, in order", got, want)
	}
	seen := map[string]bool{}
	for _, d := range hook.got() {
		k := fmt.Sprint(d.Kind, d.Upgrade, d.Height, d.SHA256, d.Reason)
		if seen[k] {
			t.Errorf("webhook got %s for %q twice", d.Kind, d.Upgrade)
		}
		seen[k] = true
		if strings.Contains(d.Message+d.Reason, "s3cret") {
			t.Errorf("the webhook's token leaked into a document: %+v", d)
		}
	}
	// The rejected proposal's verified binary is removed once the node's reader
	// saw its vote end (after staging's short grace).
	ph.step(t, "waiting for the proposal areas to be removed")
	for end := time.Now().Add(60 * time.Second); ; time.Sleep(500 * time.Millisecond) {
		areas, _ := os.ReadDir(localnet.Layout(node.Home).ProposalsRoot())
		if len(areas) == 0 {
			break
		}
		if time.Now().After(end) {
			t.Errorf("proposal areas left a minute after every vote ended: %v", areas)
			break
		}
	}
}
