package staging

import (
	"context"
	"errors"

	"github.com/invisor/invisor/internal/probe"
)

// ask runs the candidate binary at bin once more, after its preflight and in the
// same sandbox (runSandboxed): with no arguments and the probe's environment
// (probe.RequestEnv for the plan), bounded by Config.ProbeTimeout, its output
// capped at probe.MaxAnswer. It returns the binary's answer, or nil when it gave
// none: it exited non-zero, ran out of time, printed no answer line (it links no
// invisor, or a release older than the probe) or a garbled one. No answer is not
// an error; the reason is logged. An answer that says the binary has no upgrade
// handler for the plan is: a *MissingHandlerError, because that binary would halt
// the chain again at the plan's height. sha256 is the binary's, for that error.
//
// Only a plan with a height (one governance passed) is asked about: a check
// without one (the genesis binary of a bundle, a binary staged ahead of its plan
// without --height) names no upgrade the binary must carry; the node asks again
// when the plan is in force. Nor is a plan outside the chain's state
// (Config.NoHandler).
func (j *job) ask(ctx context.Context, bin, sha256, parent string) (*probe.Answer, error) {
	var plans []string
	if j.p.Height > 0 && !j.cfg.NoHandler {
		plans = []string{j.p.Name}
	}
	res, err := runSandboxed(ctx, bin, sandboxRun{
		env: probe.RequestEnv(plans), timeout: j.cfg.ProbeTimeout, field: "ProbeTimeout", max: probe.MaxAnswer,
	}, parent)
	if err != nil {
		return nil, err
	}
	if ctx.Err() != nil {
		return nil, context.Cause(ctx) // cancelled, not a binary without an answer
	}
	if res.err != nil {
		j.log.Warn("staging: the binary's probe run failed, so it gave no probe answer; it is accepted like a binary that does not answer",
			"plan", j.p.Name, "sha256", sha256, "err", res.err)
		return nil, nil
	}
	ans, err := probe.Parse(res.output)
	switch {
	case errors.Is(err, probe.ErrNoAnswer):
		j.log.Info("staging: the binary gave no probe answer (it links no invisor, or a release older than the probe)", "plan", j.p.Name, "sha256", sha256)
		return nil, nil
	case err != nil:
		j.log.Warn("staging: the binary's probe answer is garbled, so it counts as no answer; it is accepted like a binary that does not answer",
			"plan", j.p.Name, "sha256", sha256, "err", err)
		return nil, nil
	}
	if has, known := ans.HasHandler(j.p.Name); known && !has && j.p.Height > 0 && !j.cfg.NoHandler {
		return nil, &MissingHandlerError{Plan: j.p.Name, Height: j.p.Height, Path: j.bin, Placed: bin == j.bin, SHA256: sha256, InvisorVersion: ans.InvisorVersion}
	}
	j.log.Info("staging: the binary answered the probe", "plan", j.p.Name, "invisor_version", ans.InvisorVersion, "protocols", ans.Protocols, "handlers", ans.Handlers)
	return &ans, nil
}
