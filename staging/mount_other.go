//go:build !linux

package staging

// checkExecMount is a no-op where statfs does not report noexec; preflight still
// catches a binary that cannot run.
func checkExecMount(dir string) error { return nil }

// freeBytes is unknown off Linux; the early space check is skipped and a full disk is
// still reported when a write fails.
func freeBytes(dir string) (int64, bool) { return 0, false }
