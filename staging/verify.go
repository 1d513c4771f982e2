package staging

import (
	"bytes"
	"context"
	"debug/elf"
	"debug/macho"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/invisor/invisor/internal/home"
)

var elfMachine = map[string]elf.Machine{
	"amd64": elf.EM_X86_64, "386": elf.EM_386, "arm64": elf.EM_AARCH64, "arm": elf.EM_ARM,
	"riscv64": elf.EM_RISCV, "ppc64": elf.EM_PPC64, "ppc64le": elf.EM_PPC64, "s390x": elf.EM_S390,
	"loong64": elf.EM_LOONGARCH, "mips64": elf.EM_MIPS, "mips64le": elf.EM_MIPS, "mips": elf.EM_MIPS, "mipsle": elf.EM_MIPS,
}

var machoCPU = map[string]macho.Cpu{"amd64": macho.CpuAmd64, "arm64": macho.CpuArm64}

// checkExecutable verifies that f (opened from path, a regular file) holds an ELF
// (Linux, BSDs) or Mach-O (darwin) executable for goos/goarch. Scripts, HTML error
// pages, empty files and binaries for other platforms are rejected with what was found
// instead. It reads only the headers.
func checkExecutable(f *os.File, path, goos, goarch string) error {
	var head [512]byte
	n, _ := f.ReadAt(head[:], 0)
	what := sniff(head[:n])
	switch goos {
	case "darwin", "ios":
		mf, err := macho.NewFile(f)
		if err != nil {
			if ff, ferr := macho.NewFatFile(f); ferr == nil {
				defer ff.Close()
				for _, a := range ff.Arches {
					if a.Cpu == machoCPU[goarch] && a.Type == macho.TypeExec {
						return nil
					}
				}
				return fmt.Errorf("%w: %s is a universal Mach-O without an executable for %s", ErrNotExecutable, path, goarch)
			}
			return fmt.Errorf("%w: %s is %s, not a Mach-O executable for %s/%s", ErrNotExecutable, path, what, goos, goarch)
		}
		defer mf.Close()
		if want, ok := machoCPU[goarch]; ok && mf.Cpu != want {
			return fmt.Errorf("%w: %s is a Mach-O for %v, not for %s/%s", ErrNotExecutable, path, mf.Cpu, goos, goarch)
		}
		if mf.Type != macho.TypeExec {
			return fmt.Errorf("%w: %s is a Mach-O %v, not an executable", ErrNotExecutable, path, mf.Type)
		}
		return nil
	case "windows", "plan9", "js", "wasip1":
		return nil // no header check; preflight still runs
	}
	ef, err := elf.NewFile(f)
	if err != nil {
		return fmt.Errorf("%w: %s is %s, not an ELF executable for %s/%s", ErrNotExecutable, path, what, goos, goarch)
	}
	defer ef.Close()
	if want, ok := elfMachine[goarch]; ok && ef.Machine != want {
		return fmt.Errorf("%w: %s is an ELF for %v, not for %s/%s; the plan info points at the wrong build", ErrNotExecutable, path, ef.Machine, goos, goarch)
	}
	wantClass := elf.ELFCLASS64
	switch goarch {
	case "386", "arm", "mips", "mipsle":
		wantClass = elf.ELFCLASS32
	}
	if ef.Class != wantClass {
		return fmt.Errorf("%w: %s is %v, not right for %s/%s", ErrNotExecutable, path, ef.Class, goos, goarch)
	}
	if ef.Type != elf.ET_EXEC && ef.Type != elf.ET_DYN {
		return fmt.Errorf("%w: %s is an ELF %v, not an executable", ErrNotExecutable, path, ef.Type)
	}
	return nil
}

