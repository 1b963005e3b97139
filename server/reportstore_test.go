package server

import (
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/health"
)

var rsNow = time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)

func rsSVID(entry string, renew int64) *sigilv1.SVIDState {
	return &sigilv1.SVIDState{EntryId: entry, SpiffeId: "spiffe://example.org/" + entry, Serial: "0a" + entry,
		ExpiresAt: renew + 1800, RenewAt: renew, LastAttempt: renew}
}

func rsFull(seq uint64, svids ...*sigilv1.SVIDState) *sigilv1.AgentReport {
	return &sigilv1.AgentReport{Seq: seq, Full: true, Svids: svids, Held: uint32(len(svids)),
		AgentSvid: &sigilv1.SVIDState{SpiffeId: "spiffe://example.org/sigil/agent/x", Serial: "ff", ExpiresAt: 5000, RenewAt: 4000}}
}

func rsDelta(seq, base uint64, held uint32, svids []*sigilv1.SVIDState, removed ...string) *sigilv1.AgentReport {
	return &sigilv1.AgentReport{Seq: seq, BaseSeq: base, Svids: svids, Removed: removed, Held: held}
}

// rsHeld is the report held for agent (fails the test if none).
func rsHeld(t *testing.T, st *reportStore, agent string) health.AgentReport {
	t.Helper()
	for _, r := range st.healthReports("s1") {
		if r.AgentID == agent {
			return r
		}
	}
	t.Fatalf("no report held for %s", agent)
	return health.AgentReport{}
}

func rsEntries(r health.AgentReport) string {
	var out []string
	for _, v := range r.SVIDs {
		out = append(out, fmt.Sprintf("%s@%d", v.EntryID, v.RenewAt.Unix()))
	}
	return strings.Join(out, ",")
}

// rsCheckBytes recomputes the store's size accounting.
func rsCheckBytes(t testing.TB, st *reportStore) {
	t.Helper()
	st.mu.Lock()
	defer st.mu.Unlock()
	var total int64
	for id, h := range st.agents {
		size := int64(reportBase) + h.agent.bytes()
		for _, v := range h.svids {
			size += v.bytes()
		}
		if size != h.bytes {
			t.Fatalf("%s: %d bytes counted, %d held", id, h.bytes, size)
		}
		total += size
	}
	if total != st.bytes {
		t.Fatalf("store: %d bytes counted, %d held", st.bytes, total)
	}
}

func mustApply(t *testing.T, st *reportStore, agent string, r *sigilv1.AgentReport, now time.Time) bool {
	t.Helper()
	needFull, err := st.apply(agent, r, now)
	if err != nil {
		t.Fatalf("apply seq %d: %v", r.Seq, err)
	}
	rsCheckBytes(t, st)
	return needFull
}

