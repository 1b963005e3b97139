package svidfiles

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// waitLines waits for path to hold n lines; a process writes it.
func waitLines(t *testing.T, path string, n int) []string {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		b, _ := os.ReadFile(path)
		lines := strings.Fields(string(b))
		if len(lines) >= n {
			return lines
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s holds %d lines, want %d", path, len(lines), n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func alive(pid int) bool { return syscall.Kill(pid, 0) == nil }

func TestExecRestartsTheConsumer(t *testing.T) {
	log := filepath.Join(t.TempDir(), "log")
	e := &Exec{Command: []string{"sh", "-c", `echo $$ >> "$0"; exec sleep 60`, log}}
	if err := e.Rotated(context.Background()); err != nil {
		t.Fatal(err)
	}
	first, _ := strconv.Atoi(waitLines(t, log, 1)[0])
	if err := e.Rotated(context.Background()); err != nil {
		t.Fatal(err)
	}
	// Rotated returned only once the first consumer was gone.
	if alive(first) {
		t.Fatalf("first consumer %d still runs after the restart", first)
	}
	second, _ := strconv.Atoi(waitLines(t, log, 2)[1])
	if second == first || !alive(second) {
		t.Fatalf("second consumer %d (first %d) is not running", second, first)
	}
	e.Stop()
	if alive(second) {
		t.Fatalf("consumer %d still runs after Stop", second)
	}
	select {
	case err := <-e.Exited():
		t.Fatalf("a consumer stopped by Exec was reported as exited: %v", err)
	default:
	}
}

func TestExecKillsAConsumerThatIgnoresSIGTERM(t *testing.T) {
	log := filepath.Join(t.TempDir(), "log")
	e := &Exec{Command: []string{"sh", "-c", `trap "" TERM; echo $$ >> "$0"; while :; do sleep 0.05; done`, log},
		StopTimeout: 100 * time.Millisecond}
	if err := e.Rotated(context.Background()); err != nil {
		t.Fatal(err)
	}
	pid, _ := strconv.Atoi(waitLines(t, log, 1)[0])
	e.Stop()
	if alive(pid) {
		t.Fatalf("consumer %d ignoring SIGTERM still runs after Stop", pid)
	}
}

func TestExecReportsAConsumerThatExits(t *testing.T) {
	e := &Exec{Command: []string{"sh", "-c", "exit 3"}}
	if err := e.Rotated(context.Background()); err != nil {
		t.Fatal(err)
	}
	err := <-e.Exited()
	var ee *ExitError
	if !errors.As(err, &ee) || ee.Code != 3 {
		t.Fatalf("Exited delivered %v, want exit status 3", err)
	}
	bad := &Exec{Command: []string{filepath.Join(t.TempDir(), "missing")}}
	if err := bad.Rotated(context.Background()); err == nil || !strings.HasPrefix(err.Error(), "svidfiles: start ") {
		t.Fatalf("a missing program: %v", err)
	}
}

func TestSignalSignalsThePIDFile(t *testing.T) {
	cmd := exec.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill() })
	dir := t.TempDir()
	pidFile := filepath.Join(dir, "pid")
	s := &Signal{Signal: syscall.SIGUSR1, PIDFile: pidFile}
	// No pid file yet: not an error, the consumer may start later.
	if err := s.Rotated(context.Background()); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(pidFile, []byte(strconv.Itoa(cmd.Process.Pid)+"\n"), 0o644)
	if err := s.Rotated(context.Background()); err != nil {
		t.Fatal(err)
	}
	err := cmd.Wait()
	ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus)
	if !ok || !ws.Signaled() || ws.Signal() != syscall.SIGUSR1 {
		t.Fatalf("sleep ended with %v, want killed by SIGUSR1", err)
	}
	os.WriteFile(pidFile, []byte("nope"), 0o644)
	if _, err := ReadPIDFile(pidFile); err == nil || !strings.Contains(err.Error(), "not a pid") {
		t.Fatalf("ReadPIDFile of a bad file: %v", err)
	}
}

func TestParseSignal(t *testing.T) {
	for in, want := range map[string]syscall.Signal{"SIGHUP": syscall.SIGHUP, "hup": syscall.SIGHUP, "USR2": syscall.SIGUSR2, " sigterm ": syscall.SIGTERM} {
		if got, err := ParseSignal(in); err != nil || got != want {
			t.Errorf("ParseSignal(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	if _, err := ParseSignal("SIGFOO"); err == nil || !strings.Contains(err.Error(), `unknown signal "SIGFOO"`) {
		t.Errorf("ParseSignal(SIGFOO) = %v", err)
	}
}

func TestHookRunsTheCommand(t *testing.T) {
	out := filepath.Join(t.TempDir(), "ran")
	h := &Hook{Command: []string{"sh", "-c", `echo ran >> "$0"`, out}}
	for range 2 {
		if err := h.Rotated(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	if b, _ := os.ReadFile(out); string(b) != "ran\nran\n" {
		t.Fatalf("hook output %q, want two runs", b)
	}
	// A failing hook is logged, not fatal.
	if err := (&Hook{Command: []string{"false"}}).Rotated(context.Background()); err != nil {
		t.Fatalf("a failing hook ended the run: %v", err)
	}
}

// TestSignalGuard: with a Guard (the agent signalling as root), a pid file
// others may write, or one naming a process of another user, is refused
// and nothing is signalled; a safe pid file naming the owner's process is
// signalled.
func TestSignalGuard(t *testing.T) {
	cmd := exec.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill() })
	dir := t.TempDir()
	pidFile := filepath.Join(dir, "pid")
	if err := os.WriteFile(pidFile, []byte(strconv.Itoa(cmd.Process.Pid)), 0o644); err != nil {
		t.Fatal(err)
	}
	me := os.Geteuid()
	if err := os.Chmod(pidFile, 0o666); err != nil {
		t.Fatal(err)
	}
	if err := checkSignalTarget(pidFile, cmd.Process.Pid, me); err == nil || !strings.Contains(err.Error(), "writable by group or others") {
		t.Fatalf("world-writable pid file: %v", err)
	}
	if err := os.Chmod(pidFile, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := checkSignalTarget(pidFile, cmd.Process.Pid, me+12345); err == nil || !strings.Contains(err.Error(), "not the consumer's uid") {
		t.Fatalf("process of another uid: %v", err)
	}
	// Refused targets are logged, not signalled: sleep is still running.
	s := &Signal{Signal: syscall.SIGUSR1, PIDFile: pidFile, Guard: &Owner{UID: me + 12345, GID: -1}}
	if err := s.Rotated(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Process.Signal(syscall.Signal(0)); err != nil {
		t.Fatalf("a refused target was signalled: %v", err)
	}
	s.Guard = &Owner{UID: me, GID: -1}
	if err := s.Rotated(context.Background()); err != nil {
		t.Fatal(err)
	}
	err := cmd.Wait()
	ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus)
	if !ok || !ws.Signaled() || ws.Signal() != syscall.SIGUSR1 {
		t.Fatalf("sleep ended with %v, want killed by SIGUSR1", err)
	}
}
