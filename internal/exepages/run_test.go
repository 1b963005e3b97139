package exepages

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sigil-id/sigil/clock"
)

// waitWaiters waits (bounded) until clk has n pending waits.
func waitWaiters(t *testing.T, clk *clock.Fake, n int) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); clk.Waiters() != n; {
		if time.Now().After(deadline) {
			t.Fatalf("%d waiters, want %d", clk.Waiters(), n)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestRunSchedule(t *testing.T) {
	clk := clock.NewFake(time.Unix(1_700_000_000, 0))
	var busy atomic.Bool
	var cpu atomic.Int64
	drops := make(chan struct{}, 10)
	reports := make(chan error, 10)
	var unmaps atomic.Int32
	unmapReports := make(chan error, 10)
	cfg := Config{
		After: 10 * time.Second,
		Clock: clk,
		CPU: func() time.Duration {
			if busy.Load() {
				return time.Duration(cpu.Add(int64(time.Second)))
			}
			return time.Duration(cpu.Load())
		},
		Drop: func() (Result, error) {
			drops <- struct{}{}
			return Result{Mappings: 2}, errors.New("partly")
		},
		Unmap: func() (Result, error) {
			unmaps.Add(1)
			return Result{Unmapped: true, Mappings: 3}, nil
		},
		Report: func(r Result, err error) {
			if r.Unmapped {
				if r.Mappings != 3 || err != nil || r.Again != (unmaps.Load() > 1) {
					err = errors.New("wrong result of the unmap")
				}
				unmapReports <- err
				return
			}
			if r.Mappings != 2 {
				err = errors.New("wrong result")
			}
			reports <- err
		},
	}
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan struct{})
	done := make(chan struct{})
	go func() { Run(ctx, cfg, ready); close(done) }()
	noDrop := func(when string) {
		t.Helper()
		select {
		case <-drops:
			t.Fatalf("dropped %s", when)
		default:
		}
	}
	dropped := func(when string) {
		t.Helper()
		select {
		case <-drops:
		case <-time.After(5 * time.Second):
			t.Fatalf("no drop %s", when)
		}
		if err := <-reports; err == nil || err.Error() != "partly" {
			t.Fatalf("report: %v", err)
		}
	}
	// The unmap at start, once, before ready; then no drop before ready.
	select {
	case err := <-unmapReports:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no unmap at start")
	}
	// Until ready, the unmap again every startUnmapEvery.
	unmappedAgain := func(when string) {
		t.Helper()
		select {
		case err := <-unmapReports:
			if err != nil {
				t.Fatalf("%s: %v", when, err)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("no unmap %s", when)
		}
	}
	waitWaiters(t, clk, 1)
	clk.Add(startUnmapEvery - time.Millisecond)
	waitWaiters(t, clk, 1)
	if n := unmaps.Load(); n != 1 {
		t.Fatalf("%d unmaps before %v, want 1", n, startUnmapEvery)
	}
	clk.Add(time.Millisecond)
	unmappedAgain("after startUnmapEvery")
	waitWaiters(t, clk, 1)
	clk.Add(time.Hour)
	unmappedAgain("an hour later, still starting")
	waitWaiters(t, clk, 1)
	noDrop("before ready")
	close(ready)
	// The last wait of the start (a fake clock's waits are not
	// cancelled) and the first step of After: until the first drop, the
	// waits are cut into steps of startUnmapEvery with an unmap between.
	waitWaiters(t, clk, 2)
	for i := time.Duration(1); i < 10*time.Second/startUnmapEvery; i++ {
		clk.Add(startUnmapEvery)
		unmappedAgain("while waiting for After")
		waitWaiters(t, clk, 1)
		noDrop("before After")
	}
	clk.Add(startUnmapEvery) // After: now the quiet check
	waitWaiters(t, clk, 1)
	busy.Store(true)
	clk.Add(startUnmapEvery)
	unmappedAgain("in a quiet window")
	waitWaiters(t, clk, 1)
	clk.Add(quietWindow - startUnmapEvery) // busy: another window
	waitWaiters(t, clk, 1)
	noDrop("while busy")
	busy.Store(false)
	clk.Add(startUnmapEvery)
	unmappedAgain("in a quiet window")
	waitWaiters(t, clk, 1)
	clk.Add(quietWindow - startUnmapEvery)
	dropped("once quiet after ready")
	// A Request is a drop 30 s after the last one.
	waitWaiters(t, clk, 0)
	Request()
	waitWaiters(t, clk, 1)
	// Requests made while one is pending are one.
	Request()
	Request()
	clk.Add(minInterval - time.Second)
	waitWaiters(t, clk, 1)
	noDrop("within 30 s of the last drop")
	clk.Add(time.Second)
	waitWaiters(t, clk, 1) // the quiet window
	clk.Add(quietWindow)
	dropped("on request")
	waitWaiters(t, clk, 1) // the pending request, 30 s later
	clk.Add(minInterval)
	waitWaiters(t, clk, 1)
	clk.Add(quietWindow)
	dropped("on the pending request")
	waitWaiters(t, clk, 0)
	clk.Add(time.Hour)
	noDrop("without request")
	Request()
	waitWaiters(t, clk, 1) // the last drop is over 30 s ago: the quiet window only
	clk.Add(quietWindow)
	dropped("on a later request")
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return when ctx was done")
	}
	if requests.Load() != nil {
		t.Fatal("Run left its request channel")
	}
	// At start, two before ready, 9 during After, one in each of the
	// two quiet windows; none after the first drop.
	if n, want := unmaps.Load(), int32(1+2+9+2); n != want || len(unmapReports) != 0 {
		t.Fatalf("%d unmaps, want %d", n, want)
	}
}

func TestRunDisabled(t *testing.T) {
	dropped := false
	ready := make(chan struct{})
	close(ready)
	done := make(chan struct{})
	go func() {
		Run(context.Background(), Config{Disabled: true,
			Drop:  func() (Result, error) { dropped = true; return Result{}, nil },
			Unmap: func() (Result, error) { dropped = true; return Result{}, nil }}, ready)
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return at once when disabled")
	}
	if dropped {
		t.Fatal("dropped while disabled")
	}
}
