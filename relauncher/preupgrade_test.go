package relauncher

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/invisor/invisor/internal/home"
)

func TestPreUpgradeExitCodes(t *testing.T) {
	tests := []struct {
		name         string
		codes        []int // exit code per attempt; the last repeats
		maxRetries   int
		wantErr      bool
		wantCode     int
		wantAttempts int
	}{
		{"ok", []int{0}, 0, false, 0, 1},
		{"not implemented", []int{1}, 0, false, 0, 1},
		{"fail", []int{30}, 5, true, 30, 1},
		{"retry then ok", []int{31, 31, 0}, 2, false, 0, 3},
		{"retry exhausted", []int{31}, 2, true, 31, 3},
		{"retry without retries", []int{31}, 0, true, 31, 1},
		{"other code fails", []int{2}, 3, true, 2, 1},
		{"killed by signal fails", []int{-9}, 0, true, -1, 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := newTestHome(t)
			counter := filepath.Join(t.TempDir(), "n")
			// The script counts its runs and exits with codes[run-1] (the last repeats).
			var cases strings.Builder
			for i, c := range tc.codes {
				action := fmt.Sprintf("exit %d", c)
				if c < 0 {
					action = fmt.Sprintf("kill %d $$", -c)
				}
				if i == len(tc.codes)-1 {
					fmt.Fprintf(&cases, "  *) echo out-$n; %s;;\n", action)
				} else {
					fmt.Fprintf(&cases, "  %d) echo out-$n; %s;;\n", i+1, action)
				}
			}
			h.writeExec(h.v2, fmt.Sprintf(`#!/bin/sh
[ "$1" = pre-upgrade ] || exit 99
[ "$2" = --extra ] || exit 98
[ "$MYVAR" = kept ] || exit 97
n=$(cat %[1]q 2>/dev/null || echo 0); n=$((n+1)); echo $n > %[1]q
case $n in
%[2]sesac
`, counter, cases.String()))
			h.haltAndStage(3, "")
			f := &fakeOS{self: h.genesis, args: []string{"appd"}, env: []string{"MYVAR=kept", "PATH=" + os.Getenv("PATH")}}
			c := testConfig(h.home)
			c.RunPreUpgrade, c.PreUpgradeMaxRetries, c.PreUpgradeArgs = true, tc.maxRetries, []string{"--extra"}
			r, err := New(c, nil, nil, f.OS())
			must(t, err)
			err = r.Switch("v2")
			b, _ := os.ReadFile(counter)
			attempts := strings.TrimSpace(string(b))
			if attempts != fmt.Sprint(tc.wantAttempts) {
				t.Errorf("attempts = %s, want %d", attempts, tc.wantAttempts)
			}
			if !tc.wantErr {
				if err != nil || len(f.calls()) != 1 || h.current() != "upgrades/v2" {
					t.Fatalf("err %v, execs %d, current %q", err, len(f.calls()), h.current())
				}
				return
			}
			var pe *PreUpgradeError
			if !errors.As(err, &pe) || !errors.Is(err, ErrPreUpgrade) {
				t.Fatalf("error = %v, want PreUpgradeError", err)
			}
			if pe.ExitCode != tc.wantCode || pe.Attempts != tc.wantAttempts {
				t.Errorf("code %d attempts %d, want %d %d", pe.ExitCode, pe.Attempts, tc.wantCode, tc.wantAttempts)
			}
			if tc.wantCode >= 0 && !strings.Contains(pe.Output, "out-") {
				t.Errorf("output not captured: %q", pe.Output)
			}
			if len(f.calls()) != 0 || h.current() != home.GenesisDir {
				t.Fatalf("failed pre-upgrade still switched: execs %d current %q", len(f.calls()), h.current())
			}
		})
	}
}
