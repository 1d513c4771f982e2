package localnet

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

// A multi-validator local network
//
// NewTestnet initialises N validators (and optionally full nodes) of one chain
// on 127.0.0.1, each with its own home, ports and keyring: every validator's
// account is funded in one genesis, every validator signs its own gentx with
// its own key and equal stake, the gentxs are collected into one genesis that
// every node gets byte for byte, and the validators are each other's
// persistent peers. Nodes are started with plain `<bin> start`.

// Stake of each validator's account and self-delegation: equal voting power.
const (
	testnetFunds = "1000000000000"
	testnetStake = "100000000"
)

// Testnet is a local multi-validator chain.
type Testnet struct {
	Settings   Settings
	Work       string
	Validators []*Node
	FullNodes  []*Node
}

// Nodes returns the validators then the full nodes.
func (t *Testnet) Nodes() []*Node {
	return append(append([]*Node{}, t.Validators...), t.FullNodes...)
}

// NewTestnet initialises validators validators (val0..) and fullNodes full nodes
// (full0..) under work, all with bin. Ports come from one FreePorts call.
func NewTestnet(ctx context.Context, bin, work string, validators, fullNodes int, s Settings) (*Testnet, error) {
	s = s.withDefaults()
	if validators < 1 {
		return nil, errors.New("localnet: a testnet needs at least one validator")
	}
	if err := os.MkdirAll(work, 0o755); err != nil {
		return nil, err
	}
	ports, err := FreePorts(5 * (validators + fullNodes))
	if err != nil {
		return nil, err
	}
	t := &Testnet{Settings: s, Work: work}
	for i := range validators + fullNodes {
		name := fmt.Sprintf("val%d", i)
		if i >= validators {
			name = fmt.Sprintf("full%d", i-validators)
		}
		n := newNode(name, bin, filepath.Join(work, name), s, ports[5*i:5*i+5])
		if i < validators {
			t.Validators = append(t.Validators, n)
		} else {
			t.FullNodes = append(t.FullNodes, n)
		}
	}
	vals := t.Validators

	// Each node: its home; each validator: its own key in its own keyring.
	addrs := make([]string, len(vals))
	if err := Parallel(len(vals)+fullNodes, func(i int) error {
		if i >= len(vals) {
			_, err := t.FullNodes[i-len(vals)].CLI(ctx, "init", t.FullNodes[i-len(vals)].Name, "--chain-id", s.ChainID)
			return err
		}
		n := vals[i]
		if _, err := n.CLI(ctx, "init", n.Name, "--chain-id", s.ChainID); err != nil {
			return err
		}
		if _, err := n.CLI(ctx, "keys", "add", "val", "--keyring-backend", "test"); err != nil {
			return err
		}
		a, err := n.KeyAddress(ctx, "val")
		addrs[i] = a
		return err
	}); err != nil {
		return nil, err
	}

	// Every validator's account in val0's genesis, then that genesis everywhere.
	v0 := vals[0]
	for _, a := range addrs {
		if _, err := v0.CLI(ctx, "genesis", "add-genesis-account", a, testnetFunds+Denom, "--keyring-backend", "test"); err != nil {
			return nil, err
		}
	}
	if err := t.copyGenesis(v0, vals[1:]); err != nil {
		return nil, err
	}
	// Each validator signs its own gentx; val0 collects them.
	if err := Parallel(len(vals), func(i int) error {
		_, err := vals[i].CLI(ctx, "genesis", "gentx", "val", testnetStake+Denom, "--chain-id", s.ChainID, "--keyring-backend", "test")
		return err
	}); err != nil {
		return nil, err
	}
	for _, n := range vals[1:] {
		files, err := filepath.Glob(filepath.Join(n.Home, "config", "gentx", "*.json"))
		if err != nil || len(files) != 1 {
			return nil, fmt.Errorf("%s: want one gentx, found %v (%v)", n.Name, files, err)
		}
		if err := copyFile(files[0], filepath.Join(v0.Home, "config", "gentx", filepath.Base(files[0]))); err != nil {
			return nil, err
		}
	}
	if _, err := v0.CLI(ctx, "genesis", "collect-gentxs"); err != nil {
		return nil, err
	}

	// Ports, fast blocks, gov voting period (val0's genesis), then one genesis for all.
	for _, n := range t.Nodes() {
		if err := n.configure(); err != nil {
			return nil, err
		}
	}
	if err := t.copyGenesis(v0, t.Nodes()[1:]); err != nil {
		return nil, err
	}
	if _, err := v0.CLI(ctx, "genesis", "validate"); err != nil {
		return nil, err
	}
	if err := t.setPeers(ctx, t.Nodes()); err != nil {
		return nil, err
	}
	return t, nil
}

func newNode(name, bin, home string, s Settings, ports []int) *Node {
	return &Node{Name: name, Home: home, Bin: bin, CLIBin: bin, Settings: s,
		RPCPort: ports[0], P2PPort: ports[1], GRPCPort: ports[2], APIPort: ports[3], PromPort: ports[4],
		LogPath: filepath.Join(filepath.Dir(home), filepath.Base(home)+".log")}
}

func (t *Testnet) copyGenesis(from *Node, to []*Node) error {
	gen, err := os.ReadFile(filepath.Join(from.Home, "config", "genesis.json"))
	if err != nil {
		return err
	}
	for _, n := range to {
		if err := os.WriteFile(filepath.Join(n.Home, "config", "genesis.json"), gen, 0o644); err != nil {
			return err
		}
	}
	return nil
}

