package staging

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/invisor/invisor/internal/home"
	"github.com/invisor/invisor/internal/probe"
)

// Tests of the probe: after its preflight a candidate is asked, in the same
// sandbox, what it can do (internal/probe), and the answer goes into its record;
// a binary without the plan's upgrade handler is refused.

// probeHelperSrc is a candidate that passes the preflight like the "good" test
// binary and, asked for the probe, behaves as its mode says. A shell script would
// not do: staging refuses anything but an executable for this platform.
const probeHelperSrc = `package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

var mode = "answer"

func main() {
	if len(os.Args) > 1 && os.Args[1] == "version" {
		for i, a := range os.Args {
			if a == "--home" && i+1 < len(os.Args) {
				os.MkdirAll(filepath.Join(os.Args[i+1], "config"), 0o755)
			}
		}
		fmt.Println("v2.0.0-probe-" + mode)
		return
	}
	if os.Getenv("INVISOR_PROBE") != "1" {
		fmt.Println("usage: exampled [command]")
		return
	}
	// Where a binary that answers could write: the sandbox, if staging kept it in one.
	for _, dir := range []string{os.Getenv("HOME"), os.Getenv("DAEMON_HOME")} {
		if err := os.WriteFile(filepath.Join(dir, ".marker"), []byte(mode), 0o644); err != nil {
			fmt.Fprintln(os.Stderr, "Error:", err)
			os.Exit(1)
		}
	}
	var plans []string
	json.Unmarshal([]byte(os.Getenv("INVISOR_PROBE_PLANS")), &plans)
	handlers := map[string]bool{}
	for _, p := range plans {
		handlers[p] = mode != "missing" && mode != "fail"
	}
	ans := map[string]any{"probe": 1, "invisor_version": "v9.9.9-test", "protocols": []string{"await-pre-upgrade/1"}, "handlers": handlers}
	switch mode {
	case "unknown":
		delete(ans, "handlers")
	case "garbled":
		fmt.Println("INVISOR_PROBE_ANSWER {\"probe\":1,\"handlers\":")
		return
	case "hang":
		time.Sleep(time.Hour)
	}
	b, _ := json.Marshal(ans)
	fmt.Println("starting exampled") // an answer need not be the first line
	fmt.Printf("INVISOR_PROBE_ANSWER %s\n", b)
	if mode == "fail" {
		os.Exit(2)
	}
}
`

// probeModes are the builds of probeHelperSrc: "answer" has the handler and a
// protocol, "missing" answers that it has no handler, "unknown" answers without
// handlers (it could not tell), "garbled" prints an answer line that does not
// parse, "hang" never answers, "fail" prints a missing-handler answer and exits 2.
var probeModes = []string{"answer", "missing", "unknown", "garbled", "hang", "fail"}

var probeBins struct {
	once sync.Once
	bins map[string][]byte
	err  error
}

// probeBin returns the bytes of probeHelperSrc built in mode (once per run).
func probeBin(t testing.TB, mode string) []byte {
	t.Helper()
	probeBins.once.Do(func() {
		dir := filepath.Join(testBins.dir, "probe") // removed by TestMain
		if err := os.MkdirAll(dir, 0o755); err != nil {
			probeBins.err = err
			return
		}
		os.WriteFile(filepath.Join(dir, "main.go"), []byte(probeHelperSrc), 0o644)
		os.WriteFile(filepath.Join(dir, "go.mod"), []byte("module probehelper\n\ngo 1.22\n"), 0o644)
		probeBins.bins = map[string][]byte{}
		for _, m := range probeModes {
			out := filepath.Join(dir, m)
			cmd := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w -X main.mode="+m, "-o", out, ".")
			cmd.Dir = dir
			cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=-mod=mod", "GOWORK=off")
			if b, err := cmd.CombinedOutput(); err != nil {
				probeBins.err = fmt.Errorf("building probe helper %s: %v\n%s", m, err, b)
				return
			}
			probeBins.bins[m], probeBins.err = os.ReadFile(out)
			if probeBins.err != nil {
				return
			}
		}
	})
	if probeBins.err != nil {
		t.Fatal(probeBins.err)
	}
	return probeBins.bins[mode]
}

