package cli

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/invisor/invisor/internal/config"
	"github.com/invisor/invisor/internal/history"
	"github.com/invisor/invisor/internal/home"
)

// HistoryRow is one upgrade in `invisor history`.
type HistoryRow struct {
	Upgrade  string     `json:"upgrade"`
	Height   int64      `json:"height"`
	SHA256   string     `json:"sha256,omitempty"`
	Staged   *time.Time `json:"staged,omitempty"` // when the completion record was written
	Origin   string     `json:"origin,omitempty"` // the record's source (download, operator-file-checksum, ...)
	Halted   *time.Time `json:"halted,omitempty"`
	Switched *time.Time `json:"switched,omitempty"`
	// RolledBack is when `invisor rollback` last undid the switch to it.
	RolledBack *time.Time `json:"rolled_back,omitempty"`
	// AfterRollback: the last switch to it was the boot after a rollback (no halt
	// to time it from).
	AfterRollback bool `json:"after_rollback,omitempty"`
	// Seconds from the halt to the new binary's boot (not the first new block).
	SwitchSeconds float64 `json:"switch_seconds,omitempty"`
	Current       bool    `json:"current"` // cosmovisor/current points at it
}

func historyCmd(opts config.Options) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "history",
		Short: "List the upgrades of this home: height, binary sha256, when staged, halted and switched",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			e, err := loadEnv(cmd, opts)
			if err != nil {
				return err
			}
			rows, err := historyRows(e.layout())
			if err != nil {
				return err
			}
			if e.json {
				return e.printJSON(rows)
			}
			if len(rows) == 0 {
				fmt.Fprintln(e.out, "no upgrades on this home yet")
				return nil
			}
			out := make([][]string, 0, len(rows))
			for _, r := range rows {
				out = append(out, []string{r.Upgrade, fmt.Sprint(r.Height), short(r.SHA256), ts(r.Staged), ts(r.Switched),
					map[bool]string{true: fmt.Sprintf("%.2fs", r.SwitchSeconds), false: "-"}[r.Switched != nil && !r.AfterRollback],
					ts(r.RolledBack), map[bool]string{true: "*", false: ""}[r.Current]})
			}
			return table(e.out, []string{"UPGRADE", "HEIGHT", "SHA256", "STAGED", "SWITCHED", "HALT->BOOT", "ROLLED BACK", "CURRENT"}, out)
		},
	}
	addOutputFlag(cmd)
	return cmd
}

func ts(t *time.Time) string {
	if t == nil {
		return "-"
	}
	return t.Local().Format(time.DateTime)
}

// historyRows joins the staged binaries with the halt/switch log.
func historyRows(l home.Layout) ([]HistoryRow, error) {
	entries, err := history.Read(l.Home())
	if err != nil {
		return nil, err
	}
	cur, _ := currentTarget(l)
	byName := map[string]*HistoryRow{}
	var order []string
	row := func(name string) *HistoryRow {
		if r, ok := byName[name]; ok {
			return r
		}
		r := &HistoryRow{Upgrade: name}
		byName[name] = r
		order = append(order, name)
		return r
	}
	for _, b := range stagedBinaries(l) {
		if b.SHA256 == "" {
			continue // placed, not recorded for any plan yet: no upgrade of this home
		}
		r := row(b.Name)
		r.Height, r.SHA256, r.Origin = b.Height, b.SHA256, b.Origin
		if !b.Time.IsZero() {
			t := b.Time
			r.Staged = &t
		}
		rel, _ := l.CurrentRel(b.Name)
		r.Current = cur == rel
	}
	for _, h := range entries {
		r := row(h.Upgrade)
		if h.Height > 0 {
			r.Height = h.Height
		}
		t := h.Time
		switch h.Event {
		case history.EventHalt:
			r.Halted = &t
		case history.EventSwitched:
			r.Switched, r.SwitchSeconds, r.AfterRollback = &t, h.Seconds, h.AfterRollback
			if h.SHA256 != "" {
				r.SHA256 = h.SHA256
			}
		case history.EventRollback:
			r.RolledBack = &t
		}
	}
	out := make([]HistoryRow, 0, len(order))
	for _, n := range order {
		out = append(out, *byName[n])
	}
	return out, nil
}