// setPeers makes every validator a persistent peer of each node in nodes (and of
// the validators, every other validator); a full node also peers with the
// full nodes before it.
func (t *Testnet) setPeers(ctx context.Context, nodes []*Node) error {
	all := t.Nodes()
	addr := make(map[*Node]string, len(all))
	var mu sync.Mutex
	if err := Parallel(len(all), func(i int) error {
		a, err := all[i].P2PAddress(ctx)
		mu.Lock()
		addr[all[i]] = a
		mu.Unlock()
		return err
	}); err != nil {
		return err
	}
	for _, n := range nodes {
		var peers []string
		for _, p := range all {
			if p == n {
				continue
			}
			if t.isValidator(p) || !t.isValidator(n) {
				peers = append(peers, addr[p])
			}
		}
		if err := editFile(filepath.Join(n.Home, "config", "config.toml"), []edit{
			{`(?m)^persistent_peers = .*$`, fmt.Sprintf(`persistent_peers = "%s"`, strings.Join(peers, ","))},
		}); err != nil {
			return err
		}
	}
	return nil
}

func (t *Testnet) isValidator(n *Node) bool {
	for _, v := range t.Validators {
		if v == n {
			return true
		}
	}
	return false
}

// AddFullNode initialises a new non-validator node with bin on fresh ports, with
// the chain's genesis and every other node as persistent peer. It is not started.
func (t *Testnet) AddFullNode(ctx context.Context, name, bin string) (*Node, error) {
	ports, err := FreePorts(5)
	if err != nil {
		return nil, err
	}
	n := newNode(name, bin, filepath.Join(t.Work, name), t.Settings, ports)
	n.CLIBin = t.Validators[0].CLIBin
	if _, err := n.CLI(ctx, "init", name, "--chain-id", t.Settings.ChainID); err != nil {
		return nil, err
	}
	if err := n.configure(); err != nil {
		return nil, err
	}
	if err := t.copyGenesis(t.Validators[0], []*Node{n}); err != nil {
		return nil, err
	}
	t.FullNodes = append(t.FullNodes, n)
	return n, t.setPeers(ctx, []*Node{n})
}

// Stop stops every started node (SIGTERM to its PID, SIGKILL to its process
// group after timeout), all at once, and returns the first error.
func (t *Testnet) Stop(timeout time.Duration) error {
	nodes := t.Nodes()
	return Parallel(len(nodes), func(i int) error { return nodes[i].Stop(timeout) })
}

// ScheduleUpgrade serves bin under srv as the binary of upgrade name, has val0
// submit a MsgSoftwareUpgrade for height now+delay with the full deposit, has
// every validator vote yes with its own key through its own node, and waits
// for the proposal to pass.
func (t *Testnet) ScheduleUpgrade(ctx context.Context, srv *FileServer, name, bin string, delay int64) (Scheduled, uint64, error) {
	s := Scheduled{Name: name}
	dir := filepath.Join(srv.Dir, name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return s, 0, err
	}
	served := filepath.Join(dir, DaemonName)
	if err := copyFile(bin, served); err != nil {
		return s, 0, err
	}
	sha, err := SHA256File(served)
	if err != nil {
		return s, 0, err
	}
	proposer := t.Validators[0]
	now, err := proposer.AppInfo(ctx)
	if err != nil {
		return s, 0, err
	}
	s.SHA256, s.ProposedAt, s.Height = sha, now.Height, now.Height+delay
	info := PlanInfo(runtime.GOOS, runtime.GOARCH, srv.URL+"/"+name+"/"+DaemonName, sha)
	id, err := proposer.ProposeUpgrade(ctx, name, s.Height, info)
	if err != nil {
		return s, 0, err
	}
	if err := Parallel(len(t.Validators), func(i int) error { return t.Validators[i].Vote(ctx, id) }); err != nil {
		return s, id, err
	}
	return s, id, proposer.WaitPassed(ctx, id)
}

// ValidatorAddress is the node's consensus address (hex) from /status.
func (n *Node) ValidatorAddress(ctx context.Context) (string, error) {
	var r struct {
		ValidatorInfo struct {
			Address string `json:"address"`
		} `json:"validator_info"`
	}
	if err := n.rpc(ctx, "/status", &r); err != nil {
		return "", err
	}
	return r.ValidatorInfo.Address, nil
}

// CommitSigners returns the consensus addresses whose precommit for block h is
// in its canonical commit (/commit?height=h, block_id_flag COMMIT). It fails
// while the node has only its own seen commit for h (h is its latest block).
func (n *Node) CommitSigners(ctx context.Context, h int64) ([]string, error) {
	var r struct {
		SignedHeader struct {
			Commit struct {
				Signatures []struct {
					Flag    json.Number `json:"block_id_flag"`
					Address string      `json:"validator_address"`
				} `json:"signatures"`
			} `json:"commit"`
		} `json:"signed_header"`
		Canonical bool `json:"canonical"`
	}
	if err := n.rpc(ctx, "/commit?height="+strconv.FormatInt(h, 10), &r); err != nil {
		return nil, err
	}
	if !r.Canonical {
		return nil, fmt.Errorf("%s: the commit for block %d is not canonical yet", n.Name, h)
	}
	var out []string
	for _, s := range r.SignedHeader.Commit.Signatures {
		if f := s.Flag.String(); f == "2" || f == "BLOCK_ID_FLAG_COMMIT" {
			out = append(out, s.Address)
		}
	}
	return out, nil
}

// ValidatorPower is one entry of /validators.
type ValidatorPower struct {
	Address string
	Power   int64
}

