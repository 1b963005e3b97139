package server

import (
	"net"
	"net/netip"
	"time"

	"golang.org/x/time/rate"
)

// sourceKey is the rate-limit key of a peer address, for the join limits
// and the node API limits alike: the IP address, or its /64 for IPv6 (one
// host commonly holds a whole /64).
func sourceKey(addr net.Addr) string {
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

// newBucket returns a full token bucket of burst tokens that refills at r
// tokens per second. Its callers drive it with their (injectable) clock:
// AllowN, ReserveN and TokensAt with an explicit time.
func newBucket(r float64, burst int) *rate.Limiter {
	return rate.NewLimiter(rate.Limit(r), burst)
}

// bucketFull reports whether b is full at now, so that replacing it with a
// new bucket changes nothing.
func bucketFull(b *rate.Limiter, now time.Time) bool {
	return b.TokensAt(now) >= float64(b.Burst())
}

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
