// Package localnet runs real exampled nodes on 127.0.0.1 for the demo, the
// end-to-end tests and testnet rehearsals: it initialises homes with fast blocks
// and a short gov voting period, starts and stops node processes, serves upgrade
// binaries from a loopback HTTP server, and drives software-upgrade proposals.
package localnet

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/invisor/invisor/internal/home"
)

// Denom is the staking denom of the local chain.
const Denom = "stake"

// Settings of a local chain.
type Settings struct {
	ChainID       string
	TimeoutCommit time.Duration // default 300ms
	VotingPeriod  time.Duration // default 4s
}

func (s Settings) withDefaults() Settings {
	if s.ChainID == "" {
		s.ChainID = "invisor-local-1"
	}
	if s.TimeoutCommit == 0 {
		s.TimeoutCommit = 300 * time.Millisecond
	}
	if s.VotingPeriod == 0 {
		s.VotingPeriod = 4 * time.Second
	}
	return s
}

// Node is one exampled node: its home, its ports and, once started, its process.
type Node struct {
	Name     string
	Home     string
	Bin      string // binary used by Start
	CLIBin   string // binary used for client commands (any version works)
	Settings Settings
	RPCPort  int
	P2PPort  int
	GRPCPort int
	APIPort  int
	PromPort int
	LogPath  string
	Env      []string // extra environment for Start

	cmd     *exec.Cmd
	logFile *os.File
	exited  chan struct{}
	exitErr error
}

// handedOut holds the ports FreePorts returned in this process: a port freed
// here is not bound until its node starts, and tests that run in parallel must
// not get it again meanwhile.
var handedOut = struct {
	sync.Mutex
	ports map[int]bool
}{ports: map[int]bool{}}

// FreePorts returns n distinct free TCP ports on 127.0.0.1, none of them
// returned before by this process.
func FreePorts(n int) ([]int, error) {
	handedOut.Lock()
	defer handedOut.Unlock()
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	ports := make([]int, 0, n)
	for len(ports) < n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
		if p := l.Addr().(*net.TCPAddr).Port; !handedOut.ports[p] {
			handedOut.ports[p] = true
			ports = append(ports, p)
		}
	}
	return ports, nil
}

// NewSingle initialises a one-validator chain in home with bin and returns its node.
func NewSingle(ctx context.Context, bin, home string, s Settings) (*Node, error) {
	s = s.withDefaults()
	ports, err := FreePorts(5)
	if err != nil {
		return nil, err
	}
	n := &Node{Name: "node0", Home: home, Bin: bin, CLIBin: bin, Settings: s,
		RPCPort: ports[0], P2PPort: ports[1], GRPCPort: ports[2], APIPort: ports[3], PromPort: ports[4],
		LogPath: filepath.Join(filepath.Dir(home), filepath.Base(home)+".log")}
	steps := [][]string{
		{"init", n.Name, "--chain-id", s.ChainID},
		{"keys", "add", "val", "--keyring-backend", "test"},
	}
	for _, a := range steps {
		if _, err := n.CLI(ctx, a...); err != nil {
			return nil, err
		}
	}
	addr, err := n.KeyAddress(ctx, "val")
	if err != nil {
		return nil, err
	}
	for _, a := range [][]string{
		{"genesis", "add-genesis-account", addr, "1000000000000" + Denom, "--keyring-backend", "test"},
		{"genesis", "gentx", "val", "100000000" + Denom, "--chain-id", s.ChainID, "--keyring-backend", "test"},
		{"genesis", "collect-gentxs"},
	} {
		if _, err := n.CLI(ctx, a...); err != nil {
			return nil, err
		}
	}
	if err := n.configure(); err != nil {
		return nil, err
	}
	return n, nil
}

