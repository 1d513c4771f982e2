package relauncher

import (
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// ProcReader reads /proc; tests replace its fields. Nil fields mean the real calls.
type ProcReader struct {
	Getppid  func() int
	ReadFile func(name string) ([]byte, error)
	Readlink func(name string) (string, error)
}

// UnderCosmovisor reports whether the parent process is cosmovisor, judged from the
// parent's executable, argv[0] or command name in /proc (not from DAEMON_* variables,
// which operators also export for other tools). When true, the caller stages only
// and leaves the swap to cosmovisor.
func UnderCosmovisor() bool { return UnderCosmovisorWith(ProcReader{}) }

// UnderCosmovisorWith is UnderCosmovisor with an injected /proc reader.
func UnderCosmovisorWith(p ProcReader) bool {
	if p.Getppid == nil {
		p.Getppid = os.Getppid
	}
	if p.ReadFile == nil {
		p.ReadFile = os.ReadFile
	}
	if p.Readlink == nil {
		p.Readlink = os.Readlink
	}
	ppid := p.Getppid()
	if ppid <= 1 {
		return false
	}
	dir := "/proc/" + strconv.Itoa(ppid)
	if exe, err := p.Readlink(dir + "/exe"); err == nil {
		if isCosmovisorName(filepath.Base(strings.TrimSuffix(exe, " (deleted)"))) {
			return true
		}
	}
	if b, err := p.ReadFile(dir + "/cmdline"); err == nil && len(b) > 0 {
		argv0, _, _ := bytes.Cut(b, []byte{0})
		if isCosmovisorName(filepath.Base(string(argv0))) {
			return true
		}
	}
	if b, err := p.ReadFile(dir + "/comm"); err == nil {
		if isCosmovisorName(strings.TrimSpace(string(b))) {
			return true
		}
	}
	return false
}

func isCosmovisorName(n string) bool {
	if n == "cosmovisor" {
		return true
	}
	for _, sep := range []string{"-", "_", "."} {
		if strings.HasPrefix(n, "cosmovisor"+sep) {
			return true
		}
	}
	return false
}
