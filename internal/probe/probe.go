// Package probe is how invisor asks a binary what it can do, instead of guessing
// from its bytes. A binary that links invisor answers in invisor.Execute, before
// it reads any configuration or opens any store: run with INVISOR_PROBE=1 in its
// environment, it prints one line
//
//	INVISOR_PROBE_ANSWER {"probe":1,"invisor_version":"v0.3.0","protocols":["await-pre-upgrade/1"],"handlers":{"v2":true}}
//
// and exits 0. The asking side (staging, at staging time) runs the binary
// bounded and sandboxed and keeps the answer in the binary's completion record,
// so the switch at the height asks nothing.
//
// What it does not do: run anything itself (the caller owns the sandbox and the
// timeout), or trust an answer beyond what it is for. An answer only ever takes
// a capability away (a missing handler refuses the binary; an unknown protocol
// gets the sequential order); a binary that does not answer is not refused, it
// gets the order every binary supports.
package probe

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"runtime/debug"
	"slices"
	"strings"
)

// Env asks a binary to answer the probe: "1" (any other value is not a probe).
const Env = "INVISOR_PROBE"

// EnvPlans names, as a JSON array of strings, the upgrade plans whose handlers the
// answer must report. Without it the answer reports no handlers.
const EnvPlans = "INVISOR_PROBE_PLANS"

// Prefix starts the one line of the answer; output without it is no answer.
const Prefix = "INVISOR_PROBE_ANSWER "

// Version is the probe format the answer carries in Answer.Probe.
const Version = 1

// ProtocolAwaitPreUpgrade says the binary waits, in invisor.Execute and before it
// reads any configuration, for a pre-upgrade the old binary started for it
// (relauncher's overlapped order).
const ProtocolAwaitPreUpgrade = "await-pre-upgrade/1"

// Protocols are the protocols a binary built from this source speaks.
func Protocols() []string { return []string{ProtocolAwaitPreUpgrade} }

// MaxAnswer bounds what the asking side reads of a binary's output.
const MaxAnswer = 64 << 10

// ErrNoAnswer: the binary ran but printed no answer (it does not link invisor,
// or links a release older than the probe).
var ErrNoAnswer = errors.New("probe: the binary printed no probe answer")

// Answer is what a binary says about itself.
type Answer struct {
	// Probe is the answer's format (Version).
	Probe int `json:"probe"`
	// InvisorVersion is the version of the invisor module the binary links.
	InvisorVersion string `json:"invisor_version"`
	// Protocols lists the protocols it speaks, such as ProtocolAwaitPreUpgrade.
	Protocols []string `json:"protocols"`
	// Handlers maps each plan asked for (EnvPlans) to whether the binary's
	// upgrade keeper has a handler for it. A plan missing from the map could not
	// be told (the chain did not give invisor its app constructor).
	Handlers map[string]bool `json:"handlers,omitempty"`
}

// Speaks reports whether the answer lists protocol p.
func (a *Answer) Speaks(p string) bool { return a != nil && slices.Contains(a.Protocols, p) }

// HasHandler reports whether the binary carries the upgrade handler for plan
// name, and whether it said so at all (known false: it could not tell).
func (a *Answer) HasHandler(name string) (has, known bool) {
	if a == nil || a.Handlers == nil {
		return false, false
	}
	has, known = a.Handlers[name]
	return has, known
}

// Requested reports whether environ asks for a probe answer, and the plans
// whose handlers it must report. A malformed plan list is an error: the asking
// side then gets no answer and treats the binary as one that does not answer.
func Requested(environ []string) (plans []string, ok bool, err error) {
	for _, kv := range environ {
		k, v, _ := strings.Cut(kv, "=")
		switch k {
		case Env:
			ok = v == "1"
		case EnvPlans:
			if err := json.Unmarshal([]byte(v), &plans); err != nil {
				return nil, true, fmt.Errorf("probe: %s is not a JSON array of plan names: %w", EnvPlans, err)
			}
		}
	}
	if !ok {
		return nil, false, nil
	}
	return plans, true, nil
}

// RequestEnv is the environment entries that ask a binary for its answer,
// reporting the handlers of plans.
func RequestEnv(plans []string) []string {
	env := []string{Env + "=1"}
	if len(plans) > 0 {
		b, _ := json.Marshal(plans)
		env = append(env, EnvPlans+"="+string(b))
	}
	return env
}

// Respond writes the answer line to w.
func Respond(w io.Writer, a Answer) error {
	a.Probe = Version
	b, err := json.Marshal(a)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(w, "%s%s\n", Prefix, b)
	return err
}

// Parse finds the answer line in a binary's output (the first line starting
// with Prefix). Output without one is ErrNoAnswer; a line that does not parse,
// or a format this side does not know, is an error naming the cause.
func Parse(out []byte) (Answer, error) {
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 0, 4096), MaxAnswer)
	for sc.Scan() {
		line, ok := strings.CutPrefix(sc.Text(), Prefix)
		if !ok {
			continue
		}
		var a Answer
		if err := json.Unmarshal([]byte(line), &a); err != nil {
			return Answer{}, fmt.Errorf("probe: the answer does not parse: %w", err)
		}
		if a.Probe != Version {
			return Answer{}, fmt.Errorf("probe: answer format %d, this build reads %d", a.Probe, Version)
		}
		return a, nil
	}
	return Answer{}, ErrNoAnswer
}

// InvisorVersion is the version of the invisor module linked into this binary:
// its module version when a chain depends on it, "(devel)" in invisor's own builds.
func InvisorVersion() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "(unknown)"
	}
	const mod = "github.com/invisor/invisor"
	if bi.Main.Path == mod {
		return bi.Main.Version
	}
	for _, d := range bi.Deps {
		if d.Path == mod {
			if d.Replace != nil && d.Replace.Version != "" {
				return d.Replace.Version
			}
			return d.Version
		}
	}
	return "(unknown)"
}
