package exepages

import (
	"context"
	"sync/atomic"
	"time"

	"github.com/sigil-id/sigil/clock"
)

// Defaults of Config.
const (
	// DefaultAfter is the least wait between the daemon being ready and
	// the first drop: start-up work (an agent's first sync and SVIDs,
	// a server's first agents) runs code once that the idle process
	// does not run again.
	DefaultAfter = 10 * time.Second
	// quietWindow is how often the process's CPU time is sampled while
	// waiting for it to be quiet, and quietCPU the most CPU time it may
	// use in one window to count as quiet (2.5 % of one core): a drop
	// while the process is busy would make the code it is running
	// fault back at once, page by page.
	quietWindow = 2 * time.Second
	quietCPU    = 50 * time.Millisecond
	// minInterval is the least time between two drops: a Request
	// soon after a drop waits for it.
	minInterval = 30 * time.Second
	// startUnmapEvery is how often Run unmaps the executable's pages
	// again until its first drop.
	startUnmapEvery = time.Second
)

// Config says when a daemon drops its executable's unused pages.
type Config struct {
	// Disabled turns the drops off.
	Disabled bool
	// After is the least wait after ready before the first drop; 0
	// means DefaultAfter.
	After time.Duration
	// Clock times the waits; nil means the wall clock.
	Clock clock.Clock
	// CPU returns the CPU time the process used so far; nil means
	// getrusage (ProcessCPU).
	CPU func() time.Duration
	// Readahead says where faults after a drop still read ahead; the
	// zero value is ReadaheadCode (off on the read-only data only).
	Readahead Readahead
	// Drop drops the pages; nil means the package's Drop with Readahead.
	Drop func() (Result, error)
	// Unmap is the step at start; nil means the package's Unmap.
	Unmap func() (Result, error)
	// Report receives what each drop did (for the daemon's log).
	Report func(Result, error)
}

// requests is the channel of the running Run, if any (see Request).
var requests atomic.Pointer[chan struct{}]

// Request asks the running Run (if any) for one more drop once the
// process is quiet, at least 30 s after the last one. It never
// blocks; requests made while one is pending are one. The server calls it
// after returning memory following large deletions: creating and
// deleting entries ran code the idle server does not run again.
func Request() {
	if ch := requests.Load(); ch != nil {
		select {
		case *ch <- struct{}{}:
		default:
		}
	}
}

// Run unmaps the executable's pages at once (Unmap: the pages the
// initialisation touched, which the daemon's start-up work, such as an
// agent's first full sync, would otherwise hold at its peak) and again
// every second until its first drop (what the start-up work ran), drops the
// executable's unused pages once after ready is closed, at least After
// later and once the process is quiet (it used less than 2.5 % of a core
// over 2 s), then once per Request under the same conditions, at most
// every 30 s (the rate of the server's releases after deletions). It
// returns when ctx is done, at once when cfg.Disabled or, without
// cfg.Drop, where Drop does nothing. One Run at a time per process
// receives Requests (the last started).
func Run(ctx context.Context, cfg Config, ready <-chan struct{}) {
	if cfg.Disabled || (!supported && cfg.Drop == nil) {
		return
	}
	clk := cfg.Clock
	if clk == nil {
		clk = clock.New()
	}
	after := cfg.After
	if after <= 0 {
		after = DefaultAfter
	}
	cpu := cfg.CPU
	if cpu == nil {
		cpu = ProcessCPU
	}
	drop := cfg.Drop
	if drop == nil {
		drop = func() (Result, error) { return Drop(cfg.Readahead) }
	}
	ch := make(chan struct{}, 1)
	requests.Store(&ch)
	defer requests.CompareAndSwap(&ch, nil)

	unmap := cfg.Unmap
	if unmap == nil {
		unmap = Unmap
	}
	report := func(res Result, err error) {
		if cfg.Report != nil {
			cfg.Report(res, err)
		}
	}
	report(unmap())
	// Until the first drop, unmap again every startUnmapEvery: the
	// start-up work maps back what it runs, each fault with its 64 KiB
	// neighbourhood (the pages are all in the page cache after the
	// initialisation), so that over a long start (an agent's first full
	// sync of a million entries, then its first SVIDs) much of the
	// executable would be resident again at the process's peak. Each
	// unmap costs a read of /proc/self/smaps and, after it, minor faults
	// for the code still running.
	starting := true
	again := func() {
		res, err := unmap()
		res.Again = true
		report(res, err)
	}
	// sleep waits d, unmapping again every startUnmapEvery while
	// starting; it returns false when ctx is done first.
	sleep := func(d time.Duration) bool {
		for {
			step := d
			if starting {
				step = min(d, startUnmapEvery)
			}
			select {
			case <-ctx.Done():
				return false
			case <-clk.After(step):
			}
			if d -= step; d <= 0 {
				return true
			}
			again()
		}
	}
	for waiting := true; waiting; {
		select {
		case <-ctx.Done():
			return
		case <-ready:
			waiting = false
		case <-clk.After(startUnmapEvery):
			again()
		}
	}
	wait := after
	for {
		if !sleep(wait) {
			return
		}
		// Wait until one window passes with little CPU used.
		for {
			before := cpu()
			if !sleep(quietWindow) {
				return
			}
			if cpu()-before <= quietCPU {
				break
			}
		}
		starting = false
		report(drop())
		last := clk.Now()
		select {
		case <-ctx.Done():
			return
		case <-ch:
		}
		wait = max(0, minInterval-clk.Now().Sub(last))
	}
}