// configure sets ports, fast blocks, the gov voting period and gas prices.
func (n *Node) configure() error {
	s := n.Settings
	cfg := filepath.Join(n.Home, "config")
	if err := editFile(filepath.Join(cfg, "config.toml"), []edit{
		{`(?m)^proxy_app = .*$`, fmt.Sprintf(`proxy_app = "tcp://127.0.0.1:%d"`, n.freeProxyPort())},
		{`(?m)^laddr = "tcp://127.0.0.1:26657"$`, fmt.Sprintf(`laddr = "tcp://127.0.0.1:%d"`, n.RPCPort)},
		{`(?m)^laddr = "tcp://0.0.0.0:26656"$`, fmt.Sprintf(`laddr = "tcp://127.0.0.1:%d"`, n.P2PPort)},
		{`(?m)^pprof_laddr = .*$`, `pprof_laddr = ""`},
		{`(?m)^timeout_commit = .*$`, fmt.Sprintf(`timeout_commit = "%s"`, s.TimeoutCommit)},
		{`(?m)^timeout_propose = .*$`, `timeout_propose = "1s"`},
		{`(?m)^addr_book_strict = .*$`, `addr_book_strict = false`},
		{`(?m)^allow_duplicate_ip = .*$`, `allow_duplicate_ip = true`},
		{`(?m)^prometheus_listen_addr = .*$`, fmt.Sprintf(`prometheus_listen_addr = "127.0.0.1:%d"`, n.PromPort)},
	}); err != nil {
		return err
	}
	if err := editFile(filepath.Join(cfg, "app.toml"), []edit{
		{`(?m)^minimum-gas-prices = .*$`, `minimum-gas-prices = "0` + Denom + `"`},
		{`(?m)^address = "tcp://localhost:1317"$`, fmt.Sprintf(`address = "tcp://127.0.0.1:%d"`, n.APIPort)},
		{`(?m)^address = "localhost:9090"$`, fmt.Sprintf(`address = "127.0.0.1:%d"`, n.GRPCPort)},
	}); err != nil {
		return err
	}
	if err := editFile(filepath.Join(cfg, "client.toml"), []edit{
		{`(?m)^node = .*$`, fmt.Sprintf(`node = "tcp://127.0.0.1:%d"`, n.RPCPort)},
		{`(?m)^chain-id = .*$`, fmt.Sprintf(`chain-id = "%s"`, s.ChainID)},
		{`(?m)^keyring-backend = .*$`, `keyring-backend = "test"`},
	}); err != nil {
		return err
	}
	return editGenesis(filepath.Join(cfg, "genesis.json"), func(g map[string]any) {
		params := dig(g, "app_state", "gov", "params")
		params["voting_period"] = fmt.Sprintf("%ds", int(s.VotingPeriod.Seconds()))
		params["expedited_voting_period"] = fmt.Sprintf("%ds", max(1, int(s.VotingPeriod.Seconds())/2))
		params["max_deposit_period"] = "60s"
	})
}

// freeProxyPort picks a port for the unused ABCI socket so parallel chains do not collide.
func (n *Node) freeProxyPort() int {
	p, err := FreePorts(1)
	if err != nil {
		return 0
	}
	return p[0]
}

// CLI runs the client binary against this node and returns its stdout.
func (n *Node) CLI(ctx context.Context, args ...string) ([]byte, error) {
	args = append(args, "--home", n.Home)
	cmd := exec.CommandContext(ctx, n.CLIBin, args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return out.Bytes(), fmt.Errorf("%s %s: %w: %s%s", filepath.Base(n.CLIBin), strings.Join(args, " "), err, errb.String(), out.String())
	}
	return out.Bytes(), nil
}

// KeyAddress returns the address of a test-keyring key.
func (n *Node) KeyAddress(ctx context.Context, key string) (string, error) {
	out, err := n.CLI(ctx, "keys", "show", key, "-a", "--keyring-backend", "test")
	return strings.TrimSpace(string(out)), err
}

// Start starts `<Bin> start` with the node's environment; output goes to LogPath.
func (n *Node) Start(args ...string) error {
	return n.startProcess(n.Bin, append([]string{"start", "--home", n.Home, "--log_no_color"}, args...)...)
}