// sniff names what a non-executable file looks like, for the error message.
func sniff(b []byte) string {
	switch {
	case len(b) == 0:
		return "an empty file"
	case bytes.HasPrefix(b, []byte("#!")):
		return "a script"
	case bytes.HasPrefix(b, []byte{0x1f, 0x8b}):
		return "gzip data (add ?archive=tar.gz or ?archive=gz to the URL?)"
	case bytes.HasPrefix(b, []byte("PK\x03\x04")):
		return "a zip archive (add ?archive=zip to the URL?)"
	case bytes.HasPrefix(b, []byte{0xfd, '7', 'z', 'X', 'Z', 0}):
		return "xz data (add ?archive=tar.xz to the URL?)"
	case bytes.HasPrefix(b, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		return "zstd data (add ?archive=tar.zst to the URL?)"
	case len(b) > 262 && string(b[257:262]) == "ustar":
		return "a tar archive (add ?archive=tar to the URL?)"
	}
	s := strings.ToLower(string(b))
	if strings.Contains(s, "<html") || strings.Contains(s, "<!doctype") {
		return "an HTML page (an error page from the server?)"
	}
	return "not an executable"
}

// preflight runs the candidate binary at bin with the configured arguments, then
// asks it for its probe answer about the plan (ask, kept in j.answer for the
// record), each in a fresh scratch directory of the attempt's temp dir (see
// runSandboxed). sha256 is the binary's, for the error that refuses it.
func (j *job) preflight(ctx context.Context, bin, sha256 string) (string, error) {
	parent, err := j.temp()
	if err != nil {
		return "", err
	}
	version, err := preflight(ctx, bin, j.cfg.PreflightArgs, j.cfg.PreflightTimeout, parent)
	if err != nil {
		return "", err
	}
	ans, err := j.ask(ctx, bin, sha256, parent)
	if err != nil {
		return "", err
	}
	j.answer = ans
	return version, nil
}

// preflight runs `<bin> <args...> --home <scratch>` in the sandbox (runSandboxed)
// with a timeout. It must exit 0; the first line of its output is returned.
func preflight(ctx context.Context, bin string, args []string, timeout time.Duration, parent string) (string, error) {
	res, err := runSandboxed(ctx, bin, sandboxRun{args: args, home: true, timeout: timeout, field: "PreflightTimeout", max: 16 << 10}, parent)
	if err != nil {
		return "", err
	}
	text := strings.TrimSpace(string(res.output))
	if res.err != nil {
		if len(text) > 512 {
			text = text[:512] + "..."
		}
		return "", &PreflightError{Path: bin, Args: res.argv, Err: res.err, Output: text}
	}
	line, _, _ := strings.Cut(text, "\n")
	if len(line) > 256 {
		line = line[:256]
	}
	return line, nil
}

// sandboxRun is one bounded run of a candidate binary: the preflight, or the probe.
type sandboxRun struct {
	args    []string
	home    bool     // append `--home <scratch>` to args
	env     []string // entries added to the sandbox's environment
	timeout time.Duration
	field   string // the Config field of timeout, for the error
	max     int    // bytes of output kept; the rest is discarded
}

// sandboxResult is what a run did: argv as run, its output (stdout and stderr,
// capped) and err, set when it did not exit 0 (status, signal, timeout naming the
// Config field).
type sandboxResult struct {
	argv   []string
	output []byte
	err    error
}

// runSandboxed runs bin as r says, in its own process group (killed as a group on
// timeout), stdin from /dev/null, output capped, with a fresh scratch directory
// under parent as its working directory, HOME, XDG and TMPDIR directories and node
// home (DAEMON_HOME, and --home with r.home), removed afterwards: a candidate
// binary writes nothing outside it (an SDK binary writes a default config under
// its home even for `version`) and needs no writable $HOME (systemd ProtectHome=,
// DynamicUser=). The error return is the sandbox's own (the scratch directory); a
// run that fails is sandboxResult.err.
func runSandboxed(ctx context.Context, bin string, r sandboxRun, parent string) (sandboxResult, error) {
	scratch, err := os.MkdirTemp(parent, "sandbox-")
	if err != nil {
		return sandboxResult{}, fmt.Errorf("sandbox scratch directory under %s: %w", parent, err)
	}
	defer os.RemoveAll(scratch)
	if err := os.Mkdir(filepath.Join(scratch, "tmp"), 0o700); err != nil {
		return sandboxResult{}, err
	}
	var res sandboxResult
	for attempt := 0; attempt < 5; attempt++ {
		res = runOnce(ctx, bin, r, scratch)
		// ETXTBSY: another goroutine of this process forked while the file was still open
		// for writing (a known Go race); it clears as soon as that child execs.
		if res.err == nil || !errors.Is(res.err, syscall.ETXTBSY) {
			break
		}
		time.Sleep(time.Duration(attempt+1) * 50 * time.Millisecond)
	}
	return res, nil
}

// sandboxEnv is the environment of a sandboxed run: this process's, with every
// home-like directory pointing into scratch and without the home lock hand-over.
func sandboxEnv(scratch string) []string {
	set := map[string]string{
		"HOME":            scratch,
		"XDG_CONFIG_HOME": filepath.Join(scratch, ".config"),
		"XDG_CACHE_HOME":  filepath.Join(scratch, ".cache"),
		"XDG_DATA_HOME":   filepath.Join(scratch, ".local", "share"),
		"XDG_STATE_HOME":  filepath.Join(scratch, ".local", "state"),
		"TMPDIR":          filepath.Join(scratch, "tmp"),
		"DAEMON_HOME":     scratch, // an invisor-linked candidate must not open the real home
	}
	env := make([]string, 0, len(os.Environ())+len(set))
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if _, ok := set[k]; ok || k == home.EnvLock {
			continue
		}
		env = append(env, kv)
	}
	for _, k := range []string{"HOME", "XDG_CONFIG_HOME", "XDG_CACHE_HOME", "XDG_DATA_HOME", "XDG_STATE_HOME", "TMPDIR", "DAEMON_HOME"} {
		env = append(env, k+"="+set[k])
	}
	return env
}

