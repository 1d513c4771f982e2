package hook

// ProbeKey is the app-options key under which invisor's probe (a bounded run of
// a staged binary that asks what it can do) registers a func(PlanSource): Install
// hands it the plan source (the app's upgrade keeper) so the probe can ask which
// upgrade handlers this binary carries. Only a probe run sets it.
const ProbeKey = "invisor.probe"

// reportSource hands src to the probe's func under ProbeKey, if one is registered.
func reportSource(appOpts AppOptions, src PlanSource) {
	if f, ok := appOpts.Get(ProbeKey).(func(PlanSource)); ok && f != nil {
		f(src)
	}
}
