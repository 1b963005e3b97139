package server

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"math/big"
	"net/url"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/attestor/node/jointoken"
	"github.com/sigil-id/sigil/health"
	"github.com/sigil-id/sigil/internal/clusterpb"
)

// heldIDs are the agents whose reports s holds.
func heldIDs(s *Server) map[string]health.AgentReport {
	out := map[string]health.AgentReport{}
	for _, r := range s.reports.healthReports(s.cfg.NodeName) {
		out[r.AgentID] = r
	}
	return out
}

// TestNodeReportIdentityFromCertificate: a report is held under the agent
// of the caller's SVID; the message has no field naming the agent, and a
// report that names another agent's SPIFFE ID in agent_svid changes only
// the caller's report. Deltas apply on the report held, a delta on
// another base (or another agent's) gets need_full.
func TestNodeReportIdentityFromCertificate(t *testing.T) {
	h := startServer(t)
	noReportGap(h.srv)
	a, b := h.attest(), h.attest()
	ctx := context.Background()

	// The contract: no agent ID in the message, only in the SVID states
	// (the agent's own SPIFFE ID, which is informative).
	fields := (&sigilv1.AgentReport{}).ProtoReflect().Descriptor().Fields()
	for i := range fields.Len() {
		if name := string(fields.Get(i).Name()); strings.Contains(name, "agent_id") || strings.Contains(name, "spiffe_id") {
			t.Fatalf("AgentReport has a field %s naming an agent", name)
		}
	}

	forged := rsFull(1, rsSVID("e1", 100))
	forged.AgentSvid.SpiffeId = b.id // a claims to be b
	resp, err := a.node.Report(ctx, forged)
	if err != nil {
		t.Fatal(err)
	}
	if resp.NeedFull || resp.IntervalSeconds != 0 {
		t.Fatalf("answer to a full report: %v", resp)
	}
	held := heldIDs(h.srv)
	if _, ok := held[b.id]; ok || len(held) != 1 {
		t.Fatalf("a's report is held under %v", held)
	}
	if r := held[a.id]; rsEntries(r) != "e1@100" {
		t.Fatalf("a's report: %+v", r)
	}
	// b's delta on a's seq: b holds nothing, so need_full; a's unchanged.
	resp, err = b.node.Report(ctx, rsDelta(2, 1, 0, nil, "e1"))
	if err != nil || !resp.NeedFull {
		t.Fatalf("b's delta with no report held: %v %v", resp, err)
	}
	if r := heldIDs(h.srv)[a.id]; rsEntries(r) != "e1@100" {
		t.Fatalf("b's delta changed a's report: %s", rsEntries(r))
	}
	// a's delta on its own report applies; the same base again does not.
	if resp, err = a.node.Report(ctx, rsDelta(2, 1, 1, []*sigilv1.SVIDState{rsSVID("e1", 150)})); err != nil || resp.NeedFull {
		t.Fatalf("a's delta: %v %v", resp, err)
	}
	if resp, err = a.node.Report(ctx, rsDelta(3, 1, 0, nil, "e1")); err != nil || !resp.NeedFull {
		t.Fatalf("a's delta on a stale base: %v %v", resp, err)
	}
	if r := heldIDs(h.srv)[a.id]; rsEntries(r) != "e1@150" {
		t.Fatalf("a's report after deltas: %s", rsEntries(r))
	}
}

