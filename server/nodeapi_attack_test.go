package server

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/attestor/node/jointoken"
	"github.com/sigil-id/sigil/clock"
	"github.com/sigil-id/sigil/internal/eventually"
)

// nodeAttackServer starts a server like startServer, with its clock and
// node API limits changed by the callers' functions first.
func nodeAttackServer(t *testing.T, clk clock.Clock, setLimits func(*nodeLimits)) *harness {
	t.Helper()
	return startServerWith(t, clk, setLimits)
}

// nodeAttackState is what a refused attestation must leave unchanged.
type nodeAttackState struct {
	index  uint64
	agents int
}

func (h *harness) nodeAttackState() nodeAttackState {
	h.t.Helper()
	resp, err := h.admin.ListAgents(context.Background(), &sigilv1.ListAgentsRequest{})
	if err != nil {
		h.t.Fatal(err)
	}
	return nodeAttackState{index: h.srv.store.LastIndex(), agents: len(resp.Agents)}
}

func (h *harness) requireNodeAttackState(what string, want nodeAttackState) {
	h.t.Helper()
	if got := h.nodeAttackState(); got != want {
		h.t.Fatalf("%s changed the state: Raft index %d -> %d, agents %d -> %d", what, want.index, got.index, want.agents, got.agents)
	}
}

func attackCSR(t *testing.T) []byte {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return newCSR(t, key, "agent")
}

// TestNodeAttackBogusTokenCostsNoSignatureOrWrite: a made-up, an already
// used and an expired join token are refused with one and the same
// message before the server signs anything or writes to Raft. The
// refusal comes before the CSR is even parsed (a garbage CSR gets the
// same PermissionDenied), so nothing can have been signed, and the Raft
// index does not move.
func TestNodeAttackBogusTokenCostsNoSignatureOrWrite(t *testing.T) {
	clk := clock.NewFake(time.Now())
	h := nodeAttackServer(t, clk, nil)
	c := h.nodeClient(nil)
	ctx := context.Background()

	used, _ := h.token()
	if _, err := c.Attest(ctx, &sigilv1.AttestRequest{AttestationType: jointoken.Name, Payload: []byte(used), Csr: attackCSR(t)}); err != nil {
		t.Fatalf("legitimate attestation: %v", err)
	}
	resp, err := h.admin.CreateJoinToken(ctx, &sigilv1.CreateJoinTokenRequest{Ttl: 60})
	if err != nil {
		t.Fatal(err)
	}
	expired := resp.Token
	clk.Add(2 * time.Minute)
	// Moving the clock ends the lifetime of c's connection, which is
	// unauthenticated: the guard closes it (and the call in flight on it
	// could see EOF). The refused attempts come on a new connection.
	c = h.nodeClient(nil)
	madeUp, _ := jointoken.Generate()

	before := h.nodeAttackState()
	const want = "attestation failed: " + jointoken.RefusedMessage
	var answers []string
	for _, tc := range []struct{ name, token string }{{"made-up", madeUp}, {"used", used}, {"expired", expired}} {
		for _, csr := range [][]byte{attackCSR(t), []byte("not a CSR")} {
			_, err := c.Attest(ctx, &sigilv1.AttestRequest{AttestationType: jointoken.Name, Payload: []byte(tc.token), Csr: csr})
			if status.Code(err) != codes.PermissionDenied || status.Convert(err).Message() != want {
				answers = append(answers, fmt.Sprintf("%s token: got %v, want PermissionDenied %q", tc.name, err, want))
			}
		}
	}
	h.requireNodeAttackState("refused attestations", before)
	if len(answers) > 0 {
		t.Fatal(strings.Join(answers, "\n"))
	}
	if n := h.logs.FilterMessage("agent attested").Len(); n != 1 {
		t.Errorf("%d agents attested, want 1", n)
	}
	// The log tells the operator the precise reason.
	var reasons []string
	for _, e := range h.logs.FilterMessage("node attestation refused").All() {
		reasons = append(reasons, fmt.Sprint(e.ContextMap()["error"]))
	}
	all := strings.Join(reasons, "\n")
	if !strings.Contains(all, "never issued, already used") || !strings.Contains(all, "expired at") {
		t.Errorf("log lines do not give the reasons:\n%s", all)
	}
}

