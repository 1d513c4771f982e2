package history

// Events of upgrades scheduled at a height without governance (`invisor stage
// NAME --height H`): scheduled and cancelled by the operator's command, applied
// by the node once the block at the height ran on the upgrade's binary. The halt
// and the switch of such an upgrade are EventHalt and EventSwitched, as for a
// governance upgrade.
const (
	EventScheduled        = "scheduled"
	EventCancelled        = "cancelled"
	EventScheduledApplied = "scheduled-applied"
)
