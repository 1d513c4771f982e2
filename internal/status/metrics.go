package status

import (
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/invisor/invisor/staging"
)

// Metric names, on the node's Prometheus endpoint: CometBFT's
// (config.toml [instrumentation] prometheus = true) and the API server's
// /metrics?format=prometheus (app.toml [telemetry] enabled with
// prometheus-retention-time > 0) both serve the default registry.
const (
	MetricPlanHeight      = "invisor_plan_height"
	MetricBlocksToUpgrade = "invisor_blocks_to_upgrade"
	MetricStagingState    = "invisor_staging_state"
	MetricBytesDownloaded = "invisor_staging_bytes_downloaded"
	MetricAttempts        = "invisor_staging_attempts"
	MetricFailures        = "invisor_staging_failures"
	MetricSecondsReady    = "invisor_seconds_since_ready"
	MetricLastSwitch      = "invisor_last_switch_duration_seconds"
	MetricNameUnmappable  = "invisor_plan_name_unmappable"
	MetricUnconfirmed     = "invisor_binary_unconfirmed"
	MetricScheduledHeight = "invisor_scheduled_upgrade_height"
	MetricWebhookDropped  = "invisor_webhook_events_dropped"
	MetricWebhookFailed   = "invisor_webhook_events_failed"
	MetricProposalCheck   = "invisor_proposal_check"
	MetricUpgradeHealth   = "invisor_upgrade_health"
	MetricOnlinePower     = "invisor_upgrade_online_power_ratio"
)

var allStates = []staging.State{staging.StateIdle, staging.StatePending, staging.StateDownloading,
	staging.StateVerifying, staging.StateReady, staging.StateFailed, staging.StateCancelled,
	staging.StateUnmappable, staging.StateRefused}

// gauges are invisor's Prometheus gauges. They are registered once per process
// (a process runs one node; after the exec the new process registers its own).
type gauges struct {
	planHeight, blocksTo, bytes, attempts, failures, sinceReady, lastSwitch prometheus.Gauge
	unmappable, unconfirmed, scheduled, hookDropped, hookFailed             prometheus.Gauge
	state                                                                   *prometheus.GaugeVec
	proposals                                                               *prometheus.GaugeVec
	health                                                                  *prometheus.GaugeVec // invisor_upgrade_health
	onlineRatio                                                             prometheus.Gauge
}

var (
	gaugesOnce sync.Once
	theGauges  *gauges
)

func registerGauges() *gauges {
	gaugesOnce.Do(func() {
		g := func(name, help string) prometheus.Gauge {
			return prometheus.NewGauge(prometheus.GaugeOpts{Name: name, Help: help})
		}
		theGauges = &gauges{
			planHeight:  g(MetricPlanHeight, "Height of the upgrade plan in force (0: none)."),
			blocksTo:    g(MetricBlocksToUpgrade, "Blocks until the plan height (-1: no plan or height unknown)."),
			bytes:       g(MetricBytesDownloaded, "Bytes downloaded by the current staging attempt."),
			attempts:    g(MetricAttempts, "Staging attempts made for the plan in force."),
			failures:    g(MetricFailures, "Failed staging attempts for the plan in force."),
			sinceReady:  g(MetricSecondsReady, "Seconds since the upgrade binary became ready (-1: not ready)."),
			lastSwitch:  g(MetricLastSwitch, "Seconds from the last upgrade halt to the new binary's boot on this home (0: none recorded)."),
			unmappable:  g(MetricNameUnmappable, "1 when the plan in force has a name no upgrades/ directory can hold: invisor will not switch it."),
			hookDropped: g(MetricWebhookDropped, "Webhook events dropped by this process (queue full, or sent after the notifier closed)."),
			hookFailed:  g(MetricWebhookFailed, "Webhook events this process gave up on after its retries."),
			scheduled:   g(MetricScheduledHeight, "Height of the upgrade scheduled without governance that this node halts at (its halt-height; 0: none)."),
			unconfirmed: g(MetricUnconfirmed, "1 when the plan's staged binary is trusted on the operator's word or by the unsafe override, not on the plan's checksum."),
			state: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: MetricStagingState,
				Help: "1 for the current staging state, 0 for the others."}, []string{"state"}),
			proposals: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: MetricProposalCheck,
				Help: "1 for each software-upgrade proposal in its voting period, labelled with its id, its plan name and the check's state (verified, failed, refused, skipped, queued, checking)."},
				[]string{"proposal", "upgrade", "state"}),
			health: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: MetricUpgradeHealth,
				Help: "1 for the health of the upgrade this process switched to (waiting, healthy, stalled), 0 for the others; all 0 when no switch led to this boot."}, []string{"state"}),
			onlineRatio: g(MetricOnlinePower, "Fraction of the voting power seen voting at the block after the upgrade height while that block is late (-1: not measured)."),
		}
		for _, c := range []prometheus.Collector{theGauges.planHeight, theGauges.blocksTo, theGauges.bytes,
			theGauges.attempts, theGauges.failures, theGauges.sinceReady, theGauges.lastSwitch, theGauges.state,
			theGauges.unmappable, theGauges.unconfirmed, theGauges.scheduled, theGauges.hookDropped, theGauges.hookFailed,
			theGauges.proposals, theGauges.health, theGauges.onlineRatio} {
			// A name clash with another collector leaves that gauge unexported;
			// the node must not fail for a metric.
			_ = prometheus.DefaultRegisterer.Register(c)
		}
	})
	return theGauges
}
