package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// proc is a supervised node process (invisor: `exampled start`; cosmovisor:
// `cosmovisor run start`) whose stdout and stderr go through a pipe to the
// harness. Every line is stamped with the wall clock when it arrives (the SDK's
// console log has minute-precision timestamps and its JSON log second
// precision), written to the run's log file, and kept in memory for the
// breakdown. zerolog writes each line with one write(2) to an unbuffered
// stderr, and the pipe survives syscall.Exec and is inherited by cosmovisor's
// child, so arrival time is emission time to well under a millisecond.
type proc struct {
	cmd    *exec.Cmd
	exited chan struct{}
	err    error

	mu    sync.Mutex
	lines []logLine
	done  chan struct{} // log reader finished
}

type logLine struct {
	T    time.Time
	Text string
}

func startProc(bin string, args, env []string, logPath string) (*proc, error) {
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	pr, pw, err := os.Pipe()
	if err != nil {
		f.Close()
		return nil, err
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = pw, pw
	cmd.Env = env
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		f.Close()
		pr.Close()
		pw.Close()
		return nil, err
	}
	pw.Close()
	p := &proc{cmd: cmd, exited: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(p.done)
		defer f.Close()
		defer pr.Close()
		r := bufio.NewReaderSize(pr, 1<<20)
		w := bufio.NewWriter(f)
		defer w.Flush()
		for {
			s, err := r.ReadString('\n')
			if s != "" {
				now := time.Now()
				s = strings.TrimRight(s, "\n")
				p.mu.Lock()
				p.lines = append(p.lines, logLine{now, s})
				p.mu.Unlock()
				fmt.Fprintf(w, "%s %s\n", now.Format("15:04:05.000"), s)
			}
			if err != nil {
				if err != io.EOF {
					fmt.Fprintf(w, "harness: log read: %v\n", err)
				}
				return
			}
		}
	}()
	go func() {
		p.err = cmd.Wait()
		close(p.exited)
	}()
	return p, nil
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

func (p *proc) hasExited() (bool, error) {
	select {
	case <-p.exited:
		return true, p.err
	default:
		return false, nil
	}
}

// stop sends SIGTERM to the process group, waits up to timeout, then SIGKILLs it.
func (p *proc) stop(timeout time.Duration) {
	if done, _ := p.hasExited(); !done {
		_ = syscall.Kill(-p.pid(), syscall.SIGTERM)
		select {
		case <-p.exited:
		case <-time.After(timeout):
			_ = syscall.Kill(-p.pid(), syscall.SIGKILL)
			<-p.exited
		}
	}
	// Children (cosmovisor's daemon) may hold the pipe after the leader exited.
	_ = syscall.Kill(-p.pid(), syscall.SIGKILL)
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
	}
}

func (p *proc) snapshot() []logLine {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]logLine(nil), p.lines...)
}

// find returns the first line at or after index from that contains all of subs.
func find(lines []logLine, from int, subs ...string) (int, logLine, bool) {
	for i := max(from, 0); i < len(lines); i++ {
		ok := true
		for _, s := range subs {
			if !strings.Contains(lines[i].Text, s) {
				ok = false
				break
			}
		}
		if ok {
			return i, lines[i], true
		}
	}
	return -1, logLine{}, false
}

var tookRe = regexp.MustCompile(`took=([0-9.]+)((?:ns|µs|us|ms|s|m)(?:[0-9.]+(?:ms|s))?)?(?:\s|$)`)

// tookOf parses a `took=<duration>` field of a log line. The SDK's logger
// (zerolog) prints durations as bare float milliseconds: took=273.860084.
func tookOf(s string) (time.Duration, bool) {
	m := tookRe.FindStringSubmatch(s)
	if m == nil {
		return 0, false
	}
	if m[2] == "" {
		f, err := strconv.ParseFloat(m[1], 64)
		return time.Duration(f * float64(time.Millisecond)), err == nil
	}
	d, err := time.ParseDuration(strings.Replace(m[1]+m[2], "us", "µs", 1))
	return d, err == nil
}

var heightRe = regexp.MustCompile(`height=(\d+)`)

func heightOf(s string) int64 {
	m := heightRe.FindStringSubmatch(s)
	if m == nil {
		return -1
	}
	h, _ := strconv.ParseInt(m[1], 10, 64)
	return h
}
