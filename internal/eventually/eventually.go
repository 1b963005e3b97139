// Package eventually is the one polling helper of Sigil's tests: it
// waits, with a bound, for a condition that other goroutines or
// processes will make true (a server elected, a file written, a log line
// emitted), and when the bound passes it reports the last reason the
// condition failed rather than a bare "timed out".
//
// It is for waiting on real concurrency only. Where the code under test
// takes a clock.Clock, advance a clock.Fake instead of waiting for time
// to pass.
package eventually

import (
	"errors"
	"fmt"
	"testing"
	"time"
)

// The interval between two checks starts at FirstTick and doubles up to
// MaxTick: a condition that holds soon is seen soon, and a long wait
// (a process starting, an election) does not load the host.
const (
	FirstTick = 10 * time.Millisecond
	MaxTick   = 100 * time.Millisecond
)

// Stop marks err as final: Wait returns it at once instead of checking
// again (the process that should make the condition true has exited).
func Stop(err error) error { return stopError{err} }

type stopError struct{ err error }

func (e stopError) Error() string { return e.err.Error() }
func (e stopError) Unwrap() error { return e.err }

// Wait calls check until it returns nil and returns nil, or, once
// timeout has passed, returns check's last error. check is called at
// least once, and once more after the deadline, so a slow host that
// oversleeps still gets a final look. An error made with Stop ends the
// wait at once and is returned as it is.
func Wait(timeout time.Duration, check func() error) error {
	deadline := time.Now().Add(timeout)
	tick := FirstTick
	for {
		err := check()
		if err == nil {
			return nil
		}
		var stop stopError
		if errors.As(err, &stop) {
			return stop.err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("still failing after %v: %w", timeout, err)
		}
		time.Sleep(tick)
		tick = min(2*tick, MaxTick)
	}
}

// NoError waits like Wait and fails t with check's last error when
// timeout passes. Call it from the test's goroutine.
func NoError(tb testing.TB, timeout time.Duration, check func() error) {
	tb.Helper()
	if err := Wait(timeout, check); err != nil {
		tb.Fatal(err)
	}
}

// True waits until cond returns true and fails t with the message
// format, args when timeout passes. Call it from the test's goroutine.
func True(tb testing.TB, timeout time.Duration, cond func() bool, format string, args ...any) {
	tb.Helper()
	err := Wait(timeout, func() error {
		if cond() {
			return nil
		}
		return fmt.Errorf(format, args...)
	})
	if err != nil {
		tb.Fatal(err)
	}
}
