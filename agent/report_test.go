package agent

import (
	"context"
	"crypto"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/clock"
	"github.com/sigil-id/sigil/internal/eventually"
	"github.com/sigil-id/sigil/workloadapi"
)

// Report implements Node.Report on the test server with s.report, after
// authenticating the caller as the other methods do. Without s.report it
// answers Unimplemented at once, as a server from before reports did, so
// that the agent stops reporting in the tests that are not about reports.
func (s *fakeServer) Report(ctx context.Context, req *sigilv1.AgentReport) (*sigilv1.ReportResponse, error) {
	s.mu.Lock()
	h := s.report
	s.mu.Unlock()
	if h == nil {
		return s.UnimplementedNodeServer.Report(ctx, req)
	}
	id, err := callerID(ctx)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	refusal := s.refusalLocked(id)
	s.mu.Unlock()
	if refusal != nil {
		return nil, refusal
	}
	return h(ctx, req)
}

// reportRecorder records the reports a test server receives and keeps
// the merged state a server would hold.
type reportRecorder struct {
	ch chan *sigilv1.AgentReport

	mu sync.Mutex
	// answer, if set, answers the next report (and is then cleared).
	answer func(*sigilv1.AgentReport) (*sigilv1.ReportResponse, error)
	calls  int

	// The test goroutine's view: the merged state as of the reports
	// taken from ch.
	last  *sigilv1.AgentReport
	state map[string]*sigilv1.SVIDState
}

func newReportRecorder(srv *fakeServer) *reportRecorder {
	rec := &reportRecorder{ch: make(chan *sigilv1.AgentReport, 1000)}
	srv.mu.Lock()
	srv.report = rec.handle
	srv.mu.Unlock()
	return rec
}

func (rec *reportRecorder) handle(_ context.Context, req *sigilv1.AgentReport) (*sigilv1.ReportResponse, error) {
	rec.mu.Lock()
	rec.calls++
	answer := rec.answer
	rec.answer = nil
	rec.mu.Unlock()
	rec.ch <- req
	if answer != nil {
		return answer(req)
	}
	return &sigilv1.ReportResponse{}, nil
}

func (rec *reportRecorder) answerNext(f func(*sigilv1.AgentReport) (*sigilv1.ReportResponse, error)) {
	rec.mu.Lock()
	rec.answer = f
	rec.mu.Unlock()
}

// next takes the next report and checks that it follows the previous
// one: seq increases, a delta names the previous report as its base
// (when that one was acknowledged, which the tests arrange), a full one
// names none.
func (rec *reportRecorder) next(t *testing.T) *sigilv1.AgentReport {
	t.Helper()
	var r *sigilv1.AgentReport
	select {
	case r = <-rec.ch:
	case <-time.After(15 * time.Second):
		t.Fatal("no report")
	}
	if r.GetAgentSvid() == nil || r.GetAgentSvid().GetEntryId() != "" || r.GetAgentSvid().GetSerial() == "" {
		t.Fatalf("report %d: agent_svid = %v", r.GetSeq(), r.GetAgentSvid())
	}
	if len(r.GetSvids()) > MaxReportSVIDs || int(r.GetHeld()) < len(r.GetSvids()) {
		t.Fatalf("report %d: %d svids, held %d", r.GetSeq(), len(r.GetSvids()), r.GetHeld())
	}
	if rec.last != nil && r.GetSeq() <= rec.last.GetSeq() {
		t.Fatalf("report seq %d after %d", r.GetSeq(), rec.last.GetSeq())
	}
	// Deltas are at least 5 s apart (a full report asked for
	// with need_full goes at once).
	if gap := r.GetGeneratedAt() - rec.last.GetGeneratedAt(); rec.last != nil && !r.GetFull() && gap < 5 {
		t.Fatalf("delta %d only %ds after report %d", r.GetSeq(), gap, rec.last.GetSeq())
	}
	if r.GetFull() {
		if r.GetBaseSeq() != 0 || len(r.GetRemoved()) != 0 {
			t.Fatalf("full report %d: base_seq %d, removed %v", r.GetSeq(), r.GetBaseSeq(), r.GetRemoved())
		}
		rec.state = make(map[string]*sigilv1.SVIDState)
	} else if rec.last == nil || r.GetBaseSeq() != rec.last.GetSeq() {
		t.Fatalf("delta %d has base_seq %d, want the last report %v", r.GetSeq(), r.GetBaseSeq(), rec.last.GetSeq())
	}
	for _, s := range r.GetSvids() {
		if s.GetEntryId() == "" {
			t.Fatalf("report %d: workload SVID without an entry ID", r.GetSeq())
		}
		rec.state[s.GetEntryId()] = s
	}
	for _, id := range r.GetRemoved() {
		delete(rec.state, id)
	}
	rec.last = r
	return r
}

