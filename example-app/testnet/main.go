// Command testnet rehearses two in-app upgrades on a local multi-validator
// network (make testnet): four validators and one full node of exampled on
// 127.0.0.1, started with plain `exampled-v1 start`, pass two governance
// upgrades in a row (v1 to v2, then v2 to v3) with the binaries served from a
// loopback HTTP server, under rolling faults: val1 is SIGKILLed a few blocks
// before the first upgrade and restarted with the old binary after the halt;
// val2 has downloads disabled and gets each binary with `exampled invisor stage`
// after the halt, once the chain has gone on without it. Then a fresh full node
// with only v1 syncs from genesis across both upgrades. It prints what each node
// did, stops every process it started, and exits 0 only if all nodes are on v3
// and the chain advanced at least 10 blocks past the second upgrade.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/invisor/invisor/example-app/localnet"
)

func main() {
	build := flag.String("build", "build", "directory holding exampled-v1, -v2 and -v3 (make build)")
	keep := flag.Bool("keep", false, "keep the homes and logs afterwards (always kept on failure)")
	timeout := flag.Duration("timeout", 12*time.Minute, "bound on the whole rehearsal")
	flag.Parse()
	if err := run(*build, *keep, *timeout); err != nil {
		fmt.Fprintln(os.Stderr, "testnet FAILED:", err)
		os.Exit(1)
	}
}

func run(build string, keep bool, timeout time.Duration) (err error) {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	build, err = filepath.Abs(build)
	if err != nil {
		return err
	}
	work, err := os.MkdirTemp("", "invisor-testnet-")
	if err != nil {
		return err
	}
	fmt.Println("== testnet rehearsal under", work)
	r, rerr := localnet.Rehearse(ctx, localnet.RehearsalConfig{
		Build: build, Work: work,
		Progress: func(s string) { fmt.Println("  ", s) },
	})
	fmt.Println()
	if s := r.Summary(); s != "" {
		fmt.Println(s)
	}
	cerr := r.Close()
	if cerr == nil && r.Net != nil {
		fmt.Printf("stopped all %d node processes by PID\n", len(r.Net.Nodes()))
	}
	if rerr != nil {
		fmt.Fprintln(os.Stderr, "homes and logs kept in", work)
		return rerr
	}
	if cerr != nil {
		fmt.Fprintln(os.Stderr, "homes and logs kept in", work)
		return cerr
	}
	if keep {
		fmt.Println("homes and logs kept in", work)
	} else {
		os.RemoveAll(work)
	}
	fmt.Println("testnet OK: 4 validators and 2 full nodes on v3.0.0, each upgrade in place")
	return nil
}
