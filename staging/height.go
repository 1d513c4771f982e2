package staging

// HurryWithinBlocks is how close to the plan height a binary that is not ready
// yet makes staging stop pacing its disk writes (Config.DiskShare): a binary
// missing at the halt costs the chain more than a few slower blocks now.
const HurryWithinBlocks = 100

// ObserveHeight tells the Stager the height of a block the node is executing. It
// is called from the consensus path for every block and returns at once: it
// stores the height and, when the plan in force is within HurryWithinBlocks and
// its binary is not ready, lifts the pacing (Hurry) until another plan is
// offered. It does not wait for the status lock to decide (when the status is
// being updated at that moment, the next block decides); only the one call that
// hurries a plan takes it, for Hurry's snapshot.
func (s *Stager) ObserveHeight(h int64) {
	s.height.Store(h)
	p := s.slot.Load()
	if p == nil || p.Height-h > HurryWithinBlocks || s.hurry.Load() {
		return
	}
	if !s.mu.TryLock() {
		return
	}
	ready := s.st.State == StateReady && s.st.Plan != nil && *s.st.Plan == *p
	s.mu.Unlock()
	if !ready {
		s.Hurry()
	}
}

// Height returns the last height passed to ObserveHeight (0 before the first).
func (s *Stager) Height() int64 { return s.height.Load() }
