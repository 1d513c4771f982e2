package status

import "github.com/invisor/invisor/internal/health"

// Health is the post-upgrade health gate's report (internal/health), as the
// status file carries it in Node.Health.
type Health = health.Report

// SetHealth gives the Reporter the health gate's latest report (nil while no
// gate is armed in this process) for Node.Health and the invisor_upgrade_*
// gauges; call it before Run.
func (r *Reporter) SetHealth(report func() *Health) { r.health = report }

// setHealth publishes rep in ns and the gauges.
func (r *Reporter) setHealth(ns *Node, rep *Health) {
	g := r.g
	for _, s := range health.States {
		v := 0.0
		if rep != nil && rep.State == s {
			v = 1
		}
		g.health.WithLabelValues(string(s)).Set(v)
	}
	g.onlineRatio.Set(-1)
	if rep == nil {
		return
	}
	ns.Health = rep
	if rep.Online != nil {
		g.onlineRatio.Set(rep.Online.Fraction)
	}
}