// TestNodeAttackJoinTokenConcurrentUse: 20 concurrent uses of one valid
// token on 20 connections: exactly one gets an SVID, and the losers cost
// no Raft write (the old server signed and appended a command for each).
func TestNodeAttackJoinTokenConcurrentUse(t *testing.T) {
	h := startServer(t)
	token, agentID := h.token()
	before := h.nodeAttackState()
	const n = 20
	clients := make([]sigilv1.NodeClient, n)
	csrs := make([][]byte, n)
	for i := range clients {
		clients[i], csrs[i] = h.nodeClient(nil), attackCSR(t)
	}
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		ok      []string
		refused = map[codes.Code]int{}
		start   = make(chan struct{})
	)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			<-start
			resp, err := clients[i].Attest(context.Background(), &sigilv1.AttestRequest{AttestationType: jointoken.Name, Payload: []byte(token), Csr: csrs[i]})
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				refused[status.Code(err)]++
				return
			}
			ok = append(ok, resp.SpiffeId)
		}(i)
	}
	close(start)
	wg.Wait()
	if len(ok) != 1 || ok[0] != agentID || refused[codes.PermissionDenied] != n-1 {
		t.Fatalf("successes %v, refusals %v; want exactly one success for %s and %d PermissionDenied", ok, refused, agentID, n-1)
	}
	if got := h.nodeAttackState(); got.index != before.index+1 || got.agents != before.agents+1 {
		t.Fatalf("Raft index %d -> %d, agents %d -> %d; want one write and one agent", before.index, got.index, before.agents, got.agents)
	}
}

// padAttest adds an unknown field of size bytes to req: a request the
// old server decoded and served whatever its size.
func padAttest(req *sigilv1.AttestRequest, size int) *sigilv1.AttestRequest {
	req.ProtoReflect().SetUnknown(protowire.AppendBytes(protowire.AppendTag(nil, 999, protowire.BytesType), bytes.Repeat([]byte{'x'}, size)))
	return req
}

// TestNodeAttackOversizedAttestationRefused: an attestation of 1 MiB on
// a connection without an agent SVID is refused (the connection's read
// budget ends it, or gRPC's size check) although it carries a valid token;
// the token is not consumed and nothing is written, so the same token then
// attests normally. An agent with a valid SVID gets a clear
// ResourceExhausted for an attestation over the size cap, and its large
// batches still work.
func TestNodeAttackOversizedAttestationRefused(t *testing.T) {
	h := startServer(t)
	token, agentID := h.token()
	before := h.nodeAttackState()
	_, err := h.nodeClient(nil).Attest(context.Background(), padAttest(&sigilv1.AttestRequest{
		AttestationType: jointoken.Name, Payload: []byte(token), Csr: attackCSR(t)}, 1<<20))
	if c := status.Code(err); c != codes.Unavailable && c != codes.ResourceExhausted {
		t.Fatalf("1 MiB attestation: got %v, want the connection closed (Unavailable) or ResourceExhausted", err)
	}
	h.requireNodeAttackState("an oversized attestation", before)

	// The server is still up and the token unspent.
	resp, err := h.nodeClient(nil).Attest(context.Background(), &sigilv1.AttestRequest{
		AttestationType: jointoken.Name, Payload: []byte(token), Csr: attackCSR(t)})
	if err != nil || resp.SpiffeId != agentID {
		t.Fatalf("attestation after the oversized one: %v", err)
	}

	a := h.attest()
	_, err = a.node.Attest(context.Background(), padAttest(&sigilv1.AttestRequest{
		AttestationType: jointoken.Name, Payload: []byte(token), Csr: attackCSR(t)}, 40<<10))
	if status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "exceeds the limit") {
		t.Fatalf("40 KiB attestation from an agent: got %v, want ResourceExhausted about the size limit", err)
	}

	// A batch far over the unauthenticated read budget (500 CSRs, about
	// 110 KB) works for an agent.
	e := h.createEntry("spiffe://example.org/batch", a.id, "unix:uid:1000")
	req := &sigilv1.BatchNewX509SVIDRequest{}
	for i := 0; i < 500; i++ {
		req.Requests = append(req.Requests, &sigilv1.X509SVIDRequest{EntryId: e.Id, Csr: attackCSR(t)})
	}
	bresp, err := a.node.BatchNewX509SVID(context.Background(), req)
	if err != nil {
		t.Fatalf("batch of %d CSRs: %v", len(req.Requests), err)
	}
	for _, r := range bresp.Results {
		if r.Status.GetCode() != 0 {
			t.Fatalf("batch result: %s", r.Status.GetMessage())
		}
	}
	if g := h.srv.nodeGuard; g.unauthConnCount() > 3 {
		t.Errorf("%d connections counted as unauthenticated; the agent's should not be", g.unauthConnCount())
	}
}

