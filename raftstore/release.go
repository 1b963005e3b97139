package raftstore

import (
	"runtime/debug"
	"sync/atomic"
	"time"

	"github.com/sigil-id/sigil/internal/exepages"
)

// Returning memory after large deletions. Go's runtime gives freed heap
// back to the operating system slowly, and only above its next heap goal,
// which was set when the deleted entries were live: a server that drops
// most of its entries keeps most of its resident memory for minutes. After
// enough entries are deleted, the FSM asks the runtime once to return
// what is free (debug.FreeOSMemory), off the apply path; and again when
// the entry change feed, quiet since, drops the records that still named
// the deleted entries (feedtrim.go). Each release also drops the pages of
// the Raft log file the process has mapped (logstore.go), and asks for
// the executable's unused pages to be dropped (internal/exepages).
const (
	// releaseAfterDeleted is how many entries must be deleted since the
	// last release before another one runs.
	releaseAfterDeleted = 4096
	// releaseSettle is the wait after the deletion that crosses the
	// threshold, so that a batch split over several commands has been
	// applied whole when the memory is returned.
	releaseSettle = 2 * time.Second
	// releaseMinInterval bounds how often memory is returned: a release
	// costs a full garbage collection.
	releaseMinInterval = 30 * time.Second
)

// memRelease counts deleted entries and returns free memory to the
// operating system after large deletions. Its zero value does nothing.
type memRelease struct {
	// free returns the memory; nil disables releases.
	free func()
	// dropLog, when set, runs after free: it drops the Raft log's mapped
	// pages (logStore.dropMapped). It is set before the FSM applies
	// anything.
	dropLog   func()
	threshold int64
	// feedThreshold is the fewest feed records of deletions dropped at
	// once that schedule a release (0 means feedReleaseAfter).
	feedThreshold int
	settle        time.Duration
	minInterval   time.Duration

	deleted   atomic.Int64
	scheduled atomic.Bool
	last      atomic.Int64 // unix nanoseconds of the last release
}

func newMemRelease() *memRelease {
	return &memRelease{free: debug.FreeOSMemory, threshold: releaseAfterDeleted, settle: releaseSettle, minInterval: releaseMinInterval}
}

// entriesDeleted records n entries deleted by one applied command and
// schedules a release when the threshold is crossed. It never blocks.
func (m *memRelease) entriesDeleted(n int) {
	if m == nil || m.free == nil || n <= 0 {
		return
	}
	if m.deleted.Add(int64(n)) < m.threshold {
		return
	}
	m.schedule()
}

// feedDropped records that the entry change feed dropped, once quiet
// (feedtrim.go), n records of entry deletions, which held the last
// references to the deleted entries' IDs, and returns free memory after
// the settle time when they were at least feedThreshold (0 means
// feedReleaseAfter). Such a release does
// not wait for minInterval: the feed drops its records at most once per
// feedQuiet, and what is left to collect then is small. It never blocks.
func (m *memRelease) feedDropped(n int) {
	if m == nil || m.free == nil {
		return
	}
	threshold := m.feedThreshold
	if threshold <= 0 {
		threshold = feedReleaseAfter
	}
	if n < threshold {
		return
	}
	time.AfterFunc(m.settle, m.release)
}

// schedule runs one release after the settle time (and not within
// minInterval of the last one), unless one is already scheduled.
func (m *memRelease) schedule() {
	if !m.scheduled.CompareAndSwap(false, true) {
		return // one is scheduled; it counts these too
	}
	wait := m.settle
	if last := m.last.Load(); last != 0 {
		wait = max(wait, time.Until(time.Unix(0, last).Add(m.minInterval)))
	}
	time.AfterFunc(wait, func() {
		m.release()
		m.scheduled.Store(false)
	})
}

// release returns free memory to the operating system now.
func (m *memRelease) release() {
	m.deleted.Store(0)
	m.free()
	if m.dropLog != nil {
		m.dropLog()
	}
	// Creating and deleting entries ran code the idle server does not
	// run again: ask for its pages to be dropped once quiet (a daemon
	// run from the command line only; internal/exepages).
	exepages.Request()
	m.last.Store(time.Now().UnixNano())
}
