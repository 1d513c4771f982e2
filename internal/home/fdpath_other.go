//go:build !linux

package home

import "os"

func fdPath(_ *os.File, fallback string) string { return fallback }
