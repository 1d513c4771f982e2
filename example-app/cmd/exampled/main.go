// Command exampled is the example chain's node and client.
package main

import (
	"fmt"
	"os"

	"github.com/invisor/invisor"
	"github.com/invisor/invisor/example-app/app"
)

func main() {
	// invisor wraps `start` (boot redirect, staging, the switch at the upgrade
	// halt), adds `exampled invisor` and writes app.toml's [invisor] section at
	// init; with NewApp, a staged binary says which upgrade handlers it carries.
	err := invisor.Execute(newRootCmd(), invisor.Options{DaemonName: app.DaemonName, DefaultHome: app.DefaultNodeHome, NewApp: newApp})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