// ValidatorSet returns the current validator set from /validators.
func (n *Node) ValidatorSet(ctx context.Context) ([]ValidatorPower, error) {
	var r struct {
		Validators []struct {
			Address string `json:"address"`
			Power   string `json:"voting_power"`
		} `json:"validators"`
	}
	if err := n.rpc(ctx, "/validators?per_page=100", &r); err != nil {
		return nil, err
	}
	out := make([]ValidatorPower, 0, len(r.Validators))
	for _, v := range r.Validators {
		p, _ := strconv.ParseInt(v.Power, 10, 64)
		out = append(out, ValidatorPower{Address: v.Address, Power: p})
	}
	return out, nil
}

// StagedPath is where invisor stages the binary of upgrade name in n's home.
func (n *Node) StagedPath(name string) string { return StagedBin(n.Home, name) }

// haltedFor returns the plan name in data/upgrade-info.json ("" if none):
// x/upgrade writes it when the node halts at the plan height.
func haltedFor(home string) string {
	b, err := os.ReadFile(filepath.Join(home, "data", "upgrade-info.json"))
	if err != nil {
		return ""
	}
	var ui struct {
		Name string `json:"name"`
	}
	if json.Unmarshal(b, &ui) != nil {
		return ""
	}
	return ui.Name
}