// until takes reports until cond holds of the merged state (returning
// the last one taken, which may be an earlier one when it already holds),
// and fails if one of them is a full report while wantFull is false.
func (rec *reportRecorder) until(t *testing.T, wantFull bool, cond func(map[string]*sigilv1.SVIDState) bool) *sigilv1.AgentReport {
	t.Helper()
	if rec.state != nil && cond(rec.state) {
		return rec.last
	}
	for {
		r := rec.next(t)
		if r.GetFull() && !wantFull {
			t.Fatalf("unexpected full report %d", r.GetSeq())
		}
		if cond(rec.state) {
			return r
		}
	}
}

func (rec *reportRecorder) callCount() int {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	return rec.calls
}

// heldSerials are the serials (hex) of the SVIDs the agent holds, by
// entry ID.
func heldSerials(r *runningAgent) map[string]string {
	r.cache.mu.Lock()
	defer r.cache.mu.Unlock()
	out := make(map[string]string)
	for id, st := range r.cache.st.entries {
		if st.svid != nil {
			out[id] = st.svid.serialText()
		}
	}
	return out
}

// serialsAre reports whether the merged state has the serials want.
func serialsAre(want map[string]string) func(map[string]*sigilv1.SVIDState) bool {
	return func(state map[string]*sigilv1.SVIDState) bool {
		if len(state) != len(want) {
			return false
		}
		for id, serial := range want {
			if state[id].GetSerial() != serial {
				return false
			}
		}
		return true
	}
}

// startReportingAgent starts an agent on a fake clock against srv, with
// entries e1 and e2, and a recorder answering its reports.
func startReportingAgent(t *testing.T, srv *fakeServer) (*runningAgent, *clock.Fake, *reportRecorder) {
	t.Helper()
	clk := clock.NewFake(time.Now())
	srv.now = clk.Now
	srv.agentTTL = 24 * time.Hour
	srv.upsert(entry("e1", "web", 1, "uid:1"))
	srv.upsert(entry("e2", "db", 1, "uid:2"))
	rec := newReportRecorder(srv)
	cfg := srv.config(t, t.TempDir())
	cfg.Clock = clk
	return startAgent(t, cfg), clk, rec
}