// TestNodeReportRefusals: a caller without an agent SVID, an evicted or
// banned agent, and reports out of bounds (too many SVIDs, a string too
// long, a message over the node API's size limit) are refused, and
// nothing is stored; a banned agent's report is dropped.
func TestNodeReportRefusals(t *testing.T) {
	h := startServer(t)
	noReportGap(h.srv)
	a, ev := h.attest(), h.attest()
	ctx := context.Background()
	if _, err := h.nodeClient(nil).Report(ctx, rsFull(1)); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("report without an SVID: %v, want Unauthenticated", err)
	}
	// A TLS certificate not signed by the trust domain.
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	self := selfSignedAgent(t, key, a.id)
	if _, err := h.nodeClient(self).Report(ctx, rsFull(1)); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("report with a self-signed certificate naming a: %v, want Unauthenticated", err)
	}
	if _, err := h.admin.EvictAgent(ctx, &sigilv1.EvictAgentRequest{SpiffeId: ev.id}); err != nil {
		t.Fatal(err)
	}
	if _, err := ev.node.Report(ctx, rsFull(1)); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("report of an evicted agent: %v, want PermissionDenied", err)
	}
	if n := h.srv.reports.len(); n != 0 {
		t.Fatalf("%d reports held after refusals", n)
	}

	if _, err := a.node.Report(ctx, rsFull(1, rsSVID("e1", 100))); err != nil {
		t.Fatal(err)
	}
	many := make([]*sigilv1.SVIDState, MaxReportSVIDs+1)
	for i := range many {
		many[i] = &sigilv1.SVIDState{EntryId: fmt.Sprint(i)}
	}
	big := make([]*sigilv1.SVIDState, MaxReportSVIDs)
	for i := range big {
		big[i] = &sigilv1.SVIDState{EntryId: fmt.Sprint(i), SpiffeId: "spiffe://example.org/" + strings.Repeat("w", 230)}
	}
	for _, tc := range []struct {
		name string
		r    *sigilv1.AgentReport
		code codes.Code
	}{
		{"too many svids", &sigilv1.AgentReport{Seq: 2, Full: true, Svids: many}, codes.InvalidArgument},
		{"spiffe_id too long", rsFull(2, &sigilv1.SVIDState{EntryId: "e", SpiffeId: strings.Repeat("x", maxReportSPIFFEID+1)}), codes.InvalidArgument},
		{"last_error too long", rsFull(2, &sigilv1.SVIDState{EntryId: "e", LastError: strings.Repeat("x", maxReportError+1)}), codes.InvalidArgument},
		{"over 4 MiB", &sigilv1.AgentReport{Seq: 2, Full: true, Svids: big}, codes.ResourceExhausted},
	} {
		if _, err := a.node.Report(ctx, tc.r); status.Code(err) != tc.code {
			t.Fatalf("%s: %v, want %v", tc.name, err, tc.code)
		}
		if r := heldIDs(h.srv)[a.id]; rsEntries(r) != "e1@100" || len(heldIDs(h.srv)) != 1 {
			t.Fatalf("%s: the report held changed: %s", tc.name, rsEntries(r))
		}
	}
	// A banned agent is refused and its report is dropped at the next
	// answer to the leader.
	if _, err := h.admin.BanAgent(ctx, &sigilv1.BanAgentRequest{SpiffeId: a.id}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.node.Report(ctx, rsDelta(2, 1, 0, nil)); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("report of a banned agent: %v, want PermissionDenied", err)
	}
	resp, err := h.srv.agentReports(ctx, &clusterpb.AgentReportsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Reports) != 0 || h.srv.reports.len() != 0 {
		t.Fatalf("a banned agent's report is still held: %v", resp.Reports)
	}
}

