//go:build !linux

package relauncher

// exchange cannot swap two names atomically here: rollback renames twice.
func exchange(a, b string) error { return errNoExchange }
