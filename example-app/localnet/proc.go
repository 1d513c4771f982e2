package localnet

import (
	"bytes"
	"fmt"
	"os"
	"slices"
	"strings"
)

// Proc is what a process was started with, read from /proc.
type Proc struct {
	Argv []string
	Env  []string // sorted, without invisor's own exec markers (INVISOR_EXEC*, INVISOR_REDIRECT*, INVISOR_HOME_LOCK)
	Cwd  string
}

// Proc reads the node process's argv, environment and working directory.
func (n *Node) Proc() (Proc, error) {
	base := fmt.Sprintf("/proc/%d/", n.Pid())
	argv, err := os.ReadFile(base + "cmdline")
	if err != nil {
		return Proc{}, err
	}
	env, err := os.ReadFile(base + "environ")
	if err != nil {
		return Proc{}, err
	}
	cwd, err := os.Readlink(base + "cwd")
	if err != nil {
		return Proc{}, err
	}
	p := Proc{Argv: split0(argv), Cwd: cwd}
	for _, kv := range split0(env) {
		if !strings.HasPrefix(kv, "INVISOR_EXEC") && !strings.HasPrefix(kv, "INVISOR_REDIRECT") && !strings.HasPrefix(kv, "INVISOR_HOME_LOCK=") {
			p.Env = append(p.Env, kv)
		}
	}
	slices.Sort(p.Env)
	return p, nil
}

// Same reports whether two snapshots have the same argv, environment and cwd.
func (p Proc) Same(q Proc) bool {
	return slices.Equal(p.Argv, q.Argv) && slices.Equal(p.Env, q.Env) && p.Cwd == q.Cwd
}

func split0(b []byte) []string {
	var out []string
	for _, f := range bytes.Split(bytes.TrimRight(b, "\x00"), []byte{0}) {
		out = append(out, string(f))
	}
	return out
}
