package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/cobra"
	"github.com/spf13/viper"

	cmtcfg "github.com/cometbft/cometbft/config"

	"github.com/cosmos/cosmos-sdk/client/flags"
	"github.com/cosmos/cosmos-sdk/server"
	svrcmd "github.com/cosmos/cosmos-sdk/server/cmd"
	serverconfig "github.com/cosmos/cosmos-sdk/server/config"

	"github.com/invisor/invisor/internal/comet/comettest"
	"github.com/invisor/invisor/internal/config"
	"github.com/invisor/invisor/internal/history"
	"github.com/invisor/invisor/internal/home"
	"github.com/invisor/invisor/internal/status"
	"github.com/invisor/invisor/staging"
)

func TestParseBatch(t *testing.T) {
	type want struct {
		name, file, info, source string
		height                   int64
	}
	for _, tc := range []struct {
		name, in string
		want     []want
		wantErr  string
	}{
		{
			name: "upgrade-info.json.batch",
			in:   `[{"name":"v2","height":100,"info":"{\"binaries\":{}}"}, {"name":"v3","height":"200","info":"https://x/v3.json"}]`,
			want: []want{{name: "v2", height: 100, info: `{"binaries":{}}`, source: "batch plan info"},
				{name: "v3", height: 200, info: "https://x/v3.json", source: "batch plan info"}},
		},
		{
			name: "batch with spaces around it and x/upgrade's time",
			in:   "\n  [ {\"name\":\"v2\",\"time\":\"0001-01-01T00:00:00Z\",\"height\":\"7\"} ]\n",
			want: []want{{name: "v2", height: 7, source: "batch plan info"}},
		},
		{
			name: "add-batch-upgrade list, commas",
			in:   "v2:/opt/v2/appd:100,v3:/opt/v3/appd:200",
			want: []want{{name: "v2", file: "/opt/v2/appd", height: 100}, {name: "v3", file: "/opt/v3/appd", height: 200}},
		},
		{
			name: "lines, CRLF, blanks, comments, spaces, a colon in the path",
			in:   "# emergency upgrades\r\n\r\n  v2 : /opt/a:b/appd : 100 \r\n,v3:relative/appd:200,\n",
			want: []want{{name: "v2", file: "/opt/a:b/appd", height: 100}, {name: "v3", file: "relative/appd", height: 200}},
		},
		{name: "empty", in: "", wantErr: "empty"},
		{name: "blank", in: " \n\t ", wantErr: "empty"},
		{name: "only comments", in: "# nothing\n#v2:/x:1", wantErr: "lists no upgrade"},
		{name: "not a JSON list", in: `[{"name":"v2"`, wantErr: "not a JSON list"},
		{name: "a JSON object", in: `{"name":"v2","height":1}`, wantErr: "want name:path:height"},
		{name: "plan without name", in: `[{"name":"v2","height":1},{"height":2}]`, wantErr: "plan 2 of the batch"},
		{name: "plan with a bad height", in: `[{"name":"v2","height":"x"}]`, wantErr: "plan 1 of the batch"},
		{name: "two fields", in: "v2:100", wantErr: "want name:path:height"},
		{name: "no name", in: ":/x:100", wantErr: "want name:path:height"},
		{name: "no path", in: "v2: :100", wantErr: "no binary path"},
		{name: "height not a number", in: "v2:/x:1e3", wantErr: "height"},
		{name: "no height", in: "v2:/x:", wantErr: "height"},
		{name: "second entry bad", in: "v2:/x:1,v3", wantErr: `"v3"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseBatch([]byte(tc.in))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("parseBatch = %+v, %v; want an error saying %q", got, err, tc.wantErr)
				}
				return
			}
			if err != nil || len(got) != len(tc.want) {
				t.Fatalf("parseBatch = %+v, %v; want %d entries", got, err, len(tc.want))
			}
			for i, w := range tc.want {
				g := got[i]
				if g.plan.Name != w.name || g.plan.Height != w.height || g.plan.Info != w.info || g.file != w.file || g.source != w.source {
					t.Errorf("entry %d = %+v, want %+v", i, g, w)
				}
			}
		})
	}
}

// schedEnv is the env of an operator command on home h with the default
// configuration and no node RPC.
func schedEnv(t *testing.T, h string) *env {
	t.Helper()
	cfg, err := config.LoadConfig(viper.New(), h, config.Options{DaemonName: testDaemon})
	if err != nil {
		t.Fatal(err)
	}
	return &env{home: h, opts: config.Options{DaemonName: testDaemon}, cfg: cfg, out: &bytes.Buffer{}, errOut: &bytes.Buffer{}}
}

func plan(name string, height int64) staging.Plan {
	return staging.Plan{Name: name, Height: height, Info: `{"binaries":{"any":"file:///x"}}`}
}

// checkSchedulable refuses, before anything is fetched, every plan that cannot
// join the schedule, and says why and what to do.
func TestCheckSchedulable(t *testing.T) {
	h := t.TempDir()
	e := schedEnv(t, h)
	l := e.layout()
	if err := os.MkdirAll(l.Root(), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := l.AddScheduled(home.Scheduled{Plan: plan("v3", 150)}); err != nil {
		t.Fatal(err)
	}
	const from = "CometBFT's state store; no node runs"
	for _, tc := range []struct {
		name  string
		plans []staging.Plan
		gov   *staging.Plan // data/upgrade-info.json
		want  string        // "" accepts
	}{
		{name: "ahead of the chain", plans: []staging.Plan{plan("v4", 200), plan("v5", 101)}},
		{name: "no height", plans: []staging.Plan{plan("v4", 0)}, want: "give the height agreed"},
		{name: "negative height", plans: []staging.Plan{plan("v4", -1)}, want: "give the height agreed"},
		{name: "the chain's height", plans: []staging.Plan{plan("v4", 100)}, want: "the chain is at 100 already (" + from + ")"},
		{name: "passed", plans: []staging.Plan{plan("v4", 200), plan("v5", 3)}, want: `"v5" at height 3: the chain is at 100`},
		{name: "listed twice", plans: []staging.Plan{plan("v4", 200), plan("v4", 300)}, want: `"v4" is listed twice`},
		{name: "same height twice", plans: []staging.Plan{plan("v4", 200), plan("v5", 200)}, want: `"v4" and "v5" are both at height 200`},
		{name: "name scheduled", plans: []staging.Plan{plan("v3", 300)}, want: "`appd invisor cancel v3` first"},
		{name: "height scheduled", plans: []staging.Plan{plan("v4", 150)}, want: `upgrade "v3" is already scheduled at height 150`},
		{name: "unmappable name", plans: []staging.Plan{plan("..", 300)}, want: "cannot be mapped"},
		{name: "governance plan's height", plans: []staging.Plan{plan("v4", 400)}, gov: &staging.Plan{Name: "v2", Height: 400},
			want: `governance plan "v2" is at that height (` + home.UpgradeInfoFile + ")"},
		{name: "governance plan's name", plans: []staging.Plan{plan("v2", 500)}, gov: &staging.Plan{Name: "v2", Height: 400},
			want: `a governance plan of that name is in force at height 400`},
		{name: "governance plan elsewhere", plans: []staging.Plan{plan("v4", 500)}, gov: &staging.Plan{Name: "v2", Height: 400}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			os.Remove(l.UpgradeInfo())
			if tc.gov != nil {
				if err := l.WriteUpgradeInfo(*tc.gov); err != nil {
					t.Fatal(err)
				}
			}
			err := checkSchedulable(e, tc.plans, 100, from)
			if tc.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to say %q", err, tc.want)
			}
		})
	}
	os.Remove(l.UpgradeInfo())

	// The plan in force of a running node (its status file, the lock holder's).
	lock, err := l.Acquire(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Release()
	gov := &staging.Plan{Name: "v2", Height: 400, Info: "{}"}
	b, _ := json.Marshal(status.Node{PID: os.Getpid(), Plan: gov})
	if err := os.WriteFile(status.Path(h), b, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := checkSchedulable(e, []staging.Plan{plan("v4", 400)}, 100, "the running node's RPC"); err == nil ||
		!strings.Contains(err.Error(), "the running node, PID") {
		t.Fatalf("the running node's plan: %v", err)
	}
	// A damaged schedule refuses everything.
	if err := os.WriteFile(l.SchedulePath(), []byte("{"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := checkSchedulable(e, []staging.Plan{plan("v4", 500)}, 100, from); err == nil || !strings.Contains(err.Error(), "does not parse") {
		t.Fatalf("damaged schedule: %v", err)
	}
}

// invisorCmd runs `appd invisor args...` on nodeHome in this process, through the
// SDK's config interceptor as a chain's root command runs it (it writes
// config.toml and app.toml on first use), and returns its output.
func invisorCmd(t *testing.T, nodeHome string, args ...string) (string, error) {
	t.Helper()
	root := &cobra.Command{
		Use: "appd",
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			return server.InterceptConfigsPreRunHandler(cmd, serverconfig.DefaultConfigTemplate, serverconfig.DefaultConfig(), cmtcfg.DefaultConfig())
		},
		SilenceErrors: true,
		SilenceUsage:  true,
	}
	root.PersistentFlags().String(flags.FlagHome, nodeHome, "node home")
	root.AddCommand(Command(config.Options{DaemonName: testDaemon, DefaultHome: nodeHome, ServerOf: sdkServerOf}))
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs(append([]string{"invisor"}, args...))
	err := root.ExecuteContext(svrcmd.CreateExecuteContext(context.Background()))
	return out.String(), err
}

func mustSchedule(t *testing.T, l home.Layout) []home.Scheduled {
	t.Helper()
	s, err := l.Schedule()
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func scheduleNames(s []home.Scheduled) string {
	var b []string
	for _, e := range s {
		b = append(b, fmt.Sprintf("%s@%d", e.Plan.Name, e.Plan.Height))
	}
	return strings.Join(b, ",")
}

// historyEvents is the history of nodeHome; eventsString shows it as event:upgrade@height.
func historyEvents(t *testing.T, nodeHome string) []history.Entry {
	t.Helper()
	h, err := history.Read(nodeHome)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func eventsString(h []history.Entry) string {
	var b []string
	for _, e := range h {
		b = append(b, fmt.Sprintf("%s:%s@%d", e.Event, e.Upgrade, e.Height))
	}
	return strings.Join(b, ",")
}

func assertNoUpgradeDir(t *testing.T, l home.Layout, name string) {
	t.Helper()
	dir, err := l.UpgradeDir(name)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(dir); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("%s exists after a refusal (%v)", dir, err)
	}
}

// TestStageAtHeight: `stage NAME --height H --file F` on a stopped node, end to
// end through the command tree: the binary is verified and recorded for the
// scheduled plan, the schedule lists it, the history says so; every refusal
// leaves the schedule, the history and the upgrades directory as they were; then
// `scheduled` and `cancel`.
func TestStageAtHeight(t *testing.T) {
	h := t.TempDir()
	bin := helperBin(t, "v3.0.0")
	comettest.SaveState(t, cmtcfg.DefaultConfig().SetRoot(h), 50)
	l := bundleLayout(t, h)
	ctx := context.Background()

	out, err := invisorCmd(t, h, "stage", "v3", "--height", "120", "--file", bin)
	if err != nil {
		t.Fatalf("stage v3 --height 120: %v\n%s", err, out)
	}
	for _, s := range []string{`scheduled "v3" at height 120 (the chain is at 50, CometBFT's state store; no node runs)`,
		"sha256 " + fileSHA(t, bin), "Start the node as usual: it halts at height 120"} {
		if !strings.Contains(out, s) {
			t.Errorf("output does not say %q:\n%s", s, out)
		}
	}
	sched := mustSchedule(t, l)
	if len(sched) != 1 || sched[0].Plan.Name != "v3" || sched[0].Plan.Height != 120 || sched[0].Added.IsZero() ||
		!strings.HasPrefix(sched[0].Source, "file://"+bin) {
		t.Fatalf("schedule = %+v", sched)
	}
	v, err := l.Open(ctx, sched[0].Plan)
	if err != nil {
		t.Fatalf("the scheduled plan's binary is not trusted: %v", err)
	}
	if v.Record.SHA256 != fileSHA(t, bin) {
		t.Errorf("recorded sha256 %s, want %s", v.Record.SHA256, fileSHA(t, bin))
	}
	v.Close()
	hist := historyEvents(t, h)
	if eventsString(hist) != "scheduled:v3@120" || hist[0].SHA256 != fileSHA(t, bin) || hist[0].To != upgradeBin(t, h, "v3") {
		t.Fatalf("history = %+v", hist)
	}

	// Refusals, before anything is fetched.
	before, _ := os.ReadFile(l.SchedulePath())
	other := helperBin(t, "v4.0.0")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"stage", "v4", "--height", "50", "--file", other}, "the chain is at 50 already (CometBFT's state store; no node runs)"},
		{[]string{"stage", "v4", "--height", "7", "--file", other}, "the chain is at 50 already"},
		{[]string{"stage", "v4", "--height", "120", "--file", other}, `"v3" is already scheduled at height 120; one upgrade per height`},
		{[]string{"stage", "v3", "--height", "130", "--file", other}, "`appd invisor cancel v3` first"},
		{[]string{"stage", "v4", "--height", "-5", "--file", other}, "give the height agreed"},
		{[]string{"stage", "v4", "--height", "130", "--replace", "--file", other}, "not both"},
	} {
		out, err := invisorCmd(t, h, tc.args...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err = %v, want it to say %q\n%s", strings.Join(tc.args, " "), err, tc.want, out)
		}
		if after, _ := os.ReadFile(l.SchedulePath()); !bytes.Equal(after, before) {
			t.Errorf("%s: the schedule changed:\n%s", strings.Join(tc.args, " "), after)
		}
		assertNoUpgradeDir(t, l, "v4")
	}
	// A binary that fails verification is not scheduled.
	bad := filepath.Join(t.TempDir(), "appd")
	if err := os.WriteFile(bad, []byte("#!/bin/sh\nexit 3\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := invisorCmd(t, h, "stage", "v5", "--height", "300", "--file", bad); err == nil || !strings.Contains(err.Error(), `upgrade "v5" not scheduled`) {
		t.Errorf("a binary failing its preflight: %v\n%s", err, out)
	}
	if after, _ := os.ReadFile(l.SchedulePath()); !bytes.Equal(after, before) {
		t.Errorf("a failed verification changed the schedule:\n%s", after)
	}
	if got := eventsString(historyEvents(t, h)); got != "scheduled:v3@120" {
		t.Errorf("refusals wrote history: %s", got)
	}

	// A second upgrade joins the queue; the chain may be one block below it.
	if out, err := invisorCmd(t, h, "stage", "v4", "--height", "51", "--file", other); err != nil {
		t.Fatalf("stage v4 --height 51: %v\n%s", err, out)
	}
	if got := scheduleNames(mustSchedule(t, l)); got != "v4@51,v3@120" {
		t.Fatalf("schedule = %s", got)
	}

	// scheduled: both, verified, lowest height first.
	out, err = invisorCmd(t, h, "scheduled", "-o", "json")
	if err != nil {
		t.Fatalf("scheduled: %v\n%s", err, out)
	}
	var views []ScheduledView
	if err := json.Unmarshal([]byte(out[strings.Index(out, "["):]), &views); err != nil {
		t.Fatalf("scheduled -o json: %v\n%s", err, out)
	}
	if len(views) != 2 || views[0].Upgrade != "v4" || views[1].Upgrade != "v3" || views[1].Height != 120 ||
		!views[1].Trusted || views[1].SHA256 != fileSHA(t, bin) || views[1].Binary != upgradeBin(t, h, "v3") || views[1].InForce != "" {
		t.Fatalf("scheduled views = %+v", views)
	}
	out, err = invisorCmd(t, h, "scheduled")
	if err != nil || !strings.Contains(out, "UPGRADE") || !strings.Contains(out, "v3") || !strings.Contains(out, "(verified)") {
		t.Fatalf("scheduled: %v\n%s", err, out)
	}

	// cancel: removed, the binary stays, the history says so.
	out, err = invisorCmd(t, h, "cancel", "v3")
	if err != nil || !strings.Contains(out, `cancelled "v3" at height 120; its binary stays at `+upgradeBin(t, h, "v3")) {
		t.Fatalf("cancel v3: %v\n%s", err, out)
	}
	if got := scheduleNames(mustSchedule(t, l)); got != "v4@51" {
		t.Fatalf("schedule after cancel = %s", got)
	}
	if _, err := os.Stat(upgradeBin(t, h, "v3")); err != nil {
		t.Errorf("cancel removed the binary: %v", err)
	}
	hist = historyEvents(t, h)
	if got := eventsString(hist); got != "scheduled:v3@120,scheduled:v4@51,cancelled:v3@120" {
		t.Fatalf("history = %s", got)
	}
	if out, err := invisorCmd(t, h, "cancel", "v3"); err == nil || !strings.Contains(err.Error(), `no upgrade "v3" is scheduled; `+"`appd invisor scheduled`") {
		t.Fatalf("cancel twice: %v\n%s", err, out)
	}
	// Cancelled, the same upgrade can be scheduled again.
	if out, err := invisorCmd(t, h, "stage", "v3", "--height", "120", "--file", bin); err != nil {
		t.Fatalf("stage v3 again: %v\n%s", err, out)
	}
	if got := scheduleNames(mustSchedule(t, l)); got != "v4@51,v3@120" {
		t.Fatalf("schedule = %s", got)
	}
	// Another binary under a name whose directory holds one is refused.
	if out, err := invisorCmd(t, h, "cancel", "v3"); err != nil {
		t.Fatalf("cancel v3: %v\n%s", err, out)
	}
	out, err = invisorCmd(t, h, "stage", "v3", "--height", "140", "--file", other)
	if err == nil || !strings.Contains(err.Error(), "is not the binary given for upgrade \"v3\"") {
		t.Fatalf("another binary for v3: %v\n%s", err, out)
	}
	if got := scheduleNames(mustSchedule(t, l)); got != "v4@51" {
		t.Fatalf("schedule = %s", got)
	}

	// Once data/upgrade-info.json names a scheduled upgrade (the boot wrote it: the
	// chain reached its height), it cannot be cancelled.
	v4 := mustSchedule(t, l)[0].Plan
	if err := l.WriteUpgradeInfo(v4); err != nil {
		t.Fatal(err)
	}
	out, err = invisorCmd(t, h, "cancel", "v4")
	if err == nil || !strings.Contains(err.Error(), `upgrade "v4" at height 51 is under way`) || !strings.Contains(err.Error(), "invisor rollback") {
		t.Fatalf("cancel of an upgrade under way: %v\n%s", err, out)
	}
	if got := scheduleNames(mustSchedule(t, l)); got != "v4@51" {
		t.Fatalf("schedule after a refused cancel = %s", got)
	}
	if got := eventsString(historyEvents(t, h)); strings.HasSuffix(got, "cancelled:v4@51") {
		t.Fatalf("a refused cancel is in the history: %s", got)
	}
	// ... and a name that plan has cannot be scheduled again.
	if out, err := invisorCmd(t, h, "stage", "v4", "--height", "900", "--file", other); err == nil || !strings.Contains(err.Error(), "in force at height 51") {
		t.Fatalf("stage of the upgrade under way: %v\n%s", err, out)
	}
}

// With a node running on the home (it holds the home lock), the chain's height
// is the node's RPC's, and the command says the node applies the upgrade only
// once restarted; `scheduled` says whether the running node halts there.
func TestStageAtHeightWhileANodeRuns(t *testing.T) {
	h := t.TempDir()
	bin := helperBin(t, "v3.0.0")
	comettest.SaveState(t, cmtcfg.DefaultConfig().SetRoot(h), 10) // what the store said before the node started: not the chain's height now
	l := bundleLayout(t, h)
	if err := os.MkdirAll(l.Root(), 0o755); err != nil {
		t.Fatal(err)
	}
	lock, err := l.Acquire(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Release()
	rpc := comettest.Server(t, comettest.Status(false, 200))

	out, err := invisorCmd(t, h, "stage", "v3", "--height", "150", "--file", bin, "--node", rpc)
	if err == nil || !strings.Contains(err.Error(), "the chain is at 200 already (the running node's RPC") {
		t.Fatalf("a height the running chain passed: %v\n%s", err, out)
	}
	assertNoUpgradeDir(t, l, "v3")
	out, err = invisorCmd(t, h, "stage", "v3", "--height", "250", "--file", bin, "--node", rpc)
	if err != nil {
		t.Fatalf("stage v3 --height 250: %v\n%s", err, out)
	}
	if want := fmt.Sprintf("The running node (PID %d) was started before this", os.Getpid()); !strings.Contains(out, want) || !strings.Contains(out, "restart it before height 250") {
		t.Errorf("output does not tell to restart the node:\n%s", out)
	}
	if got := scheduleNames(mustSchedule(t, l)); got != "v3@250" {
		t.Fatalf("schedule = %s", got)
	}

	// Neither the RPC nor a status file says the height: nothing is scheduled.
	out, err = invisorCmd(t, h, "stage", "v4", "--height", "300", "--file", bin, "--node", "tcp://127.0.0.1:1")
	if err == nil || !strings.Contains(err.Error(), "nothing was scheduled") {
		t.Fatalf("no height known: %v\n%s", err, out)
	}

	views := func() []ScheduledView {
		t.Helper()
		out, err := invisorCmd(t, h, "scheduled", "-o", "json")
		if err != nil {
			t.Fatalf("scheduled: %v\n%s", err, out)
		}
		var v []ScheduledView
		if err := json.Unmarshal([]byte(out[strings.Index(out, "["):]), &v); err != nil || len(v) != 1 {
			t.Fatalf("scheduled -o json: %v\n%s", err, out)
		}
		return v
	}
	for _, tc := range []struct {
		halt *status.Halt
		want string
	}{
		{nil, "NOT IN FORCE: PID"},
		{&status.Halt{Upgrade: "v3", Height: 250}, fmt.Sprintf("halts here (PID %d)", os.Getpid())},
		{&status.Halt{Upgrade: "v2", Height: 220}, `after "v2" at 220`},
	} {
		b, _ := json.Marshal(status.Node{PID: os.Getpid(), Height: 200, HaltAt: tc.halt})
		if err := os.WriteFile(status.Path(h), b, 0o644); err != nil {
			t.Fatal(err)
		}
		if v := views(); !strings.HasPrefix(v[0].InForce, tc.want) {
			t.Errorf("halt at %+v: in force %q, want %q", tc.halt, v[0].InForce, tc.want)
		}
	}
	// The status file is the height's source when the RPC does not answer.
	out, err = invisorCmd(t, h, "stage", "v4", "--height", "190", "--file", bin, "--node", "tcp://127.0.0.1:1")
	if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("the chain is at 200 already (the running node's status, PID %d)", os.Getpid())) {
		t.Fatalf("height from the status file: %v\n%s", err, out)
	}
	// cancel with the node running says the node keeps its halt-height.
	out, err = invisorCmd(t, h, "cancel", "v3")
	if err != nil || !strings.Contains(out, "was started with halt-height 250: restart it before that height") {
		t.Fatalf("cancel with the node running: %v\n%s", err, out)
	}
}

// stage --batch takes both of cosmovisor's formats; every entry is checked
// before any is fetched, so one refusal schedules none.
func TestStageBatch(t *testing.T) {
	v3, v4 := helperBin(t, "v3.0.0"), helperBin(t, "v4.0.0")
	write := func(t *testing.T, content string) string {
		t.Helper()
		p := filepath.Join(t.TempDir(), "batch")
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	t.Run("name:path:height", func(t *testing.T) {
		h := t.TempDir()
		comettest.SaveState(t, cmtcfg.DefaultConfig().SetRoot(h), 20)
		l := bundleLayout(t, h)
		out, err := invisorCmd(t, h, "stage", "--batch", write(t, "v3:"+v3+":40\nv4:"+v4+":30\n"))
		if err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		sched := mustSchedule(t, l)
		if got := scheduleNames(sched); got != "v4@30,v3@40" {
			t.Fatalf("schedule = %s", got)
		}
		for _, s := range sched {
			v, err := l.Open(context.Background(), s.Plan)
			if err != nil {
				t.Fatalf("%s: %v", s.Plan.Name, err)
			}
			v.Close()
		}
		if got := eventsString(historyEvents(t, h)); got != "scheduled:v3@40,scheduled:v4@30" {
			t.Errorf("history = %s", got)
		}
	})
	t.Run("upgrade-info.json.batch", func(t *testing.T) {
		h := t.TempDir()
		comettest.SaveState(t, cmtcfg.DefaultConfig().SetRoot(h), 20)
		l := bundleLayout(t, h)
		p3, p4 := filePlan(t, "v3", v3, 40), filePlan(t, "v4", v4, 30)
		b, _ := json.Marshal([]map[string]any{
			{"name": p3.Name, "height": "40", "info": p3.Info},
			{"name": p4.Name, "height": 30, "info": p4.Info},
		})
		out, err := invisorCmd(t, h, "stage", "--batch", write(t, string(b)))
		if err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		sched := mustSchedule(t, l)
		if got := scheduleNames(sched); got != "v4@30,v3@40" || sched[1].Plan != p3 {
			t.Fatalf("schedule = %+v", sched)
		}
		if v, err := l.Open(context.Background(), p3); err != nil {
			t.Fatal(err)
		} else {
			v.Close()
		}
	})
	for _, tc := range []struct{ name, batch, want string }{
		{"a height passed", "v3:" + v3 + ":40\nv4:" + v4 + ":20", `"v4" at height 20: the chain is at 20 already`},
		{"height 0", "v3:" + v3 + ":40\nv4:" + v4 + ":0", `height 0: give the height agreed`},
		{"same height", "v3:" + v3 + ":40\nv4:" + v4 + ":40", "both at height 40"},
		{"same name", "v3:" + v3 + ":40\nv3:" + v4 + ":50", "listed twice"},
		{"missing binary", "v3:" + v3 + ":40\nv4:/nonexistent/appd:50", `upgrade "v4"`},
		{"not a batch", "v3 at 40", "want name:path:height"},
		{"bad JSON plan", `[{"name":"v3","height":40},{"name":""}]`, "plan 2 of the batch"},
	} {
		t.Run("refused: "+tc.name, func(t *testing.T) {
			h := t.TempDir()
			comettest.SaveState(t, cmtcfg.DefaultConfig().SetRoot(h), 20)
			l := bundleLayout(t, h)
			out, err := invisorCmd(t, h, "stage", "--batch", write(t, tc.batch))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to say %q\n%s", err, tc.want, out)
			}
			if s := mustSchedule(t, l); len(s) != 0 {
				t.Errorf("scheduled %s", scheduleNames(s))
			}
			assertNoUpgradeDir(t, l, "v3")
			assertNoUpgradeDir(t, l, "v4")
			if hist := historyEvents(t, h); len(hist) != 0 {
				t.Errorf("history = %s", eventsString(hist))
			}
		})
	}
	t.Run("with a name", func(t *testing.T) {
		if _, err := invisorCmd(t, t.TempDir(), "stage", "v3", "--batch", write(t, "v3:"+v3+":40")); err == nil || !strings.Contains(err.Error(), "--batch takes no upgrade name") {
			t.Fatalf("err = %v", err)
		}
	})
}

// sdkServerOf is the SDK v0.55 server context as the edge hands it to the
// operator commands (invisor's serverOf).
func sdkServerOf(cmd *cobra.Command) config.Server {
	sctx := server.GetServerContextFromCmd(cmd)
	return config.Server{Viper: sctx.Viper, Comet: sctx.Config, Logger: sctx.Logger}
}
