// Command await is noawait plus AwaitPreUpgrade, as in a chain using
// invisor.Execute; its binary must carry the capability token
// (TestCapabilityLinkedOnlyWithAwait).
package main

import (
	"fmt"
	"os"

	"github.com/invisor/invisor/relauncher"
)

func main() {
	o := relauncher.AwaitPreUpgrade(os.Environ())
	cfg := relauncher.DefaultConfig()
	cfg.Home, cfg.DaemonName = os.TempDir(), "appd"
	r, err := relauncher.New(cfg, nil, nil, relauncher.OS{AwaitedPreUpgrade: o})
	if err != nil {
		fmt.Println(err)
		return
	}
	ok, err := relauncher.BinaryAwaitsPreUpgrade(os.Args[0])
	_, _ = relauncher.ScanAwaitsPreUpgrade(nil)
	fmt.Println(ok, err, r.Boot(), r.Switch("v2"))
}
