// Command exampled is the example chain's node and client.
package main

import (
	"fmt"
	"os"

	"github.com/invisor/invisor"
	"github.com/invisor/invisor/example-app/app"
)

func main() {
	// invisor wraps `start`: boot redirect, staging, and the switch at the upgrade halt.
	err := invisor.Execute(newRootCmd(), invisor.Options{DaemonName: app.DaemonName, DefaultHome: app.DefaultNodeHome})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
