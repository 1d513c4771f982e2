package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/invisor/invisor/example-app/localnet"
)

const (
	invisorSup    = "invisor"
	cosmovisorSup = "cosmovisor"
	upgradeName   = "v2"
	daemon        = localnet.DaemonName
)

type scenario struct {
	ID       int
	Title    string
	Throttle bool  // binary fetched from the throttled server
	Placed   bool  // binary in place before the height
	Backup   bool  // backup on for both
	PadBytes int64 // extra table files in data/
	Target   float64
}

var upgradeScenarios = []scenario{
	{ID: 1, Title: "binary in place, backup off", Placed: true, Target: 0.6},
	{ID: 2, Title: "binary fetched from plan info (20 MB/s), backup off", Throttle: true, Target: 0.1},
	{ID: 3, Title: "data padded to 1 GiB, backup on", Placed: true, Backup: true, PadBytes: 1 << 30, Target: 0.35},
}

// benchEnv holds what all runs share: binaries, servers, the padding template.
type benchEnv struct {
	o          options
	cosmovisor string
	srvDir     string
	fast, slow *server
	v2SHA      string
	padDir     string // template of table files, hard-linked into each home
	bigURL     string // scenario 4 archive (with checksum)
	bigSize    int64
}

func newEnv(ctx context.Context, o options) (*benchEnv, error) {
	e := &benchEnv{o: o, srvDir: filepath.Join(o.work, "srv")}
	var err error
	if o.scenarios[1] || o.scenarios[2] || o.scenarios[3] || o.scenarios[6] {
		say("building cosmovisor v1.5.0 (bench/cosmovisor/go.mod)")
		if e.cosmovisor, err = buildCosmovisor(ctx, o.work); err != nil {
			return nil, err
		}
	}
	if err := os.MkdirAll(filepath.Join(e.srvDir, upgradeName), 0o755); err != nil {
		return nil, err
	}
	served := filepath.Join(e.srvDir, upgradeName, daemon)
	if err := copyFile(o.v2, served, 0o755); err != nil {
		return nil, err
	}
	if e.v2SHA, err = localnet.SHA256File(served); err != nil {
		return nil, err
	}
	if e.fast, err = serve(e.srvDir, 0); err != nil {
		return nil, err
	}
	if e.slow, err = serve(e.srvDir, o.rate); err != nil {
		return nil, err
	}
	if o.scenarios[3] {
		e.padDir = filepath.Join(o.work, "pad")
		if err := makePadding(e.padDir, 1<<30); err != nil {
			return nil, err
		}
	}
	if o.scenarios[4] || o.scenarios[5] {
		p := filepath.Join(e.srvDir, "big", "exampled-big.tar.gz")
		sum, size, err := makeBigArchive(p, o.v2, 1<<30)
		if err != nil {
			return nil, err
		}
		e.bigURL, e.bigSize = e.fast.URL+"/big/exampled-big.tar.gz?checksum=sha256:"+sum, size
	}
	return e, nil
}

func (e *benchEnv) close() {
	e.fast.Close()
	e.slow.Close()
}

// upgradeResult is one upgrade under one supervisor.
type upgradeResult struct {
	Sup          string
	H            int64
	HaltSeen     time.Time     // first /abci_info at H-1
	ResumedSeen  time.Time     // first /abci_info at H
	Downtime     time.Duration // ResumedSeen - HaltSeen
	HaltToResume time.Duration // log: UPGRADE NEEDED -> first block H committed by v2
	Phases       []phase       // breakdown from the stamped log
	StagedAhead  time.Duration // invisor: "staging: ready" before HaltSeen
	Log          string
}

type phase struct {
	Name string
	D    time.Duration
}

