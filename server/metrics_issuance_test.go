package server

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"fmt"
	"math"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/ca"
	"github.com/sigil-id/sigil/clock"
	"github.com/sigil-id/sigil/internal/eventually"
	"github.com/sigil-id/sigil/internal/storepb"
)

// histogramOf returns the histogram of the series name{labels}, or nil.
func histogramOf(t *testing.T, s *Server, name string, labels map[string]string) *dto.Histogram {
	t.Helper()
	mfs, err := s.metrics.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.Metric {
			for _, lp := range m.Label {
				if v, ok := labels[lp.GetName()]; ok && v != lp.GetValue() {
					continue next
				}
			}
			return m.Histogram
		}
	}
	return nil
}

func signedCount(t *testing.T, s *Server, typ, outcome string) float64 {
	t.Helper()
	return metricValue(t, s, "sigil_server_svids_signed_total", map[string]string{"type": typ, "outcome": outcome})
}

// TestMetricsSVIDIssuance: X.509-SVIDs and JWT-SVIDs signed through the
// node API by an agent with a real SVID move
// sigil_server_svids_signed_total by outcome (ok, denied for an entry the
// agent is not authorized for, error for a bad CSR) and the sign-time
// histogram by type; a refused batch counts each of its requests.
func TestMetricsSVIDIssuance(t *testing.T) {
	h := startServer(t)
	ctx := context.Background()
	a := h.attest()
	e := h.createEntry("spiffe://example.org/web", a.id, "unix:uid:1000")
	for _, typ := range []string{svidX509, svidJWT} {
		for _, o := range []string{outcomeOK, outcomeError, outcomeDenied} {
			if got := signedCount(t, h.srv, typ, o); got != 0 {
				t.Fatalf("%s/%s before any request: %v", typ, o, got)
			}
		}
	}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	resp, err := a.node.BatchNewX509SVID(ctx, &sigilv1.BatchNewX509SVIDRequest{Requests: []*sigilv1.X509SVIDRequest{
		{EntryId: e.Id, Csr: newCSR(t, key, "w")},
		{EntryId: e.Id, Csr: newCSR(t, key, "w2")},
		{EntryId: "not-mine", Csr: newCSR(t, key, "w")},
		{EntryId: e.Id, Csr: []byte("not a CSR")},
	}})
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Results[0].Chain) == 0 || len(resp.Results[1].Chain) == 0 {
		t.Fatalf("not signed: %v", resp.Results)
	}
	for o, want := range map[string]float64{outcomeOK: 2, outcomeDenied: 1, outcomeError: 1} {
		if got := signedCount(t, h.srv, svidX509, o); got != want {
			t.Errorf("x509/%s = %v, want %v", o, got, want)
		}
	}
	// Three requests reached signEntry (the unauthorized one did not).
	if hg := histogramOf(t, h.srv, "sigil_server_svid_sign_seconds", map[string]string{"type": svidX509}); hg.GetSampleCount() != 3 || hg.GetSampleSum() <= 0 {
		t.Errorf("x509 sign histogram: %v", hg)
	}

	if _, err := a.node.NewJWTSVID(ctx, &sigilv1.NewJWTSVIDRequest{EntryId: e.Id, Audience: []string{"db"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.node.NewJWTSVID(ctx, &sigilv1.NewJWTSVIDRequest{EntryId: "not-mine", Audience: []string{"db"}}); err == nil {
		t.Fatal("JWT-SVID for an entry the agent does not own")
	}
	if _, err := a.node.NewJWTSVID(ctx, &sigilv1.NewJWTSVIDRequest{EntryId: e.Id}); err == nil {
		t.Fatal("JWT-SVID without an audience")
	}
	for o, want := range map[string]float64{outcomeOK: 1, outcomeDenied: 1, outcomeError: 1} {
		if got := signedCount(t, h.srv, svidJWT, o); got != want {
			t.Errorf("jwt/%s = %v, want %v", o, got, want)
		}
	}
	if hg := histogramOf(t, h.srv, "sigil_server_svid_sign_seconds", map[string]string{"type": svidJWT}); hg.GetSampleCount() != 1 {
		t.Errorf("jwt sign histogram: %v", hg)
	}

	// A banned agent is refused by the node API's authentication before
	// any SVID method runs: nothing is counted as a signing request.
	if _, err := h.admin.BanAgent(ctx, &sigilv1.BanAgentRequest{SpiffeId: a.id}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.node.BatchNewX509SVID(ctx, &sigilv1.BatchNewX509SVIDRequest{Requests: []*sigilv1.X509SVIDRequest{
		{EntryId: e.Id, Csr: newCSR(t, key, "w")}, {EntryId: e.Id, Csr: newCSR(t, key, "w")},
	}}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("batch of a banned agent: %v", err)
	}
	for o, want := range map[string]float64{outcomeOK: 2, outcomeDenied: 1, outcomeError: 1} {
		if got := signedCount(t, h.srv, svidX509, o); got != want {
			t.Errorf("x509/%s = %v after a banned agent's batch, want %v", o, got, want)
		}
	}

	// No label carries an ID.
	mfs, err := h.srv.metrics.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		for _, m := range mf.Metric {
			for _, lp := range m.Label {
				for _, id := range []string{a.id, e.Id, e.SpiffeId, "not-mine"} {
					if strings.Contains(lp.GetValue(), id) {
						t.Errorf("%s has label %s=%q", mf.GetName(), lp.GetName(), lp.GetValue())
					}
				}
			}
		}
	}
}

// TestMetricsAgentsByState: sigil_server_agents counts agents by state
// from the store at scrape time, with the server's clock: attested agents
// are active, a banned one banned, and all the others expired once the
// clock passes their SVIDs' expiry; the last-seen age histogram ages with
// the clock and covers active agents only.
func TestMetricsAgentsByState(t *testing.T) {
	clk := clock.NewFake(time.Now())
	h := startServerWith(t, clk, nil)
	ctx := context.Background()
	agents := func() map[string]float64 {
		out := map[string]float64{}
		for _, st := range []string{agentActive, agentExpired, agentBanned} {
			out[st] = metricValue(t, h.srv, "sigil_server_agents", map[string]string{"state": st})
		}
		return out
	}
	want := func(what string, active, expired, banned float64) {
		t.Helper()
		if got := agents(); got[agentActive] != active || got[agentExpired] != expired || got[agentBanned] != banned {
			t.Fatalf("%s: agents %v, want active %v expired %v banned %v", what, got, active, expired, banned)
		}
	}
	want("no agent", 0, 0, 0)
	h.attest()
	h.attest()
	a3 := h.attest()
	want("three attested", 3, 0, 0)
	if _, err := h.admin.BanAgent(ctx, &sigilv1.BanAgentRequest{SpiffeId: a3.id}); err != nil {
		t.Fatal(err)
	}
	want("one banned", 2, 0, 1)

	hg := histogramOf(t, h.srv, "sigil_server_agent_last_seen_age_seconds", nil)
	if hg.GetSampleCount() != 2 || bucketCount(hg, 60) != 2 {
		t.Fatalf("last seen ages just after attestation: %v", hg)
	}
	clk.Add(10 * time.Minute)
	hg = histogramOf(t, h.srv, "sigil_server_agent_last_seen_age_seconds", nil)
	if hg.GetSampleCount() != 2 || bucketCount(hg, 300) != 0 || bucketCount(hg, 900) != 2 || math.Abs(hg.GetSampleSum()-2*600) > 4 {
		t.Fatalf("last seen ages 10 minutes later: %v", hg)
	}

	clk.Add(h.srv.cfg.AgentSVIDTTL)
	want("SVIDs expired", 0, 2, 1)
	if hg := histogramOf(t, h.srv, "sigil_server_agent_last_seen_age_seconds", nil); hg.GetSampleCount() != 0 {
		t.Fatalf("expired agents in the last-seen ages: %v", hg)
	}
}

func bucketCount(hg *dto.Histogram, le float64) uint64 {
	for _, b := range hg.GetBucket() {
		if b.GetUpperBound() == le {
			return b.GetCumulativeCount()
		}
	}
	return math.MaxUint64
}

// TestMetricsAuthorities: the authority gauges follow this server's key
// slots: one active key per kind with its seconds to expiry equal to the
// slot's NotAfter minus the clock's now, and a prepared key appears with
// its own expiry once prepared.
func TestMetricsAuthorities(t *testing.T) {
	clk := clock.NewFake(time.Now())
	h := startServerWith(t, clk, nil)
	ctx := context.Background()
	expiry := func(kind, state string) float64 {
		return metricValue(t, h.srv, "sigil_server_authority_expiry_seconds", map[string]string{"kind": kind, "state": state})
	}
	count := func(kind, state string) float64 {
		return metricValue(t, h.srv, "sigil_server_authorities", map[string]string{"kind": kind, "state": state})
	}
	for _, m := range []*ca.Manager{h.srv.auth.x509, h.srv.auth.jwt} {
		kind := string(m.Kind())
		act, ok := m.Active()
		if !ok {
			t.Fatalf("%s: no active slot", kind)
		}
		if got, want := expiry(kind, "active"), act.NotAfter.Sub(clk.Now()).Seconds(); got != want || got <= 0 {
			t.Fatalf("%s active expiry %v, want %v", kind, got, want)
		}
		if got := expiry(kind, "prepared"); got != -1 {
			t.Fatalf("%s prepared expiry with no prepared key: %v", kind, got)
		}
		if got := count(kind, "active"); got != 1 {
			t.Fatalf("%s active authorities %v", kind, got)
		}
		clk.Add(time.Minute)
		if got, want := expiry(kind, "active"), act.NotAfter.Sub(clk.Now()).Seconds(); got != want {
			t.Fatalf("%s active expiry a minute later %v, want %v", kind, got, want)
		}
		prep, err := m.Prepare(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if got := count(kind, "prepared"); got != 1 {
			t.Fatalf("%s prepared authorities %v", kind, got)
		}
		if got, want := expiry(kind, "prepared"), prep.NotAfter.Sub(clk.Now()).Seconds(); got != want {
			t.Fatalf("%s prepared expiry %v, want %v", kind, got, want)
		}
		if got := count(kind, "tainted") + count(kind, "retired"); got != 0 {
			t.Fatalf("%s tainted+retired %v", kind, got)
		}
	}
}

// TestMetricsSyncStreams: an agent's sync stream raises
// sigil_server_sync_streams while open and lowers it when closed, and the
// entries it is sent (full set, then a new entry) count in
// sigil_server_sync_entries_pushed_total. Raft writes show in
// sigil_server_raft_apply_seconds.
func TestMetricsSyncStreams(t *testing.T) {
	h := startServer(t)
	a := h.attest()
	h.createEntry("spiffe://example.org/one", a.id, "unix:uid:1")
	streams := func() float64 { return metricValue(t, h.srv, "sigil_server_sync_streams", nil) }
	pushed := func() float64 { return metricValue(t, h.srv, "sigil_server_sync_entries_pushed_total", nil) }
	if streams() != 0 || pushed() != 0 {
		t.Fatalf("before any stream: %v streams, %v pushed", streams(), pushed())
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stream, err := a.node.Sync(ctx, &sigilv1.SyncRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for {
		m, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if m.Synced {
			break
		}
	}
	if streams() != 1 || pushed() != 1 {
		t.Fatalf("after the full set: %v streams, %v pushed", streams(), pushed())
	}
	h.createEntry("spiffe://example.org/two", a.id, "unix:uid:2")
	for {
		m, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if len(m.Upserted) > 0 {
			break
		}
	}
	eventually.True(t, 10*time.Second, func() bool { return pushed() == 2 }, "pushed %v, want 2", pushed())
	cancel()
	eventually.True(t, 10*time.Second, func() bool { return streams() == 0 }, "streams %v after the stream closed", streams())

	if hg := histogramOf(t, h.srv, "sigil_server_raft_apply_seconds", map[string]string{"result": "ok"}); hg.GetSampleCount() == 0 {
		t.Fatalf("no Raft apply observed: %v", hg)
	}
	if got, want := histogramOf(t, h.srv, "sigil_server_raft_apply_seconds", map[string]string{"result": "ok"}).GetSampleCount(),
		histogramOf(t, h.srv, "sigil_raft_commit_duration_seconds", map[string]string{"result": "ok"}).GetSampleCount(); got != want {
		t.Fatalf("raft apply %d samples, commit duration %d", got, want)
	}
}

// BenchmarkStateCollector10kAgents measures one scrape of the server's
// registry with 10,000 agents in the store: the cost of the state
// collector's pass over the nodes table.
func BenchmarkStateCollector10kAgents(b *testing.B) {
	dir := b.TempDir()
	cfg := DefaultConfig()
	cfg.TrustDomain = testTD
	cfg.NodeName = "s1"
	cfg.DataDir = filepath.Join(dir, "data")
	cfg.BindAddress = "127.0.0.1:0"
	cfg.AdminSocket = filepath.Join(dir, "admin", "admin.sock")
	withPlugins(b, &cfg, "memory")
	cfg.Logger = zap.NewNop()
	srv, err := New(cfg)
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	defer func() { cancel(); <-done }()
	select {
	case <-srv.Ready():
	case err := <-done:
		b.Fatalf("server exited: %v", err)
	}
	// Agents with every state and a spread of last-seen times, written
	// by concurrent applies (Raft batches them).
	const agents, writers = 10000, 32
	now := srv.cfg.Clock.Now()
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := w; i < agents; i += writers {
				n := &sigilv1.AttestedNode{
					SpiffeId: fmt.Sprintf("spiffe://%s/sigil/agent/join_token/bench-%05d", testTD.Name(), i), AttestationType: "join_token",
					CertSerial: fmt.Sprintf("%x", i), CertNotAfter: now.Add(time.Duration(i%20-2) * time.Hour).Unix(),
					CreatedAt: now.Unix(), LastSeen: now.Add(-time.Duration(i) * time.Second).Unix(), Banned: i%100 == 0,
				}
				if _, err := srv.apply(ctx, &storepb.Command{Op: &storepb.Command_AttestNode{AttestNode: &storepb.AttestNode{Node: n}}}); err != nil {
					errs <- err
					return
				}
			}
		}(w)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
	if got := gaugeSum(b, srv, "sigil_server_agents"); got != agents {
		b.Fatalf("%v agents in the gauges, want %d", got, agents)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := srv.metrics.reg.Gather(); err != nil {
			b.Fatal(err)
		}
	}
}

// gaugeSum returns the sum of the gauge name's series.
func gaugeSum(tb testing.TB, s *Server, name string) float64 {
	tb.Helper()
	mfs, err := s.metrics.reg.Gather()
	if err != nil {
		tb.Fatal(err)
	}
	sum := 0.0
	for _, mf := range mfs {
		if mf.GetName() == name {
			for _, m := range mf.Metric {
				sum += m.GetGauge().GetValue()
			}
		}
	}
	return sum
}

// TestMetricsRefusedBatchCountsEachRequest: a batch refused as a whole
// (the agent was banned or evicted between authentication and the
// handler's read) counts each of its requests, denied for
// PermissionDenied and error otherwise.
func TestMetricsRefusedBatchCountsEachRequest(t *testing.T) {
	m := newMetrics()
	deny := status.Error(codes.PermissionDenied, "agent is banned")
	if err := m.iss.countRefused(svidX509, 3, deny); err != deny {
		t.Fatalf("countRefused returned %v", err)
	}
	m.iss.countRefused(svidX509, 2, status.Error(codes.Internal, "reading agent state"))
	var ok error
	m.iss.countJWT(&ok)
	for _, c := range []struct {
		typ, outcome string
		want         float64
	}{{svidX509, outcomeDenied, 3}, {svidX509, outcomeError, 2}, {svidX509, outcomeOK, 0}, {svidJWT, outcomeOK, 1}} {
		if got := testutil.ToFloat64(m.iss.signed[c.typ][c.outcome]); got != c.want {
			t.Errorf("%s/%s = %v, want %v", c.typ, c.outcome, got, c.want)
		}
	}
}

// BenchmarkIssuanceHooksPerSVID measures what the metrics add to the
// signing of one X.509-SVID: the sign-time observation (two clock reads
// and a histogram observe) and the outcome count. Compare with
// ca.BenchmarkSignX509SVID.
func BenchmarkIssuanceHooksPerSVID(b *testing.B) {
	m := newMetrics()
	res := []*sigilv1.X509SVIDResult{{Status: &sigilv1.Status{}}}
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		m.iss.observeSign(svidX509, time.Now())
		m.iss.countX509Results(res)
	}
}

// TestMetricsDisabledIssuance: without the issuance instruments
// (Config.DisableMetrics) every hook of the signing, sync and apply paths
// is a no-op and their series are absent; the Raft metrics remain.
func TestMetricsDisabledIssuance(t *testing.T) {
	m := newServerMetrics(false)
	if m.iss != nil {
		t.Fatal("issuance metrics installed")
	}
	m.iss.observeSign(svidX509, time.Now())
	m.iss.countX509Results([]*sigilv1.X509SVIDResult{{}})
	refused := status.Error(codes.PermissionDenied, "banned")
	if err := m.iss.countRefused(svidX509, 3, refused); err != refused {
		t.Errorf("countRefused returned %v, want its error", err)
	}
	var err error
	m.iss.countJWT(&err)
	m.iss.syncOpened()()
	m.iss.countPushed(5)
	m.ObserveCommit(time.Millisecond, nil)
	mfs, gerr := m.reg.Gather()
	if gerr != nil {
		t.Fatal(gerr)
	}
	names := map[string]bool{}
	for _, mf := range mfs {
		names[mf.GetName()] = true
	}
	for _, absent := range []string{"sigil_server_svids_signed_total", "sigil_server_svid_sign_seconds", "sigil_server_sync_streams", "sigil_server_sync_entries_pushed_total", "sigil_server_raft_apply_seconds"} {
		if names[absent] {
			t.Errorf("%s exported with the issuance metrics disabled", absent)
		}
	}
	if !names["sigil_raft_commit_duration_seconds"] {
		t.Errorf("the Raft metrics went too: %v", names)
	}
}

// TestFailureCountersWithMetricsDisabled: the health evaluation's
// failure counters count whether or not the issuance metrics are
// enabled (the burst alerts must not depend on DisableMetrics).
func TestFailureCountersWithMetricsDisabled(t *testing.T) {
	for _, enabled := range []bool{true, false} {
		m := newServerMetrics(enabled)
		m.countX509Results([]*sigilv1.X509SVIDResult{
			{Status: &sigilv1.Status{Code: int32(codes.InvalidArgument)}},
			{Status: &sigilv1.Status{Code: int32(codes.PermissionDenied)}},
			{},
		})
		_ = m.countRefused(svidX509, 3, status.Error(codes.Internal, "signer down"))
		_ = m.countRefused(svidX509, 4, status.Error(codes.PermissionDenied, "banned"))
		err := status.Error(codes.Unavailable, "no key")
		m.countJWT(&err)
		m.observeAttestation("join_token", attestRefused, "bad_token")
		if got := m.signFailures.Load(); got != 5 {
			t.Errorf("metrics enabled=%v: sign failures %d, want 5 (1 in the batch, 3 refused, 1 JWT; denials are not failures)", enabled, got)
		}
		if got := m.attestFailures.Load(); got != 1 {
			t.Errorf("metrics enabled=%v: attestation failures %d, want 1", enabled, got)
		}
	}
}
