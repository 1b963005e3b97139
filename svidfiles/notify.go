package svidfiles

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"go.uber.org/zap"
)

// Notifier tells a consumer that its files changed.
type Notifier interface {
	// Rotated is called once every file of a rotation is in place, the
	// first write included. An error ends Run.
	Rotated(ctx context.Context) error
	// Exited delivers an *ExitError when a consumer that the notifier
	// supervises ends on its own; nil when it supervises none.
	Exited() <-chan error
	// Stop is called once when Run returns.
	Stop()
}

// ExitError reports that a supervised consumer ended on its own.
type ExitError struct {
	// Code is its exit status (128+signal when a signal ended it).
	Code int
	Err  error
}

func (e *ExitError) Error() string {
	return fmt.Sprintf("svidfiles: the consumer exited: %v", e.Err)
}

func (e *ExitError) Unwrap() error { return e.Err }

// DefaultStopTimeout is Exec.StopTimeout when zero.
const DefaultStopTimeout = 10 * time.Second

// Exec supervises a consumer process: it starts it after the first write
// and, on each rotation, stops it (SIGTERM, then SIGKILL after
// StopTimeout) and starts it again, so that it reads the new files. Stop
// ends it the same way.
type Exec struct {
	// Command is the program and its arguments. Required.
	Command []string
	// Stdin, Stdout and Stderr are the consumer's; nil is /dev/null.
	Stdin          io.Reader
	Stdout, Stderr io.Writer
	// StopTimeout bounds the wait after SIGTERM; DefaultStopTimeout when
	// zero.
	StopTimeout time.Duration
	// Logger logs restarts; nil discards them.
	Logger *zap.Logger

	mu     sync.Mutex
	cmd    *exec.Cmd
	done   chan struct{} // closed when cmd has been waited for
	exited chan error
}

