//go:build !linux

package staging

// checkExecMount is a no-op where statfs does not report noexec; preflight still
// catches a binary that cannot run.
func checkExecMount(dir string) error { return nil }
