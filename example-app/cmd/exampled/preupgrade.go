package main

import (
	"fmt"
	"os"
	"strconv"
	"time"

	"github.com/spf13/cobra"
)

// preUpgradeCmd is cosmovisor's `pre-upgrade` contract (exit 0 ok, 1 not
// implemented, 30 fail, 31 retry), run by invisor with the new binary before
// it switches. The example has nothing to migrate; for rehearsals it can leave
// a marker (EXAMPLED_PRE_UPGRADE_MARKER=<file>) and take its time
// (EXAMPLED_PRE_UPGRADE_SLEEP=<duration>), so tests can act between the halt
// and the exec, and exit with a given code (EXAMPLED_PRE_UPGRADE_EXIT=30 fails).
func preUpgradeCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "pre-upgrade",
		Short: "Prepare the node home for this binary before an upgrade switch (cosmovisor contract)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if marker := os.Getenv("EXAMPLED_PRE_UPGRADE_MARKER"); marker != "" {
				if err := os.WriteFile(marker, []byte(fmt.Sprintf("pid %d\n", os.Getpid())), 0o644); err != nil {
					return err
				}
			}
			if s := os.Getenv("EXAMPLED_PRE_UPGRADE_SLEEP"); s != "" {
				d, err := time.ParseDuration(s)
				if err != nil {
					return fmt.Errorf("EXAMPLED_PRE_UPGRADE_SLEEP: %w", err)
				}
				time.Sleep(d)
			}
			if s := os.Getenv("EXAMPLED_PRE_UPGRADE_EXIT"); s != "" {
				code, err := strconv.Atoi(s)
				if err != nil {
					return fmt.Errorf("EXAMPLED_PRE_UPGRADE_EXIT: %w", err)
				}
				fmt.Fprintf(os.Stderr, "pre-upgrade: exiting with %d as EXAMPLED_PRE_UPGRADE_EXIT says\n", code)
				os.Exit(code)
			}
			return nil
		},
	}
}
