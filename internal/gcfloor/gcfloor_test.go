package gcfloor

import (
	"math/rand/v2"
	"os"
	"runtime"
	"testing"
	"time"

	"github.com/sigil-id/sigil/clock"
	"github.com/sigil-id/sigil/internal/eventually"
)

// goal is the runtime's heap goal at GOGC p after a collection that left
// live bytes (mgcpacer.go: the GOGC term, at least the scaled minimum).
func goal(live uint64, p int) uint64 {
	return max(live*uint64(100+p)/100, runtimeMinimum*uint64(p)/100)
}

func TestPercent(t *testing.T) {
	const mib = 1 << 20
	for _, c := range []struct {
		live, floor uint64
		base, want  int
	}{
		{0, 16 * mib, 100, 400},         // before the first collection: the minimum term
		{2 * mib, 16 * mib, 100, 400},   // the minimum term reaches the floor first
		{4 * mib, 16 * mib, 100, 300},   // the live term does
		{8 * mib, 16 * mib, 100, 100},   // GOGC=100 reaches it by itself
		{20 * mib, 16 * mib, 100, 100},  // above the floor
		{8 * mib, 16 * mib, 200, 200},   // never below the process's GOGC
		{2 * mib, 4 * mib, 100, 100},    // the runtime's own floor
		{1, 1 << 30, 100, 25600},        // bounded by the minimum term
		{6 * mib, 64 * mib, 50, 967},    // ceil(58/6*100)
		{64 * mib, 64 * mib, 100, 100},  // at the floor
		{100 * mib, 64 * mib, 300, 300}, // above, with another GOGC
		{0, 4 * mib, 100, 100},          // floor = runtime minimum
		{3 * mib, 12 * mib, 100, 300},   // both terms at 300
		{1 * mib, 5 * mib, 1000, 1000},  // base already above
		{512 << 10, 16 * mib, 100, 400}, // tiny live heap
		{15 * mib, 16 * mib, 100, 100},  // just below: base suffices
		{7 * mib, 16 * mib, 100, 129},   // ceil(9/7*100)
		{10 * mib, 100 * mib, 100, 900}, // the live term
		{30 * mib, 100 * mib, 100, 234}, // ceil(70/30*100)
		{50 * mib, 100 * mib, 100, 100}, // exactly base
		{49 * mib, 100 * mib, 100, 105}, // ceil(51/49*100)
		{99 * mib, 100 * mib, 10, 10},   // ceil(1/99*100) = 2 < base 10
		{99 * mib, 100 * mib, 0, 2},     // GOGC=0 is raised
		{0, 1 << 30, 100, 25600},        // largest floor
		{1 << 20, 1 << 30, 100, 25600},  // minimum term first
		{20 * mib, 1 << 30, 100, 5020},  // ceil(1004/20*100)
		{300 * mib, 1 << 30, 100, 242},  // ceil(724/300*100)
		{600 * mib, 1 << 30, 100, 100},  // base
		{0, 8 * mib, 100, 200},          // before the first collection
		{1 * mib, 8 * mib, 100, 200},    // minimum term
		{3 * mib, 8 * mib, 100, 167},    // ceil(5/3*100)
		{4 * mib, 8 * mib, 100, 100},    // base
	} {
		got := Percent(c.live, c.floor, c.base)
		if got != c.want {
			t.Errorf("Percent(%d, %d, %d) = %d, want %d", c.live, c.floor, c.base, got, c.want)
		}
	}
	// For any live heap: the goal reaches the floor (or base's goal is
	// above it), and one less would not (so no more heap than needed).
	r := rand.New(rand.NewPCG(1, 2))
	for range 100000 {
		floor := runtimeMinimum + r.Uint64N(1<<30-runtimeMinimum)
		live := r.Uint64N(2 * floor)
		base := r.IntN(500)
		p := Percent(live, floor, base)
		if p < base {
			t.Fatalf("Percent(%d, %d, %d) = %d, below base", live, floor, base, p)
		}
		if goal(live, p) < floor && p != base {
			t.Fatalf("Percent(%d, %d, %d) = %d: goal %d below the floor", live, floor, base, p, goal(live, p))
		}
		if p > base && goal(live, p-1) >= floor {
			t.Fatalf("Percent(%d, %d, %d) = %d: %d reaches the floor already", live, floor, base, p, p-1)
		}
	}
}

func TestValidate(t *testing.T) {
	if err := DefaultConfig().Validate(); err != nil {
		t.Fatal(err)
	}
	for _, floor := range []uint64{0, 4<<20 - 1, 1<<30 + 1} {
		if err := (Config{Floor: floor}).Validate(); err == nil {
			t.Errorf("floor %d accepted", floor)
		}
		if _, err := Start(Config{Floor: floor}); err == nil {
			t.Errorf("Start with floor %d accepted", floor)
		}
	}
}