func TestAgentReportsRotationState(t *testing.T) {
	srv := newFakeServer(t)
	r, clk, rec := startReportingAgent(t, srv)

	// A full report first, with the agent's own SVID.
	full := rec.next(t)
	if !full.GetFull() || full.GetSeq() != 1 || full.GetHeld() != 2 || full.GetTruncated() {
		t.Fatalf("first report: full %v seq %d held %d truncated %v", full.GetFull(), full.GetSeq(), full.GetHeld(), full.GetTruncated())
	}
	ident := r.identity()
	own := full.GetAgentSvid()
	if own.GetSpiffeId() != ident.id.String() || own.GetSerial() != ident.chain[0].SerialNumber.Text(16) ||
		own.GetExpiresAt() != ident.notAfter.Unix() || own.GetRenewAt() != ident.renewAt.Unix() {
		t.Fatalf("agent_svid = %v, want the agent's SVID %s serial %s", own, ident.id, ident.chain[0].SerialNumber.Text(16))
	}
	var got []string
	for _, s := range full.GetSvids() {
		got = append(got, s.GetEntryId())
		if want := map[string]string{"e1": "spiffe://example.org/web", "e2": "spiffe://example.org/db"}[s.GetEntryId()]; s.GetSpiffeId() != want {
			t.Fatalf("entry %s reported with SPIFFE ID %q, want %q", s.GetEntryId(), s.GetSpiffeId(), want)
		}
	}
	slices.Sort(got)
	if !slices.Equal(got, []string{"e1", "e2"}) {
		t.Fatalf("full report holds %v, want e1 and e2", got)
	}

	// Once both are minted, the next delta (at most one per 5 s) carries
	// their serials.
	eventually.True(t, 10*time.Second, func() bool { return len(heldSerials(r)) == 2 }, "SVIDs not minted")
	first := heldSerials(r)
	clk.Add(minReportGap)
	rec.until(t, false, serialsAre(first))
	for id, s := range rec.state {
		if s.GetExpiresAt() == 0 || s.GetRenewAt() == 0 || s.GetRenewAt() >= s.GetExpiresAt() || s.GetLastAttempt() == 0 || s.GetFailures() != 0 || s.GetLastError() != "" {
			t.Fatalf("state of %s = %v", id, s)
		}
	}

	// A renewal produces a delta with the new serials.
	clk.Add(40 * time.Minute)
	eventually.NoError(t, 10*time.Second, func() error {
		now := heldSerials(r)
		for id, s := range first {
			if now[id] == s || now[id] == "" {
				return fmt.Errorf("%s not renewed", id)
			}
		}
		return nil
	})
	second := heldSerials(r)
	clk.Add(minReportGap)
	rec.until(t, false, serialsAre(second))

	// A deleted entry is reported removed.
	srv.remove("e2")
	eventually.True(t, 10*time.Second, func() bool { return len(heldSerials(r)) == 1 }, "e2 not withdrawn")
	clk.Add(minReportGap)
	del := rec.until(t, false, func(state map[string]*sigilv1.SVIDState) bool { return state["e2"] == nil })
	if !slices.Equal(del.GetRemoved(), []string{"e2"}) || del.GetHeld() != 1 {
		t.Fatalf("delta removed %v, held %d; want [e2], 1", del.GetRemoved(), del.GetHeld())
	}

	// With nothing changed, a heartbeat each interval: no SVIDs.
	clk.Add(DefaultHealthReportInterval)
	hb := rec.next(t)
	if hb.GetFull() || len(hb.GetSvids()) != 0 || len(hb.GetRemoved()) != 0 || hb.GetSeq() != del.GetSeq()+1 || hb.GetHeld() != 1 {
		t.Fatalf("heartbeat = full %v, %d svids, removed %v, seq %d (after %d), held %d",
			hb.GetFull(), len(hb.GetSvids()), hb.GetRemoved(), hb.GetSeq(), del.GetSeq(), hb.GetHeld())
	}

	// need_full brings a full report at once (the clock does not move);
	// interval_seconds (1, clamped to 5 s) sets the heartbeat interval.
	rec.answerNext(func(*sigilv1.AgentReport) (*sigilv1.ReportResponse, error) {
		return &sigilv1.ReportResponse{NeedFull: true, IntervalSeconds: 1}, nil
	})
	clk.Add(DefaultHealthReportInterval)
	refused := rec.next(t)
	again := rec.next(t)
	if !again.GetFull() || again.GetSeq() != refused.GetSeq()+1 || len(again.GetSvids()) != 1 || again.GetSvids()[0].GetSerial() != second["e1"] {
		t.Fatalf("after need_full: full %v seq %d (after %d), svids %v", again.GetFull(), again.GetSeq(), refused.GetSeq(), again.GetSvids())
	}
	clk.Add(MinHealthReportInterval)
	hb = rec.next(t)
	if hb.GetFull() || hb.GetBaseSeq() != again.GetSeq() || len(hb.GetSvids()) != 0 {
		t.Fatalf("heartbeat after the server's interval: full %v base %d (want %d), %d svids", hb.GetFull(), hb.GetBaseSeq(), again.GetSeq(), len(hb.GetSvids()))
	}
	r.stop(t)
}

// failingSigner is a CA key that cannot sign (an HSM that is down).
type failingSigner struct {
	crypto.Signer
	err error
}

func (f failingSigner) Sign(io.Reader, []byte, crypto.SignerOpts) ([]byte, error) { return nil, f.err }

