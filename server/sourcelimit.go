package server

import (
	"net"
	"time"

	"golang.org/x/time/rate"

	"github.com/sigil-id/sigil/internal/sourcelimit"
)

// sourceKey is the rate-limit key of a peer address, for the join limits
// and the node API limits alike (sourcelimit.Key).
func sourceKey(addr net.Addr) string { return sourcelimit.Key(addr) }

// newBucket returns a full token bucket (sourcelimit.NewBucket).
func newBucket(r float64, burst int) *rate.Limiter { return sourcelimit.NewBucket(r, burst) }

// bucketFull reports whether b is full at now (sourcelimit.BucketFull).
func bucketFull(b *rate.Limiter, now time.Time) bool { return sourcelimit.BucketFull(b, now) }

// sourceState is the state a limiter keeps of one source address (a
// pointer).
type sourceState interface {
	comparable
	// idle reports whether dropping the state at now changes nothing
	// (its buckets are full, nothing refers to it).
	idle(now time.Time) bool
}

// sourceTable holds the state of each source address, keyed by sourceKey,
// with a bound on the number of sources: when it is full, the idle states
// are dropped to make room. It is not safe for concurrent use; its owner
// holds a lock.
type sourceTable[T sourceState] struct {
	m     map[string]T
	max   int
	fresh func() T
	// sweepGap is the least time between two sweeps of a full table, so
	// that a flood of new sources does not make every one of them scan it
	// (0: sweep whenever a new source finds it full).
	sweepGap  time.Duration
	lastSweep time.Time
}

func newSourceTable[T sourceState](max int, sweepGap time.Duration, fresh func() T) sourceTable[T] {
	return sourceTable[T]{m: make(map[string]T), max: max, fresh: fresh, sweepGap: sweepGap}
}

// get returns the state of key, if it is tracked.
func (t *sourceTable[T]) get(key string) (T, bool) {
	s, ok := t.m[key]
	return s, ok
}

// add returns the state of key, creating a fresh one if there is room;
// ok is false when the table is full of sources that are not idle.
func (t *sourceTable[T]) add(key string, now time.Time) (s T, ok bool) {
	if s, ok := t.m[key]; ok {
		return s, true
	}
	if len(t.m) >= t.max {
		if now.Sub(t.lastSweep) >= t.sweepGap || now.Before(t.lastSweep) {
			t.lastSweep = now
			for k, s := range t.m {
				if s.idle(now) {
					delete(t.m, k)
				}
			}
		}
		if len(t.m) >= t.max {
			return s, false
		}
	}
	s = t.fresh()
	t.m[key] = s
	return s, true
}

// forget drops the state of key if it is still s and idle.
func (t *sourceTable[T]) forget(key string, s T, now time.Time) {
	if cur, ok := t.m[key]; ok && cur == s && s.idle(now) {
		delete(t.m, key)
	}
}
