//go:build !linux && !darwin

package relauncher

// noexecMount cannot tell here; a noexec mount then shows at the first exec.
func noexecMount(string) (bool, error) { return false, nil }