// probeConfig is testConfig with a short probe timeout.
func probeConfig(t testing.TB) Config {
	cfg := testConfig(t)
	cfg.ProbeTimeout = 2 * time.Second
	return cfg
}

// downloadPlan serves body at path and returns plan v2 at height 100 naming it.
func downloadPlan(t testing.TB, path string, body []byte) Plan {
	srv := newServer(t)
	return Plan{Name: "v2", Height: 100, Info: infoJSON(pinned(srv.blob(path, body), body))}
}

// readRecord is the record on disk (through JSON) of plan name.
func readRecord(t testing.TB, cfg Config, name string) home.Record {
	t.Helper()
	rec, err := layoutOf(t, cfg).ReadRecord(name)
	if err != nil {
		t.Fatal(err)
	}
	return rec
}

// Every path that records a binary (a plain download, an archive's member, a file
// the operator placed) keeps the binary's answer in the record.
func TestProbeAnswerRecorded(t *testing.T) {
	ans := probeBin(t, "answer")
	cases := []struct {
		name   string
		plan   func(t *testing.T, cfg Config) Plan
		source home.Source
	}{
		{"download", func(t *testing.T, cfg Config) Plan { return downloadPlan(t, "/exampled", ans) }, home.SourceDownload},
		{"archive member", func(t *testing.T, cfg Config) Plan { return downloadPlan(t, "/v2.tar.gz", archiveOf(t, ans)) }, home.SourceDownload},
		{"operator's file", func(t *testing.T, cfg Config) Plan {
			placeBin(t, cfg, "v2", ans)
			return Plan{Name: "v2", Height: 100}
		}, home.SourceOperatorWord},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			cfg := probeConfig(t)
			inst, err := Fetch(context.Background(), cfg, tc.plan(t, cfg), &testLogger{t: t})
			if err != nil {
				t.Fatal(err)
			}
			for _, rec := range []home.Record{inst.Record, readRecord(t, cfg, "v2")} {
				a := rec.Probe
				if rec.Source != tc.source || a == nil || a.InvisorVersion != "v9.9.9-test" || !a.Speaks(probe.ProtocolAwaitPreUpgrade) {
					t.Fatalf("record %+v, probe %+v", rec, a)
				}
				if has, known := a.HasHandler("v2"); !has || !known {
					t.Errorf("handler for v2: has %v known %v, want both", has, known)
				}
				if rec.Preflight != "v2.0.0-probe-answer" {
					t.Errorf("preflight %q: the probe must not replace the preflight", rec.Preflight)
				}
			}
			assertNoTemp(t, cfg)
		})
	}
}

// A binary without an answer is accepted as before, its record without Probe; so
// is one whose answer cannot say whether it has the handler.
func TestProbeNoAnswerAccepted(t *testing.T) {
	cases := []struct {
		name      string
		bin       func(t testing.TB) []byte
		probe     bool   // the record keeps an answer
		level, in string // the log line saying why there is no answer
	}{
		{"prints help and exits 0", func(testing.TB) []byte { return testBins.good }, false, "INFO", "gave no probe answer"},
		{"garbled answer line", func(t testing.TB) []byte { return probeBin(t, "garbled") }, false, "WARN", "does not parse"},
		{"answer but exit status 2", func(t testing.TB) []byte { return probeBin(t, "fail") }, false, "WARN", "exit status 2"},
		{"hangs until the probe timeout", func(t testing.TB) []byte { return probeBin(t, "hang") }, false, "WARN", "Config.ProbeTimeout"},
		{"answer without handlers", func(t testing.TB) []byte { return probeBin(t, "unknown") }, true, "INFO", "answered the probe"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			cfg := probeConfig(t)
			cfg.ProbeTimeout = 300 * time.Millisecond
			log := &testLogger{t: t}
			body := tc.bin(t)
			start := time.Now()
			inst, err := Fetch(context.Background(), cfg, downloadPlan(t, "/exampled", body), log)
			if err != nil {
				t.Fatalf("refused, want accepted: %v", err)
			}
			// Bounded by ProbeTimeout: the hanging child's group is killed, not waited for.
			if d := time.Since(start); d > cfg.PreflightTimeout {
				t.Errorf("staging took %v", d)
			}
			rec := readRecord(t, cfg, "v2")
			if rec.SHA256 != sha(body) || (rec.Probe != nil) != tc.probe || (inst.Record.Probe != nil) != tc.probe {
				t.Errorf("record %+v, probe %+v, want a probe: %v", rec, rec.Probe, tc.probe)
			}
			if tc.probe {
				if _, known := rec.Probe.HasHandler("v2"); known {
					t.Errorf("an answer without handlers says it knows: %+v", rec.Probe)
				}
			}
			if len(log.logged(tc.level, tc.in)) != 1 {
				t.Errorf("no %s line saying %q; logged %v", tc.level, tc.in, log.lines)
			}
			assertNoTemp(t, cfg)
		})
	}
}