// TestNodeAttackRateLimit: attestations from one source over its token
// bucket, and from all sources over the global one, get ResourceExhausted
// before their message is read; the bucket refills with the (injected)
// clock. Nothing is written.
func TestNodeAttackRateLimit(t *testing.T) {
	clk := clock.NewFake(time.Now())
	h := nodeAttackServer(t, clk, func(l *nodeLimits) {
		l.AttestRatePerSource, l.AttestBurstPerSource = 1, 3
		l.AttestRate, l.AttestBurst = 0.5, 5
	})
	c := h.nodeClient(nil)
	before := h.nodeAttackState()
	attest := func() error {
		tok, _ := jointoken.Generate()
		_, err := c.Attest(context.Background(), &sigilv1.AttestRequest{AttestationType: jointoken.Name, Payload: []byte(tok), Csr: attackCSR(t)})
		return err
	}
	for i := 0; i < 3; i++ {
		if err := attest(); status.Code(err) != codes.PermissionDenied {
			t.Fatalf("call %d within the burst: got %v, want PermissionDenied", i+1, err)
		}
	}
	err := attest()
	if status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "rate limit exceeded for 127.0.0.1") {
		t.Fatalf("call over the source's burst: got %v, want ResourceExhausted", err)
	}
	clk.Add(time.Second)
	if err := attest(); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("after a second: got %v, want PermissionDenied", err)
	}
	// The global bucket (burst 5 at 0.5/s: 1.5 left) runs out before a
	// fresh source's does.
	g := h.srv.nodeGuard
	g.mu.Lock()
	g.sources.Clear()
	g.mu.Unlock()
	if err := attest(); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("fifth call: got %v, want PermissionDenied", err)
	}
	if err := attest(); status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "rate limit exceeded (") {
		t.Fatalf("call over the global burst: got %v, want ResourceExhausted", err)
	}
	h.requireNodeAttackState("rate-limited attestations", before)
	nodeAttackNoneInFlight(t, g)
}

// nodeAttackNoneInFlight waits (bounded) until the guard counts no
// attestation in flight: the count drops when gRPC ends a call's context.
func nodeAttackNoneInFlight(t *testing.T, g *nodeGuard) {
	t.Helper()
	eventually.NoError(t, 10*time.Second, func() error {
		if n := g.attestsInFlight(); n != 0 {
			return fmt.Errorf("%d attestations still counted in flight", n)
		}
		return nil
	})
}

// TestNodeAttackAttestsInFlight: a caller that opens attestation calls
// and never sends their message (slow loris) holds at most its source's
// share of in-flight attestations; the next call from that source gets
// ResourceExhausted before anything is read, and the slots come back when
// the calls end.
func TestNodeAttackAttestsInFlight(t *testing.T) {
	h := nodeAttackServer(t, clock.NewFake(time.Now()), func(l *nodeLimits) { l.MaxAttestsInFlightPerSource = 2 })
	addr := h.srv.NodeAddr().String()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{InsecureSkipVerify: true}))) //nolint:gosec // test client
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithCancel(context.Background())
	desc := &grpc.StreamDesc{ClientStreams: true}
	for i := 0; i < 2; i++ {
		if _, err := conn.NewStream(ctx, desc, sigilv1.Node_Attest_FullMethodName); err != nil {
			t.Fatal(err)
		}
	}
	g := h.srv.nodeGuard
	eventually.NoError(t, 10*time.Second, func() error {
		if n := g.attestsInFlight(); n < 2 {
			return fmt.Errorf("%d attestations in flight, want the 2 open calls", n)
		}
		return nil
	})
	if n := g.attestsInFlight(); n != 2 {
		t.Fatalf("%d attestations in flight, want the 2 open calls", n)
	}
	tok, _ := jointoken.Generate()
	c := sigilv1.NewNodeClient(conn)
	_, err = c.Attest(context.Background(), &sigilv1.AttestRequest{AttestationType: jointoken.Name, Payload: []byte(tok), Csr: attackCSR(t)})
	if status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "in progress from 127.0.0.1") {
		t.Fatalf("third call: got %v, want ResourceExhausted", err)
	}
	cancel()
	nodeAttackNoneInFlight(t, g)
	_, err = c.Attest(context.Background(), &sigilv1.AttestRequest{AttestationType: jointoken.Name, Payload: []byte(tok), Csr: attackCSR(t)})
	if status.Code(err) != codes.PermissionDenied {
		t.Fatalf("after the open calls ended: got %v, want PermissionDenied", err)
	}
}