// TestAgentReportsCountsFailures: the AgentReports answer carries this
// process's instance and its cumulative failure counters: a refused
// attestation counts as an attestation failure, a request that fails to
// sign (a bad CSR) as a signing failure, a request refused for lack of
// authorization as neither.
func TestAgentReportsCountsFailures(t *testing.T) {
	h := startServer(t)
	noReportGap(h.srv)
	ctx := context.Background()
	a := h.attest()
	e := h.createEntry("spiffe://example.org/web", a.id, "unix:uid:1000")
	before, err := h.srv.agentReports(ctx, &clusterpb.AgentReportsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if before.Instance == "" || before.Instance != h.srv.instance {
		t.Fatalf("instance %q", before.Instance)
	}
	madeUp, _ := jointoken.Generate()
	if _, err := h.nodeClient(nil).Attest(ctx, &sigilv1.AttestRequest{AttestationType: jointoken.Name, Payload: []byte(madeUp), Csr: attackCSR(t)}); err == nil {
		t.Fatal("made-up token accepted")
	}
	res, err := a.node.BatchNewX509SVID(ctx, &sigilv1.BatchNewX509SVIDRequest{Requests: []*sigilv1.X509SVIDRequest{
		{EntryId: e.Id, Csr: []byte("not a CSR")},
		{EntryId: "not-mine", Csr: attackCSR(t)},
	}})
	if err != nil || res.Results[0].Status.Code == 0 || res.Results[1].Status.Code != int32(codes.PermissionDenied) {
		t.Fatalf("batch: %v %v", res, err)
	}
	after, err := h.srv.agentReports(ctx, &clusterpb.AgentReportsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if d := after.AttestationFailures - before.AttestationFailures; d != 1 {
		t.Fatalf("attestation failures +%d, want +1", d)
	}
	if d := after.SigningFailures - before.SigningFailures; d != 1 {
		t.Fatalf("signing failures +%d, want +1", d)
	}
}

// TestNodeReportIntervalAnswer: the answer's interval_seconds is
// Config.AgentReportInterval; Validate bounds it.
func TestNodeReportIntervalAnswer(t *testing.T) {
	cfg := DefaultConfig()
	cfg.TrustDomain = testTD
	cfg.DataDir = filepath.Join(t.TempDir(), "data")
	cfg.AdminSocket = filepath.Join(t.TempDir(), "admin.sock")
	withPlugins(t, &cfg, "memory")
	for _, bad := range []time.Duration{-time.Second, time.Second, 11 * time.Minute} {
		c := cfg
		c.AgentReportInterval = bad
		if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "report_interval") {
			t.Fatalf("interval %v: %v", bad, err)
		}
	}
	cfg.AgentReportInterval = 45 * time.Second
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	agent := testTD.ID().String() + "/sigil/agent/join_token/x"
	id := spiffeid.RequireFromString(agent)
	resp, err := (&nodeAPI{s: s}).Report(context.WithValue(context.Background(), agentKey{}, id), rsFull(1))
	if err != nil || resp.IntervalSeconds != 45 || resp.NeedFull {
		t.Fatalf("answer %v %v, want interval_seconds 45", resp, err)
	}
	if _, err := (&nodeAPI{s: s}).Report(context.Background(), rsFull(1)); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("a call without an agent: %v", err)
	}
}

// selfSignedAgent is a certificate naming the agent id, signed by key
// itself (not by the trust domain).
func selfSignedAgent(t *testing.T, key *ecdsa.PrivateKey, id string) *tls.Certificate {
	u, err := url.Parse(id)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), URIs: []*url.URL{u},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// agentOn is a test agent attested on n, with a node API client to it.
func agentOn(t *testing.T, n *memNode) *testAgent {
	return (&harness{t: t, srv: n.srv, admin: sigilv1.NewAdminClient(n.admin)}).attest()
}

// clientTo is a node API client to n with a's SVID.
func clientTo(t *testing.T, n *memNode, a *testAgent) sigilv1.NodeClient {
	return (&harness{t: t, srv: n.srv}).nodeClient(&tls.Certificate{Certificate: a.chain, PrivateKey: a.key})
}