// TestReportStoreFullAndDeltas: a full report is held as sent (SVIDs by
// renewal time); a delta on it updates, adds and removes SVIDs; a delta
// whose base is not the report held, or for an agent with none, changes
// nothing and asks for a full report; a new full report replaces all.
func TestReportStoreFullAndDeltas(t *testing.T) {
	st := newReportStore(testReportLimits())
	a := "spiffe://example.org/sigil/agent/a"
	if mustApply(t, st, a, rsDelta(2, 1, 0, nil), rsNow) != true {
		t.Fatal("a delta with no report held: need_full not asked")
	}
	if st.len() != 0 {
		t.Fatal("a delta with no base was kept")
	}
	if mustApply(t, st, a, rsFull(1, rsSVID("e2", 200), rsSVID("e1", 100)), rsNow) {
		t.Fatal("full report answered need_full")
	}
	r := rsHeld(t, st, a)
	if got := rsEntries(r); got != "e1@100,e2@200" || r.Held != 2 || r.AgentSVID.Serial != "ff" || !r.ReceivedAt.Equal(rsNow) || r.Server != "s1" {
		t.Fatalf("held after full: %s %+v", got, r)
	}
	later := rsNow.Add(time.Minute)
	if mustApply(t, st, a, rsDelta(2, 1, 2, []*sigilv1.SVIDState{rsSVID("e2", 50), rsSVID("e3", 300)}, "e1"), later) {
		t.Fatal("delta on the held report answered need_full")
	}
	r = rsHeld(t, st, a)
	if got := rsEntries(r); got != "e2@50,e3@300" || !r.ReceivedAt.Equal(later) || r.AgentSVID.Serial != "ff" {
		t.Fatalf("held after delta: %s %+v", got, r)
	}
	// A delta on seq 1 (no longer held): need_full, nothing changes.
	if !mustApply(t, st, a, rsDelta(3, 1, 0, nil, "e2", "e3"), later.Add(time.Minute)) {
		t.Fatal("delta with a stale base: need_full not asked")
	}
	if r2 := rsHeld(t, st, a); rsEntries(r2) != "e2@50,e3@300" || !r2.ReceivedAt.Equal(later) {
		t.Fatalf("a delta with a stale base changed the report: %s", rsEntries(r2))
	}
	// A restarted agent starts again at seq 1 with a full report.
	mustApply(t, st, a, rsFull(1, rsSVID("e9", 900)), later.Add(2*time.Minute))
	if got := rsEntries(rsHeld(t, st, a)); got != "e9@900" {
		t.Fatalf("held after a second full report: %s", got)
	}
	// The agent's own SVID comes with a delta only when it changed.
	own := &sigilv1.SVIDState{SpiffeId: "spiffe://example.org/sigil/agent/a", Serial: "ee", ExpiresAt: 9000, RenewAt: 8000, LastError: "boom", Failures: 2}
	d := rsDelta(2, 1, 1, nil)
	d.AgentSvid = own
	mustApply(t, st, a, d, later.Add(3*time.Minute))
	if r := rsHeld(t, st, a); r.AgentSVID.Serial != "ee" || r.AgentSVID.LastError != "boom" || r.AgentSVID.Failures != 2 || r.AgentSVID.EntryID != "" {
		t.Fatalf("agent SVID after delta: %+v", r.AgentSVID)
	}
}

// TestReportStoreHeartbeatKeepsGeneration: an empty delta refreshes the
// time of receipt but not the content generation, so an incremental list
// sends the agent without its report; a change of content does.
func TestReportStoreHeartbeatKeepsGeneration(t *testing.T) {
	st := newReportStore(testReportLimits())
	a, b := "spiffe://example.org/sigil/agent/a", "spiffe://example.org/sigil/agent/b"
	mustApply(t, st, a, rsFull(1, rsSVID("e1", 100)), rsNow)
	mustApply(t, st, b, rsFull(1, rsSVID("e2", 100)), rsNow)
	first := st.list(0)
	if len(first.Reports) != 2 || first.Reports[0].Report == nil || first.Reports[1].Report == nil {
		t.Fatalf("first list: %v", first)
	}
	hb := rsNow.Add(30 * time.Second)
	mustApply(t, st, a, rsDelta(2, 1, 1, nil), hb)
	// A full report with the same content is not a change either.
	mustApply(t, st, b, rsFull(7, rsSVID("e2", 100)), hb)
	second := st.list(first.Generation)
	if second.Generation != first.Generation {
		t.Fatalf("heartbeats changed the generation: %d → %d", first.Generation, second.Generation)
	}
	for _, hr := range second.Reports {
		if hr.Report != nil {
			t.Fatalf("%s: content sent again after a heartbeat", hr.AgentId)
		}
		if hr.ReceivedAt != hb.Unix() {
			t.Fatalf("%s: received_at %d, want the heartbeat's %d", hr.AgentId, hr.ReceivedAt, hb.Unix())
		}
	}
	mustApply(t, st, a, rsDelta(3, 2, 1, []*sigilv1.SVIDState{rsSVID("e1", 160)}), hb.Add(time.Second))
	third := st.list(second.Generation)
	if third.Generation <= second.Generation {
		t.Fatalf("a change of content did not advance the generation")
	}
	for _, hr := range third.Reports {
		if (hr.AgentId == a) != (hr.Report != nil) {
			t.Fatalf("%s: report sent %v after a change of a only", hr.AgentId, hr.Report != nil)
		}
	}
	// A since this store never gave (0, another process's) gets everything.
	for _, since := range []uint64{0, st.base - 1, third.Generation + 1} {
		for _, hr := range st.list(since).Reports {
			if hr.Report == nil {
				t.Fatalf("since %d: %s sent without its report", since, hr.AgentId)
			}
		}
	}
}

