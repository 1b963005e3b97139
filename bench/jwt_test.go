package main

import (
	"errors"
	"runtime"
	"sync/atomic"
	"testing"
	"time"
)

func TestInterleavedRatesCountsEachKind(t *testing.T) {
	var na, nb atomic.Int64
	a := func() error { na.Add(1); return nil }
	b := func() error { nb.Add(1); return nil }
	ra, rb := interleavedRates(20*time.Millisecond, a, b)
	if ra <= 0 || rb <= 0 {
		t.Fatalf("rates %v, %v: want both positive", ra, rb)
	}
	// Blocks alternate a, b on every core, a first, so a ran at most one
	// block more than b per core.
	if d := na.Load() - nb.Load(); d < 0 || d > int64(jwtBlock*runtime.GOMAXPROCS(0)) {
		t.Errorf("a ran %d times, b %d: the blocks do not alternate", na.Load(), nb.Load())
	}
}

func TestInterleavedRatesStopsAtAnError(t *testing.T) {
	var nb atomic.Int64
	fail := errors.New("fail")
	a := func() error { return nil }
	b := func() error { nb.Add(1); return fail }
	ra, rb := interleavedRates(time.Minute, a, b)
	if rb != 0 {
		t.Errorf("b's rate %v, want 0: no block of b completed", rb)
	}
	if ra <= 0 {
		t.Errorf("a's rate %v, want positive: one block of a ran on each core", ra)
	}
	if nb.Load() == 0 {
		t.Error("b never ran")
	}
}