func TestAgentReportsMintFailure(t *testing.T) {
	srv := newFakeServer(t)
	r, clk, rec := startReportingAgent(t, srv)
	rec.next(t)
	eventually.True(t, 10*time.Second, func() bool { return len(heldSerials(r)) == 2 }, "SVIDs not minted")
	clk.Add(minReportGap)
	rec.until(t, false, serialsAre(heldSerials(r)))

	// The CA cannot sign; its error is longer than a report carries and
	// made of two-byte characters.
	srv.mu.Lock()
	srv.signer = &testCA{cert: srv.ca.cert, key: failingSigner{Signer: srv.ca.key, err: errors.New("x" + strings.Repeat("é", 300))}}
	srv.mu.Unlock()
	srv.upsert(entry("e3", "cache", 1, "uid:3"))
	eventually.NoError(t, 10*time.Second, func() error {
		r.cache.mu.Lock()
		defer r.cache.mu.Unlock()
		if st := r.cache.st.entries["e3"]; st == nil || st.failStreak == 0 {
			return errors.New("e3 has not failed yet")
		}
		return nil
	})
	clk.Add(minReportGap)
	rec.until(t, false, func(state map[string]*sigilv1.SVIDState) bool { return state["e3"].GetFailures() > 0 })
	s := rec.state["e3"]
	if s.GetSerial() != "" || s.GetExpiresAt() != 0 || s.GetLastAttempt() == 0 {
		t.Fatalf("failing entry reported as %v", s)
	}
	e := s.GetLastError()
	if len(e) > maxReportError || len(e) < maxReportError-1 || !utf8.ValidString(e) || !strings.Contains(e, "Internal") || !strings.Contains(e, "xéé") {
		t.Fatalf("last_error = %q (%d bytes), want the mint error cut to at most %d bytes on a character boundary", e, len(e), maxReportError)
	}
	r.stop(t)
}

// A report that fails (the server is unavailable) is tried again one
// interval later, as a full report while the server has none.
func TestAgentRetriesFailedReport(t *testing.T) {
	srv := newFakeServer(t)
	clk := clock.NewFake(time.Now())
	srv.now = clk.Now
	srv.agentTTL = 24 * time.Hour
	srv.upsert(entry("e1", "web", 1, "uid:1"))
	rec := newReportRecorder(srv)
	rec.answerNext(func(*sigilv1.AgentReport) (*sigilv1.ReportResponse, error) {
		return nil, status.Error(codes.Unavailable, "server shutting down")
	})
	cfg := srv.config(t, t.TempDir())
	cfg.Clock = clk
	r := startAgent(t, cfg)
	failed := rec.next(t)
	if !failed.GetFull() || failed.GetSeq() != 1 {
		t.Fatalf("first report: full %v seq %d", failed.GetFull(), failed.GetSeq())
	}
	eventually.True(t, 10*time.Second, func() bool { return len(heldSerials(r)) == 1 }, "SVID not minted")
	clk.Add(DefaultHealthReportInterval)
	again := rec.next(t)
	if !again.GetFull() || again.GetSeq() != 2 || again.GetGeneratedAt()-failed.GetGeneratedAt() < int64(DefaultHealthReportInterval/time.Second) {
		t.Fatalf("retry: full %v seq %d, %ds after the failed one", again.GetFull(), again.GetSeq(), again.GetGeneratedAt()-failed.GetGeneratedAt())
	}
	if len(again.GetSvids()) != 1 || again.GetSvids()[0].GetSerial() != heldSerials(r)["e1"] {
		t.Fatalf("retry carries %v", again.GetSvids())
	}
	r.stop(t)
}