// TestGatherHealthAcrossMembers: the leader's gatherHealth sees the
// reports agents sent to followers (with the server that holds them) and
// its own, one per agent (the latest received), every server's counters,
// follows changes incrementally (a member's unchanged reports come from
// the leader's cache), and lists a stopped member as unreachable while
// keeping the reports it last answered with.
func TestGatherHealthAcrossMembers(t *testing.T) {
	mc := startMemCluster(t, 3)
	for _, n := range mc.live() {
		noReportGap(n.srv)
	}
	l := mc.leader()
	var f, g *memNode
	for _, n := range mc.live() {
		switch {
		case n == l:
		case f == nil:
			f = n
		default:
			g = n
		}
	}
	ctx := context.Background()
	a, c := agentOn(t, f), agentOn(t, f)
	b := agentOn(t, g)
	for _, tc := range []struct {
		ag *testAgent
		r  *sigilv1.AgentReport
	}{{a, rsFull(1, rsSVID("a1", 100))}, {c, rsFull(1, rsSVID("c1", 100))}, {b, rsFull(1, rsSVID("b1", 100))}} {
		if _, err := tc.ag.node.Report(ctx, tc.r); err != nil {
			t.Fatal(err)
		}
	}
	byAgent := func(v healthView) map[string]health.AgentReport {
		out := map[string]health.AgentReport{}
		for _, r := range v.Reports {
			if _, dup := out[r.AgentID]; dup {
				t.Fatalf("two reports for %s", r.AgentID)
			}
			out[r.AgentID] = r
		}
		return out
	}
	v := l.srv.gatherHealth(ctx)
	if len(v.Unreachable) != 0 || len(v.Counters) != 3 {
		t.Fatalf("first gather: unreachable %v, counters %v", v.Unreachable, v.Counters)
	}
	got := byAgent(v)
	if r := got[a.id]; r.Server != f.name || rsEntries(r) != "a1@100" {
		t.Fatalf("a's report: %+v", r)
	}
	if r := got[b.id]; r.Server != g.name || rsEntries(r) != "b1@100" || r.AgentSVID.Serial != "ff" {
		t.Fatalf("b's report: %+v", r)
	}
	// a's state changes on f; c's does not: f's next answer carries a's
	// report only, and the leader still knows c's.
	if _, err := a.node.Report(ctx, rsDelta(2, 1, 1, []*sigilv1.SVIDState{rsSVID("a1", 160)})); err != nil {
		t.Fatal(err)
	}
	l.srv.gather.mu.Lock()
	since := l.srv.gather.members[f.name].generation
	l.srv.gather.mu.Unlock()
	inc, err := f.srv.agentReports(ctx, &clusterpb.AgentReportsRequest{Since: since})
	if err != nil {
		t.Fatal(err)
	}
	for _, hr := range inc.Reports {
		if (hr.AgentId == a.id) != (hr.Report != nil) {
			t.Fatalf("incremental answer: %s sent with report %v", hr.AgentId, hr.Report != nil)
		}
	}
	got = byAgent(l.srv.gatherHealth(ctx))
	if rsEntries(got[a.id]) != "a1@160" || rsEntries(got[c.id]) != "c1@100" || got[c.id].Server != f.name {
		t.Fatalf("second gather: a %s, c %s", rsEntries(got[a.id]), rsEntries(got[c.id]))
	}
	// a moves to the leader: the latest report wins.
	if _, err := clientTo(t, l, a).Report(ctx, rsFull(1, rsSVID("a1", 170))); err != nil {
		t.Fatal(err)
	}
	got = byAgent(l.srv.gatherHealth(ctx))
	if r := got[a.id]; r.Server != l.name || rsEntries(r) != "a1@170" {
		t.Fatalf("after a reported to the leader: %+v", r)
	}
	// g stops: unreachable, its last reports kept.
	g.stop()
	v = l.srv.gatherHealth(ctx)
	if err := v.Unreachable[g.name]; err == nil || len(v.Unreachable) != 1 || !strings.HasPrefix(err.Error(), "server: agent reports from ") {
		t.Fatalf("unreachable after %s stopped: %v", g.name, v.Unreachable)
	}
	if len(v.Counters) != 2 {
		t.Fatalf("counters of %d servers, want 2", len(v.Counters))
	}
	if r := byAgent(v)[b.id]; r.Server != g.name || rsEntries(r) != "b1@100" {
		t.Fatalf("b's report after %s stopped: %+v", g.name, r)
	}
}
