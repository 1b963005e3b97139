// Package gcfloor keeps the garbage collector of a process with a small
// live heap from running more often than a heap floor requires.
//
// Go starts a collection when the heap reaches its goal, the live heap
// times 1+GOGC/100, and at least 4 MiB. A process that keeps little (an
// agent with a few entries holds about 2 MiB) but answers many small
// calls, each allocating a few KiB inside gRPC, then collects every few
// hundred calls. Each collection stops the world twice and takes a
// quarter of the CPU for a few milliseconds, which is what the slowest
// calls wait for.
//
// Start raises GOGC, after every collection, just enough that the next
// goal is Config.Floor, and never lowers it below the GOGC the process
// had (ScanPercent's, with Config.ScanHeadroom, below): the heap goal
// is max(Floor, live × (1+GOGC/100)). A process whose
// live heap reaches Floor/2 (at GOGC=100) runs with its own GOGC, as
// without this package. The cost is memory: up to Floor of heap (garbage
// not yet collected) in a process that allocates, instead of 4 MiB. An
// idle process allocates nothing and its heap does not grow; a process
// that stops allocating has its own GOGC back from its next collection
// (Config.IdleAfter; the runtime collects at least every 2 minutes),
// and the runtime then returns the heap it holds above its own goal.
//
// A memory limit (GOMEMLIMIT, debug.SetMemoryLimit) still bounds the
// heap: the runtime collects to stay under it whatever GOGC is.
//
// # Headroom for what a collection scans (Config.ScanHeadroom)
//
// The runtime gives the heap headroom in proportion to all of it: at
// GOGC=100 a process that keeps 35 MB grows to 70 MB before it collects.
// A collection's cost follows what it scans, though: the bytes of
// objects that hold pointers, the stacks and the globals. Objects
// without pointers (a server's registration entries as encoded records,
// most of its live heap) are only marked, from the pointers that scanned
// objects hold, never read. With ScanHeadroom the process's GOGC applies
// to the scanned bytes instead: the heap goal is
// live + (scanned heap + stacks + globals) × GOGC/100, so a collection
// runs as often per byte allocated as it would with GOGC for a process
// whose heap were only its scanned part, and the runtime's
// bookkeeping for the largest heap (span structures and arena metadata,
// which it never returns) follows a smaller peak. The headroom is never
// below a quarter of the process's GOGC's (MinFraction), nor below the
// lesser of 16 MiB (LeastHeadroom) and the process's GOGC's: sweeping
// and each collection's fixed costs follow the whole heap, and a process
// with a small heap gains little memory from collecting more often.
package gcfloor

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"sync"
	"time"

	"github.com/sigil-id/sigil/clock"
)

// Config configures Start.
type Config struct {
	// Floor is the least heap goal, in bytes: at least 4 MiB (the
	// runtime's own minimum at GOGC=100) and at most 1 GiB.
	Floor uint64
	// IdleAfter ends the floor after a collection that comes longer than
	// this after the previous one, until a collection comes sooner
	// again: a process that allocates that little gains nothing from the
	// floor, and with its own GOGC back the runtime returns the heap it
	// no longer needs (it collects at least every 2 minutes). Zero keeps
	// the floor always; negative is an error.
	IdleAfter time.Duration
	// ScanHeadroom applies the process's GOGC to the bytes a collection
	// scans rather than to the whole live heap (see the package
	// comment): ScanPercent replaces the process's GOGC as the least
	// GOGC kept, and as the GOGC after an idle spell.
	ScanHeadroom bool
	// Clock times collections; nil is the wall clock.
	Clock clock.Clock
}

// DefaultConfig returns a 16 MiB floor, ended after a minute without a
// collection.
func DefaultConfig() Config {
	return Config{Floor: 16 << 20, IdleAfter: time.Minute}
}

// ScanConfig returns the configuration of a process whose live heap is
// mostly without pointers (a server's entries): ScanHeadroom, and the
// runtime's own 4 MiB minimum as the floor.
func ScanConfig() Config {
	return Config{Floor: runtimeMinimum, ScanHeadroom: true}
}

// Validate reports whether c can be used.
func (c Config) Validate() error {
	if c.Floor < runtimeMinimum || c.Floor > 1<<30 {
		return fmt.Errorf("gcfloor: Floor %d bytes is outside [4 MiB, 1 GiB]", c.Floor)
	}
	if c.IdleAfter < 0 {
		return fmt.Errorf("gcfloor: IdleAfter %v must not be negative", c.IdleAfter)
	}
	return nil
}

// runtimeMinimum is the runtime's least heap goal at GOGC=100; at other
// settings it is runtimeMinimum × GOGC/100.
const runtimeMinimum = 4 << 20

// Percent returns the GOGC that makes the heap goal after a collection
// that left live bytes equal to floor, or, when the process's own GOGC
// (base) makes it larger, base. The runtime's goal at GOGC p is
// max(live × (100+p)/100, 4 MiB × p/100); the least p that brings either
// term to floor is taken.
func Percent(live, floor uint64, base int) int {
	// The minimum term alone reaches floor at this p.
	p := int((floor*100 + runtimeMinimum - 1) / runtimeMinimum)
	if live > 0 && live < floor {
		// The live term reaches floor at this p.
		if q := ((floor-live)*100 + live - 1) / live; q < uint64(p) {
			p = int(q)
		}
	}
	if live >= floor || p < base {
		return base
	}
	return p
}

// running is set while a floor is kept: there is one per process.
var running sync.Mutex

