package health

import (
	"sync"
	"time"
)

// Window turns cumulative failure counters, sampled from several
// servers, into the cluster-wide count within a sliding window. A
// server's counters start again at zero when it restarts (a new
// instance); Window counts across that. Memory is bounded by the number
// of servers times the samples within the window (samples closer than
// a tenth of the window are merged).
//
// The first observation of a server is its baseline: failures it counted
// before Window knew it are not counted (they may be days old), except
// for a new instance of a server already known, whose counters began at
// zero when it restarted. The window is (now-d, now]: increments observed
// exactly d ago no longer count. A merged sample counts until its last
// increment slides out, so an increment may count up to d/10 longer,
// never shorter. A Window is safe for concurrent use.
type Window struct {
	d time.Duration

	mu      sync.Mutex
	servers map[string]*serverCounts
}

// serverCounts is what Window keeps of one server.
type serverCounts struct {
	instance string
	last     Failures
	seen     time.Time
	samples  []sample
}

// sample is the increments observed from first to last (at most a tenth
// of the window apart).
type sample struct {
	first, last time.Time
	inc         Failures
}

// NewWindow returns a Window of length d.
func NewWindow(d time.Duration) *Window {
	return &Window{d: d, servers: map[string]*serverCounts{}}
}

// Observe records server's cumulative counters f of process instance at
// now.
func (w *Window) Observe(now time.Time, server, instance string, f Failures) {
	w.mu.Lock()
	defer w.mu.Unlock()
	sc, ok := w.servers[server]
	if !ok {
		w.servers[server] = &serverCounts{instance: instance, last: f, seen: now}
		w.pruneLocked(now)
		return
	}
	var inc Failures
	if sc.instance != instance {
		// Restarted: its counters began again at zero.
		inc = f
	} else {
		inc = Failures{Attestation: since(sc.last.Attestation, f.Attestation), Signing: since(sc.last.Signing, f.Signing)}
	}
	sc.instance, sc.last, sc.seen = instance, f, now
	if inc != (Failures{}) {
		n := len(sc.samples)
		if n > 0 && now.Sub(sc.samples[n-1].first) < w.d/10 && !now.Before(sc.samples[n-1].last) {
			s := &sc.samples[n-1]
			s.last = now
			s.inc.Attestation += inc.Attestation
			s.inc.Signing += inc.Signing
		} else {
			sc.samples = append(sc.samples, sample{first: now, last: now, inc: inc})
		}
	}
	w.pruneLocked(now)
}

// since is the increment from a to b of a counter of one instance (b < a
// cannot happen unless the counter was reset: then b counts whole).
func since(a, b uint64) uint64 {
	if b < a {
		return b
	}
	return b - a
}

// Count returns the failures counted within the window ending at now,
// summed over servers.
func (w *Window) Count(now time.Time) Failures {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.pruneLocked(now)
	var total Failures
	for _, sc := range w.servers {
		for _, s := range sc.samples {
			if s.last.After(now) {
				continue
			}
			total.Attestation += s.inc.Attestation
			total.Signing += s.inc.Signing
		}
	}
	return total
}

// pruneLocked drops the samples that slid out of the window ending at
// now, and forgets servers not observed within it that have none left.
func (w *Window) pruneLocked(now time.Time) {
	for name, sc := range w.servers {
		keep := sc.samples[:0]
		for _, s := range sc.samples {
			if now.Sub(s.last) < w.d {
				keep = append(keep, s)
			}
		}
		clear(sc.samples[len(keep):])
		sc.samples = keep
		if len(keep) == 0 && now.Sub(sc.seen) >= w.d {
			delete(w.servers, name)
		}
	}
}
