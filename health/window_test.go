package health

import (
	"sync"
	"testing"
	"time"
)

var t0 = time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)

// Samples closer than a tenth of the window merge: a failure every second
// for an hour keeps at most 11 samples, and the count is the exact one or
// up to a tenth of the window's failures more (a merged sample counts
// until its last increment slides out), never less.
func TestWindowMergesCloseSamples(t *testing.T) {
	w := NewWindow(5 * time.Minute)
	var n uint64
	now := t0
	w.Observe(now, "s1", "A", Failures{})
	for i := 0; i < 3600; i++ {
		now = now.Add(time.Second)
		n++
		w.Observe(now, "s1", "A", Failures{Attestation: n, Signing: 2 * n})
		if got := len(w.servers["s1"].samples); got > 11 {
			t.Fatalf("after %d observations: %d samples held, want at most 11", i+1, got)
		}
	}
	c := w.Count(now)
	// Exact: the 300 failures of (now-5m, now]; a merged sample keeps
	// up to 30s of older ones.
	if c.Attestation < 300 || c.Attestation > 330 || c.Signing != 2*c.Attestation {
		t.Fatalf("Count = %+v, want 300..330 attestation failures and twice as many signing", c)
	}
	// Later, at every second, never less than the exact count.
	for i := 0; i < 60; i++ {
		now = now.Add(time.Second)
		n++
		w.Observe(now, "s1", "A", Failures{Attestation: n, Signing: 2 * n})
		if c := w.Count(now); c.Attestation < 300 || c.Attestation > 330 {
			t.Fatalf("at +%ds: Count = %+v, want 300..330", i+1, c)
		}
	}
}

func TestWindowForgetsIdleServers(t *testing.T) {
	w := NewWindow(time.Minute)
	w.Observe(t0, "s1", "A", Failures{Attestation: 1})
	w.Observe(t0.Add(time.Second), "s1", "A", Failures{Attestation: 5})
	w.Observe(t0, "s2", "B", Failures{})
	if c := w.Count(t0.Add(time.Second)); c.Attestation != 4 {
		t.Fatalf("Count = %+v, want 4 attestation failures", c)
	}
	if c := w.Count(t0.Add(61 * time.Second)); c != (Failures{}) {
		t.Fatalf("Count after the window = %+v, want none", c)
	}
	if len(w.servers) != 0 {
		t.Fatalf("%d servers still held after a window without observations", len(w.servers))
	}
}

// A counter that goes down within one instance (not supposed to happen)
// counts as a reset, not as a huge increment.
func TestWindowCounterDecreaseWithinInstance(t *testing.T) {
	w := NewWindow(time.Minute)
	w.Observe(t0, "s1", "A", Failures{Signing: 100})
	w.Observe(t0.Add(time.Second), "s1", "A", Failures{Signing: 3})
	if c := w.Count(t0.Add(time.Second)); c.Signing != 3 {
		t.Fatalf("Count = %+v, want 3 signing failures", c)
	}
}

func TestWindowConcurrentUse(t *testing.T) {
	w := NewWindow(time.Minute)
	var wg sync.WaitGroup
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func(server string) {
			defer wg.Done()
			for i := 0; i <= 100; i++ {
				w.Observe(t0.Add(time.Duration(i)*100*time.Millisecond), server, "A", Failures{Attestation: uint64(i)})
				w.Count(t0.Add(time.Duration(i) * 100 * time.Millisecond))
			}
		}(string(rune('a' + g)))
	}
	wg.Wait()
	if c := w.Count(t0.Add(10 * time.Second)); c.Attestation != 400 {
		t.Fatalf("Count = %+v, want 4 servers × 100 attestation failures", c)
	}
}
