// Package sourcelimit holds the pieces of per-source rate limiting that
// the server's network-facing limiters share: the key of a peer address,
// token buckets driven by an injectable clock, and a bounded table of
// per-source state.
package sourcelimit

import (
	"net"
	"net/netip"
	"time"

	"golang.org/x/time/rate"
)

// Key is the rate-limit key of a peer address: the IP address, or its /64
// for IPv6 (one host commonly holds a whole /64). An address that does
// not parse is its own key; nil is "".
func Key(addr net.Addr) string {
	var s string
	if addr != nil {
		s = addr.String()
	}
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		if host, _, err := net.SplitHostPort(s); err == nil {
			return host
		}
		return s
	}
	ip := ap.Addr().Unmap()
	if ip.Is6() {
		p, _ := ip.Prefix(64)
		return p.String()
	}
	return ip.String()
}

// NewBucket returns a full token bucket of burst tokens that refills at r
// tokens per second. Its callers drive it with their (injectable) clock:
// AllowN, ReserveN and TokensAt with an explicit time.
func NewBucket(r float64, burst int) *rate.Limiter {
	return rate.NewLimiter(rate.Limit(r), burst)
}

// BucketFull reports whether b is full at now, so that replacing it with a
// new bucket changes nothing.
func BucketFull(b *rate.Limiter, now time.Time) bool {
	return b.TokensAt(now) >= float64(b.Burst())
}

// State is the state a limiter keeps of one source address (a pointer).
type State interface {
	comparable
	// Idle reports whether dropping the state at now changes nothing
	// (its buckets are full, nothing refers to it).
	Idle(now time.Time) bool
}

// Table holds the state of each source address, keyed by Key, with a
// bound on the number of sources: when it is full, the idle states are
// dropped to make room. It is not safe for concurrent use; its owner
// holds a lock.
type Table[T State] struct {
	m     map[string]T
	max   int
	fresh func() T
	// sweepGap is the least time between two sweeps of a full table, so
	// that a flood of new sources does not make every one of them scan it
	// (0: sweep whenever a new source finds it full).
	sweepGap  time.Duration
	lastSweep time.Time
}

// NewTable returns a table of at most max sources whose new states come
// from fresh.
func NewTable[T State](max int, sweepGap time.Duration, fresh func() T) Table[T] {
	return Table[T]{m: make(map[string]T), max: max, fresh: fresh, sweepGap: sweepGap}
}

// Len is the number of sources tracked.
func (t *Table[T]) Len() int { return len(t.m) }

// Get returns the state of key, if it is tracked.
func (t *Table[T]) Get(key string) (T, bool) {
	s, ok := t.m[key]
	return s, ok
}

// Add returns the state of key, creating a fresh one if there is room;
// ok is false when the table is full of sources that are not idle.
func (t *Table[T]) Add(key string, now time.Time) (s T, ok bool) {
	if s, ok := t.m[key]; ok {
		return s, true
	}
	if len(t.m) >= t.max {
		if now.Sub(t.lastSweep) >= t.sweepGap || now.Before(t.lastSweep) {
			t.lastSweep = now
			for k, s := range t.m {
				if s.Idle(now) {
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

// Forget drops the state of key if it is still s and idle at now.
func (t *Table[T]) Forget(key string, s T, now time.Time) {
	if cur, ok := t.m[key]; ok && cur == s && s.Idle(now) {
		delete(t.m, key)
	}
}

// Clear drops every state, as if no source had been seen.
func (t *Table[T]) Clear() { clear(t.m) }