func TestAgentStopsReportingToServerWithoutReport(t *testing.T) {
	srv := newFakeServer(t)
	clk := clock.NewFake(time.Now())
	srv.now = clk.Now
	srv.agentTTL = 24 * time.Hour
	srv.upsert(entry("e1", "web", 1, "uid:1"))
	var calls int
	var mu sync.Mutex
	srv.mu.Lock()
	srv.report = func(context.Context, *sigilv1.AgentReport) (*sigilv1.ReportResponse, error) {
		mu.Lock()
		calls++
		mu.Unlock()
		return nil, status.Error(codes.Unimplemented, "unknown method Report")
	}
	srv.mu.Unlock()
	cfg := srv.config(t, t.TempDir())
	cfg.Clock = clk
	r := startAgent(t, cfg)
	eventually.True(t, 10*time.Second, func() bool { mu.Lock(); defer mu.Unlock(); return calls == 1 }, "no report")
	// The report loop stops while the sync stream stays up: intervals
	// pass without a heartbeat to a server that does not take them.
	eventually.True(t, 10*time.Second, func() bool { return r.reportLoops.Load() == 0 }, "the report loop still runs")
	if err := r.Healthy(); err != nil {
		t.Fatalf("Healthy = %v", err)
	}
	clk.Add(3 * DefaultHealthReportInterval)
	// On the next connection the agent tries again, with a full report.
	rec := newReportRecorder(srv)
	srv.cutStreams()
	eventually.NoError(t, 10*time.Second, func() error {
		if rec.callCount() > 0 {
			return nil
		}
		clk.Add(200 * time.Millisecond) // the sync stream's reconnection backoff
		return errors.New("no report on the new connection")
	})
	got := rec.next(t)
	mu.Lock()
	n := calls
	mu.Unlock()
	if n != 1 || !got.GetFull() || got.GetSeq() != 2 {
		t.Fatalf("%d calls refused, then report full %v seq %d; want 1 refused, then full report 2", n, got.GetFull(), got.GetSeq())
	}
	r.stop(t)
}

func TestAgentReportNeverBlocksMinting(t *testing.T) {
	srv := newFakeServer(t)
	clk := clock.NewFake(time.Now())
	srv.now = clk.Now
	srv.agentTTL = 24 * time.Hour
	release := make(chan struct{})
	blocked := make(chan struct{}, 1)
	srv.mu.Lock()
	srv.report = func(ctx context.Context, _ *sigilv1.AgentReport) (*sigilv1.ReportResponse, error) {
		select {
		case blocked <- struct{}{}:
		default:
		}
		select {
		case <-release:
		case <-ctx.Done():
		}
		return &sigilv1.ReportResponse{}, nil
	}
	srv.mu.Unlock()
	cfg := srv.config(t, t.TempDir())
	cfg.Clock = clk
	r := startAgent(t, cfg)
	select {
	case <-blocked:
	case <-time.After(15 * time.Second):
		t.Fatal("no report")
	}
	// The server sits on the report; an entry is still minted and handed
	// to the workload.
	sub := r.Cache().SubscribeX509([]*sigilv1.Selector{sel("uid:1")})
	defer sub.Close()
	srv.upsert(entry("e1", "web", 1, "uid:1"))
	waitSnapshot(t, sub, func(s *workloadapi.X509Snapshot) bool { return len(s.Identities) == 1 })
	close(release)
	r.stop(t)
}

func TestReportViewCapsEarliestRenewalFirst(t *testing.T) {
	n := MaxReportSVIDs + 3
	states := make([]svidReport, n)
	for i := range states {
		// Renewal times descend with i: the last entries renew first.
		states[i] = svidReport{entryID: fmt.Sprintf("e%05d", i), serial: "ab", renewAt: int64(10 * (n - i))}
	}
	states[7].renewAt, states[7].serial = 0, "" // no SVID: first of all
	view, held, truncated := reportView(slices.Clone(states), MaxReportSVIDs)
	if held != n || !truncated || len(view) != MaxReportSVIDs {
		t.Fatalf("view of %d: held %d truncated %v len %d", n, held, truncated, len(view))
	}
	if view[0].entryID != "e00007" || view[1].entryID != fmt.Sprintf("e%05d", n-1) {
		t.Fatalf("view starts with %s, %s", view[0].entryID, view[1].entryID)
	}
	for i := 1; i < len(view); i++ {
		if view[i].renewAt < view[i-1].renewAt {
			t.Fatalf("view not by renewal time at %d", i)
		}
	}
	// The three latest renewals are left out.
	in := make(map[string]bool)
	for _, v := range view {
		in[v.entryID] = true
	}
	for _, id := range []string{"e00000", "e00001", "e00002"} {
		if in[id] {
			t.Fatalf("%s (latest renewal) is in the capped view", id)
		}
	}
	if !in["e00003"] {
		t.Fatal("e00003 is not in the capped view")
	}
	if v, h, tr := reportView(states[:5], MaxReportSVIDs); len(v) != 5 || h != 5 || tr {
		t.Fatalf("small view: %d %d %v", len(v), h, tr)
	}
}

