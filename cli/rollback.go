package cli

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/invisor/invisor/internal/config"
	"github.com/invisor/invisor/relauncher"
)

const flagDryRun = "dry-run"

func rollbackCmd(opts config.Options) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "rollback [--dry-run]",
		Short: "Undo the last upgrade switch (node stopped): restore the data backup taken at it and point `current` back at the binary that ran before",
		Long: `Undo the switch to the upgrade data/upgrade-info.json names, with the node stopped:
restore the data backup invisor took at that switch, point cosmovisor/current back at the
binary that ran before it, forget the upgrade's switch attempts, and record a "rollback"
entry in the history.

Nothing is lost: the data directory being replaced is moved aside (data-rolledback-<time>-<name>
in the backup directory), and the backup stays as it is, usable for another rollback.
The live data/priv_validator_state.json is kept in the restored data, never the backup's
older one: a validator with an older signing state could sign a height again (double-sign).

Refused, changing nothing: while the node runs (stop it first); when invisor took no
backup (backups off: unsafe-skip-backup); when the newest backup was taken for another
upgrade than the one being undone (name and height).

The node boots into the same upgrade again (upgrade-info.json is part of the backup):
first put a fixed binary in place with ` + "`invisor stage NAME --replace --file|--url ...`" + `,
or the same binary runs again.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			e, err := loadValidEnv(cmd, opts)
			if err != nil {
				return err
			}
			dry, _ := cmd.Flags().GetBool(flagDryRun)
			rep, err := relauncher.Rollback(cmd.Context(), e.cfg.Relauncher, relauncher.RollbackOptions{DryRun: dry, Environ: os.Environ()})
			if err != nil {
				if dry {
					return fmt.Errorf("a rollback would be refused: %w", err)
				}
				return err
			}
			if e.json {
				return e.printJSON(rep)
			}
			printRollback(e.out, rep, e.appName(), e.cfg.Relauncher.BackupKeep)
			return nil
		},
	}
	cmd.Flags().Bool(flagDryRun, false, "check everything and print what would be done, changing nothing")
	addOutputFlag(cmd)
	config.AddFlags(cmd.Flags())
	return cmd
}

// printRollback writes what a rollback did (or would do) and the next step.
func printRollback(w io.Writer, rep relauncher.RollbackReport, app string, keep int) {
	verb := func(done, would string) string {
		if rep.DryRun {
			return would
		}
		return done
	}
	b := rep.Backup
	fmt.Fprintf(w, "%s the switch to upgrade %q at height %d\n", verb("rolled back", "would roll back"), rep.Upgrade.Name, rep.Upgrade.Height)
	fmt.Fprintf(w, "  data:     %s %s from %s\n", rep.Data, verb("restored", "would be restored"), b.Path)
	fmt.Fprintf(w, "            (taken %s at the switch to %q", b.Time.Local().Format(time.DateTime), b.Upgrade)
	if !rep.DryRun {
		fmt.Fprintf(w, "; %d table files linked, %d files copied in %s", rep.Stats.Linked, rep.Stats.Copied, rep.Stats.Took.Round(time.Millisecond))
	}
	fmt.Fprintln(w, ")")
	if rep.ValidatorState != "" {
		fmt.Fprintf(w, "  signing:  the live %s %s, not the backup's older one (an older signing state could double-sign)\n",
			filepath.Base(rep.ValidatorState), verb("was kept", "would be kept"))
	}
	fmt.Fprintf(w, "  aside:    the replaced data %s %s (nothing is deleted: remove it once the chain is well past the upgrade)\n",
		verb("is at", "would go to"), rep.MovedAside)
	fmt.Fprintf(w, "  current:  %s %s (was %s)\n", verb("->", "would point to"), rep.CurrentAfter, rep.CurrentBefore)
	fmt.Fprintf(w, "            the binary that ran before the switch: %s", rep.PreviousBin)
	if b.PreviousSHA256 != "" {
		fmt.Fprintf(w, " (sha256 %s)", b.PreviousSHA256)
	}
	fmt.Fprintln(w)
	fmt.Fprintf(w, "  ledger:   the switch attempts of %q %s; the history %s the rollback\n", rep.Upgrade.Name,
		verb("were cleared", "would be cleared"), verb("records", "would record"))
	fmt.Fprintf(w, "  backup:   %s stays as it is (backup-keep = %d keeps the newest %d of invisor's backups)\n", b.Path, keep, keep)
	for _, wn := range rep.Warnings {
		fmt.Fprintf(w, "WARNING: %s\n", wn)
	}
	if rep.DryRun {
		fmt.Fprintln(w, "dry run: nothing was changed")
		return
	}
	fmt.Fprintf(w, `
next: the node boots into upgrade %q at height %d again (data/upgrade-info.json is part of the backup).
  First put the fixed binary in place, or the same binary runs again:
    %s invisor stage %s --replace --file /path/to/fixed/%s     (or --url URL --checksum sha256:HEX)
  then start the node as usual; it switches to the fixed binary at height %d.
`, rep.Upgrade.Name, rep.Upgrade.Height, app, shellWord(rep.Upgrade.Name), filepath.Base(rep.PreviousBin), rep.Upgrade.Height)
}

// shellWord quotes s for a command line to copy, when it needs it.
func shellWord(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-+=:/@%") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