// TestReportStoreAnswerBudget: changed reports past AnswerBytes are left
// for the next call, oldest changes first; following the generations
// gets every report, and at least one is sent per call.
func TestReportStoreAnswerBudget(t *testing.T) {
	lim := testReportLimits()
	lim.AnswerBytes = 1 // every answer carries one report
	st := newReportStore(lim)
	for i := range 3 {
		mustApply(t, st, fmt.Sprintf("spiffe://example.org/sigil/agent/%d", i), rsFull(1, rsSVID("e", 1)), rsNow)
	}
	got := map[string]bool{}
	since := uint64(0)
	for call := 1; call <= 3; call++ {
		resp := st.list(since)
		n := 0
		for _, hr := range resp.Reports {
			if hr.Report != nil {
				n++
				got[hr.AgentId] = true
			}
		}
		if n != 1 || len(resp.Reports) != 3 {
			t.Fatalf("call %d: %d reports with content of %d listed, want 1 of 3", call, n, len(resp.Reports))
		}
		since = resp.Generation
	}
	if len(got) != 3 || st.list(since).Reports[0].Report != nil {
		t.Fatalf("after three calls: %v", got)
	}
}

// TestReportStoreRefusesBadInput: each bound of the contract is enforced
// with InvalidArgument and the held report stays as it was.
func TestReportStoreRefusesBadInput(t *testing.T) {
	long := func(n int) string { return strings.Repeat("x", n) }
	many := func(n int) []*sigilv1.SVIDState {
		out := make([]*sigilv1.SVIDState, n)
		for i := range out {
			out[i] = &sigilv1.SVIDState{EntryId: fmt.Sprint(i)}
		}
		return out
	}
	manyIDs := make([]string, MaxReportRemoved+1)
	for i := range manyIDs {
		manyIDs[i] = fmt.Sprint(i)
	}
	withSVID := func(v *sigilv1.SVIDState) *sigilv1.AgentReport { return rsFull(5, v) }
	cases := map[string]*sigilv1.AgentReport{
		"nil":                   nil,
		"seq 0":                 rsFull(0),
		"full with a base":      {Seq: 5, Full: true, BaseSeq: 1},
		"full with removals":    {Seq: 5, Full: true, Removed: []string{"e"}},
		"delta not after base":  rsDelta(1, 1, 0, nil),
		"too many svids":        {Seq: 5, Full: true, Svids: many(MaxReportSVIDs + 1)},
		"too many removed":      {Seq: 5, BaseSeq: 1, Removed: manyIDs},
		"spiffe_id too long":    withSVID(&sigilv1.SVIDState{EntryId: "e", SpiffeId: long(maxReportSPIFFEID + 1)}),
		"entry_id too long":     withSVID(&sigilv1.SVIDState{EntryId: long(maxReportEntryID + 1)}),
		"serial too long":       withSVID(&sigilv1.SVIDState{EntryId: "e", Serial: long(maxReportSerial + 1)}),
		"last_error too long":   withSVID(&sigilv1.SVIDState{EntryId: "e", LastError: long(maxReportError + 1)}),
		"negative time":         withSVID(&sigilv1.SVIDState{EntryId: "e", ExpiresAt: -1}),
		"svid without entry":    withSVID(&sigilv1.SVIDState{SpiffeId: "spiffe://example.org/w"}),
		"nil svid":              {Seq: 5, Full: true, Svids: []*sigilv1.SVIDState{nil}},
		"entry twice":           rsFull(5, rsSVID("e", 1), rsSVID("e", 2)),
		"removed and updated":   rsDelta(5, 1, 0, []*sigilv1.SVIDState{rsSVID("e1", 1)}, "e1"),
		"empty removed":         rsDelta(5, 1, 0, nil, ""),
		"removed too long":      rsDelta(5, 1, 0, nil, long(maxReportEntryID+1)),
		"agent svid with entry": {Seq: 5, Full: true, AgentSvid: &sigilv1.SVIDState{EntryId: "e"}},
		"agent svid too long":   {Seq: 5, Full: true, AgentSvid: &sigilv1.SVIDState{SpiffeId: long(maxReportSPIFFEID + 1)}},
	}
	a := "spiffe://example.org/sigil/agent/a"
	for name, r := range cases {
		t.Run(name, func(t *testing.T) {
			st := newReportStore(testReportLimits())
			mustApply(t, st, a, rsFull(1, rsSVID("e1", 100)), rsNow)
			before := st.list(0)
			_, err := st.apply(a, r, rsNow.Add(time.Minute))
			if status.Code(err) != codes.InvalidArgument || !strings.HasPrefix(status.Convert(err).Message(), "report: ") {
				t.Fatalf("got %v, want InvalidArgument", err)
			}
			after := st.list(0)
			if after.Generation != before.Generation || after.Reports[0].ReceivedAt != before.Reports[0].ReceivedAt || rsEntries(rsHeld(t, st, a)) != "e1@100" {
				t.Fatal("a refused report changed the store")
			}
		})
	}
}