// Rotated starts the consumer, stopping the running one first.
func (e *Exec) Rotated(context.Context) error {
	if len(e.Command) == 0 || e.Command[0] == "" {
		return errors.New("svidfiles: no command to run")
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	e.init()
	if e.cmd != nil {
		e.log().Info("restarting the consumer for the new SVID", zap.Int("pid", e.cmd.Process.Pid))
		e.stopLocked()
	}
	cmd := exec.Command(e.Command[0], e.Command[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = e.Stdin, e.Stdout, e.Stderr
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("svidfiles: start %s: %w", e.Command[0], err)
	}
	done := make(chan struct{})
	e.cmd, e.done = cmd, done
	e.log().Info("consumer started", zap.Strings("command", e.Command), zap.Int("pid", cmd.Process.Pid))
	go func() {
		err := cmd.Wait()
		e.mu.Lock()
		ours := e.cmd == cmd // not being stopped by us
		if ours {
			e.cmd = nil
		}
		e.mu.Unlock()
		close(done)
		if ours {
			e.exited <- &ExitError{Code: exitCode(cmd.ProcessState), Err: exitErr(err)}
		}
	}()
	return nil
}

// Exited delivers the consumer's end when it was not stopped by Exec.
func (e *Exec) Exited() <-chan error {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.init()
	return e.exited
}

// Stop ends the consumer, if it runs.
func (e *Exec) Stop() {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.cmd != nil {
		e.stopLocked()
	}
}

func (e *Exec) init() {
	if e.exited == nil {
		e.exited = make(chan error, 1)
	}
}

func (e *Exec) log() *zap.Logger {
	if e.Logger == nil {
		return zap.NewNop()
	}
	return e.Logger
}

// stopLocked ends e.cmd and waits for it; e.mu is held, and the waiting
// goroutine sees that the process is no longer e.cmd.
func (e *Exec) stopLocked() {
	cmd, done := e.cmd, e.done
	e.cmd = nil
	timeout := e.StopTimeout
	if timeout <= 0 {
		timeout = DefaultStopTimeout
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	e.mu.Unlock()
	defer e.mu.Lock()
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-done:
		return
	case <-t.C:
	}
	e.log().Warn("the consumer did not stop after SIGTERM; killing it", zap.Int("pid", cmd.Process.Pid), zap.Duration("waited", timeout))
	_ = cmd.Process.Kill()
	<-done
}

func exitCode(ps *os.ProcessState) int {
	if ps == nil {
		return 1
	}
	if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return ps.ExitCode()
}

func exitErr(err error) error {
	if err == nil {
		return errors.New("exit status 0")
	}
	return err
}

// Signal sends a signal to the process whose pid is in a file after each
// rotation. A missing or bad pid file, or a process that is gone, is
// logged and not an error: the consumer may not have started yet.
type Signal struct {
	// Signal is what is sent (e.g. syscall.SIGHUP). Required.
	Signal syscall.Signal
	// PIDFile holds the consumer's pid in decimal. Required.
	PIDFile string
	// Logger logs what was sent and failures; nil discards them.
	Logger *zap.Logger
	// Guard, when set, is for a signaller more privileged than the
	// consumer (the agent, as root): the pid file must be a regular file
	// owned by root, by this process's user or by Guard.UID, and not
	// writable by group or others, and the process it names must run as
	// Guard.UID (real user ID). Otherwise a user who could write the pid
	// file could make the agent signal any process. Nil: no check (sigil
	// svid watch signals as the user who runs it).
	Guard *Owner
}

// Rotated signals the process named in PIDFile.
func (s *Signal) Rotated(context.Context) error {
	log := s.Logger
	if log == nil {
		log = zap.NewNop()
	}
	pid, err := ReadPIDFile(s.PIDFile)
	if err == nil && s.Guard != nil {
		err = checkSignalTarget(s.PIDFile, pid, s.Guard.UID)
	}
	if err == nil {
		err = syscall.Kill(pid, s.Signal)
		if err != nil {
			err = fmt.Errorf("svidfiles: signal pid %d from %s: %w", pid, s.PIDFile, err)
		}
	}
	if err != nil {
		log.Warn("cannot tell the consumer about the new SVID", zap.Error(err))
		return nil
	}
	log.Info("consumer signalled", zap.Int("pid", pid), zap.Stringer("signal", s.Signal))
	return nil
}

// Exited is nil: Signal supervises no process.
func (*Signal) Exited() <-chan error { return nil }

// Stop does nothing.
func (*Signal) Stop() {}

// checkSignalTarget checks the pid file at path and the process pid for
// Signal.Guard: see there.
func checkSignalTarget(path string, pid, uid int) error {
	fi, err := os.Lstat(path)
	if err != nil {
		return fmt.Errorf("svidfiles: pid file: %w", err)
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !fi.Mode().IsRegular() || !ok {
		return fmt.Errorf("svidfiles: pid file %s is not a regular file", path)
	}
	if fi.Mode().Perm()&0o022 != 0 {
		return fmt.Errorf("svidfiles: pid file %s is writable by group or others (mode %04o): refusing to signal the process it names", path, fi.Mode().Perm())
	}
	if owner := int(st.Uid); owner != 0 && owner != os.Geteuid() && owner != uid {
		return fmt.Errorf("svidfiles: pid file %s is owned by uid %d, not root or the consumer's uid %d: refusing to signal the process it names", path, owner, uid)
	}
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return fmt.Errorf("svidfiles: process %d: %w", pid, err)
	}
	for _, line := range strings.Split(string(status), "\n") {
		if rest, ok := strings.CutPrefix(line, "Uid:"); ok {
			fields := strings.Fields(rest)
			if len(fields) == 0 {
				break
			}
			if real, err := strconv.Atoi(fields[0]); err == nil && real == uid {
				return nil
			}
			return fmt.Errorf("svidfiles: process %d (from %s) runs as uid %s, not the consumer's uid %d: refusing to signal it", pid, path, fields[0], uid)
		}
	}
	return fmt.Errorf("svidfiles: process %d: no Uid line in its status", pid)
}

// ReadPIDFile reads a positive decimal pid from path.
func ReadPIDFile(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, fmt.Errorf("svidfiles: pid file: %w", err)
	}
	s := strings.TrimSpace(string(b))
	pid, err := strconv.Atoi(s)
	if err != nil || pid <= 0 {
		return 0, fmt.Errorf("svidfiles: pid file %s holds %q, not a pid", path, s)
	}
	return pid, nil
}

var signals = map[string]syscall.Signal{
	"HUP": syscall.SIGHUP, "INT": syscall.SIGINT, "QUIT": syscall.SIGQUIT, "TERM": syscall.SIGTERM,
	"USR1": syscall.SIGUSR1, "USR2": syscall.SIGUSR2, "WINCH": syscall.SIGWINCH, "ALRM": syscall.SIGALRM,
}

// ParseSignal turns "SIGHUP", "HUP" or "hup" (also INT, QUIT, TERM, USR1,
// USR2, WINCH, ALRM) into a signal.
func ParseSignal(name string) (syscall.Signal, error) {
	n := strings.TrimPrefix(strings.ToUpper(strings.TrimSpace(name)), "SIG")
	if s, ok := signals[n]; ok {
		return s, nil
	}
	return 0, fmt.Errorf("svidfiles: unknown signal %q (want one of SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2, SIGWINCH, SIGALRM)", name)
}

// DefaultHookTimeout is Hook.Timeout when zero.
const DefaultHookTimeout = 30 * time.Second

// Hook runs a command after each rotation (for example `systemctl reload
// nginx`) and waits for it, within Timeout. Its failure is logged, with
// its output, and is not an error.
type Hook struct {
	// Command is the program and its arguments. Required.
	Command []string
	// Timeout bounds each run; DefaultHookTimeout when zero.
	Timeout time.Duration
	// Logger logs the runs; nil discards them.
	Logger *zap.Logger
}

// Rotated runs the command.
func (h *Hook) Rotated(ctx context.Context) error {
	if len(h.Command) == 0 || h.Command[0] == "" {
		return errors.New("svidfiles: no command to run")
	}
	log := h.Logger
	if log == nil {
		log = zap.NewNop()
	}
	timeout := h.Timeout
	if timeout <= 0 {
		timeout = DefaultHookTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, h.Command[0], h.Command[1:]...)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		log.Warn("the rotation command failed", zap.Strings("command", h.Command), zap.Error(err),
			zap.ByteString("output", bytes.TrimSpace(out.Bytes())))
		return nil
	}
	log.Info("rotation command ran", zap.Strings("command", h.Command))
	return nil
}

// Exited is nil: Hook supervises no process.
func (*Hook) Exited() <-chan error { return nil }

// Stop does nothing.
func (*Hook) Stop() {}
