// Command noawait links everything of the relauncher a chain uses to switch
// (Boot, Switch, the capability scans) except AwaitPreUpgrade; its binary must not
// carry the capability token (TestCapabilityLinkedOnlyWithAwait).
package main

import (
	"fmt"
	"os"

	"github.com/invisor/invisor/relauncher"
)

func main() {
	cfg := relauncher.DefaultConfig()
	cfg.Home, cfg.DaemonName = os.TempDir(), "appd"
	r, err := relauncher.New(cfg, nil, nil, relauncher.OS{})
	if err != nil {
		fmt.Println(err)
		return
	}
	ok, err := relauncher.BinaryAwaitsPreUpgrade(os.Args[0])
	_, _ = relauncher.ScanAwaitsPreUpgrade(nil)
	fmt.Println(ok, err, r.Boot(), r.Switch("v2"))
}