// TestNodeAttackUnauthenticatedConnections: connections without an agent
// SVID are capped per source, closed at the end of their lifetime (by
// the injected clock) and cannot call anything but Attest.
func TestNodeAttackUnauthenticatedConnections(t *testing.T) {
	clk := clock.NewFake(time.Now())
	h := nodeAttackServer(t, clk, func(l *nodeLimits) { l.MaxUnauthConnsPerSource = 2 })
	base := clk.Waiters()
	dialTLS := func() (*tls.Conn, error) { return nodeAttackDialTLS(h.srv.NodeAddr().String()) }
	c1, err := dialTLS()
	if err != nil {
		t.Fatal(err)
	}
	defer c1.Close()
	c2, err := dialTLS()
	if err != nil {
		t.Fatal(err)
	}
	if c3, err := dialTLS(); err == nil {
		c3.Close()
		t.Fatal("a third unauthenticated connection from one source was accepted")
	}
	c2.Close()
	// The server notices the close; then there is room again.
	var c4 *tls.Conn
	eventually.NoError(t, 10*time.Second, func() (err error) {
		if c4, err = dialTLS(); err != nil {
			return fmt.Errorf("no room after a connection closed: %w", err)
		}
		return nil
	})
	defer c4.Close()

	// At the end of its lifetime the server closes an idle connection.
	// c1, c2 and c4 each started a lifetime timer.
	eventually.NoError(t, 10*time.Second, func() error {
		if n := clk.Waiters() - base; n < 3 {
			return fmt.Errorf("%d connection lifetime timers started, want 3", n)
		}
		return nil
	})
	clk.Add(h.srv.nodeLimits.UnauthConnLifetime)
	c1.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 4096)
	for {
		_, err = c1.Read(buf)
		if err != nil {
			break
		}
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatal("the server kept an unauthenticated connection past its lifetime")
	}
	t.Logf("read after the lifetime: %v", err)

	// Only Attest is open: a Sync without an SVID is refused. The
	// server may not have counted c1's close yet when c1 reads EOF (it
	// closes, then forgets the connection), and until it has, a new
	// connection from this source is one too many and reset at the
	// handshake (Unavailable): try again until the server answers.
	sync := func() error {
		stream, err := h.nodeClient(nil).Sync(context.Background(), &sigilv1.SyncRequest{})
		if err == nil {
			_, err = stream.Recv()
		}
		return err
	}
	err = sync()
	for deadline := time.Now().Add(10 * time.Second); status.Code(err) == codes.Unavailable && time.Now().Before(deadline); err = sync() {
		time.Sleep(50 * time.Millisecond)
	}
	if status.Code(err) != codes.Unauthenticated {
		t.Fatalf("Sync without an SVID: got %v, want Unauthenticated", err)
	}
}

// nodeAttackDialTLS opens a TLS connection without a client certificate
// and completes the handshake.
func nodeAttackDialTLS(addr string) (*tls.Conn, error) {
	raw, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return nil, err
	}
	c := tls.Client(raw, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"h2"}}) //nolint:gosec // test client
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if err := c.Handshake(); err != nil {
		raw.Close()
		return nil, err
	}
	return c, nil
}

// TestNodeAttackConnectionRate: one source opening connections faster
// than its token bucket allows has them closed before the TLS handshake
// (which would cost the server a signature); the bucket refills with the
// injected clock.
func TestNodeAttackConnectionRate(t *testing.T) {
	clk := clock.NewFake(time.Now())
	h := nodeAttackServer(t, clk, func(l *nodeLimits) { l.ConnRatePerSource, l.ConnBurstPerSource = 1, 2 })
	addr := h.srv.NodeAddr().String()
	for i := 0; i < 2; i++ {
		c, err := nodeAttackDialTLS(addr)
		if err != nil {
			t.Fatalf("connection %d within the burst: %v", i+1, err)
		}
		c.Close()
	}
	if c, err := nodeAttackDialTLS(addr); err == nil {
		c.Close()
		t.Fatal("a connection over the source's rate was accepted")
	}
	clk.Add(time.Second)
	c, err := nodeAttackDialTLS(addr)
	if err != nil {
		t.Fatalf("after a second: %v", err)
	}
	c.Close()
}

