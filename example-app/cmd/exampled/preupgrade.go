package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/cosmos/cosmos-sdk/client/flags"
)

// preUpgradeCmd is cosmovisor's `pre-upgrade` contract (exit 0 ok, 1 not
// implemented, 30 fail, 31 retry), run by invisor with the new binary before
// it switches. The example has nothing to migrate; for rehearsals it can leave
// a marker (EXAMPLED_PRE_UPGRADE_MARKER=<file>) and take its time
// (EXAMPLED_PRE_UPGRADE_SLEEP=<duration>), so tests can act between the halt
// and the exec, and exit with a given code (EXAMPLED_PRE_UPGRADE_EXIT=30 fails).
// With EXAMPLED_PRE_UPGRADE_STORES=<file> it appends one line saying whether any
// process holds the node's stores open (their LevelDB locks), so a test can
// show that pre-upgrade never runs beside open stores.
func preUpgradeCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "pre-upgrade",
		Short: "Prepare the node home for this binary before an upgrade switch (cosmovisor contract)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if report := os.Getenv("EXAMPLED_PRE_UPGRADE_STORES"); report != "" {
				home, _ := cmd.Flags().GetString(flags.FlagHome)
				if err := reportStores(report, home); err != nil {
					return err
				}
			}
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

// reportStores appends to report whether another process holds one of the
// node's LevelDB stores under home/data open: LevelDB holds an exclusive flock
// on each store's LOCK file while it is open, so a shared, non-blocking flock
// fails exactly then.
func reportStores(report, home string) error {
	var open []string
	for _, db := range []string{"application.db", "blockstore.db", "state.db", "tx_index.db", "evidence.db"} {
		f, err := os.Open(filepath.Join(home, "data", db, "LOCK"))
		if err != nil {
			continue // no such store
		}
		if err := syscall.Flock(int(f.Fd()), syscall.LOCK_SH|syscall.LOCK_NB); err != nil {
			open = append(open, db+": "+err.Error())
		}
		f.Close()
	}
	line := fmt.Sprintf("pid=%d stores=closed\n", os.Getpid())
	if len(open) > 0 {
		line = fmt.Sprintf("pid=%d stores=open %s\n", os.Getpid(), strings.Join(open, "; "))
	}
	f, err := os.OpenFile(report, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = f.WriteString(line)
	return err
}