var sink []byte

// collections returns how many collections allocating n bytes of garbage,
// in 4 KiB objects, takes.
func collections(n int) uint32 {
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for i := 0; i < n; i += 4096 {
		sink = make([]byte, 4096)
	}
	runtime.ReadMemStats(&after)
	return after.NumGC - before.NumGC
}

// nextGC is the heap goal of the next collection.
func nextGC() uint64 {
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.NextGC
}

// TestFloor: with a 32 MiB floor, a process whose live heap is small has
// a heap goal of at least 32 MiB and collects at most about once per
// 32 MiB allocated; a live heap that reaches the floor gets the
// process's own GOGC back (the floor is set again after each
// collection); stop gives the process its GOGC back.
func TestFloor(t *testing.T) {
	if _, set := os.LookupEnv("GOGC"); set {
		t.Fatal("this test measures the default GOGC; run it without GOGC set")
	}
	const floor = 32 << 20
	base := currentPercent()
	runtime.GC()
	if g := nextGC(); g >= floor {
		t.Fatalf("heap goal %d before the floor, want below %d", g, floor)
	}
	stop, err := Start(Config{Floor: floor})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Start(Config{Floor: floor}); err == nil {
		t.Error("a second floor was started")
	}
	if g := nextGC(); g < floor {
		t.Errorf("heap goal %d with the floor, want at least %d", g, floor)
	}
	if p := currentPercent(); p <= base {
		t.Errorf("GOGC %d with the floor, want above %d", p, base)
	}
	runtime.GC()
	// A cycle starts once the heap nears the goal, so at least about
	// 3/4 of the floor is allocated between two (margin for the pacer).
	if n := collections(256 << 20); n > 16 {
		t.Errorf("%d collections for 256 MiB of garbage with a 32 MiB floor, want at most 16", n)
	}

	// A live heap as large as the floor: the process's own GOGC.
	live := make([][]byte, 0, 48)
	for range 48 {
		live = append(live, make([]byte, 1<<20))
	}
	runtime.GC()
	eventually.True(t, 10*time.Second, func() bool { return currentPercent() == base },
		"GOGC %d with a live heap above the floor, want %d", currentPercent(), base)
	runtime.KeepAlive(live)
	live = nil
	runtime.GC()
	eventually.True(t, 10*time.Second, func() bool { return currentPercent() > base },
		"GOGC %d once the live heap is small again, want above %d", currentPercent(), base)

	stop()
	stop()
	if p := currentPercent(); p != base {
		t.Errorf("GOGC %d after stop, want %d", p, base)
	}
	runtime.GC()
	if g := nextGC(); g >= floor {
		t.Errorf("heap goal %d after stop, want below %d", g, floor)
	}
	// A floor can be kept again once stopped.
	stop, err = Start(DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	stop()
}

// TestIdleEndsFloor: a collection that comes more than IdleAfter after
// the previous one gives the process its own GOGC back; the next one
// that comes sooner sets the floor again.
func TestIdleEndsFloor(t *testing.T) {
	const floor = 32 << 20
	base := currentPercent()
	clk := clock.NewFake(time.Unix(1000, 0))
	stop, err := Start(Config{Floor: floor, IdleAfter: time.Minute, Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	if p := currentPercent(); p <= base {
		t.Fatalf("GOGC %d with the floor, want above %d", p, base)
	}
	// Collections a minute apart, not more: the floor stays.
	for range 3 {
		clk.Add(time.Minute)
		runtime.GC()
	}
	// The finalizers of those collections have run once GOGC is set
	// for a collection that comes after an idle spell.
	clk.Add(time.Minute + time.Second)
	runtime.GC()
	eventually.True(t, 10*time.Second, func() bool { return currentPercent() == base && nextGC() < floor },
		"GOGC %d and heap goal %d after an idle spell, want %d and below %d", currentPercent(), nextGC(), base, floor)
	runtime.GC()
	eventually.True(t, 10*time.Second, func() bool { return currentPercent() > base },
		"GOGC %d once collections come sooner again, want above %d", currentPercent(), base)
	if err := (Config{Floor: floor, IdleAfter: -1}).Validate(); err == nil {
		t.Error("a negative IdleAfter was accepted")
	}
}

// TestGOGCSetByOperator: with GOGC in the environment, Start leaves the
// collector alone.
func TestGOGCSetByOperator(t *testing.T) {
	t.Setenv("GOGC", "100")
	base := currentPercent()
	stop, err := Start(DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	runtime.GC()
	runtime.GC()
	if p := currentPercent(); p != base {
		t.Fatalf("GOGC %d with GOGC set by the operator, want %d", p, base)
	}
}
