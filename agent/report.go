package agent

import (
	"context"
	"math"
	"slices"
	"strings"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
)

// This file holds the agent's rotation reports (Node.Report): while its
// Sync stream is up, the agent tells the server the state of its own SVID
// and of every workload X.509-SVID it holds, so that the servers can
// alert on SVIDs that are not renewed. A full report goes first on every
// connection and whenever the server answers need_full; then a delta of
// the SVIDs whose state changed (at most one per minReportGap) and, at
// least every report interval, a heartbeat (a delta with nothing in it).
//
// The loop takes a copy of the state under the cache's lock and builds
// and sends the report without it: a slow or absent server never holds
// up minting or the Workload API. A failed report is tried again one
// interval later; a server that does not implement Report (an older
// version) is not asked again on this connection.

// Bounds of the rotation reports.
const (
	// MaxReportSVIDs is the most workload SVIDs one report carries (the
	// server refuses more). An agent holding more reports those with the
	// earliest renewal times, with truncated set.
	MaxReportSVIDs = 20000
	// maxReportError bounds SVIDState.last_error, in bytes.
	maxReportError = 256
	// minReportGap is the least time between two deltas that carry
	// changes.
	minReportGap = 5 * time.Second
	// MinHealthReportInterval and MaxHealthReportInterval bound the
	// heartbeat interval, configured or asked for by the server.
	MinHealthReportInterval = 5 * time.Second
	MaxHealthReportInterval = 10 * time.Minute
	// DefaultHealthReportInterval is Config.HealthReportInterval's
	// default.
	DefaultHealthReportInterval = 30 * time.Second
)

// svidReport is the reported state of one SVID: SVIDState as a
// comparable value, so that the loop can tell what changed.
type svidReport struct {
	entryID     string
	spiffeID    string
	serial      string
	expiresAt   int64
	renewAt     int64
	lastAttempt int64
	lastError   string
	failures    uint32
}

func (r svidReport) proto() *sigilv1.SVIDState {
	return &sigilv1.SVIDState{
		EntryId:     r.entryID,
		SpiffeId:    r.spiffeID,
		Serial:      r.serial,
		ExpiresAt:   r.expiresAt,
		RenewAt:     r.renewAt,
		LastAttempt: r.lastAttempt,
		LastError:   r.lastError,
		Failures:    r.failures,
	}
}

// entryReport is what reportStates copies out of an entry under the
// cache's lock; svidReport is made of it without the lock.
type entryReport struct {
	id, spiffeID string
	sv           *svid // immutable once installed
	lastAttempt  time.Time
	lastError    string
	failStreak   int
}

// reportStates copies the report fields of every entry.
func (s *x509State) reportStates() []entryReport {
	out, _ := s.reportSet(math.MaxInt)
	return out
}

// reportSet copies the report fields of the entries a report of at most
// max entries lists, and counts the entries held. When every entry fits,
// it lists them all. Otherwise it lists only the entries that hold an
// SVID or whose last attempt failed: an entry that holds no SVID and has
// not failed (one no workload asked for, never minted or evicted) is
// counted in held but not listed, so that such entries never crowd the
// SVIDs held out of a truncated report. It costs the warm entries (a
// cold entry is such an entry), and the cold ones only when all are
// listed (at most max).
func (s *x509State) reportSet(max int) (out []entryReport, held int) {
	held = len(s.entries) + s.cold.len()
	all := held <= max
	n := len(s.entries)
	if all {
		n = held
	}
	out = make([]entryReport, 0, n)
	for id, st := range s.entries {
		if !all && st.svid == nil && st.lastError == "" && st.failStreak == 0 {
			continue
		}
		out = append(out, entryReport{
			id:          id,
			spiffeID:    st.entry.GetSpiffeId(),
			sv:          st.svid,
			lastAttempt: st.lastAttempt,
			lastError:   st.lastError,
			failStreak:  st.failStreak,
		})
	}
	if all {
		s.cold.each(func(i uint32) {
			pe := s.cold.packed(i)
			out = append(out, entryReport{id: pe.id, spiffeID: pe.spiffeID})
		})
	}
	return out, held
}

