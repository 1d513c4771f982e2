package relauncher

import (
	"os"
	"strings"
	"syscall"

	"github.com/invisor/invisor/internal/home"
)

// runnable is how to start a file in a child process: the path to exec, the argv[0]
// it sees, and descriptors it must inherit.
type runnable struct {
	path, argv0 string
	extra       []*os.File
}

// runnableOf runs the verified descriptor itself (v.ExecPath), so a file renamed
// into v.Path after the proof is not what runs. A script is read again by its
// interpreter through the path it is given, after the close-on-exec descriptors
// are gone, so it gets the descriptor as fd 3 and that fd's path.
func runnableOf(v *home.Verified) runnable {
	p := v.ExecPath()
	if p != v.Path && isScript(v) && strings.HasPrefix(p, "/proc/self/fd/") {
		return runnable{path: "/proc/self/fd/3", argv0: v.Path, extra: []*os.File{v.File()}}
	}
	return runnable{path: p, argv0: v.Path}
}

// isScript reports whether the verified file starts with "#!", read through its
// descriptor.
func isScript(v *home.Verified) bool {
	var b [2]byte
	n, _ := v.File().ReadAt(b[:], 0)
	return n == 2 && b[0] == '#' && b[1] == '!'
}

func setCloseOnExec(fd int) { syscall.CloseOnExec(fd) }
