package workloadapi

import (
	"sync"
	"time"

	"github.com/sigil-id/sigil/clock"
)

// Log rate limits for callers refused an identity: a client that retries
// in a loop, or forks one process after another, must not flood the log.
const (
	// denialLogWindow is the period over which the limits apply.
	denialLogWindow = time.Minute
	// denialLogsPerUID is how many lines one uid may cause per window.
	denialLogsPerUID = 5
	// denialLogKeys caps the (uid, pid) pairs remembered per window.
	denialLogKeys = 4096
)

// logLimiter decides which refusals are logged: each pid once per window,
// at most denialLogsPerUID lines per uid per window. It is safe for
// concurrent use and its memory is bounded.
type logLimiter struct {
	clk clock.Clock

	mu         sync.Mutex
	windowEnd  time.Time
	pids       map[pidKey]struct{}
	perUID     map[uint32]int
	suppressed map[uint32]int
}

type pidKey struct {
	uid uint32
	pid int32
}

func newLogLimiter(clk clock.Clock) *logLimiter {
	return &logLimiter{clk: clk}
}

// allow reports whether a refusal of (uid, pid) is to be logged now and,
// if so, how many refusals of that uid went unlogged since its last line.
func (l *logLimiter) allow(uid uint32, pid int32) (ok bool, suppressed int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if now := l.clk.Now(); !now.Before(l.windowEnd) {
		l.windowEnd = now.Add(denialLogWindow)
		l.pids = make(map[pidKey]struct{})
		l.perUID = make(map[uint32]int)
		// The counts of suppressed lines carry over to the next line of
		// their uid, but not without bound.
		if len(l.suppressed) > denialLogKeys {
			l.suppressed = nil
		}
	}
	if l.suppressed == nil {
		l.suppressed = make(map[uint32]int)
	}
	k := pidKey{uid, pid}
	_, seen := l.pids[k]
	if seen || l.perUID[uid] >= denialLogsPerUID || len(l.pids) >= denialLogKeys {
		l.suppressed[uid]++
		return false, 0
	}
	l.pids[k] = struct{}{}
	l.perUID[uid]++
	suppressed = l.suppressed[uid]
	delete(l.suppressed, uid)
	return true, suppressed
}