// reportStates returns the reported state of the entries a report of at
// most max entries lists (x509State.reportSet), in no order, and how
// many entries the agent holds. Only the copy is made under the lock.
func (c *cache) reportStates(max int) ([]svidReport, int) {
	c.mu.Lock()
	raw, held := c.st.reportSet(max)
	c.mu.Unlock()
	out := make([]svidReport, len(raw))
	for i, e := range raw {
		r := svidReport{
			entryID:     e.id,
			spiffeID:    e.spiffeID,
			lastAttempt: unixOrZero(e.lastAttempt),
			lastError:   truncateUTF8(e.lastError, maxReportError),
			failures:    uint32(min(e.failStreak, 1<<31)),
		}
		// An SVID minted for another SPIFFE ID (the entry changed) is
		// not served: the entry holds none.
		if sv := e.sv; sv != nil && sv.spiffeID.String() == e.spiffeID {
			r.serial = sv.serialText()
			r.expiresAt = sv.notAfter.Unix()
			r.renewAt = sv.renewAt.Unix()
		}
		out[i] = r
	}
	return out, held
}

// rotationReport is what a report of at most max SVIDs carries: the view
// (reportView of the states reportSet lists), how many entries the agent
// holds, and whether the view leaves some out.
func (c *cache) rotationReport(max int) (view []svidReport, held int, truncated bool) {
	states, held := c.reportStates(max)
	view, _, truncated = reportView(states, max)
	return view, held, truncated || held > len(view)
}

// kickReport wakes the report loop.
func (c *cache) kickReport() {
	select {
	case c.reportKick <- struct{}{}:
	default:
	}
}

// agentAttempt is the last renewal (or re-attestation) of the agent's
// own SVID, for the reports.
type agentAttempt struct {
	at       time.Time
	err      string
	failures int
}

// recordAgentAttempt records an attempt to renew the agent SVID (or to
// attest again) that started at and ended with err, and wakes the report
// loop.
func (a *Agent) recordAgentAttempt(at time.Time, err error) {
	a.mu.Lock()
	a.agentAttempt.at = at
	if err != nil {
		a.agentAttempt.err = err.Error()
		a.agentAttempt.failures++
	} else {
		a.agentAttempt.err = ""
		a.agentAttempt.failures = 0
	}
	a.mu.Unlock()
	a.cache.kickReport()
}

// agentReport is the reported state of the agent's own SVID.
func (a *Agent) agentReport() svidReport {
	a.mu.Lock()
	ident, att := a.ident, a.agentAttempt
	a.mu.Unlock()
	r := svidReport{
		lastAttempt: unixOrZero(att.at),
		lastError:   truncateUTF8(att.err, maxReportError),
		failures:    uint32(min(att.failures, 1<<31)),
	}
	if ident != nil {
		r.spiffeID = ident.id.String()
		r.serial = ident.chain[0].SerialNumber.Text(16)
		r.expiresAt = ident.notAfter.Unix()
		r.renewAt = ident.renewAt.Unix()
	}
	return r
}

func unixOrZero(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.Unix()
}

// truncateUTF8 cuts s to at most n bytes, on a UTF-8 character boundary.
func truncateUTF8(s string, n int) string {
	if len(s) <= n {
		return s
	}
	i := n
	for i > 0 && !utf8.RuneStart(s[i]) {
		i--
	}
	return s[:i]
}

// reportView orders states by renewal time (earliest first; an entry
// with no SVID, renew_at 0, comes first) and entry ID, and keeps the
// first max: the SVIDs the agent reports. held is how many there are in
// all.
func reportView(states []svidReport, max int) (view []svidReport, held int, truncated bool) {
	slices.SortFunc(states, func(a, b svidReport) int {
		if a.renewAt != b.renewAt {
			if a.renewAt < b.renewAt {
				return -1
			}
			return 1
		}
		return strings.Compare(a.entryID, b.entryID)
	})
	held = len(states)
	if held > max {
		return states[:max], held, true
	}
	return states, held, false
}

// reportDelta is what changed between the view the server holds (last)
// and view: the states that are new or differ, in view's order, and the
// entry IDs no longer in view, sorted.
func reportDelta(last map[string]svidReport, view []svidReport) (changed []svidReport, removed []string) {
	in := make(map[string]bool, len(view))
	for _, r := range view {
		in[r.entryID] = true
		if old, ok := last[r.entryID]; !ok || old != r {
			changed = append(changed, r)
		}
	}
	for id := range last {
		if !in[id] {
			removed = append(removed, id)
		}
	}
	slices.Sort(removed)
	return changed, removed
}

// clampReportInterval bounds an interval to
// [MinHealthReportInterval, MaxHealthReportInterval].
func clampReportInterval(d time.Duration) time.Duration {
	return min(max(d, MinHealthReportInterval), MaxHealthReportInterval)
}

// reportSeq numbers the agent's reports across connections.
type reportSeq struct{ n atomic.Uint64 }