// TestReportStoreLimits: a report that would take the store past its
// agent, SVID or byte limits is refused with ResourceExhausted, and
// nothing changes; agents already held keep reporting; at the agent
// limit, reports aged out are dropped to make room.
func TestReportStoreLimits(t *testing.T) {
	lim := testReportLimits()
	lim.MaxAgents = 2
	lim.MaxAgentSVIDs = 3
	st := newReportStore(lim)
	a, b, c := "spiffe://example.org/sigil/agent/a", "spiffe://example.org/sigil/agent/b", "spiffe://example.org/sigil/agent/c"
	mustApply(t, st, a, rsFull(1, rsSVID("e1", 1), rsSVID("e2", 2)), rsNow)
	mustApply(t, st, b, rsFull(1), rsNow)
	if _, err := st.apply(c, rsFull(1), rsNow); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("a third agent: %v, want ResourceExhausted", err)
	}
	if st.len() != 2 {
		t.Fatal("the refused agent was kept")
	}
	// Deltas that would hold 4 SVIDs are refused; one that holds 3 is not.
	if _, err := st.apply(a, rsDelta(2, 1, 4, []*sigilv1.SVIDState{rsSVID("e3", 3), rsSVID("e4", 4)}), rsNow); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("delta past the SVID limit: %v", err)
	}
	if _, err := st.apply(a, rsFull(2, rsSVID("e1", 1), rsSVID("e2", 2), rsSVID("e3", 3), rsSVID("e4", 4)), rsNow); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("full report past the SVID limit: %v", err)
	}
	rsCheckBytes(t, st)
	if got := rsEntries(rsHeld(t, st, a)); got != "e1@1,e2@2" {
		t.Fatalf("refused reports changed a's: %s", got)
	}
	mustApply(t, st, a, rsDelta(2, 1, 3, []*sigilv1.SVIDState{rsSVID("e3", 3), rsSVID("e4", 4)}, "e1"), rsNow)
	if got := rsEntries(rsHeld(t, st, a)); got != "e2@2,e3@3,e4@4" {
		t.Fatalf("after a delta within the limit: %s", got)
	}
	// The byte limits: per agent, then in all.
	st.lim.MaxAgentBytes = st.agents[a].bytes
	big := rsDelta(3, 2, 3, []*sigilv1.SVIDState{{EntryId: "e2", SpiffeId: strings.Repeat("x", 100)}})
	if _, err := st.apply(a, big, rsNow); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("past the agent's byte limit: %v", err)
	}
	st.lim.MaxAgentBytes, st.lim.MaxBytes = 1<<20, st.bytes
	if _, err := st.apply(a, big, rsNow); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("past the store's byte limit: %v", err)
	}
	rsCheckBytes(t, st)
	if got := rsEntries(rsHeld(t, st, a)); got != "e2@2,e3@3,e4@4" {
		t.Fatalf("refused reports changed a's: %s", got)
	}
	// At the agent limit, reports aged out make room for a new agent.
	st.lim.MaxBytes = 1 << 20
	mustApply(t, st, c, rsFull(1), rsNow.Add(24*time.Hour+time.Second))
	if st.len() != 1 {
		t.Fatalf("%d reports held, want c's only", st.len())
	}
}