func runOnce(ctx context.Context, bin string, r sandboxRun, scratch string) sandboxResult {
	ctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	argv := append([]string(nil), r.args...)
	if r.home {
		argv = append(argv, "--home", scratch)
	}
	cmd := exec.CommandContext(ctx, bin, argv...)
	cmd.Stdin = nil
	cmd.Dir = scratch
	cmd.Env = append(sandboxEnv(scratch), r.env...)
	out := &capBuffer{max: r.max}
	cmd.Stdout = out
	cmd.Stderr = out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error {
		if cmd.Process == nil {
			return nil
		}
		return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	}
	cmd.WaitDelay = 2 * time.Second
	err := cmd.Run()
	if err != nil && ctx.Err() == context.DeadlineExceeded && context.Cause(ctx) == context.DeadlineExceeded {
		err = fmt.Errorf("timed out after %v (Config.%s): %w", r.timeout, r.field, err)
	}
	return sandboxResult{argv: argv, output: out.buf.Bytes(), err: err}
}

// capBuffer keeps the first max bytes written and discards the rest.
type capBuffer struct {
	buf bytes.Buffer
	max int
}

func (c *capBuffer) Write(p []byte) (int, error) {
	if room := c.max - c.buf.Len(); room > 0 {
		c.buf.Write(p[:min(room, len(p))])
	}
	return len(p), nil
}

func (c *capBuffer) String() string { return c.buf.String() }

// hostPlatform is the GOOS/GOARCH the binary must be built for.
func hostPlatform() (string, string) { return runtime.GOOS, runtime.GOARCH }

// Preflight runs the bounded preflight (cfg.PreflightArgs, by default `version`)
// of the binary at bin in a scratch home under cfg's cosmovisor root (removed
// after), exactly as staging does before it installs a binary, and returns the
// first line it printed. For `invisor verify` and other on-demand checks.
func Preflight(ctx context.Context, cfg Config, bin string) (string, error) {
	l, err := cfg.Layout()
	if err != nil {
		return "", err
	}
	return preflight(ctx, bin, cfg.PreflightArgs, cfg.PreflightTimeout, l.Root())
}
