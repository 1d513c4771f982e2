package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/invisor/invisor/example-app/localnet"
	invhome "github.com/invisor/invisor/internal/home"
)

// run runs bin with args and extra environment and returns stdout, stderr and the error.
func run(ctx context.Context, bin string, env []string, args ...string) (string, string, error) {
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = append(os.Environ(), env...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	return out.String(), errb.String(), err
}

type configJSON struct {
	Home     string `json:"home"`
	Settings []struct {
		Key, Value, Source, Env string
	} `json:"settings"`
}

func (c configJSON) get(key string) (value, source string) {
	for _, s := range c.Settings {
		if s.Key == key {
			return s.Value, s.Source
		}
	}
	return "", ""
}

func invisorConfig(t *testing.T, ctx context.Context, bin, home string, env []string, extra ...string) configJSON {
	t.Helper()
	out, errOut, err := run(ctx, bin, env, append([]string{"invisor", "config", "-o", "json", "--home", home}, extra...)...)
	if err != nil {
		t.Fatalf("invisor config %v: %v\n%s%s", extra, err, out, errOut)
	}
	var c configJSON
	if err := json.Unmarshal([]byte(out), &c); err != nil {
		t.Fatalf("invisor config -o json is not JSON: %v\n%s", err, out)
	}
	return c
}

func editAppToml(t *testing.T, home, from, to string) (restore func()) {
	t.Helper()
	p := filepath.Join(home, "config", "app.toml")
	orig, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	re := regexp.MustCompile(from)
	if !re.Match(orig) {
		t.Fatalf("app.toml has no line matching %q", from)
	}
	if err := os.WriteFile(p, re.ReplaceAll(orig, []byte(to)), 0o644); err != nil {
		t.Fatal(err)
	}
	return func() {
		if err := os.WriteFile(p, orig, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// statusJSON is the part of `invisor status -o json` the tests check.
type statusJSON struct {
	Home    string `json:"home"`
	Daemon  string `json:"daemon"`
	Enabled bool   `json:"enabled"`
	Running bool   `json:"running"`
	Node    struct {
		Reachable bool  `json:"reachable"`
		Height    int64 `json:"height"`
	} `json:"node"`
	Plan *struct {
		Name   string `json:"name"`
		Height int64  `json:"height"`
		Info   string `json:"info"`
		Source string `json:"source"`
	} `json:"plan"`
	ETA *struct {
		BlocksLeft int64   `json:"blocks_left"`
		Seconds    float64 `json:"seconds"`
	} `json:"eta"`
	Staging *struct {
		State  string `json:"state"`
		Source string `json:"source"`
	} `json:"staging"`
	Binary *struct {
		Trusted   bool   `json:"trusted"`
		SHA256    string `json:"sha256"`
		Preflight string `json:"preflight"`
	} `json:"binary"`
	AtHalt   *string  `json:"at_halt"`
	Staged   []any    `json:"staged"`
	Problems []string `json:"problems"`
}

func invisorStatus(t *testing.T, ctx context.Context, bin, home string) (statusJSON, string) {
	t.Helper()
	out, errOut, err := run(ctx, bin, nil, "invisor", "status", "-o", "json", "--home", home)
	if err != nil {
		t.Fatalf("invisor status: %v\n%s%s", err, out, errOut)
	}
	var s statusJSON
	if err := json.Unmarshal([]byte(out), &s); err != nil {
		t.Fatalf("invisor status -o json is not JSON: %v\n%s", err, out)
	}
	if s.Staging == nil || s.AtHalt == nil || s.Staged == nil || s.Problems == nil || s.Home != home {
		t.Fatalf("invisor status -o json lacks fields:\n%s", out)
	}
	return s, out
}

// TestOperatorConfigStageStopped covers the operator surface on a node that is
// not running: the [invisor] section written by init, env and flag overrides with
// their sources, bad values failing at boot with the key's name, status of a
// stopped node, and `stage --file` / `verify` producing a trusted install.
func TestOperatorConfigStageStopped(t *testing.T) {
	t.Parallel() // a one-node chain that mostly waits for blocks: runs beside another (make test-e2e: -parallel 2)
	dir := builds(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	v1, v2 := filepath.Join(dir, "exampled-v1"), filepath.Join(dir, "exampled-v2")
	home := filepath.Join(t.TempDir(), "node0")
	if _, err := localnet.NewSingle(ctx, v1, home, localnet.Settings{ChainID: "invisor-op-1"}); err != nil {
		t.Fatal(err)
	}

	// init wrote the section with commented defaults.
	appToml, err := os.ReadFile(filepath.Join(home, "config", "app.toml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"\n[invisor]\n", "\nallow-download = false\n", "\nrequire-checksum = true\n",
		`download-deadline = "2h"`, "# env DAEMON_ALLOW_DOWNLOAD_BINARIES", "pre-upgrade-max-retries = 0"} {
		if !strings.Contains(string(appToml), want) {
			t.Errorf("app.toml written by init lacks %q", want)
		}
	}

	// Sources: app.toml, env, flag (flag > env > app.toml).
	c := invisorConfig(t, ctx, v1, home, nil)
	if v, src := c.get("allow-download"); v != "false" || src != "app.toml" {
		t.Errorf("allow-download = %q from %q, want false from app.toml", v, src)
	}
	c = invisorConfig(t, ctx, v1, home, []string{"DAEMON_ALLOW_DOWNLOAD_BINARIES=true", "INVISOR_RETRY_MIN=7s"},
		"--invisor.retry-min", "3s")
	if v, src := c.get("allow-download"); v != "true" || src != "env DAEMON_ALLOW_DOWNLOAD_BINARIES" {
		t.Errorf("allow-download = %q from %q, want true from env", v, src)
	}
	if v, src := c.get("retry-min"); v != "3s" || src != "flag --invisor.retry-min" {
		t.Errorf("retry-min = %q from %q, want 3s from the flag (over env 7s)", v, src)
	}
	restore := editAppToml(t, home, `(?m)^retry-max = .*$`, `retry-max = "9m"`)
	c = invisorConfig(t, ctx, v1, home, nil)
	if v, src := c.get("retry-max"); v != "9m" || src != "app.toml" {
		t.Errorf("retry-max = %q from %q, want 9m from app.toml", v, src)
	}
	restore()
	out, _, err := run(ctx, v1, nil, "invisor", "config", "--home", home)
	if err != nil || !strings.Contains(out, "SOURCE") || !strings.Contains(out, "app.toml") {
		t.Errorf("invisor config table: %v\n%s", err, out)
	}

	// Bad values and unknown keys fail at boot, naming the key.
	boot := func(env []string, args ...string) string {
		t.Helper()
		bctx, bcancel := context.WithTimeout(ctx, 60*time.Second)
		defer bcancel()
		out, errOut, err := run(bctx, v1, env, append([]string{"start", "--home", home}, args...)...)
		if err == nil || bctx.Err() != nil {
			t.Fatalf("start %v with env %v did not fail at boot (err %v)\n%s%s", args, env, err, out, errOut)
		}
		return out + errOut
	}
	for _, tc := range []struct {
		name       string
		from, to   string
		env, args  []string
		wantInLogs string
	}{
		{name: "app.toml bad duration", from: `(?m)^retry-min = .*$`, to: `retry-min = "soon"`, wantInLogs: "invisor.retry-min"},
		{name: "app.toml unknown key", from: `(?m)^\[invisor\]$`, to: "[invisor]\nallow-downloads = true", wantInLogs: `unknown key "allow-downloads"`},
		{name: "env bad bool", env: []string{"DAEMON_ALLOW_DOWNLOAD_BINARIES=perhaps"}, wantInLogs: "DAEMON_ALLOW_DOWNLOAD_BINARIES"},
		{name: "flag bad number", args: []string{"--invisor.pre-upgrade-max-retries=-2"}, wantInLogs: "--invisor.pre-upgrade-max-retries"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.from != "" {
				defer editAppToml(t, home, tc.from, tc.to)()
			}
			if logs := boot(tc.env, tc.args...); !strings.Contains(logs, tc.wantInLogs) {
				t.Errorf("boot error does not name %q:\n%s", tc.wantInLogs, logs)
			}
		})
	}

	// Status of a stopped node without a plan.
	st, raw := invisorStatus(t, ctx, v1, home)
	if st.Node.Reachable || st.Running || st.Plan != nil || st.Staging.State != "idle" || st.Daemon != "exampled" {
		t.Errorf("status of a stopped node without a plan:\n%s", raw)
	}

	// stage --file with no plan in force: verified (checksum, header, preflight)
	// and placed, but not recorded: only the plan in force can confirm a binary,
	// and the node does that when the plan appears.
	out, errOut, err := run(ctx, v1, nil, "invisor", "stage", "v2", "--file", v2, "--home", home)
	if err != nil || !strings.Contains(out, "not in force yet") {
		t.Fatalf("stage --file ahead of its plan: %v\n%s%s", err, out, errOut)
	}
	want, _ := localnet.SHA256File(v2)
	if got, _ := localnet.SHA256File(localnet.StagedBin(home, "v2")); got != want {
		t.Errorf("stage --file placed sha256 %q, want %s", got, want)
	}
	if _, _, ok := localnet.Staged(home, "v2"); ok {
		t.Error("a binary staged ahead of its plan got a completion record")
	}
	out, errOut, err = run(ctx, v1, nil, "invisor", "verify", "v2", "--home", home)
	if err != nil || !strings.HasPrefix(out, "ok") || !strings.Contains(out, "not verified against a plan yet") {
		t.Errorf("verify v2: %v\n%s%s", err, out, errOut)
	}
	// A wrong checksum is refused and leaves nothing in place.
	out, errOut, err = run(ctx, v1, nil, "invisor", "stage", "v3", "--file", filepath.Join(dir, "exampled-v3"),
		"--checksum", "sha256:"+strings.Repeat("ab", 32), "--home", home)
	if err == nil || !strings.Contains(out+errOut, "checksum") {
		t.Errorf("stage with a wrong checksum: err %v\n%s%s", err, out, errOut)
	}
	if _, err := os.Lstat(localnet.StagedBin(home, "v3")); err == nil {
		t.Error("a binary with a wrong checksum was left in place")
	}
	// After a halt (upgrade-info.json names the plan), stage checks the binary
	// against the plan governance approved and records it for that plan, which
	// is what the boot redirect trusts. exampled-v3 carries the v2 handler too
	// (it answers the probe so), so only the plan's checksum refuses it.
	v2sum, _ := localnet.SHA256File(v2)
	// The v2 placed ahead of its plan above is not proven for this plan: stage
	// says so and asks the operator to remove it first, which is done here.
	if err := os.RemoveAll(filepath.Dir(filepath.Dir(localnet.StagedBin(home, "v2")))); err != nil {
		t.Fatal(err)
	}
	halted := invhome.Plan{Name: "v2", Height: 77, Info: localnet.PlanInfo(runtime.GOOS, runtime.GOARCH, "http://127.0.0.1:9/v2", v2sum)}
	ui, _ := json.Marshal(map[string]any{"name": halted.Name, "height": halted.Height, "info": halted.Info})
	if err := os.WriteFile(filepath.Join(home, "data", "upgrade-info.json"), ui, 0o644); err != nil {
		t.Fatal(err)
	}
	out, errOut, err = run(ctx, v1, nil, "invisor", "stage", "v2", "--file", filepath.Join(dir, "exampled-v3"), "--home", home)
	if err == nil || !strings.Contains(out+errOut, "not the one the plan") {
		t.Errorf("stage of a binary the halted plan does not name: err %v\n%s%s", err, out, errOut)
	}
	if _, err := os.Lstat(localnet.StagedBin(home, "v2")); err == nil {
		t.Error("a binary that does not match the plan was placed")
	}
	out, errOut, err = run(ctx, v1, nil, "invisor", "stage", "v2", "--file", v2, "--home", home)
	if err != nil {
		t.Errorf("stage of the plan's binary after the halt: %v\n%s%s", err, out, errOut)
	}
	v9, err := localnet.Layout(home).Open(ctx, halted)
	if err != nil {
		t.Fatalf("the staged binary is not trusted for the halted plan: %v", err)
	}
	v9.Close()
	if v9.Record.Source != invhome.SourcePlanChecksum || v9.Record.Preflight != "v2.0.0" {
		t.Errorf("v2 recorded as %q, preflight %q; want %s and v2.0.0", v9.Record.Source, v9.Record.Preflight, invhome.SourcePlanChecksum)
	}
	if has, known := v9.Record.Probe.HasHandler("v2"); !has || !known {
		t.Errorf("the record does not keep the binary's answer that it carries the v2 handler: %+v", v9.Record.Probe)
	}

	// Tampering is caught by verify.
	f, err := os.OpenFile(v9.Path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.Write([]byte("x"))
	f.Close()
	if out, _, err := run(ctx, v1, nil, "invisor", "verify", "--home", home); err == nil || !strings.Contains(out, "FAIL") {
		t.Errorf("verify after tampering: err %v\n%s", err, out)
	}
	if err := os.Remove(filepath.Join(home, "data", "upgrade-info.json")); err != nil {
		t.Fatal(err)
	}
	st, raw = invisorStatus(t, ctx, v1, home)
	if len(st.Problems) == 0 {
		t.Errorf("status does not report the tampered binary:\n%s", raw)
	}
}

// TestOperatorRunningNode starts a node with --invisor.allow-download, passes an
// upgrade plan far in the future, and checks `invisor status` (running, then
// stopped), `stage --url` while it runs, `history`, and the Prometheus gauges.
func TestOperatorRunningNode(t *testing.T) {
	dir := builds(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	work := t.TempDir()
	v1 := filepath.Join(dir, "exampled-v1")
	node, err := localnet.NewSingle(ctx, v1, filepath.Join(work, "node0"), localnet.Settings{ChainID: "invisor-op-2"})
	if err != nil {
		t.Fatal(err)
	}
	// CometBFT's Prometheus endpoint serves the default registry, where invisor's gauges live.
	cfgPath := filepath.Join(node.Home, "config", "config.toml")
	b, _ := os.ReadFile(cfgPath)
	os.WriteFile(cfgPath, regexp.MustCompile(`(?m)^prometheus = false$`).ReplaceAll(b, []byte("prometheus = true")), 0o644)
	t.Cleanup(func() {
		node.Stop(15 * time.Second)
		if t.Failed() {
			t.Logf("---- node log tail ----\n%s", node.LogTail(6000))
		}
	})
	// Downloads are on only in the node's environment (as a service unit's
	// Environment= has it): status and config run from this test's shell, which
	// lacks it, must report the node's value, not the shell's.
	node.Env = append(node.Env, "DAEMON_ALLOW_DOWNLOAD_BINARIES=true")
	if err := node.Start(); err != nil {
		t.Fatal(err)
	}
	if _, err := node.WaitHeight(ctx, 2); err != nil {
		t.Fatal(err)
	}
	srv, err := localnet.ServeDir(filepath.Join(work, "www"))
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	sc, err := node.ScheduleUpgrade(ctx, srv, "v2", filepath.Join(dir, "exampled-v2"), 400)
	if err != nil {
		t.Fatal(err)
	}

	// The node stages it (downloads are on only in its environment) and status
	// shows it; at no point does status, run without that environment, call
	// downloads disabled.
	var st statusJSON
	var raw string
	deadline := time.Now().Add(90 * time.Second)
	for {
		st, raw = invisorStatus(t, ctx, v1, node.Home)
		for _, p := range st.Problems {
			if strings.Contains(p, "downloads are disabled") {
				t.Errorf("status decided with the shell's allow-download, not the node's:\n%s", raw)
			}
		}
		if st.Plan != nil && st.Staging.State == "ready" && st.Binary != nil && st.Binary.Trusted {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the running node did not stage v2 within 90s:\n%s", raw)
		}
		time.Sleep(time.Second)
	}
	if !st.Node.Reachable || !st.Running || st.Plan.Name != "v2" || st.Plan.Height != sc.Height || st.Plan.Source != "node" ||
		st.Plan.Info == "" || st.Binary.SHA256 != sc.SHA256 || st.Binary.Preflight != "v2.0.0" {
		t.Errorf("status of a running node with a staged plan:\n%s", raw)
	}
	if st.ETA == nil || st.ETA.BlocksLeft <= 0 || st.ETA.BlocksLeft > 400 || st.ETA.Seconds <= 0 {
		t.Errorf("status ETA:\n%s", raw)
	}
	if !strings.Contains(*st.AtHalt, "execs") || len(st.Problems) != 0 {
		t.Errorf("status at_halt/problems:\n%s", raw)
	}
	if out, _, err := run(ctx, v1, nil, "invisor", "status", "--home", node.Home); err != nil || !strings.Contains(out, `plan       "v2"`) {
		t.Errorf("invisor status (text): %v\n%s", err, out)
	}
	checkNodeSettings(t, ctx, v1, node.Home, node.Pid(), raw)

	// prepare asks the node for the plan; it is staged already.
	if out, errOut, err := run(ctx, v1, nil, "invisor", "prepare", "--home", node.Home); err != nil ||
		!strings.Contains(out, `plan "v2"`) || !strings.Contains(out, "already staged") {
		t.Errorf("invisor prepare: %v\n%s%s", err, out, errOut)
	}

	// Gauges on the node's Prometheus endpoint (the reporter polls every 2 s).
	var metrics map[string]float64
	deadline = time.Now().Add(20 * time.Second)
	for {
		metrics, err = scrape(ctx, fmt.Sprintf("http://127.0.0.1:%d/metrics", node.PromPort))
		if err == nil && metrics[`invisor_staging_state{state="ready"}`] == 1 && metrics["invisor_plan_height"] == float64(sc.Height) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("gauges not found or wrong (err %v): %v", err, metrics)
		}
		time.Sleep(time.Second)
	}
	for _, name := range []string{"invisor_blocks_to_upgrade", "invisor_staging_bytes_downloaded", "invisor_staging_attempts",
		"invisor_staging_failures", "invisor_seconds_since_ready", "invisor_last_switch_duration_seconds"} {
		if _, ok := metrics[name]; !ok {
			t.Errorf("gauge %s missing from the scrape", name)
		}
	}
	if left := metrics["invisor_blocks_to_upgrade"]; left <= 0 || left > 400 {
		t.Errorf("invisor_blocks_to_upgrade = %v", left)
	}
	if metrics["invisor_staging_bytes_downloaded"] <= 0 || metrics["invisor_seconds_since_ready"] < 0 {
		t.Errorf("download gauges: %v", metrics)
	}

	// stage --url while the node runs, for another upgrade: placed atomically, the
	// node keeps its lock; the binary is recorded when that plan is in force.
	v3served := filepath.Join(srv.Dir, "v3", "exampled")
	os.MkdirAll(filepath.Dir(v3served), 0o755)
	data, _ := os.ReadFile(filepath.Join(dir, "exampled-v3"))
	os.WriteFile(v3served, data, 0o755)
	sha3, _ := localnet.SHA256File(v3served)
	out, errOut, err := run(ctx, v1, nil, "invisor", "stage", "v3", "--url", srv.URL+"/v3/exampled", "--checksum", "sha256:"+sha3,
		"--wait", "1s", "--home", node.Home)
	if err != nil || !strings.Contains(out, "running node") {
		t.Errorf("stage --url while running: %v\n%s%s", err, out, errOut)
	}
	if got, _ := localnet.SHA256File(localnet.StagedBin(node.Home, "v3")); got != sha3 {
		t.Errorf("stage --url did not place the v3 binary (sha256 %q)", got)
	}

	// Stopped: status still works from the home and the status file.
	if err := node.Stop(15 * time.Second); err != nil {
		t.Fatal(err)
	}
	st, raw = invisorStatus(t, ctx, v1, node.Home)
	if st.Node.Reachable || st.Running || st.Plan == nil || st.Plan.Name != "v2" || st.Staging.State != "ready" || !st.Binary.Trusted {
		t.Errorf("status of the stopped node:\n%s", raw)
	}
	if sv := statusSettings(t, raw); sv.From != "shell" || !strings.Contains(sv.Note, "no node runs") || len(sv.Differences) != 0 {
		t.Errorf("settings of the stopped node's status: %+v", sv)
	}
	// v3 is placed, not recorded: no plan of that name is in force.
	out, errOut, err = run(ctx, v1, nil, "invisor", "verify", "v3", "--home", node.Home)
	if err != nil || !strings.Contains(out, "not verified against a plan yet") {
		t.Errorf("verify v3 placed ahead of its plan: %v\n%s%s", err, out, errOut)
	}
	if _, _, ok := localnet.Staged(node.Home, "v3"); ok {
		t.Error("v3 was recorded without its plan")
	}
	// With the node stopped, stage --url places v3 again the same way.
	os.RemoveAll(filepath.Dir(filepath.Dir(localnet.StagedBin(node.Home, "v3"))))
	out, errOut, err = run(ctx, v1, nil, "invisor", "stage", "v3", "--url", srv.URL+"/v3/exampled?checksum=sha256:"+sha3, "--home", node.Home)
	if err != nil || !strings.Contains(out, "not in force yet") {
		t.Fatalf("stage --url: %v\n%s%s", err, out, errOut)
	}
	if got, _ := localnet.SHA256File(localnet.StagedBin(node.Home, "v3")); got != sha3 {
		t.Errorf("after stage --url: sha256 %q, want %s", got, sha3)
	}
	out, _, err = run(ctx, v1, nil, "invisor", "history", "-o", "json", "--home", node.Home)
	var hist []struct {
		Upgrade string `json:"upgrade"`
		SHA256  string `json:"sha256"`
	}
	if err != nil || json.Unmarshal([]byte(out), &hist) != nil || len(hist) != 1 || hist[0].Upgrade != "v2" || hist[0].SHA256 == "" {
		t.Errorf("history: %v\n%s", err, out)
	}
}

// settingsJSON is the settings block of `invisor status -o json`.
type settingsJSON struct {
	From        string    `json:"from"`
	PID         int       `json:"pid"`
	Started     time.Time `json:"started"`
	Note        string    `json:"note"`
	Differences []struct {
		Key         string `json:"key"`
		Node        string `json:"node"`
		NodeSource  string `json:"node_source"`
		Shell       string `json:"shell"`
		ShellSource string `json:"shell_source"`
	} `json:"differences"`
}

func statusSettings(t *testing.T, raw string) settingsJSON {
	t.Helper()
	var st struct {
		Settings settingsJSON `json:"settings"`
	}
	if err := json.Unmarshal([]byte(raw), &st); err != nil {
		t.Fatalf("invisor status -o json: %v\n%s", err, raw)
	}
	return st.Settings
}

// checkNodeSettings checks that status (raw, its -o json) and config, run
// without the node's DAEMON_ALLOW_DOWNLOAD_BINARIES=true, show the node's
// settings (PID pid) and the shell's difference (the shell has false from the
// [invisor] section init wrote).
func checkNodeSettings(t *testing.T, ctx context.Context, bin, home string, pid int, raw string) {
	t.Helper()
	const env = "env DAEMON_ALLOW_DOWNLOAD_BINARIES"
	if _, ok := os.LookupEnv("DAEMON_ALLOW_DOWNLOAD_BINARIES"); ok {
		t.Fatal("the test's own environment sets DAEMON_ALLOW_DOWNLOAD_BINARIES: the shell would not differ from the node")
	}
	sv := statusSettings(t, raw)
	if sv.From != "node" || sv.PID != pid || sv.Started.IsZero() || len(sv.Differences) != 1 {
		t.Fatalf("status settings %+v, want the node's (PID %d) with one difference:\n%s", sv, pid, raw)
	}
	if d := sv.Differences[0]; d.Key != "allow-download" || d.Node != "true" || d.NodeSource != env || d.Shell != "false" || d.ShellSource != "app.toml" {
		t.Errorf("difference %+v", d)
	}
	out, _, err := run(ctx, bin, nil, "invisor", "status", "--home", home)
	for _, want := range []string{fmt.Sprintf("settings   those of the running node (PID %d, started ", pid),
		"allow-download: node true (" + env + "), this shell false (app.toml)", "commands run from this shell"} {
		if err != nil || !strings.Contains(out, want) {
			t.Errorf("invisor status (text) lacks %q: %v\n%s", want, err, out)
		}
	}

	out, errOut, err := run(ctx, bin, nil, "invisor", "config", "-o", "json", "--home", home)
	var cfg struct {
		Settings []struct {
			Key, Value, Source string
			Node               *struct{ Value, Source string }
			Differs            bool
		} `json:"settings"`
		Node settingsJSON `json:"node_settings"`
	}
	if err != nil || json.Unmarshal([]byte(out), &cfg) != nil || cfg.Node.From != "node" || cfg.Node.PID != pid {
		t.Fatalf("invisor config -o json: %v\n%s%s", err, out, errOut)
	}
	for _, s := range cfg.Settings {
		if s.Node == nil {
			t.Errorf("config: %s has no node value", s.Key)
			continue
		}
		want := s.Key == "allow-download"
		if s.Differs != want || (want && (s.Value != "false" || s.Source != "app.toml" || s.Node.Value != "true" || s.Node.Source != env)) {
			t.Errorf("config: %s = %q (%s), node %q (%s), differs %v", s.Key, s.Value, s.Source, s.Node.Value, s.Node.Source, s.Differs)
		}
	}
	out, _, err = run(ctx, bin, nil, "invisor", "config", "--home", home)
	if err != nil || !regexp.MustCompile(`(?m)^allow-download +false +app\.toml +DAEMON_ALLOW_DOWNLOAD_BINARIES +true \(`+env+`\)$`).MatchString(out) {
		t.Errorf("invisor config (text): %v\n%s", err, out)
	}
}

// scrape reads a Prometheus text endpoint into "name{labels}" -> value.
func scrape(ctx context.Context, url string) (map[string]float64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		return nil, fmt.Errorf("%s: %s: %s", url, resp.Status, b)
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err == nil {
			out[line[:i]] = v
		}
	}
	return out, sc.Err()
}