func (e *benchEnv) upgradeRun(ctx context.Context, sc scenario, sup string, idx int) (upgradeResult, error) {
	r := upgradeResult{Sup: sup}
	name := fmt.Sprintf("s%d-%s-%d", sc.ID, sup, idx)
	dir, done, err := e.runDir(name)
	if err != nil {
		return r, err
	}
	defer done()
	home := filepath.Join(dir, "home")
	r.Log = filepath.Join(e.o.work, "logs", name+".log")
	_ = os.Remove(r.Log)
	ictx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	n, err := localnet.NewSingle(ictx, e.o.v1, home, localnet.Settings{TimeoutCommit: 300 * time.Millisecond})
	cancel()
	if err != nil {
		return r, err
	}
	if sc.PadBytes > 0 {
		if err := linkPadding(e.padDir, filepath.Join(home, "data", "padding.db")); err != nil {
			return r, err
		}
	}
	env := cleanEnv()
	env = append(env, "DAEMON_NAME="+daemon, "DAEMON_HOME="+home,
		"UNSAFE_SKIP_BACKUP="+fmt.Sprint(!sc.Backup))
	var bin string
	var args []string
	switch sup {
	case invisorSup:
		// Downloads on: invisor fetches when the plan appears (scenario 1 and 3:
		// from the unthrottled server, long before the height).
		env = append(env, "DAEMON_ALLOW_DOWNLOAD_BINARIES=true")
		if e.o.extraEnv != "" {
			env = append(env, strings.Split(e.o.extraEnv, ",")...)
		}
		bin, args = e.o.v1, []string{"start", "--home", home, "--log_no_color"}
	case cosmovisorSup:
		// The invisor inside exampled stays out of the way (it would otherwise
		// pre-stage the binary for cosmovisor).
		env = append(env, "INVISOR_ENABLED=false", "DAEMON_ALLOW_DOWNLOAD_BINARIES="+fmt.Sprint(sc.Throttle))
		gen := filepath.Join(home, "cosmovisor", "genesis", "bin")
		if err := os.MkdirAll(gen, 0o755); err != nil {
			return r, err
		}
		if err := copyFile(e.o.v1, filepath.Join(gen, daemon), 0o755); err != nil {
			return r, err
		}
		if sc.Placed {
			up := filepath.Join(home, "cosmovisor", "upgrades", upgradeName, "bin")
			if err := os.MkdirAll(up, 0o755); err != nil {
				return r, err
			}
			if err := copyFile(e.o.v2, filepath.Join(up, daemon), 0o755); err != nil {
				return r, err
			}
		}
		bin, args = e.cosmovisor, []string{"run", "start", "--home", home, "--log_no_color"}
	}
	p, err := startProc(bin, args, env, r.Log)
	if err != nil {
		return r, err
	}
	defer p.stop(20 * time.Second)
	pid := p.pid()

	cur, err := waitHeight(ctx, n, p, 3, 90*time.Second)
	if err != nil {
		return r, err
	}
	srv := e.fast
	if sc.Throttle {
		srv = e.slow
	}
	info := localnet.PlanInfo(runtime.GOOS, runtime.GOARCH, srv.URL+"/"+upgradeName+"/"+daemon, e.v2SHA)
	r.H = cur + e.o.delay
	pctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	err = n.PassUpgrade(pctx, upgradeName, r.H, info)
	cancel()
	if err != nil {
		return r, err
	}
	now, _ := n.AppInfo(ctx)
	if now.Height >= r.H-2 {
		return r, fmt.Errorf("proposal passed at height %d, too late for plan height %d; raise -delay", now.Height, r.H)
	}

	// Poll the app every 20 ms through the halt and the switch.
	deadline := time.Now().Add(time.Duration(r.H-now.Height)*2*time.Second + 3*time.Minute)
	var version string
	for {
		info, err := n.AppInfo(ctx)
		t := time.Now()
		if err == nil {
			if info.Height >= r.H-1 && r.HaltSeen.IsZero() {
				r.HaltSeen = t
			}
			if info.Height >= r.H && r.ResumedSeen.IsZero() {
				r.ResumedSeen = t
			}
			if info.Height >= r.H+2 {
				version = info.Version
				break
			}
		}
		if done, xerr := p.hasExited(); done {
			return r, fmt.Errorf("supervisor exited (%v) at height %d; see %s", xerr, info.Height, r.Log)
		}
		if t.After(deadline) {
			return r, fmt.Errorf("height %d not reached (at %d); see %s", r.H+2, info.Height, r.Log)
		}
		time.Sleep(20*time.Millisecond - time.Since(t))
	}
	r.Downtime = r.ResumedSeen.Sub(r.HaltSeen)
	if version != "v2.0.0" {
		return r, fmt.Errorf("app version after the upgrade is %q, want v2.0.0", version)
	}
	if sup == invisorSup {
		exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
		if want := filepath.Join(home, "cosmovisor", "upgrades", upgradeName, "bin", daemon); exe != want {
			return r, fmt.Errorf("PID %d executes %s, want %s (in-place switch)", pid, exe, want)
		}
	}
	p.stop(20 * time.Second)
	lines := p.snapshot()
	r.breakdown(lines)
	if sup == invisorSup {
		// The comparison assumes invisor had the binary before the halt.
		_, ready, ok := find(lines, 0, "staging: ready")
		_, needed, nok := find(lines, 0, "NEEDED at height")
		if !ok || !nok || !ready.T.Before(needed.T) {
			return r, fmt.Errorf("invisor had not staged the binary before the halt; raise -delay (see %s)", r.Log)
		}
		r.StagedAhead = needed.T.Sub(ready.T)
	}
	return r, nil
}

func waitHeight(ctx context.Context, n *localnet.Node, p *proc, h int64, timeout time.Duration) (int64, error) {
	deadline := time.Now().Add(timeout)
	for {
		info, err := n.AppInfo(ctx)
		if err == nil && info.Height >= h {
			return info.Height, nil
		}
		if done, xerr := p.hasExited(); done {
			return 0, fmt.Errorf("node exited (%v) before height %d", xerr, h)
		}
		if time.Now().After(deadline) {
			return 0, fmt.Errorf("height %d not reached within %s (at %d, err %v)", h, timeout, info.Height, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// cleanEnv is the harness's environment without supervisor settings.
func cleanEnv() []string {
	var out []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, "DAEMON_") || strings.HasPrefix(k, "INVISOR_") || strings.HasPrefix(k, "UNSAFE_") ||
			strings.HasPrefix(k, "COSMOVISOR_") {
			continue
		}
		out = append(out, kv)
	}
	return out
}

func copyFile(src, dst string, mode os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	tmp := dst + ".tmp"
	out, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	if err := out.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, dst)
}

func sha256File(p string) (string, int64, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	return hex.EncodeToString(h.Sum(nil)), n, err
}

// runDir makes a fresh directory for one run; done removes it unless -keep.
func (e *benchEnv) runDir(name string) (dir string, done func(), err error) {
	dir = filepath.Join(e.o.work, "runs", name)
	_ = os.RemoveAll(dir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", nil, err
	}
	if e.o.keep {
		return dir, func() {}, nil
	}
	return dir, func() { os.RemoveAll(dir) }, nil
}
