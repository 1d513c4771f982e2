package main

import (
	"testing"
	"time"
)

func TestTookOf(t *testing.T) {
	for in, want := range map[string]time.Duration{
		"x took=273.860084":                   273860084 * time.Nanosecond,
		"x took=1.5s y=2":                     1500 * time.Millisecond,
		"x took=12ms":                         12 * time.Millisecond,
		"invisor: data backed up took=3.25 z": 3250 * time.Microsecond,
	} {
		got, ok := tookOf(in)
		if !ok || (got-want).Abs() > time.Microsecond {
			t.Errorf("tookOf(%q) = %v, %v; want %v", in, got, ok, want)
		}
	}
}
