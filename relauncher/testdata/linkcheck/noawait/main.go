// Command noawait links everything of the relauncher a chain uses to switch
// (Boot, Switch, the capability scan) except AwaitPreUpgrade; its binary must not
// carry the capability token (TestCapabilityLinkedOnlyWithAwait).
package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/invisor/invisor/relauncher"
)

func main() {
	cfg := relauncher.DefaultConfig()
	cfg.Home, cfg.DaemonName = os.TempDir(), "appd"
	v := relauncher.VerifierFunc(func(string) (relauncher.Binary, error) { return relauncher.Binary{}, errors.New("none") })
	r, err := relauncher.New(cfg, v, nil, relauncher.OS{})
	if err != nil {
		fmt.Println(err)
		return
	}
	ok, err := relauncher.BinaryAwaitsPreUpgrade(os.Args[0])
	fmt.Println(ok, err, r.Boot(), r.Switch("v2"))
}
