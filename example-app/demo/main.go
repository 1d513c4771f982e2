// Command demo runs a real exampled chain that upgrades itself with invisor:
// a fresh one-validator chain is started with plain `exampled-v1 start`, an
// upgrade proposal pointing at v2 on a loopback HTTP server passes, invisor
// stages v2 before the upgrade height and switches to it in the same process
// at that height. It prints what happened and exits 0 only if the chain reached
// H+5 on v2.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/invisor/invisor/example-app/localnet"
)

func main() {
	v1 := flag.String("v1", "build/exampled-v1", "the v1 binary (started by hand)")
	v2 := flag.String("v2", "build/exampled-v2", "the v2 binary (served as the upgrade)")
	keep := flag.Bool("keep", false, "keep the chain's home directory afterwards")
	flag.Parse()
	if err := run(*v1, *v2, *keep); err != nil {
		fmt.Fprintln(os.Stderr, "demo FAILED:", err)
		os.Exit(1)
	}
}

func run(v1, v2 string, keep bool) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	for _, p := range []*string{&v1, &v2} {
		abs, err := filepath.Abs(*p)
		if err != nil {
			return err
		}
		*p = abs
	}
	work, err := os.MkdirTemp("", "invisor-demo-")
	if err != nil {
		return err
	}
	if keep {
		fmt.Println("work directory:", work)
	} else {
		defer os.RemoveAll(work)
	}

	fmt.Println("== setting up a one-validator chain on 127.0.0.1 with", filepath.Base(v1))
	node, err := localnet.NewSingle(ctx, v1, filepath.Join(work, "node0"), localnet.Settings{ChainID: "invisor-demo-1"})
	if err != nil {
		return err
	}
	node.Env = []string{"DAEMON_ALLOW_DOWNLOAD_BINARIES=true"}

	r, err := localnet.RunUpgrade(ctx, node, localnet.UpgradeSpec{
		Name: "v2", Binary: v2, ServeDir: filepath.Join(work, "www"), Start: true,
		Progress: func(s string) { fmt.Println("   ", s) },
	})
	defer node.Stop(10 * time.Second)
	if err != nil {
		fmt.Fprintln(os.Stderr, "---- node log tail ----\n"+node.LogTail(6000))
		return err
	}
	fmt.Println()
	fmt.Println(r.Summary())
	fmt.Println("demo OK: the chain upgraded itself from v1 to v2 in place")
	return nil
}