func (s *reportSeq) next() uint64 { return s.n.Add(1) }

// reportSession is the report loop's state on one connection.
type reportSession struct {
	a        *Agent
	client   sigilv1.NodeClient
	interval time.Duration
	// needFull: the next report is a full one.
	needFull bool
	// acked is the last report the server acknowledged on this
	// connection; last and lastAgent are the states it holds as of it.
	acked     uint64
	last      map[string]svidReport
	lastAgent svidReport
	// lastSent is when the last report was tried; failed says it failed
	// (the next is tried one interval later).
	lastSent time.Time
	failed   bool
}

// reportLoop sends the rotation reports on client until ctx is done or
// the server does not implement Report.
func (a *Agent) reportLoop(ctx context.Context, client sigilv1.NodeClient) {
	a.reportLoops.Add(1)
	defer a.reportLoops.Add(-1)
	s := &reportSession{a: a, client: client, interval: a.cfg.HealthReportInterval, needFull: true}
	dirty := true
	var (
		timer   <-chan time.Time
		timerAt time.Time
	)
	for {
		now := a.clk.Now()
		send, changesOnly := false, false
		switch {
		case s.needFull && !s.failed:
			send = true
		case !now.Before(s.lastSent.Add(s.interval)):
			send = true
		case dirty && !s.failed && !now.Before(s.lastSent.Add(minReportGap)):
			send, changesOnly = true, true
		}
		if send {
			dirty = false
			if !s.send(ctx, now, changesOnly) {
				return
			}
			if ctx.Err() != nil {
				return
			}
			continue
		}
		wake := s.lastSent.Add(s.interval)
		if dirty && !s.failed {
			wake = s.lastSent.Add(minReportGap)
		}
		if timer == nil || !wake.Equal(timerAt) {
			timer, timerAt = a.clk.After(wake.Sub(now)), wake
		}
		select {
		case <-ctx.Done():
			return
		case <-a.cache.reportKick:
			dirty = true
		case <-timer:
			timer = nil
		}
	}
}

// send builds and sends one report at now: a full one if the server needs
// it, otherwise a delta (with changesOnly, none when nothing changed). It
// reports false when the loop must stop: the server does not implement
// Report.
func (s *reportSession) send(ctx context.Context, now time.Time, changesOnly bool) bool {
	a := s.a
	view, held, truncated := a.cache.rotationReport(MaxReportSVIDs)
	agentSVID := a.agentReport()
	full := s.needFull
	var changed []svidReport
	var removed []string
	if !full {
		changed, removed = reportDelta(s.last, view)
		if changesOnly && len(changed) == 0 && len(removed) == 0 && agentSVID == s.lastAgent {
			return true
		}
	}
	seq := a.reportSeq.next()
	req := &sigilv1.AgentReport{
		Seq:         seq,
		Full:        full,
		AgentSvid:   agentSVID.proto(),
		Held:        uint32(held),
		Truncated:   truncated,
		GeneratedAt: now.Unix(),
	}
	if full {
		changed = view
	} else {
		req.BaseSeq = s.acked
		req.Removed = removed
	}
	req.Svids = make([]*sigilv1.SVIDState, len(changed))
	for i, r := range changed {
		req.Svids[i] = r.proto()
	}
	cctx, cancel := context.WithTimeout(ctx, rpcTimeout)
	resp, err := s.client.Report(cctx, req)
	cancel()
	s.lastSent = now
	if err != nil {
		if ctx.Err() != nil {
			return true
		}
		if status.Code(err) == codes.Unimplemented {
			a.log.Info("server does not take rotation reports; not reporting until the next connection", zap.Error(err))
			return false
		}
		if !s.failed {
			a.log.Warn("rotation report failed; trying again later", zap.Duration("retry_in", s.interval), zap.Error(err))
		}
		s.failed = true
		return true
	}
	s.failed = false
	if secs := resp.GetIntervalSeconds(); secs != 0 {
		s.interval = clampReportInterval(time.Duration(secs) * time.Second)
	}
	if resp.GetNeedFull() {
		// The server did not apply the report: it holds none of this
		// agent's, or not the one base_seq names. A full report it
		// did not take is tried again an interval later.
		s.failed = full
		s.needFull = true
		return true
	}
	s.needFull = false
	s.acked = seq
	s.lastAgent = agentSVID
	if full {
		s.last = make(map[string]svidReport, len(view))
	}
	for _, r := range changed {
		s.last[r.entryID] = r
	}
	for _, id := range removed {
		delete(s.last, id)
	}
	return true
}
