//go:build race

package staging

// raceEnabled: this test binary runs under the race detector, whose shadow
// memory and slowdown make resident-set figures meaningless.
const raceEnabled = true