// TestReportStoreEvict: reports not refreshed within MaxAge, and those of
// agents the store says are gone or banned, are dropped; the memory
// accounting follows.
func TestReportStoreEvict(t *testing.T) {
	st := newReportStore(testReportLimits())
	old, fresh, banned := "spiffe://example.org/sigil/agent/old", "spiffe://example.org/sigil/agent/fresh", "spiffe://example.org/sigil/agent/banned"
	mustApply(t, st, old, rsFull(1, rsSVID("e", 1)), rsNow)
	mustApply(t, st, fresh, rsFull(1, rsSVID("e", 1)), rsNow)
	mustApply(t, st, banned, rsFull(1, rsSVID("e", 1)), rsNow)
	later := rsNow.Add(24*time.Hour + time.Second)
	mustApply(t, st, fresh, rsDelta(2, 1, 1, nil), rsNow.Add(time.Hour)) // a heartbeat refreshes it
	mustApply(t, st, banned, rsDelta(2, 1, 1, nil), rsNow.Add(time.Hour))
	st.evict(later, func(id string) bool { return id != banned })
	rsCheckBytes(t, st)
	var ids []string
	for _, r := range st.healthReports("s1") {
		ids = append(ids, r.AgentID)
	}
	if len(ids) != 1 || ids[0] != fresh {
		t.Fatalf("after eviction: %v, want only %s", ids, fresh)
	}
	st.evict(later.Add(24*time.Hour), nil)
	if st.len() != 0 || st.bytes != 0 {
		t.Fatalf("after every report aged out: %d held, %d bytes", st.len(), st.bytes)
	}
}

// typicalSVIDs are n SVID states of typical size (UUID entry IDs, short
// SPIFFE IDs, 32-hex-digit serials).
func typicalSVIDs(n int) []*sigilv1.SVIDState {
	out := make([]*sigilv1.SVIDState, n)
	for i := range out {
		out[i] = &sigilv1.SVIDState{EntryId: fmt.Sprintf("%08x-0000-4000-8000-%012x", i, i),
			SpiffeId: fmt.Sprintf("spiffe://example.org/ns/default/sa/workload-%d", i), Serial: fmt.Sprintf("%032x", i),
			ExpiresAt: 1800000000, RenewAt: 1799998200, LastAttempt: 1799996400}
	}
	return out
}

