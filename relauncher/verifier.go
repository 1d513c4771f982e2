package relauncher

import (
	"context"

	"github.com/invisor/invisor/internal/home"
	"github.com/invisor/invisor/internal/probe"
)

// Binary is the proof that a file may run for one plan, held open, plus what the
// switch may do with it.
type Binary struct {
	// Verified is the open, verified file (internal/home's proof). The relauncher
	// runs this very descriptor (Verified.ExecPath) after a last Recheck, and closes
	// it when it does not exec.
	Verified *home.Verified
	// AwaitsPreUpgrade says the binary, asked at staging time, answered that it
	// waits for its own pre-upgrade (probe.ProtocolAwaitPreUpgrade in the
	// record's probe answer), so Switch may start its pre-upgrade and exec it
	// without waiting. False means the sequential switch.
	AwaitsPreUpgrade bool
}

// Close closes the verified descriptor; it is safe on a zero Binary.
func (b Binary) Close() error { return b.Verified.Close() }

// Verifier proves that the binary in the layout's place for plan p may run for
// exactly p (name, height and info, as data/upgrade-info.json holds them). The
// relauncher passes the plan it read from that file, never just a name, and
// refuses a Binary whose proof is for another plan or another path.
type Verifier interface {
	Verify(ctx context.Context, p home.Plan) (Binary, error)
}

// VerifierFunc adapts a function to Verifier.
type VerifierFunc func(ctx context.Context, p home.Plan) (Binary, error)

// Verify calls f.
func (f VerifierFunc) Verify(ctx context.Context, p home.Plan) (Binary, error) { return f(ctx, p) }

// LayoutVerifier is the default Verifier: the completion record beside the
// binary, checked by home.Layout.Open (stamp unchanged, or re-hashed through the
// descriptor). It claims AwaitsPreUpgrade exactly when the record's probe
// answer, given by that very file when staging asked it, lists the protocol; a
// binary that did not answer gets the sequential order.
func LayoutVerifier(l home.Layout) Verifier {
	return VerifierFunc(func(ctx context.Context, p home.Plan) (Binary, error) {
		v, err := l.Open(ctx, p)
		if err != nil {
			return Binary{}, err
		}
		return Binary{Verified: v, AwaitsPreUpgrade: v.Record.Probe.Speaks(probe.ProtocolAwaitPreUpgrade)}, nil
	})
}

// Logger receives the relauncher's progress; kv are alternating keys and values.
type Logger interface {
	Info(msg string, kv ...any)
	Warn(msg string, kv ...any)
	Error(msg string, kv ...any)
}

type nopLogger struct{}

func (nopLogger) Info(string, ...any)  {}
func (nopLogger) Warn(string, ...any)  {}
func (nopLogger) Error(string, ...any) {}