// A binary that says it has no handler for its plan is refused days before the
// height: no record, a download not installed, an operator's file left as it is.
func TestProbeMissingHandlerRefused(t *testing.T) {
	missing := probeBin(t, "missing")
	checkErr := func(t *testing.T, err error, placed bool) {
		t.Helper()
		var mh *MissingHandlerError
		if !errors.As(err, &mh) || !errors.Is(err, ErrMissingHandler) {
			t.Fatalf("err = %v, want a *MissingHandlerError", err)
		}
		if mh.Plan != "v2" || mh.Height != 100 || mh.SHA256 != sha(missing) || mh.InvisorVersion != "v9.9.9-test" || mh.Placed != placed {
			t.Errorf("error fields %+v", mh)
		}
		for _, s := range []string{`no upgrade handler named "v2"`, "halt again at height 100", sha(missing), "stage the release built for this upgrade"} {
			if !strings.Contains(err.Error(), s) {
				t.Errorf("error %q does not say %q", err, s)
			}
		}
	}

	t.Run("download not installed", func(t *testing.T) {
		t.Parallel()
		cfg := probeConfig(t)
		_, err := Fetch(context.Background(), cfg, downloadPlan(t, "/exampled", missing), &testLogger{t: t})
		checkErr(t, err, false)
		assertNothingInstalled(t, cfg, "v2")
		if fileExists(binOf(t, cfg, "v2") + home.RecordSuffix) {
			t.Error("a record was written for a refused binary")
		}
	})

	t.Run("operator's file left as it is", func(t *testing.T) {
		t.Parallel()
		cfg := probeConfig(t)
		bin := placeBin(t, cfg, "v2", missing)
		before, _ := os.Lstat(bin)
		_, err := Fetch(context.Background(), cfg, Plan{Name: "v2", Height: 100}, &testLogger{t: t})
		checkErr(t, err, true)
		after, lerr := os.Lstat(bin)
		if got, rerr := os.ReadFile(bin); lerr != nil || rerr != nil || !bytes.Equal(got, missing) || !os.SameFile(before, after) || after.Mode() != before.Mode() {
			t.Errorf("the operator's file was changed, moved or removed (%v, %v)", lerr, rerr)
		}
		if fileExists(bin + home.RecordSuffix) {
			t.Error("a record was written for a refused binary")
		}
		assertNoTemp(t, cfg)
	})

	t.Run("stager holds the refusal without re-downloading", func(t *testing.T) {
		t.Parallel()
		cfg := probeConfig(t)
		srv := newServer(t)
		p := Plan{Name: "v2", Height: 100, Info: infoJSON(pinned(srv.blob("/exampled", missing), missing))}
		s, _ := startStager(t, cfg)
		s.Offer(&p)
		st := waitStatus(t, s, "refused", func(st Status) bool { return st.State == StateRefused })
		if !strings.Contains(st.Err, "no upgrade handler") || !st.NextRetry.IsZero() || st.Install != nil || st.Attempt != 1 {
			t.Errorf("status = %+v", st)
		}
		// A bounded look at the absence of retries (many backoffs long), not a synchronisation.
		time.Sleep(10 * cfg.RetryMax)
		if n := srv.count("/exampled"); n != 1 || s.Status().State != StateRefused {
			t.Errorf("downloads %d, state %s: the refusal was retried", n, s.Status().State)
		}
		assertNothingInstalled(t, cfg, "v2")
	})

	t.Run("stager takes the release staged over a refused file", func(t *testing.T) {
		t.Parallel()
		cfg := probeConfig(t)
		bin := placeBin(t, cfg, "v2", missing)
		p := Plan{Name: "v2", Height: 100}
		s, _ := startStager(t, cfg)
		s.Offer(&p)
		waitStatus(t, s, "refused", func(st Status) bool { return st.State == StateRefused })
		if got, _ := os.ReadFile(bin); !bytes.Equal(got, missing) {
			t.Fatal("the refused file was changed")
		}
		// The operator re-stages: the right release replaces the file (as `invisor
		// stage` does, by a rename).
		tmp := filepath.Join(filepath.Dir(bin), "new")
		if err := os.WriteFile(tmp, probeBin(t, "answer"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, bin); err != nil {
			t.Fatal(err)
		}
		st := waitStatus(t, s, "ready", func(st Status) bool { return st.State == StateReady })
		if st.Install.Record.Probe == nil || st.Err != "" {
			t.Errorf("status = %+v", st)
		}
	})
}

// The probe runs in the preflight's sandbox: whatever the binary writes under
// $HOME or DAEMON_HOME lands in the scratch directory, never in the node's home
// or the user's, and the scratch directory is removed.
func TestProbeSandboxed(t *testing.T) {
	cfg := probeConfig(t)
	userHome := t.TempDir()
	t.Setenv("HOME", userHome)
	t.Setenv("DAEMON_HOME", cfg.Home) // as the node's own environment has it
	placeBin(t, cfg, "v2", probeBin(t, "answer"))
	inst, err := Fetch(context.Background(), cfg, Plan{Name: "v2", Height: 100}, &testLogger{t: t})
	if err != nil {
		t.Fatal(err)
	}
	if inst.Record.Probe == nil {
		t.Fatal("no answer: the probe did not run (or could not write its marker in the sandbox)")
	}
	for _, dir := range []string{userHome, cfg.Home, layoutOf(t, cfg).Root(), dirOf(t, cfg, "v2")} {
		if p := filepath.Join(dir, ".marker"); fileExists(p) {
			t.Errorf("the probe wrote %s outside its sandbox", p)
		}
	}
	assertNoTemp(t, cfg)
}

func TestConfigValidateProbeTimeout(t *testing.T) {
	c := DefaultConfig()
	c.Home, c.DaemonName = "/home/node", daemon
	if c.ProbeTimeout != DefaultProbeTimeout {
		t.Errorf("default ProbeTimeout %v", c.ProbeTimeout)
	}
	c.ProbeTimeout = 0
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "ProbeTimeout") {
		t.Errorf("Validate: %v", err)
	}
}

// A check without a plan height (the genesis binary of a bundle, a binary staged
// ahead of its plan) names no upgrade the binary must carry: it is not refused.
func TestProbeWithoutPlanHeightAsksNoHandler(t *testing.T) {
	missing := probeBin(t, "missing")
	cfg := probeConfig(t)
	p := downloadPlan(t, "/exampled", missing)
	p.Height = 0
	inst, err := Fetch(context.Background(), cfg, p, &testLogger{t: t})
	if err != nil {
		t.Fatalf("a binary checked without a plan height was refused: %v", err)
	}
	if _, known := inst.Record.Probe.HasHandler("v2"); known {
		t.Errorf("the probe reported a handler it was not asked about: %+v", inst.Record.Probe)
	}
}