// BenchmarkApplyFullReport20kSVIDs: one full report of the most SVIDs a
// report may carry, replacing the one held; reports the heap the store
// holds per SVID next to the size it counts.
func BenchmarkApplyFullReport20kSVIDs(b *testing.B) {
	r := &sigilv1.AgentReport{Seq: 1, Full: true, Svids: typicalSVIDs(MaxReportSVIDs), Held: MaxReportSVIDs}
	st := newReportStore(testReportLimits())
	var m0, m1 runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&m0)
	if _, err := st.apply("spiffe://example.org/sigil/agent/a", r, rsNow); err != nil {
		b.Fatal(err)
	}
	runtime.GC()
	runtime.ReadMemStats(&m1)
	heap, counted := float64(m1.HeapAlloc-m0.HeapAlloc)/MaxReportSVIDs, float64(st.bytes)/MaxReportSVIDs
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		r.Seq = uint64(i + 2)
		if _, err := st.apply("spiffe://example.org/sigil/agent/a", r, rsNow); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(heap, "heap-B/svid")
	b.ReportMetric(counted, "counted-B/svid")
}

// BenchmarkListReports10kAgents: the AgentReports answer of a server
// holding 10,000 agents' reports (10 SVIDs each) when only heartbeats
// came since the last call (the steady state of the leader's gather).
func BenchmarkListReports10kAgents(b *testing.B) {
	st := newReportStore(testReportLimits())
	for i := range 10000 {
		if _, err := st.apply(fmt.Sprintf("spiffe://example.org/sigil/agent/%d", i), &sigilv1.AgentReport{Seq: 1, Full: true, Svids: typicalSVIDs(10)}, rsNow); err != nil {
			b.Fatal(err)
		}
	}
	gen := st.list(0).Generation
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if resp := st.list(gen); len(resp.Reports) != 10000 || resp.Reports[0].Report != nil {
			b.Fatal("unexpected answer")
		}
	}
}

// testReportLimits are the default limits without MinGap: these tests
// send reports in quick succession on one clock reading.
func testReportLimits() reportLimits {
	lim := defaultReportLimits()
	lim.MinGap = 0
	return lim
}

// noReportGap lifts MinGap on a running server's store (tests that send
// reports back to back).
func noReportGap(s *Server) {
	s.reports.mu.Lock()
	s.reports.lim.MinGap = 0
	s.reports.mu.Unlock()
}

// TestReportStoreMinGap: a report sooner than MinGap after the previous
// one of the same agent is refused with ResourceExhausted before it is
// even validated, and nothing changes; a full report answering need_full
// is exempt; other agents are not affected; once the gap has passed,
// reports apply again.
func TestReportStoreMinGap(t *testing.T) {
	st := newReportStore(defaultReportLimits())
	a, b := "spiffe://example.org/sigil/agent/a", "spiffe://example.org/sigil/agent/b"
	mustApply(t, st, a, rsFull(1, rsSVID("e1", 1)), rsNow)
	soon := rsNow.Add(st.lim.MinGap / 2)
	if _, err := st.apply(a, rsDelta(2, 1, 1, []*sigilv1.SVIDState{rsSVID("e1", 2)}), soon); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("delta within the gap: %v", err)
	}
	if _, err := st.apply(a, &sigilv1.AgentReport{}, soon); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("invalid report within the gap: %v, want ResourceExhausted before validation", err)
	}
	if got := rsEntries(rsHeld(t, st, a)); got != "e1@1" {
		t.Fatalf("refused reports changed a's: %s", got)
	}
	mustApply(t, st, b, rsFull(1, rsSVID("x", 1)), soon)
	later := rsNow.Add(st.lim.MinGap)
	// A delta on a stale base is answered need_full; the full report
	// that follows at once is applied.
	if needFull, err := st.apply(a, rsDelta(3, 2, 1, nil), later); err != nil || !needFull {
		t.Fatalf("delta on a stale base: %v %v", needFull, err)
	}
	mustApply(t, st, a, rsFull(4, rsSVID("e1", 3)), later)
	if got := rsEntries(rsHeld(t, st, a)); got != "e1@3" {
		t.Fatalf("full report after need_full: %s", got)
	}
	// The exemption is used up: another full report at once is refused.
	if _, err := st.apply(a, rsFull(5, rsSVID("e1", 4)), later); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("second full report within the gap: %v", err)
	}
}
