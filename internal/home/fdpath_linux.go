package home

import (
	"os"
	"strconv"
)

func fdPath(f *os.File, fallback string) string {
	p := "/proc/self/fd/" + strconv.Itoa(int(f.Fd()))
	if _, err := os.Stat(p); err != nil {
		return fallback // no /proc: the path, rechecked right before
	}
	return p
}
