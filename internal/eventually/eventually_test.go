package eventually

import (
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func TestWaitReturnsOnceTheConditionHolds(t *testing.T) {
	var n atomic.Int32
	err := Wait(10*time.Second, func() error {
		if n.Add(1) < 3 {
			return errors.New("not yet")
		}
		return nil
	})
	if err != nil || n.Load() != 3 {
		t.Fatalf("Wait: %v after %d checks, want nil after 3", err, n.Load())
	}
}

func TestWaitReportsTheLastFailure(t *testing.T) {
	var n int
	sentinel := errors.New("sentinel")
	err := Wait(30*time.Millisecond, func() error {
		n++
		return fmt.Errorf("check %d: %w", n, sentinel)
	})
	if err == nil || !errors.Is(err, sentinel) {
		t.Fatalf("err %v, want the check's error", err)
	}
	if want := fmt.Sprintf("still failing after 30ms: check %d: sentinel", n); err.Error() != want {
		t.Fatalf("err %q, want %q (the last check)", err, want)
	}
	if n < 2 {
		t.Fatalf("%d checks, want a check after the deadline too", n)
	}
}

func TestStopEndsTheWaitAtOnce(t *testing.T) {
	exited := errors.New("server exited")
	n := 0
	err := Wait(10*time.Second, func() error {
		n++
		if n == 2 {
			return Stop(fmt.Errorf("before it was ready: %w", exited))
		}
		return errors.New("not ready")
	})
	if err == nil || err.Error() != "before it was ready: server exited" || !errors.Is(err, exited) {
		t.Fatalf("err %v, want the Stop error as it is", err)
	}
	if n != 2 {
		t.Fatalf("%d checks, want 2: none after the Stop", n)
	}
}

// recorder is a testing.TB that records Fatal instead of stopping.
type recorder struct {
	testing.TB
	failed string
}

func (r *recorder) Helper()           {}
func (r *recorder) Fatal(args ...any) { r.failed = fmt.Sprint(args...) }

func TestTrueAndNoErrorFailTheTest(t *testing.T) {
	r := &recorder{TB: t}
	True(r, 20*time.Millisecond, func() bool { return false }, "leader of %d servers", 3)
	if !strings.HasSuffix(r.failed, "leader of 3 servers") {
		t.Fatalf("True failed with %q", r.failed)
	}
	r = &recorder{TB: t}
	NoError(r, 20*time.Millisecond, func() error { return errors.New("no quorum") })
	if !strings.HasSuffix(r.failed, ": no quorum") {
		t.Fatalf("NoError failed with %q", r.failed)
	}
	r = &recorder{TB: t}
	True(r, time.Second, func() bool { return true }, "unused")
	NoError(r, time.Second, func() error { return nil })
	if r.failed != "" {
		t.Fatalf("a holding condition failed the test: %q", r.failed)
	}
}