// TestNodeAttackUnauthConnCapSparesAgents: when the established
// connections without an agent SVID reach their cap, a new one is closed
// right after its handshake, while an agent with a valid SVID still
// connects and is served.
func TestNodeAttackUnauthConnCapSparesAgents(t *testing.T) {
	h := nodeAttackServer(t, clock.NewFake(time.Now()), func(l *nodeLimits) { l.MaxUnauthConns = 1 })
	a := h.attest() // its attestation connection stays open and fills the cap
	if n := h.srv.nodeGuard.unauthConnCount(); n != 1 {
		t.Fatalf("%d unauthenticated connections counted, want 1", n)
	}
	c, err := nodeAttackDialTLS(h.srv.NodeAddr().String())
	if err == nil {
		defer c.Close()
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, err = c.Read(make([]byte, 1024))
		var ne net.Error
		if err == nil || errors.As(err, &ne) && ne.Timeout() {
			t.Fatalf("a second unauthenticated connection was kept open: %v", err)
		}
	}
	if _, err := a.node.BatchNewX509SVID(context.Background(), &sigilv1.BatchNewX509SVIDRequest{}); err != nil {
		t.Fatalf("the agent was not served while unauthenticated connections were at their cap: %v", err)
	}
}

// BenchmarkNodeAttackGuardedBatchIssue measures the authenticated hot
// path behind the node API guard: an agent with a valid SVID has batches
// of 500 CSRs signed over real TLS on loopback. Reports SVIDs per second.
func BenchmarkNodeAttackGuardedBatchIssue(b *testing.B) {
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
	conn, err := grpc.NewClient("unix://"+cfg.AdminSocket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	admin := sigilv1.NewAdminClient(conn)
	tok, err := admin.CreateJoinToken(ctx, &sigilv1.CreateJoinTokenRequest{})
	if err != nil {
		b.Fatal(err)
	}
	dial := func(cert *tls.Certificate) *grpc.ClientConn {
		tc := &tls.Config{InsecureSkipVerify: true} //nolint:gosec // benchmark client on loopback
		if cert != nil {
			tc.Certificates = []tls.Certificate{*cert}
		}
		c, err := grpc.NewClient(srv.NodeAddr().String(), grpc.WithTransportCredentials(credentials.NewTLS(tc)))
		if err != nil {
			b.Fatal(err)
		}
		return c
	}
	anon := dial(nil)
	defer anon.Close()
	key := mustKey(b)
	att, err := sigilv1.NewNodeClient(anon).Attest(ctx, &sigilv1.AttestRequest{AttestationType: jointoken.Name, Payload: []byte(tok.Token), Csr: newCSR(b, key, "")})
	if err != nil {
		b.Fatal(err)
	}
	agentConn := dial(&tls.Certificate{Certificate: att.SvidChain, PrivateKey: key})
	defer agentConn.Close()
	node := sigilv1.NewNodeClient(agentConn)
	created, err := admin.BatchCreateEntry(ctx, &sigilv1.BatchCreateEntryRequest{Entries: []*sigilv1.Entry{{
		SpiffeId: "spiffe://example.org/bench", ParentId: att.SpiffeId, Selectors: []*sigilv1.Selector{{Type: "unix", Value: "uid:1000"}}}}})
	if err != nil || created.Results[0].Status.GetCode() != 0 {
		b.Fatalf("create entry: %v %v", err, created)
	}
	req := &sigilv1.BatchNewX509SVIDRequest{}
	for i := 0; i < 500; i++ {
		req.Requests = append(req.Requests, &sigilv1.X509SVIDRequest{EntryId: created.Results[0].Entry.Id, Csr: newCSR(b, mustKey(b), "")})
	}
	b.ResetTimer()
	start := time.Now()
	for i := 0; i < b.N; i++ {
		resp, err := node.BatchNewX509SVID(ctx, req)
		if err != nil || len(resp.Results) != len(req.Requests) || resp.Results[0].Status.GetCode() != 0 {
			b.Fatalf("batch: %v", err)
		}
	}
	b.ReportMetric(float64(b.N*len(req.Requests))/time.Since(start).Seconds(), "svids/s")
}