// Start keeps the heap floor of cfg until stop is called, which restores
// the GOGC the process had. It does nothing (stop does nothing) when the
// GOGC environment variable is set, the operator's choice, or when GOGC
// is off. Only one floor may be kept at a time.
func Start(cfg Config) (stop func(), err error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if _, set := os.LookupEnv("GOGC"); set {
		return func() {}, nil
	}
	if !running.TryLock() {
		return nil, errors.New("gcfloor: a floor is already kept in this process")
	}
	base := currentPercent()
	if base < 0 {
		running.Unlock()
		return func() {}, nil
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.New()
	}
	t := &tuner{cfg: cfg, base: base, last: base, live: []metrics.Sample{
		{Name: "/gc/heap/live:bytes"},
		{Name: "/gc/scan/heap:bytes"},
		{Name: "/gc/scan/stack:bytes"},
		{Name: "/gc/scan/globals:bytes"},
	}}
	t.mu.Lock()
	t.tune()
	t.mu.Unlock()
	t.arm()
	var once sync.Once
	return func() {
		once.Do(func() {
			t.mu.Lock()
			t.stopped = true
			debug.SetGCPercent(t.base)
			t.mu.Unlock()
			running.Unlock()
		})
	}, nil
}

// MinFraction and LeastHeadroom bound ScanPercent from below: the
// headroom it gives is never below a quarter of the process's GOGC's, nor
// below the lesser of LeastHeadroom and the process's GOGC's. So a heap
// that the collector hardly scans still gets a quarter of its headroom,
// and a heap of up to LeastHeadroom bytes keeps all of it: a small
// process that allocates quickly (a server signing SVIDs) would
// otherwise collect several times as often for a few MiB less.
const (
	MinFraction   = 4
	LeastHeadroom = 16 << 20
)

// ScanPercent returns the GOGC that gives a heap whose last collection
// left live bytes, of which it scanned scan (objects that hold
// pointers), with roots bytes of stacks and globals, the headroom base
// would give a heap of scan + roots bytes, within the bounds above (least
// is LeastHeadroom, as a parameter for tests). The runtime's goal at
// GOGC p is live + (live + roots) × p/100, so the headroom at p is
// (live + roots) × p/100 and the one wanted
// max((scan + roots) × base/100, min((live + roots) × base/100, least),
// (live + roots) × base/100/MinFraction). The result is rounded up, at
// most base and at least 1 for a positive base; a scan larger than live
// counts as live. It is base when base is not positive or nothing is
// live.
func ScanPercent(live, scan, roots, least uint64, base int) int {
	if base <= 0 || (live == 0 && roots == 0) {
		return base
	}
	scan, least = min(scan, live), min(least, 1<<40)
	// Sizes are scaled down below 2^31 bytes each so that the sums and
	// products below stay within 64 bits (base is below 2^31).
	for live >= 1<<31 || roots >= 1<<31 {
		live, scan, roots = live>>1, scan>>1, roots>>1
		least >>= 1
	}
	b := uint64(base)
	whole := live + roots
	// Headrooms times 100, to stay in integers.
	wanted := max((scan+roots)*b, min(whole*b, least*100), (whole*b+MinFraction-1)/MinFraction)
	p := (wanted + whole - 1) / whole
	return int(min(max(p, 1), b))
}

// currentPercent returns the process's GOGC (negative when off).
func currentPercent() int {
	s := []metrics.Sample{{Name: "/gc/gogc:percent"}}
	metrics.Read(s)
	if s[0].Value.Kind() != metrics.KindUint64 {
		return 100
	}
	v := s[0].Value.Uint64()
	if v > 1<<31 {
		return -1
	}
	return int(v)
}

// tuner sets GOGC after each collection.
type tuner struct {
	cfg  Config
	base int

	mu      sync.Mutex
	stopped bool
	last    int
	live    []metrics.Sample
	// lastGC is when tune last ran (zero before the first time).
	lastGC time.Time
}

// sentinel is allocated with a finalizer that runs after the collection
// that finds it unreachable, which re-arms it: one run per collection.
// It holds a pointer so that it is not a tiny allocation, which may
// share its block and outlive collections.
type sentinel struct{ _ *sentinel }

func (t *tuner) arm() {
	runtime.SetFinalizer(&sentinel{}, func(*sentinel) {
		t.mu.Lock()
		stopped := t.stopped
		if !stopped {
			t.tune()
		}
		t.mu.Unlock()
		if !stopped {
			t.arm()
		}
	})
}

// tune sets GOGC for the live heap the last collection left, or the
// process's own when that collection came after an idle spell.
func (t *tuner) tune() {
	now := t.cfg.Clock.Now()
	idle := t.cfg.IdleAfter > 0 && !t.lastGC.IsZero() && now.Sub(t.lastGC) > t.cfg.IdleAfter
	t.lastGC = now
	metrics.Read(t.live)
	var v [4]uint64
	for i, s := range t.live {
		if s.Value.Kind() == metrics.KindUint64 {
			v[i] = s.Value.Uint64()
		}
	}
	live := v[0]
	base := t.base
	if t.cfg.ScanHeadroom && t.live[1].Value.Kind() == metrics.KindUint64 {
		// The scanned heap read now also counts what was allocated since
		// the collection (the runtime adds it as it goes): a little
		// more headroom, never less.
		base = ScanPercent(live, v[1], v[2]+v[3], LeastHeadroom, t.base)
	}
	p := Percent(live, t.cfg.Floor, base)
	if idle {
		p = base
	}
	if p != t.last {
		debug.SetGCPercent(p)
		t.last = p
	}
}
