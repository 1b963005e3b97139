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

func TestScanPercent(t *testing.T) {
	const mib = 1 << 20
	for _, c := range []struct {
		live, scan, roots, least uint64
		base, want               int
	}{
		{100 * mib, 100 * mib, 0, 0, 100, 100},           // all scanned: the process's GOGC
		{100 * mib, 50 * mib, 0, 0, 100, 50},             // half
		{100 * mib, 43 * mib, 0, 0, 100, 43},             // a server's entries: most bytes not scanned
		{100 * mib, 0, 0, 0, 100, 25},                    // nothing scanned: a quarter
		{100 * mib, 10 * mib, 0, 0, 100, 25},             // a tenth: still a quarter
		{100 * mib, 30 * mib, 0, 0, 100, 30},             // above the quarter
		{90 * mib, 20 * mib, 10 * mib, 0, 100, 30},       // roots count on both sides: 30/100
		{100 * mib, 200 * mib, 0, 0, 100, 100},           // more scanned than live (allocated since): live
		{3, 1, 0, 0, 100, 34},                            // rounded up
		{100 * mib, 50 * mib, 0, 0, 200, 100},            // another GOGC
		{100 * mib, 0, 0, 0, 10, 3},                      // ceil(10/4)
		{100 * mib, 0, 0, 0, 1, 1},                       // never 0
		{100 * mib, 50 * mib, 0, 0, 0, 0},                // GOGC=0 stays
		{100 * mib, 50 * mib, 0, 0, -1, -1},              // off stays off
		{0, 0, 0, 0, 100, 100},                           // nothing live yet
		{0, 0, 1 * mib, 0, 100, 100},                     // only roots: all scanned
		{1 << 62, 1 << 61, 0, 0, 100, 50},                // no overflow
		{1<<64 - 1, 1<<64 - 1, 0, 0, 1 << 30, 1 << 30},   // no overflow at the top
		{8 * mib, 0, 0, 16 * mib, 100, 100},              // a small heap keeps its headroom
		{16 * mib, 0, 0, 16 * mib, 100, 100},             // up to the least headroom
		{32 * mib, 0, 0, 16 * mib, 100, 50},              // then the least headroom: 16 MiB
		{35 * mib, 15 * mib, 0, 16 * mib, 100, 46},       // 100,000 entries: ceil(16/35)
		{35 * mib, 20 * mib, 0, 16 * mib, 100, 58},       // more scanned than the least: ceil(20/35)
		{100 * mib, 0, 0, 16 * mib, 100, 25},             // a quarter above the least
		{350 * mib, 150 * mib, 0, 16 * mib, 100, 43},     // a million entries
		{12 * mib, 0, 0, 16 * mib, 50, 50},               // GOGC=50: 6 MiB of headroom, below the least
		{64 * mib, 0, 0, 16 * mib, 50, 25},               // GOGC=50: 16 MiB is a quarter of the heap
		{1 << 62, 0, 0, 16 * mib, 100, 25},               // scaled down with the rest
		{8 * mib, 0, 2 * mib, 16 * mib, 100, 100},        // roots count in the heap
		{20 * mib, 2 * mib, 4 * mib, 16 * mib, 100, 67},  // ceil(16/24)
		{20 * mib, 10 * mib, 6 * mib, 16 * mib, 100, 62}, // ceil(16/26)
		{20 * mib, 0, 0, 1 << 62, 100, 100},              // no overflow of the least (x100 wraps to 0)
	} {
		if got := ScanPercent(c.live, c.scan, c.roots, c.least, c.base); got != c.want {
			t.Errorf("ScanPercent(%d, %d, %d, %d, %d) = %d, want %d", c.live, c.scan, c.roots, c.least, c.base, got, c.want)
		}
	}
	// For any heap: within [1, base]; the headroom it gives covers the
	// scanned bytes' at base, a quarter of the whole heap's and the
	// lesser of the least and the whole heap's; one less would not.
	r := rand.New(rand.NewPCG(3, 4))
	for range 100000 {
		live := r.Uint64N(1 << 30)
		scan := r.Uint64N(live + 1)
		roots := r.Uint64N(1 << 24)
		least := r.Uint64N(64 << 20)
		base := 1 + r.IntN(1000)
		p := ScanPercent(live, scan, roots, least, base)
		whole, b := live+roots, uint64(base)
		wanted := max((scan+roots)*b, min(whole*b, least*100), (whole*b+MinFraction-1)/MinFraction)
		if p < 1 || p > base {
			t.Fatalf("ScanPercent(%d, %d, %d, %d, %d) = %d, outside [1, base]", live, scan, roots, least, base, p)
		}
		if whole > 0 && whole*uint64(p) < wanted {
			t.Fatalf("ScanPercent(%d, %d, %d, %d, %d) = %d: headroom below the one wanted", live, scan, roots, least, base, p)
		}
		if p > 1 && whole*uint64(p-1) >= wanted {
			t.Fatalf("ScanPercent(%d, %d, %d, %d, %d) = %d: %d gives that headroom already", live, scan, roots, least, base, p, p-1)
		}
	}
}

// TestScanHeadroom: a process whose live heap is mostly without pointers
// gets less headroom with ScanHeadroom (a quarter at 64 MiB), and its own GOGC
// back once its live heap holds pointers; without ScanHeadroom the
// same heap keeps the process's GOGC.
func TestScanHeadroom(t *testing.T) {
	if _, set := os.LookupEnv("GOGC"); set {
		t.Fatal("this test measures the default GOGC; run it without GOGC set")
	}
	base := currentPercent()
	// 64 MiB that the collector never scans.
	noscan := make([][]byte, 0, 64)
	for range 64 {
		noscan = append(noscan, make([]byte, 1<<20))
	}
	for _, scanned := range []bool{false, true} {
		stop, err := Start(Config{Floor: runtimeMinimum, ScanHeadroom: scanned})
		if err != nil {
			t.Fatal(err)
		}
		runtime.GC()
		lo, hi := base, base
		if scanned {
			// 16 MiB of 64 MiB: a quarter, both bounds at once (the
			// test binary's own heap adds a little).
			lo, hi = base/5, ScanPercent(64<<20, 0, 0, LeastHeadroom, base)
		}
		eventually.True(t, 10*time.Second, func() bool { p := currentPercent(); return p >= lo && p <= hi },
			"ScanHeadroom %v: GOGC %d with 64 MiB not scanned, want within [%d, %d]", scanned, currentPercent(), lo, hi)
		if g := nextGC(); scanned && g > 64<<20*3/2 {
			t.Errorf("heap goal %d with 64 MiB live, want at most 1.5 times", g)
		}
		if scanned {
			// 64 MiB of pointers: as scanned as live.
			ptrs := make([]*byte, 8<<20)
			for i := range ptrs {
				ptrs[i] = &noscan[i%64][i%(1<<20)]
			}
			runtime.GC()
			eventually.True(t, 10*time.Second, func() bool { p := currentPercent(); return p > base*2/5 && p <= base },
				"GOGC %d with half the live heap scanned, want about %d", currentPercent(), base/2)
			runtime.KeepAlive(ptrs)
		}
		stop()
		if p := currentPercent(); p != base {
			t.Errorf("GOGC %d after stop, want %d", p, base)
		}
	}
	runtime.KeepAlive(noscan)
}
