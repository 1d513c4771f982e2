package invisor

import (
	"context"
	"strings"
	"testing"

	"github.com/invisor/invisor/internal/notify"
	"github.com/invisor/invisor/staging"
)

// Each proposal check that reached a result is said once, in the log (Error
// when the binary would not run) and to the webhook; a check still queued or
// running says nothing, and a proposal checked again with another result (its
// plan changed) is said again.
func TestProposalChecksSaidOnce(t *testing.T) {
	url, docs := webhook(t)
	sn := notifiedNode(t, url)
	plan := staging.Plan{Name: "v5", Height: 120, Info: "i"}
	good := staging.ProposalCheck{ID: 12, Plan: plan, Platform: "linux/amd64", State: staging.CheckVerified, SHA256: "ab12", Handler: "yes"}
	bad := staging.ProposalCheck{ID: 13, Plan: plan, Platform: "linux/amd64", State: staging.CheckFailed,
		Err: "checksum mismatch: expected sha256 00, got ab12"}
	queued := staging.ProposalCheck{ID: 14, Plan: plan, State: staging.CheckQueued}
	said := map[uint64]string{}
	sn.sayChecks([]staging.ProposalCheck{good, bad, queued}, said)
	sn.sayChecks([]staging.ProposalCheck{good, bad, queued}, said) // the next poll: nothing new

	first, second := next(t, docs), next(t, docs)
	if first.Kind != notify.KindProposalChecked || first.Message != good.Summary() || first.SHA256 != "ab12" || first.Reason != "proposal 12: verified" {
		t.Errorf("first event %+v, want proposal 12 verified", first)
	}
	if second.Kind != notify.KindProposalChecked || !strings.Contains(second.Reason, "checksum mismatch") || second.Upgrade != "v5" || second.Height != 120 {
		t.Errorf("second event %+v, want proposal 13's failure", second)
	}
	if !sn.logs.has("binary verified (sha256 ab12)") || !sn.logs.has(`"level":"error"`) {
		t.Errorf("log lacks the verified line or the error line:\n%s", strings.Join(sn.logs.lines, ""))
	}

	// Proposal 13 re-checked for a changed plan: said again; 12 left voting: forgotten.
	bad.Plan.Info, bad.State, bad.Err = "j", staging.CheckVerified, ""
	sn.sayChecks([]staging.ProposalCheck{bad}, said)
	if again := next(t, docs); again.Reason != "proposal 13: verified" {
		t.Errorf("after the plan changed: %+v, want proposal 13 verified", again)
	}
	if _, ok := said[12]; ok {
		t.Error("proposal 12 is no longer checked but still remembered")
	}
	if err := sn.notifier.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	select {
	case d := <-docs:
		t.Errorf("an extra event: %+v", d)
	default:
	}
}