func TestReportDelta(t *testing.T) {
	a := svidReport{entryID: "a", serial: "1", renewAt: 10}
	b := svidReport{entryID: "b", serial: "2", renewAt: 20}
	c := svidReport{entryID: "c", serial: "3", renewAt: 30}
	last := map[string]svidReport{"a": a, "b": b, "c": c}
	b2 := b
	b2.serial, b2.renewAt = "4", 40
	d := svidReport{entryID: "d", lastError: "boom", failures: 1}
	changed, removed := reportDelta(last, []svidReport{d, a, b2})
	if len(changed) != 2 || changed[0] != d || changed[1] != b2 {
		t.Fatalf("changed = %+v, want d then b2", changed)
	}
	if !slices.Equal(removed, []string{"c"}) {
		t.Fatalf("removed = %v", removed)
	}
	if ch, rm := reportDelta(last, []svidReport{a, b, c}); len(ch) != 0 || len(rm) != 0 {
		t.Fatalf("no change gives %v %v", ch, rm)
	}
}

func TestTruncateUTF8(t *testing.T) {
	for _, c := range []struct {
		in   string
		n    int
		want string
	}{
		{"short", 256, "short"},
		{"abcdef", 3, "abc"},
		{"aé", 2, "a"},  // é is two bytes: not cut in half
		{"a€b", 3, "a"}, // € is three bytes
		{"a€b", 4, "a€"},
		{"", 0, ""},
	} {
		if got := truncateUTF8(c.in, c.n); got != c.want {
			t.Errorf("truncateUTF8(%q, %d) = %q, want %q", c.in, c.n, got, c.want)
		}
	}
	long := strings.Repeat("日本", 200)
	if got := truncateUTF8(long, maxReportError); len(got) > maxReportError || !utf8.ValidString(got) || len(got) < maxReportError-2 {
		t.Fatalf("cut to %d bytes, valid %v", len(got), utf8.ValidString(got))
	}
}

func TestClampReportInterval(t *testing.T) {
	for in, want := range map[time.Duration]time.Duration{
		time.Second:      5 * time.Second,
		time.Minute:      time.Minute,
		time.Hour:        10 * time.Minute,
		10 * time.Minute: 10 * time.Minute,
	} {
		if got := clampReportInterval(in); got != want {
			t.Errorf("clamp(%v) = %v, want %v", in, got, want)
		}
	}
}

// BenchmarkReportStates measures what one report costs the agent with
// MaxReportSVIDs entries held: the copy under the cache's lock (the only
// part that holds up minting and the Workload API), then the states, the
// ordering and the delta without it.
func BenchmarkReportStates(b *testing.B) {
	c := newCache(testTD, zap.NewNop(), clock.New())
	now := time.Now()
	ca := newTestCA(b, now)
	key, _, err := newKeyAndCSR()
	if err != nil {
		b.Fatal(err)
	}
	id := spiffeid.RequireFromString("spiffe://example.org/web")
	chain := ca.sign(b, id, key.Public(), now, time.Hour)
	entries := make([]*sigilv1.Entry, MaxReportSVIDs)
	for i := range entries {
		entries[i] = entry(fmt.Sprintf("e%05d", i), "web", 1, "uid:1")
	}
	c.ReplaceEntries(entries)
	n := 0
	for _, st := range c.st.entries {
		n++
		st.svid = &svid{spiffeID: id, chainDER: chain[0].Raw, serial: chain[0].SerialNumber.Bytes(), renewAt: now.Add(time.Duration(n) * time.Second), notAfter: chain[0].NotAfter}
	}
	last := make(map[string]svidReport)
	b.Run("locked-copy", func(b *testing.B) {
		for b.Loop() {
			c.mu.Lock()
			_ = c.st.reportStates()
			c.mu.Unlock()
		}
	})
	b.Run("build", func(b *testing.B) {
		for b.Loop() {
			states, _ := c.reportStates(MaxReportSVIDs)
			view, _, _ := reportView(states, MaxReportSVIDs)
			reportDelta(last, view)
		}
	})
}