// startProcess starts name with args as the node's process, in its own process
// group, with the node's environment, its output appended to LogPath; Exited,
// Stop and Kill then work on it.
func (n *Node) startProcess(name string, args ...string) error {
	f, err := os.OpenFile(n.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	cmd := exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.Env = append(os.Environ(), n.Env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		f.Close()
		return err
	}
	n.cmd, n.logFile, n.exited = cmd, f, make(chan struct{})
	go func() {
		n.exitErr = cmd.Wait()
		f.Close()
		close(n.exited)
	}()
	return nil
}

// Pid returns the PID of the started process (0 if not started).
func (n *Node) Pid() int {
	if n.cmd == nil || n.cmd.Process == nil {
		return 0
	}
	return n.cmd.Process.Pid
}

// Exe returns the file the node's process is executing now (/proc/PID/exe).
func (n *Node) Exe() (string, error) {
	return os.Readlink(fmt.Sprintf("/proc/%d/exe", n.Pid()))
}

// Exited reports whether the process has exited, with its error.
func (n *Node) Exited() (bool, error) {
	if n.exited == nil {
		return false, nil
	}
	select {
	case <-n.exited:
		return true, n.exitErr
	default:
		return false, nil
	}
}

// Stop sends SIGTERM and waits up to timeout, then SIGKILLs the process group.
func (n *Node) Stop(timeout time.Duration) error {
	return n.stopWith(timeout, "", func() { _ = n.cmd.Process.Signal(syscall.SIGTERM) })
}

// stopWith runs term (the polite stop), waits up to timeout for the process to
// exit, then SIGKILLs its process group; to says, in the error, whom term
// signalled ("" for the process itself).
func (n *Node) stopWith(timeout time.Duration, to string, term func()) error {
	if n.cmd == nil || n.cmd.Process == nil {
		return nil
	}
	if done, _ := n.Exited(); done {
		return nil
	}
	term()
	select {
	case <-n.exited:
		return nil
	case <-time.After(timeout):
		_ = syscall.Kill(-n.cmd.Process.Pid, syscall.SIGKILL)
		<-n.exited
		return fmt.Errorf("%s did not stop within %s after SIGTERM%s; killed", n.Name, timeout, to)
	}
}

// Kill sends SIGKILL to the node's process group and waits for it.
func (n *Node) Kill() {
	if n.cmd == nil || n.cmd.Process == nil {
		return
	}
	_ = syscall.Kill(-n.cmd.Process.Pid, syscall.SIGKILL)
	<-n.exited
}

// LogTail returns the last max bytes of the node's log.
func (n *Node) LogTail(max int64) string {
	f, err := os.Open(n.LogPath)
	if err != nil {
		return ""
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil && fi.Size() > max {
		_, _ = f.Seek(fi.Size()-max, io.SeekStart)
	}
	b, _ := io.ReadAll(f)
	return string(b)
}

// rpc fetches a CometBFT RPC path and decodes its result.
func (n *Node) rpc(ctx context.Context, path string, v any) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("http://127.0.0.1:%d%s", n.RPCPort, path), nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var env struct {
		Result json.RawMessage `json:"result"`
		Error  json.RawMessage `json:"error"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&env); err != nil {
		return err
	}
	if len(env.Error) > 0 && string(env.Error) != "null" {
		return fmt.Errorf("rpc %s: %s", path, env.Error)
	}
	return json.Unmarshal(env.Result, v)
}

// AppInfo is the application's view from /abci_info.
type AppInfo struct {
	Height  int64
	Version string // the binary's version string, e.g. v2.0.0
}

// AppInfo returns the app height (last committed block) and the app's version.
func (n *Node) AppInfo(ctx context.Context) (AppInfo, error) {
	var r struct {
		Response struct {
			Version         string `json:"version"`
			LastBlockHeight string `json:"last_block_height"`
		} `json:"response"`
	}
	if err := n.rpc(ctx, "/abci_info", &r); err != nil {
		return AppInfo{}, err
	}
	h, _ := strconv.ParseInt(r.Response.LastBlockHeight, 10, 64)
	return AppInfo{Height: h, Version: r.Response.Version}, nil
}

// WaitHeight waits until the app height reaches h.
func (n *Node) WaitHeight(ctx context.Context, h int64) (AppInfo, error) {
	for {
		info, err := n.AppInfo(ctx)
		if err == nil && info.Height >= h {
			return info, nil
		}
		if done, exitErr := n.Exited(); done {
			return info, fmt.Errorf("%s exited (%v) while waiting for height %d", n.Name, exitErr, h)
		}
		select {
		case <-ctx.Done():
			return info, fmt.Errorf("waiting for height %d (at %d): %w", h, info.Height, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// Tx runs a tx command from the validator key and checks it was accepted.
func (n *Node) Tx(ctx context.Context, args ...string) error {
	args = append(args, "--from", "val", "--keyring-backend", "test", "--chain-id", n.Settings.ChainID,
		"--node", fmt.Sprintf("tcp://127.0.0.1:%d", n.RPCPort), "--yes", "--gas", "400000", "-o", "json")
	out, err := n.CLI(ctx, args...)
	if err != nil {
		return err
	}
	var r struct {
		Code   int    `json:"code"`
		RawLog string `json:"raw_log"`
		TxHash string `json:"txhash"`
	}
	if err := json.Unmarshal(out, &r); err != nil {
		return fmt.Errorf("tx output: %w: %s", err, out)
	}
	if r.Code != 0 {
		return fmt.Errorf("tx rejected (code %d): %s", r.Code, r.RawLog)
	}
	return nil
}

// GovAddress is the gov module account, the authority of MsgSoftwareUpgrade.
const GovAddress = "cosmos10d07y265gmmuvt4z0w9aw880jnsr700j6zn9kn"

// ProposeUpgrade submits a MsgSoftwareUpgrade proposal with the full deposit and
// returns its id.
func (n *Node) ProposeUpgrade(ctx context.Context, name string, height int64, info string) (uint64, error) {
	return n.propose(ctx, name, map[string]any{
		"@type":     "/cosmos.upgrade.v1beta1.MsgSoftwareUpgrade",
		"authority": GovAddress,
		"plan":      map[string]any{"name": name, "height": strconv.FormatInt(height, 10), "info": info},
	})
}

// propose submits a gov proposal carrying msg with the full deposit and returns its id.
func (n *Node) propose(ctx context.Context, title string, msg map[string]any) (uint64, error) {
	before, _ := n.lastProposalID(ctx)
	prop := map[string]any{
		"messages": []any{msg},
		"deposit":  "10000000" + Denom,
		"title":    "Upgrade " + title,
		"summary":  "Software upgrade " + title + " rehearsed with invisor",
		"metadata": "",
	}
	b, _ := json.Marshal(prop)
	f := filepath.Join(n.Home, fmt.Sprintf("proposal-%s-%d.json", servedDir(title), time.Now().UnixNano()))
	if err := os.WriteFile(f, b, 0o644); err != nil {
		return 0, err
	}
	if err := n.Tx(ctx, "tx", "gov", "submit-proposal", f); err != nil {
		return 0, err
	}
	for {
		id, err := n.lastProposalID(ctx)
		if err == nil && id > before {
			return id, nil
		}
		select {
		case <-ctx.Done():
			return 0, fmt.Errorf("proposal %q did not appear: %w", title, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (n *Node) lastProposalID(ctx context.Context) (uint64, error) {
	out, err := n.CLI(ctx, "query", "gov", "proposals", "-o", "json", "--node", fmt.Sprintf("tcp://127.0.0.1:%d", n.RPCPort))
	if err != nil {
		if strings.Contains(err.Error(), "no proposals found") {
			return 0, nil
		}
		return 0, err
	}
	var r struct {
		Proposals []struct {
			ID string `json:"id"`
		} `json:"proposals"`
	}
	if err := json.Unmarshal(out, &r); err != nil {
		return 0, err
	}
	var last uint64
	for _, p := range r.Proposals {
		id, _ := strconv.ParseUint(p.ID, 10, 64)
		last = max(last, id)
	}
	return last, nil
}

// Vote votes yes on a proposal from the validator key.
func (n *Node) Vote(ctx context.Context, id uint64) error {
	return n.Tx(ctx, "tx", "gov", "vote", strconv.FormatUint(id, 10), "yes")
}

// ProposalStatus returns the status of a proposal, e.g. PROPOSAL_STATUS_PASSED.
func (n *Node) ProposalStatus(ctx context.Context, id uint64) (string, error) {
	out, err := n.CLI(ctx, "query", "gov", "proposal", strconv.FormatUint(id, 10), "-o", "json",
		"--node", fmt.Sprintf("tcp://127.0.0.1:%d", n.RPCPort))
	if err != nil {
		return "", err
	}
	var r struct {
		Proposal struct {
			Status any `json:"status"`
		} `json:"proposal"`
	}
	if err := json.Unmarshal(out, &r); err != nil {
		return "", err
	}
	return fmt.Sprint(r.Proposal.Status), nil
}

// WaitPassed waits until the proposal passed, or fails if it was rejected.
func (n *Node) WaitPassed(ctx context.Context, id uint64) error {
	for {
		st, err := n.ProposalStatus(ctx, id)
		if err == nil {
			switch {
			case strings.Contains(st, "PASSED") || st == "3":
				return nil
			case strings.Contains(st, "REJECTED") || strings.Contains(st, "FAILED") || st == "4" || st == "5":
				return fmt.Errorf("proposal %d ended as %s", id, st)
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("proposal %d not passed (status %q, %v): %w", id, st, err, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// UpgradePlan returns the plan in force as `query upgrade plan` shows it, or "" if none.
func (n *Node) UpgradePlan(ctx context.Context) (string, error) {
	out, err := n.CLI(ctx, "query", "upgrade", "plan", "-o", "json", "--node", fmt.Sprintf("tcp://127.0.0.1:%d", n.RPCPort))
	if err != nil {
		if strings.Contains(err.Error(), "no upgrade scheduled") {
			return "", nil
		}
		return "", err
	}
	return strings.TrimSpace(string(out)), nil
}

// TraceDescription returns the description the upgrade handlers write into the
// metadata of denom, or "" when no handler ran.
func (n *Node) TraceDescription(ctx context.Context, denom string) (string, error) {
	out, err := n.CLI(ctx, "query", "bank", "denom-metadata", denom, "-o", "json",
		"--node", fmt.Sprintf("tcp://127.0.0.1:%d", n.RPCPort))
	if err != nil {
		if strings.Contains(err.Error(), "not found") {
			return "", nil
		}
		return "", err
	}
	var r struct {
		Metadata struct {
			Description string `json:"description"`
		} `json:"metadata"`
	}
	if err := json.Unmarshal(out, &r); err != nil {
		return "", err
	}
	return r.Metadata.Description, nil
}

// FileServer serves a directory on 127.0.0.1 (plain net/http, closed by Close)
// and counts the GET requests per path.
type FileServer struct {
	URL string
	Dir string
	srv *http.Server

	mu   sync.Mutex
	hits map[string]int
}

// Hits is how many GET requests path (such as /v2/exampled) got so far.
func (s *FileServer) Hits(path string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.hits[path]
}

// ServeDir serves dir over HTTP on a free loopback port.
func ServeDir(dir string) (*FileServer, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	fs := &FileServer{URL: "http://" + l.Addr().String(), Dir: dir, hits: map[string]int{}}
	files := http.FileServer(http.Dir(dir))
	fs.srv = &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet {
			fs.mu.Lock()
			fs.hits[r.URL.Path]++
			fs.mu.Unlock()
		}
		files.ServeHTTP(w, r)
	})}
	go func() { _ = fs.srv.Serve(l) }()
	return fs, nil
}

// Close stops the server.
func (s *FileServer) Close() error { return s.srv.Close() }

// SHA256File returns the hex sha256 of a file.
func SHA256File(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	d, err := home.HashFile(context.Background(), f)
	return d.SHA256, err
}

// Layout is the cosmovisor layout of a node home of the example chain.
func Layout(nodeHome string) home.Layout {
	l, err := home.New(nodeHome, DaemonName, home.Options{})
	if err != nil {
		panic(err) // DaemonName is a valid name
	}
	return l
}

// Staged reports whether upgrade name's binary in nodeHome has a completion record
// for a plan of that name and is the file the record describes (what invisor's
// proof checks, short of comparing with the plan in force, which the node does),
// and returns the record and the binary's path.
func Staged(nodeHome, name string) (home.Record, string, bool) {
	v, err := Layout(nodeHome).Inspect(context.Background(), name)
	if err != nil {
		return home.Record{}, "", false
	}
	v.Close()
	return v.Record, v.Path, v.Record.Plan == name
}

// StagedBin is where the binary for upgrade name goes in nodeHome.
func StagedBin(nodeHome, name string) string {
	p, err := Layout(nodeHome).UpgradeBin(name)
	if err != nil {
		return ""
	}
	return p
}

// PlanInfo returns cosmovisor-format plan info pointing at url with its sha256.
func PlanInfo(goos, goarch, url, sha string) string {
	b, _ := json.Marshal(map[string]any{"binaries": map[string]string{goos + "/" + goarch: url + "?checksum=sha256:" + sha}})
	return string(b)
}

type edit struct{ re, repl string }

func editFile(path string, edits []edit) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	for _, e := range edits {
		re := regexp.MustCompile(e.re)
		if !re.Match(b) {
			return fmt.Errorf("%s: no line matches %s", path, e.re)
		}
		b = re.ReplaceAll(b, []byte(e.repl))
	}
	return os.WriteFile(path, b, 0o644)
}

func editGenesis(path string, f func(map[string]any)) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var g map[string]any
	if err := json.Unmarshal(b, &g); err != nil {
		return err
	}
	f(g)
	out, err := json.MarshalIndent(g, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, out, 0o644)
}

func dig(m map[string]any, keys ...string) map[string]any {
	for _, k := range keys {
		next, ok := m[k].(map[string]any)
		if !ok {
			next = map[string]any{}
			m[k] = next
		}
		m = next
	}
	return m
}

// ErrNotStarted is returned by calls that need a running process.
var ErrNotStarted = errors.New("localnet: node not started")