// Parallel runs f(0..n-1) concurrently and returns their errors joined.
func Parallel(n int, f func(i int) error) error {
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = f(i)
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// ---------------------------------------------------------------------------
// The rehearsal behind `make testnet` and TestTestnetRehearsal.

// RehearsalConfig configures Rehearse.
type RehearsalConfig struct {
	Build string // directory holding exampled-v1, -v2 and -v3
	Work  string // homes, logs and the served binaries go here
	// Settings of the chain; defaults: chain invisor-testnet-1, 700ms blocks, 6s voting period.
	Settings Settings
	// PlanDelay is how many blocks after the proposal the plan height is (default 30).
	PlanDelay int64
	// KillBefore: validator val1 is SIGKILLed when the chain reaches the first
	// plan height minus KillBefore (default 4).
	KillBefore int64
	// After is how many blocks past the second upgrade the chain must advance (default 10).
	After int64
	// Progress receives one line per step (optional).
	Progress func(string)
}

// Roles in the rehearsal (four validators and one full node).
const (
	roleProposer = 0 // val0 submits and deposits
	roleKilled   = 1 // val1 is SIGKILLed before the first upgrade, restarted with v1 after the halt
	roleManual   = 2 // val2 has downloads off and gets its binaries with `invisor stage` after the halt
)

// NodeUpgrade is what one node did at one upgrade, measured by polling its RPC
// and its home every 100 ms (the plan-seen block is from its log).
type NodeUpgrade struct {
	Node        string
	Role        string
	SeenBlock   int64  // block in which invisor logged `upgrade plan seen` (0: not logged)
	ReadyHeight int64  // the node's app height (last answer) when its staged binary was first trusted
	ReadySource string // the completion record's source: "download", "operator-file-checksum", ...
	PIDBefore   int
	PIDAfter    int
	ExeAfter    string
	Restarted   string    // how the process was replaced, if it was
	HaltAt      time.Time // data/upgrade-info.json named this plan
	FirstBlock  int64     // first app height reported by the new version
	FirstAt     time.Time
	FirstSigned int64 // validators: first block after the plan height carrying its precommit
}

// UpgradeReport is one governance upgrade across the network.
type UpgradeReport struct {
	Name, Version  string // plan name and the app version it brings (v2, v2.0.0)
	Height         int64
	ProposalID     uint64
	ProposedAt     int64
	PassedAt       int64
	SHA256         string
	Halt           time.Time // first node halt
	ResumeSigners  []string  // validators whose precommit is in block Height+1, the first agreed on the new binary
	WaitingNode    string    // the validator still without its binary when the chain went on
	WaitingHeight  int64     // its app height then
	ContinuedTo    int64     // chain height reached while it waited
	Nodes          []*NodeUpgrade
	signersByBlock map[int64][]string
}

// LateJoiner is the full node that joined after both upgrades.
type LateJoiner struct {
	Node         string
	PID          int
	StartHeight  int64 // chain height when it started
	Height       int64 // its app height at the end
	Version      string
	Exe          string
	SyncDuration time.Duration
	Seen         map[string]int64 // plan name -> block of `upgrade plan seen`
	Ready        map[string]int64 // plan name -> app height when its binary was trusted
	Switched     map[string]time.Duration
}

// Rehearsal is the network and what happened to it. Close stops everything.
type Rehearsal struct {
	Config      RehearsalConfig
	Net         *Testnet
	Server      *FileServer
	Upgrades    []*UpgradeReport
	Late        *LateJoiner
	FinalHeight int64
	Started     time.Time

	valAddr   map[*Node]string
	pidStart  map[*Node]int // PID of the process started for each node (the last start)
	intended  map[*Node]bool
	signerBuf map[int64][]string
	binDir    string
	// lastHeight is the last app height each node answered with (a node
	// halted in block sync, or switching, does not answer /abci_info).
	lastHeight map[*Node]int64
}

// Close stops every node by PID (SIGTERM, then SIGKILL of its group after 20 s)
// and the file server.
func (r *Rehearsal) Close() error {
	var err error
	if r.Net != nil {
		err = r.Net.Stop(20 * time.Second)
	}
	if r.Server != nil {
		r.Server.Close()
	}
	return err
}

func (r *Rehearsal) say(format string, a ...any) {
	if r.Config.Progress != nil {
		r.Config.Progress(fmt.Sprintf("[%5.1fs] ", time.Since(r.Started).Seconds()) + fmt.Sprintf(format, a...))
	}
}

// Rehearse runs the rehearsal: four validators and one full node started with
// plain `exampled-v1 start`, two governance upgrades (v1->v2, v2->v3) with the
// binaries served over loopback HTTP, val1 SIGKILLed a few blocks before the
// first upgrade and restarted with v1 after the halt, val2 without downloads
// staged by hand after each halt, then a late full node with only v1 that syncs
// from genesis across both upgrades. It returns an error unless every node is on
// v3 in its original process (val1: its restarted one) running its staged
// binary, and the chain advanced After blocks past the second upgrade. The nodes
// are still running when it returns: call Close.
func Rehearse(ctx context.Context, cfg RehearsalConfig) (*Rehearsal, error) {
	if cfg.Settings.ChainID == "" {
		cfg.Settings.ChainID = "invisor-testnet-1"
	}
	if cfg.Settings.TimeoutCommit == 0 {
		cfg.Settings.TimeoutCommit = 700 * time.Millisecond
	}
	if cfg.Settings.VotingPeriod == 0 {
		cfg.Settings.VotingPeriod = 6 * time.Second
	}
	if cfg.PlanDelay == 0 {
		cfg.PlanDelay = 30
	}
	if cfg.KillBefore == 0 {
		cfg.KillBefore = 4
	}
	if cfg.After == 0 {
		cfg.After = 10
	}
	r := &Rehearsal{Config: cfg, Started: time.Now(), valAddr: map[*Node]string{}, pidStart: map[*Node]int{},
		intended: map[*Node]bool{}, signerBuf: map[int64][]string{}, lastHeight: map[*Node]int64{}}
	// A snapshot of the three binaries: the operator's files for the whole
	// rehearsal, whatever happens to the build directory meanwhile.
	snap := filepath.Join(cfg.Work, "bin")
	if err := os.MkdirAll(snap, 0o755); err != nil {
		return r, err
	}
	bin := func(v string) string { return filepath.Join(snap, "exampled-"+v) }
	for _, v := range []string{"v1", "v2", "v3"} {
		if err := copyFile(filepath.Join(cfg.Build, "exampled-"+v), bin(v)); err != nil {
			return r, fmt.Errorf("copy exampled-%s from %s (make build): %w", v, cfg.Build, err)
		}
	}
	r.binDir = snap

	r.say("initialising 4 validators and 1 full node under %s", cfg.Work)
	net, err := NewTestnet(ctx, bin("v1"), cfg.Work, 4, 1, cfg.Settings)
	if err != nil {
		return r, err
	}
	r.Net = net
	if r.Server, err = ServeDir(filepath.Join(cfg.Work, "www")); err != nil {
		return r, err
	}
	for i, n := range net.Nodes() {
		if i != roleManual {
			n.Env = []string{"DAEMON_ALLOW_DOWNLOAD_BINARIES=true"}
		}
		if err := n.Start(); err != nil {
			return r, err
		}
		r.pidStart[n] = n.Pid()
	}
	for _, n := range net.Nodes() {
		r.say("started %-5s exampled-v1 start (PID %d, RPC 127.0.0.1:%d, P2P %d)%s", n.Name, n.Pid(), n.RPCPort, n.P2PPort,
			map[bool]string{true: ", downloads disabled", false: ""}[n == net.Validators[roleManual]])
	}
	wctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	for _, n := range net.Nodes() {
		if _, err := n.WaitHeight(wctx, 3); err != nil {
			return r, fmt.Errorf("%s: %w", n.Name, err)
		}
	}
	for _, v := range net.Validators {
		a, err := v.ValidatorAddress(ctx)
		if err != nil {
			return r, err
		}
		r.valAddr[v] = a
	}
	set, err := net.Validators[0].ValidatorSet(ctx)
	if err != nil {
		return r, err
	}
	r.say("chain %s is producing blocks; validator set: %s; binaries served at %s", cfg.Settings.ChainID, r.describeSet(set), r.Server.URL)

	if err := r.upgrade(ctx, "v2", bin("v2"), true, 5); err != nil {
		return r, err
	}
	if err := r.upgrade(ctx, "v3", bin("v3"), false, cfg.After); err != nil {
		return r, err
	}
	if err := r.lateJoiner(ctx, bin("v1")); err != nil {
		return r, err
	}
	return r, r.Check(ctx)
}

func (r *Rehearsal) describeSet(set []ValidatorPower) string {
	var parts []string
	for _, v := range set {
		parts = append(parts, fmt.Sprintf("%s=%d", r.nameOf(v.Address), v.Power))
	}
	sort.Strings(parts)
	return strings.Join(parts, " ")
}

func (r *Rehearsal) nameOf(addr string) string {
	for n, a := range r.valAddr {
		if strings.EqualFold(a, addr) {
			return n.Name
		}
	}
	if len(addr) > 8 {
		return addr[:8]
	}
	return addr
}

// poll is one look at every node of the rehearsal.
type poll struct {
	info map[*Node]AppInfo
	ok   map[*Node]bool
}

func (r *Rehearsal) pollAll(ctx context.Context) poll {
	p := poll{info: map[*Node]AppInfo{}, ok: map[*Node]bool{}}
	var mu sync.Mutex
	nodes := r.Net.Nodes()
	_ = Parallel(len(nodes), func(i int) error {
		info, err := nodes[i].AppInfo(ctx)
		mu.Lock()
		p.info[nodes[i]], p.ok[nodes[i]] = info, err == nil
		if err == nil {
			r.lastHeight[nodes[i]] = info.Height
		}
		mu.Unlock()
		return nil
	})
	return p
}

// chainHeight is the highest app height among the validators.
func (p poll) chainHeight(vals []*Node) int64 {
	var h int64
	for _, v := range vals {
		h = max(h, p.info[v].Height)
	}
	return h
}

// signers returns the names of the validators whose precommit is in block h
// (cached; asked from any validator that answers).
func (r *Rehearsal) signers(ctx context.Context, h int64) ([]string, error) {
	if s, ok := r.signerBuf[h]; ok {
		return s, nil
	}
	var err error
	for _, v := range r.Net.Validators {
		var addrs []string
		if addrs, err = v.CommitSigners(ctx, h); err == nil {
			var names []string
			for _, a := range addrs {
				names = append(names, r.nameOf(a))
			}
			sort.Strings(names)
			r.signerBuf[h] = names
			return names, nil
		}
	}
	return nil, err
}

// waitUntil polls every 100 ms until cond holds, a node exits that should not,
// or timeout passes.
func (r *Rehearsal) waitUntil(ctx context.Context, timeout time.Duration, what string, each func(poll), cond func(poll) bool) (poll, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		p := r.pollAll(ctx)
		if each != nil {
			each(p)
		}
		if cond(p) {
			return p, nil
		}
		for _, n := range r.Net.Nodes() {
			if done, err := n.Exited(); done && !r.intended[n] {
				return p, fmt.Errorf("%s exited (%v) while waiting until %s\n---- %s log tail ----\n%s", n.Name, err, what, n.Name, n.LogTail(6000))
			}
		}
		select {
		case <-ctx.Done():
			if ctx.Err() == context.Canceled {
				return p, fmt.Errorf("interrupted while waiting until %s (heights %s)", what, r.heights(p))
			}
			return p, fmt.Errorf("timed out after %s waiting until %s (heights %s)", timeout, what, r.heights(p))
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (r *Rehearsal) heights(p poll) string {
	var parts []string
	for _, n := range r.Net.Nodes() {
		if p.ok[n] {
			parts = append(parts, fmt.Sprintf("%s=%d/%s", n.Name, p.info[n].Height, p.info[n].Version))
		} else {
			parts = append(parts, n.Name+"=down")
		}
	}
	return strings.Join(parts, " ")
}

// upgrade drives one governance upgrade through the network. With kill, val1
// is SIGKILLed KillBefore blocks before the height and restarted with v1 once
// the others halted and switched; val2 (downloads off) is staged by hand after
// the halt, once the chain has gone on without it.
func (r *Rehearsal) upgrade(ctx context.Context, name, bin string, kill bool, after int64) error {
	cfg, net := r.Config, r.Net
	vals := net.Validators
	killed, manual := vals[roleKilled], vals[roleManual]
	up := &UpgradeReport{Name: name, Version: name + ".0.0", signersByBlock: map[int64][]string{}}
	r.Upgrades = append(r.Upgrades, up)
	rows := map[*Node]*NodeUpgrade{}
	for i, n := range net.Nodes() {
		row := &NodeUpgrade{Node: n.Name, PIDBefore: n.Pid()}
		switch {
		case i == roleProposer:
			row.Role = "validator, proposer"
		case i == roleKilled && kill:
			row.Role = "validator, SIGKILLed"
		case i == roleManual:
			row.Role = "validator, no downloads"
		case i < len(vals):
			row.Role = "validator"
		default:
			row.Role = "full node"
		}
		rows[n] = row
		up.Nodes = append(up.Nodes, row)
	}
	track := func(p poll) {
		now := time.Now()
		for _, n := range net.Nodes() {
			row := rows[n]
			if row.ReadySource == "" {
				if rec, _, ok := Staged(n.Home, name); ok {
					row.ReadyHeight, row.ReadySource = r.lastHeight[n], cmp.Or(string(rec.Source), "staged")
				}
			}
			if row.HaltAt.IsZero() && haltedFor(n.Home) == name {
				row.HaltAt = now
				if up.Halt.IsZero() {
					up.Halt = now
				}
			}
			if row.FirstBlock == 0 && p.ok[n] && p.info[n].Version == up.Version {
				row.FirstBlock, row.FirstAt = p.info[n].Height, now
			}
		}
	}
	switched := func(p poll, n *Node) bool {
		exe, _ := n.Exe()
		return p.ok[n] && p.info[n].Version == up.Version && exe == n.StagedPath(name)
	}

	finished := false
	finish := func() {
		if finished {
			return
		}
		finished = true
		for _, n := range net.Nodes() {
			row := rows[n]
			row.PIDAfter = n.Pid()
			row.ExeAfter, _ = n.Exe()
			row.SeenBlock = seenBlock(n.LogTail(64<<20), name)
		}
	}
	defer finish()

	sc, id, err := net.ScheduleUpgrade(ctx, r.Server, name, bin, cfg.PlanDelay)
	up.Height, up.ProposedAt, up.SHA256, up.ProposalID = sc.Height, sc.ProposedAt, sc.SHA256, id
	if err != nil {
		return fmt.Errorf("upgrade %s: %w", name, err)
	}
	now, _ := vals[0].AppInfo(ctx)
	up.PassedAt = now.Height
	r.say("upgrade %s: proposal %d for height %d submitted by val0 at height %d, 4/4 validators voted yes, passed at %d",
		name, id, up.Height, up.ProposedAt, up.PassedAt)
	if up.PassedAt >= up.Height-cfg.KillBefore-1 {
		return fmt.Errorf("upgrade %s: the proposal passed at height %d, too late for plan height %d: raise PlanDelay", name, up.PassedAt, up.Height)
	}
	// Generous bounds: blocks take ~1 s here, and the CPU is shared.
	blocks := func(n int64) time.Duration { return time.Duration(n)*3*time.Second + 30*time.Second }

	if kill {
		if _, err := r.waitUntil(ctx, blocks(up.Height-up.PassedAt), fmt.Sprintf("the chain reaches %d", up.Height-cfg.KillBefore), track,
			func(p poll) bool { return p.chainHeight(vals) >= up.Height-cfg.KillBefore }); err != nil {
			return err
		}
		pid := killed.Pid()
		r.intended[killed] = true
		killed.Kill()
		h, _ := vals[0].AppInfo(ctx)
		rows[killed].Restarted = fmt.Sprintf("SIGKILLed at %d", h.Height)
		r.say("upgrade %s: SIGKILLed val1 (PID %d) at height %d, %d blocks before the upgrade (its binary: %s)", name, pid, h.Height,
			up.Height-h.Height, readyText(rows[killed]))
	}

	// The halt: every running node stops at the height; all but val2 switch.
	ontime := []*Node{}
	for _, n := range net.Nodes() {
		if n != manual && !(kill && n == killed) {
			ontime = append(ontime, n)
		}
	}
	if _, err := r.waitUntil(ctx, blocks(up.Height-up.PassedAt), fmt.Sprintf("val0, val3, full0 switch to %s and val2 halts at %d", name, up.Height), track,
		func(p poll) bool {
			for _, n := range ontime {
				if !switched(p, n) {
					return false
				}
			}
			return haltedFor(manual.Home) == name
		}); err != nil {
		return err
	}
	r.say("upgrade %s: chain halted at %d; %s switched in place to %s; val2 halted at %d waiting for its binary",
		name, up.Height, names(ontime), up.Version, up.Height-1)

	if kill {
		// Restarted with the OLD binary, after the others halted and switched.
		killed.Bin = filepath.Join(r.binDir, "exampled-v1")
		if err := killed.Start(); err != nil {
			return err
		}
		r.intended[killed] = false
		r.pidStart[killed] = killed.Pid()
		h, _ := vals[0].AppInfo(ctx)
		rows[killed].Restarted += fmt.Sprintf("; restarted with exampled-v1 at chain height %d (PID %d)", h.Height, killed.Pid())
		r.say("upgrade %s: restarted val1 with the old binary exampled-v1 (PID %d)", name, killed.Pid())
	}

	// The chain goes on once 3 of 4 validators (75%% > 2/3 of the power) run the
	// new binary, while val2 still waits at H-1 without it.
	p, err := r.waitUntil(ctx, blocks(8), fmt.Sprintf("the chain passes %d without val2", up.Height+3), track,
		func(p poll) bool { return p.chainHeight(vals) >= up.Height+3 })
	if err != nil {
		return err
	}
	up.WaitingNode, up.WaitingHeight, up.ContinuedTo = manual.Name, r.lastHeight[manual], p.chainHeight(vals)
	if up.WaitingHeight != up.Height-1 {
		return fmt.Errorf("upgrade %s: val2 (no downloads, nothing staged) is at height %d, want halted at %d", name, up.WaitingHeight, up.Height-1)
	}
	if up.ResumeSigners, err = r.signers(ctx, up.Height+1); err != nil {
		return err
	}
	r.say("upgrade %s: block %d, the first agreed on %s, signed by %s; chain at %d while val2 waits at %d",
		name, up.Height+1, up.Version, strings.Join(up.ResumeSigners, " "), up.ContinuedTo, up.WaitingHeight)

	// The operator of val2 places the binary with `invisor stage` after the halt.
	out, err := manual.CLI(ctx, "invisor", "stage", name, "--file", bin)
	if err != nil {
		return fmt.Errorf("val2: invisor stage: %w", err)
	}
	if _, _, ok := Staged(manual.Home, name); !ok {
		return fmt.Errorf("val2: `invisor stage %s` returned, but the node did not record the binary: %v\n%s", name, err, out)
	}
	r.say("upgrade %s: val2: exampled invisor stage %s --file %s --home %s: recorded by the running node", name, name, bin, manual.Home)

	// Every node follows the chain on the new binary; every validator signs again.
	target := up.Height + after
	p, err = r.waitUntil(ctx, blocks(after+10), fmt.Sprintf("all nodes reach %d on %s and every validator signs", target, up.Version),
		func(p poll) {
			track(p)
			for h := up.Height + 1; h < p.chainHeight(vals); h++ {
				s, err := r.signers(ctx, h)
				if err != nil {
					break
				}
				for _, v := range vals {
					if rows[v].FirstSigned == 0 && contains(s, v.Name) {
						rows[v].FirstSigned = h
					}
				}
			}
		},
		func(p poll) bool {
			for _, n := range net.Nodes() {
				if !p.ok[n] || p.info[n].Height < target || p.info[n].Version != up.Version {
					return false
				}
			}
			for _, v := range vals {
				if rows[v].FirstSigned == 0 {
					return false
				}
			}
			return true
		})
	if err != nil {
		return err
	}

	// What each node did, and the checks.
	finish()
	var problems []string
	for _, n := range net.Nodes() {
		row := rows[n]
		if row.ExeAfter != n.StagedPath(name) {
			problems = append(problems, fmt.Sprintf("%s runs %s, want %s", n.Name, row.ExeAfter, n.StagedPath(name)))
		}
		if row.PIDAfter != r.pidStart[n] {
			problems = append(problems, fmt.Sprintf("%s PID %d, want %d (the process it was started as)", n.Name, row.PIDAfter, r.pidStart[n]))
		}
		if n != killed || !kill {
			if row.PIDAfter != row.PIDBefore {
				problems = append(problems, fmt.Sprintf("%s PID changed %d -> %d", n.Name, row.PIDBefore, row.PIDAfter))
			}
		}
		if row.SeenBlock == 0 {
			problems = append(problems, fmt.Sprintf("%s never logged `upgrade plan seen` for %s", n.Name, name))
		}
		if n != manual && !(kill && n == killed) && (row.ReadySource == "" || row.ReadyHeight >= up.Height) {
			problems = append(problems, fmt.Sprintf("%s: binary not ready before the height (ready at %d)", n.Name, row.ReadyHeight))
		}
	}
	if contains(up.ResumeSigners, manual.Name) || len(up.ResumeSigners) < 3 {
		problems = append(problems, fmt.Sprintf("block %d signed by %v: want 3 of 4 validators without val2", up.Height+1, up.ResumeSigners))
	}
	trace, _ := vals[0].TraceDescription(ctx, TraceDenom)
	if !strings.Contains(trace, "upgrade handler "+name+" ran at height "+strconv.FormatInt(up.Height, 10)) {
		problems = append(problems, fmt.Sprintf("upgrade handler %s left no trace at %d (%q)", name, up.Height, trace))
	}
	r.say("upgrade %s: all nodes at %d on %s; every validator signed again", name, p.chainHeight(vals), up.Version)
	if len(problems) > 0 {
		return fmt.Errorf("upgrade %s: %s", name, strings.Join(problems, "; "))
	}
	return nil
}

func readyText(row *NodeUpgrade) string {
	if row.ReadySource == "" {
		return "not staged yet"
	}
	return fmt.Sprintf("staged at %d", row.ReadyHeight)
}

// lateJoiner starts a fresh full node with only v1 and downloads allowed and
// waits until it synced from genesis across both upgrades on its own.
func (r *Rehearsal) lateJoiner(ctx context.Context, v1 string) error {
	net := r.Net
	head, err := net.Validators[0].AppInfo(ctx)
	if err != nil {
		return err
	}
	n, err := net.AddFullNode(ctx, "late", v1)
	if err != nil {
		return err
	}
	n.Env = []string{"DAEMON_ALLOW_DOWNLOAD_BINARIES=true"}
	start := time.Now()
	if err := n.Start(); err != nil {
		return err
	}
	r.pidStart[n] = n.Pid()
	lj := &LateJoiner{Node: n.Name, PID: n.Pid(), StartHeight: head.Height,
		Seen: map[string]int64{}, Ready: map[string]int64{}, Switched: map[string]time.Duration{}}
	r.Late = lj
	r.say("late joiner: started a fresh full node with exampled-v1 only, downloads allowed (PID %d); chain at %d", n.Pid(), head.Height)
	var last AppInfo
	_, err = r.waitUntil(ctx, 4*time.Minute, fmt.Sprintf("the late joiner reaches %d on v3.0.0", head.Height),
		func(p poll) {
			last = p.info[n]
			for _, up := range r.Upgrades {
				if _, ok := lj.Ready[up.Name]; !ok {
					if _, _, ok := Staged(n.Home, up.Name); ok {
						lj.Ready[up.Name] = r.lastHeight[n]
					}
				}
				if _, ok := lj.Switched[up.Name]; !ok && p.ok[n] && p.info[n].Version >= up.Version {
					lj.Switched[up.Name] = time.Since(start)
				}
			}
		},
		func(p poll) bool { return p.ok[n] && p.info[n].Height >= head.Height && p.info[n].Version == "v3.0.0" })
	if err != nil {
		return fmt.Errorf("%w\n---- late joiner log tail ----\n%s", err, n.LogTail(6000))
	}
	lj.SyncDuration = time.Since(start)
	lj.Height, lj.Version = last.Height, last.Version
	lj.Exe, _ = n.Exe()
	log := n.LogTail(64 << 20)
	for _, up := range r.Upgrades {
		lj.Seen[up.Name] = seenBlock(log, up.Name)
	}
	r.say("late joiner: synced from genesis to %d in %s, now %s in PID %d (%s)", lj.Height, lj.SyncDuration.Round(100*time.Millisecond), lj.Version, n.Pid(), lj.Exe)
	switch {
	case n.Pid() != lj.PID:
		return fmt.Errorf("late joiner: PID %d, started as %d", n.Pid(), lj.PID)
	case lj.Exe != n.StagedPath("v3"):
		return fmt.Errorf("late joiner runs %s, want %s", lj.Exe, n.StagedPath("v3"))
	}
	return nil
}

// Check asserts the outcome from RPC and /proc: every node (the late joiner
// too) is on v3.0.0 in the process it was last started as, executing its
// staged v3 binary; the chain advanced After blocks past the second upgrade;
// the four validators are in the set with equal power and each signed one of
// the last blocks.
func (r *Rehearsal) Check(ctx context.Context) error {
	if len(r.Upgrades) != 2 {
		return fmt.Errorf("%d upgrades done, want 2", len(r.Upgrades))
	}
	last := r.Upgrades[1]
	target := last.Height + r.Config.After
	vals := r.Net.Validators
	var problems []string
	p, err := r.waitUntil(ctx, 2*time.Minute, fmt.Sprintf("every node reaches %d", target), nil, func(p poll) bool {
		for _, n := range r.Net.Nodes() {
			if !p.ok[n] || p.info[n].Height < target {
				return false
			}
		}
		return true
	})
	if err != nil {
		problems = append(problems, err.Error())
	}
	r.FinalHeight = p.chainHeight(vals)
	for _, n := range r.Net.Nodes() {
		exe, _ := n.Exe()
		switch {
		case !p.ok[n]:
			problems = append(problems, n.Name+" does not answer /abci_info")
		case p.info[n].Version != "v3.0.0":
			problems = append(problems, fmt.Sprintf("%s on %s, want v3.0.0", n.Name, p.info[n].Version))
		case exe != n.StagedPath("v3"):
			problems = append(problems, fmt.Sprintf("%s (PID %d) executes %s, want %s", n.Name, n.Pid(), exe, n.StagedPath("v3")))
		case n.Pid() != r.pidStart[n]:
			problems = append(problems, fmt.Sprintf("%s PID %d, want %d", n.Name, n.Pid(), r.pidStart[n]))
		}
	}
	set, err := vals[0].ValidatorSet(ctx)
	if err != nil || len(set) != len(vals) {
		problems = append(problems, fmt.Sprintf("validator set %v (%v), want %d validators", set, err, len(vals)))
	} else {
		for _, v := range set {
			if v.Power != set[0].Power {
				problems = append(problems, "unequal voting power: "+r.describeSet(set))
				break
			}
		}
	}
	signed := map[string]bool{}
	for h := r.FinalHeight - 8; h < r.FinalHeight; h++ {
		s, _ := r.signers(ctx, h)
		for _, name := range s {
			signed[name] = true
		}
	}
	for _, v := range vals {
		if !signed[v.Name] {
			problems = append(problems, fmt.Sprintf("%s signed none of blocks %d..%d", v.Name, r.FinalHeight-8, r.FinalHeight-1))
		}
	}
	if len(problems) > 0 {
		return errors.New("rehearsal check: " + strings.Join(problems, "; "))
	}
	r.say("check: all %d nodes on v3.0.0 executing their staged v3, chain at %d (%d past the upgrade to v3), 4/4 validators signing",
		len(r.Net.Nodes()), r.FinalHeight, r.FinalHeight-last.Height)
	return nil
}

// Summary is the per-node report printed by `make testnet`.
func (r *Rehearsal) Summary() string {
	var b strings.Builder
	if r.Net == nil {
		return ""
	}
	fmt.Fprintf(&b, "testnet %s: %d validators (equal power) + 1 full node on 127.0.0.1, %s blocks, binaries from %s\n",
		r.Config.Settings.ChainID, len(r.Net.Validators), r.Config.Settings.TimeoutCommit, serverURL(r.Server))
	for _, up := range r.Upgrades {
		fmt.Fprintf(&b, "\nupgrade %q at height %d: proposal %d submitted at %d by val0, 4/4 voted yes, passed at %d (sha256 %.12s...)\n",
			up.Name, up.Height, up.ProposalID, up.ProposedAt, up.PassedAt, up.SHA256)
		fmt.Fprintf(&b, "  %-6s %-24s %-10s %-24s %-15s %s\n", "node", "role", "plan seen", "binary ready at", "PID before/after", "first block on "+up.Version)
		for _, row := range up.Nodes {
			first := "-"
			if row.FirstBlock > 0 {
				first = fmt.Sprintf("%d", up.Height)
				if !row.HaltAt.IsZero() && !row.FirstAt.IsZero() {
					first += fmt.Sprintf(" (+%.1fs after its halt)", row.FirstAt.Sub(row.HaltAt).Seconds())
				} else if !up.Halt.IsZero() && !row.FirstAt.IsZero() {
					first += fmt.Sprintf(" (+%.1fs after the chain halt)", row.FirstAt.Sub(up.Halt).Seconds())
				}
				if row.FirstSigned > 0 {
					first += fmt.Sprintf(", first signed %d", row.FirstSigned)
				}
			}
			ready := readyText(row)
			switch {
			case strings.HasPrefix(row.ReadySource, "operator-"):
				ready = fmt.Sprintf("%d (invisor stage)", row.ReadyHeight)
			case row.ReadySource != "":
				ready = fmt.Sprintf("%d (%s)", row.ReadyHeight, row.ReadySource)
			}
			fmt.Fprintf(&b, "  %-6s %-24s %-10s %-24s %-15s %s\n", row.Node, row.Role, fmt.Sprintf("block %d", row.SeenBlock), ready,
				fmt.Sprintf("%d/%d", row.PIDBefore, row.PIDAfter), first)
			if row.Restarted != "" {
				fmt.Fprintf(&b, "         %s\n", row.Restarted)
			}
		}
		if len(up.ResumeSigners) > 0 {
			fmt.Fprintf(&b, "  block %d, the first agreed on %s, signed by %s (%d/4 of the power); chain reached %d while %s waited at %d for its binary\n",
				up.Height+1, up.Version, strings.Join(up.ResumeSigners, " "), len(up.ResumeSigners), up.ContinuedTo, up.WaitingNode, up.WaitingHeight)
		}
	}
	if lj := r.Late; lj != nil && lj.Version != "" {
		fmt.Fprintf(&b, "\nlate joiner (fresh full node, exampled-v1 only, downloads allowed, block sync from genesis):\n")
		for _, up := range r.Upgrades {
			fmt.Fprintf(&b, "  %s: plan seen in block %d, binary ready at %d, on %s %.1fs after start\n",
				up.Name, lj.Seen[up.Name], lj.Ready[up.Name], up.Version, lj.Switched[up.Name].Seconds())
		}
		fmt.Fprintf(&b, "  caught up: height %d (chain was at %d when it started) in %s, %s, PID %d throughout, executing %s\n",
			lj.Height, lj.StartHeight, lj.SyncDuration.Round(100*time.Millisecond), lj.Version, lj.PID, lj.Exe)
	}
	if r.FinalHeight > 0 && len(r.Upgrades) == 2 {
		fmt.Fprintf(&b, "\nchain height %d, %d blocks past the upgrade to v3", r.FinalHeight, r.FinalHeight-r.Upgrades[1].Height)
	}
	return b.String()
}

func serverURL(s *FileServer) string {
	if s == nil {
		return "-"
	}
	return s.URL
}

func names(nodes []*Node) string {
	var s []string
	for _, n := range nodes {
		s = append(s, n.Name)
	}
	return strings.Join(s, ", ")
}

func contains(s []string, x string) bool {
	for _, v := range s {
		if v == x {
			return true
		}
	}
	return false
}
