package health

import "time"

// Window turns cumulative failure counters, sampled from several
// servers, into the cluster-wide count within a sliding window. A
// server's counters start again at zero when it restarts (a new
// instance); Window counts across that. Memory is bounded by the number
// of servers times the samples within the window (samples closer than
// a tenth of the window are merged).
type Window struct {
	d time.Duration
}

// NewWindow returns a Window of length d.
func NewWindow(d time.Duration) *Window { return &Window{d: d} }

// Observe records server's cumulative counters f of process instance at
// now.
func (w *Window) Observe(now time.Time, server, instance string, f Failures) {
	panic("health: Window not implemented yet")
}

// Count returns the failures counted within the window ending at now,
// summed over servers.
func (w *Window) Count(now time.Time) Failures {
	panic("health: Window not implemented yet")
}
