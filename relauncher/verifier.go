package relauncher

// Binary is a verified, trusted binary for an upgrade.
type Binary struct {
	Name   string // upgrade name
	Path   string // absolute path, <Home>/cosmovisor/upgrades/<dir>/bin/<daemon>
	SHA256 string // lowercase hex of the file's SHA-256
	Size   int64  // file size in bytes; 0 means unknown
	// AwaitsPreUpgrade says the file was scanned and links AwaitPreUpgrade (see
	// BinaryAwaitsPreUpgrade), so Switch may start its pre-upgrade and exec it
	// without waiting. False means the sequential switch.
	AwaitsPreUpgrade bool
}

// Verifier re-verifies a staged binary (re-hash against its completion record) and
// returns it only if it is trusted. The staging package implements it.
type Verifier interface {
	Trusted(name string) (Binary, error)
}

// VerifierFunc adapts a function to Verifier.
type VerifierFunc func(name string) (Binary, error)

// Trusted calls f.
func (f VerifierFunc) Trusted(name string) (Binary, error) { return f(name) }

// BinaryPather is optionally implemented by a Verifier that knows where the binary
// for an upgrade is expected; it is used in "what is missing" messages. Without it
// the relauncher uses cosmovisor's mapping (UpgradeDir).
type BinaryPather interface {
	BinaryPath(name string) string
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
