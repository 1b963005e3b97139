package raftstore

import (
	"time"

	"github.com/sigil-id/sigil/clock"
)

// Dropping the entry change feed once it is quiet. The feed exists so that
// a sync stream woken by a change can send a delta instead of recomputing
// what its agent holds; streams read it within milliseconds of a change.
// Kept forever, its records (up to DefaultEntryFeedSize, each holding the
// SPIFFE and parent IDs of an entry, several MiB after a large batch)
// would keep the memory of deleted entries alive. Once no entry change has
// been recorded for feedQuiet, the feed drops every record (its base moves
// to the last recorded index): a stream still behind that index gets false
// from EntryChangesSince and recomputes, exactly as when more changes than
// the feed's size happened since it last read.
const (
	// feedQuiet is how long the feed keeps its records after the last
	// entry change.
	feedQuiet = 30 * time.Second
	// feedReleaseAfter is how many records of entry deletions a drop must
	// free before it asks for the memory to be returned (memRelease):
	// records of creations and updates name entries that are still held.
	feedReleaseAfter = 1024
)

// EntryFeedQuiet is how long after the last entry change the entry change
// feed drops its records. Its records of deletions share the memory of
// the deleted entries, so a server returns that memory only after this
// (and a collection): a tool measuring the memory deletions return waits
// this long first.
const EntryFeedQuiet = feedQuiet

// feedTrim schedules the quiet-time drop of an entryFeed. Its fields are
// guarded by the feed's mutex; the zero value uses feedQuiet and the wall
// clock.
type feedTrim struct {
	quiet time.Duration // 0 means feedQuiet
	clock clock.Clock   // nil means the wall clock
	// dropped is called (outside the lock) after a drop of n records, of
	// which deletions were entry deletions; it may be nil.
	dropped func(n, deletions int)

	lastPush  time.Time
	scheduled bool
}

func (t *feedTrim) quietFor() time.Duration {
	if t.quiet <= 0 {
		return feedQuiet
	}
	return t.quiet
}

func (t *feedTrim) clk() clock.Clock {
	if t.clock == nil {
		return clock.New()
	}
	return t.clock
}

// pushed notes that records were just recorded and makes sure a drop is
// scheduled. The caller holds q.mu.
func (q *entryFeed) pushed() {
	t := &q.trim
	t.lastPush = t.clk().Now()
	if !t.scheduled {
		t.scheduled = true
		q.scheduleTrim(t.quietFor())
	}
}

// scheduleTrim runs trimIfQuiet after d on the feed's clock.
func (q *entryFeed) scheduleTrim(d time.Duration) {
	ch := q.trim.clk().After(d)
	go func() {
		<-ch
		q.trimIfQuiet()
	}()
}

// trimIfQuiet drops every record when none was recorded for the quiet
// time, or schedules itself again for when that will be the case.
func (q *entryFeed) trimIfQuiet() {
	q.mu.Lock()
	t := &q.trim
	if len(q.recs) == 0 {
		t.scheduled = false
		q.mu.Unlock()
		return
	}
	if wait := t.quietFor() - t.clk().Now().Sub(t.lastPush); wait > 0 {
		q.scheduleTrim(wait)
		q.mu.Unlock()
		return
	}
	t.scheduled = false
	n, deletions := len(q.recs), 0
	for _, c := range q.recs {
		if !c.After.Exists {
			deletions++
		}
	}
	// Every record's index is at most last: nothing above it is missing.
	q.base = max(q.base, q.last)
	q.recs, q.head = nil, 0
	dropped := t.dropped
	q.mu.Unlock()
	if dropped != nil {
		dropped(n, deletions)
	}
}
