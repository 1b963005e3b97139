package agent

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/attestor/node/jointoken"
	"github.com/sigil-id/sigil/attestor/workload/unix"
	"github.com/sigil-id/sigil/audit"
	"github.com/sigil-id/sigil/clock"
	"github.com/sigil-id/sigil/internal/eventually"
	"github.com/sigil-id/sigil/workloadapi"
)

// fakeServer is a small implementation of the node API for tests: a real
// gRPC server with real TLS, one CA for agent and server certificates and a
// configurable signer for workload SVIDs.
type fakeServer struct {
	sigilv1.UnimplementedNodeServer
	t     *testing.T
	ca    *testCA
	token string
	addr  string

	mu          sync.Mutex
	signer      *testCA
	bundleCAs   []*testCA
	entries     map[string]*sigilv1.Entry
	federated   map[string]*sigilv1.Bundle // by trust domain, sent on every stream
	streams     map[chan *sigilv1.SyncResponse]struct{}
	tokenUsed   bool
	banned      bool
	evicted     bool          // the server does not know the agent (reattest_test.go)
	cut         chan struct{} // closed to end the open Sync streams (cutStreams)
	agentTTL    time.Duration
	attestCalls int
	renewCalls  int
	syncCalls   int
	issuedKeys  map[string]crypto.PublicKey
	now         func() time.Time
	// report answers Node.Report (report_test.go); nil: Unimplemented,
	// as an older server answers.
	report func(context.Context, *sigilv1.AgentReport) (*sigilv1.ReportResponse, error)
	// gate, when set, is called with the size of every BatchNewX509SVID
	// call before it is answered, without the lock; it may block.
	gate func(n int)
}

func newFakeServer(t *testing.T) *fakeServer {
	t.Helper()
	now := time.Now()
	token, err := jointoken.Generate()
	if err != nil {
		t.Fatal(err)
	}
	ca := newTestCA(t, now)
	s := &fakeServer{
		t:          t,
		ca:         ca,
		token:      token,
		signer:     ca,
		bundleCAs:  []*testCA{ca},
		entries:    make(map[string]*sigilv1.Entry),
		federated:  make(map[string]*sigilv1.Bundle),
		streams:    make(map[chan *sigilv1.SyncResponse]struct{}),
		agentTTL:   time.Hour,
		issuedKeys: make(map[string]crypto.PublicKey),
		now:        time.Now,
		cut:        make(chan struct{}),
	}
	serverKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serverID := spiffeid.RequireFromString("spiffe://example.org/sigil/server/s1")
	chain := ca.sign(t, serverID, serverKey.Public(), now.Add(-time.Minute), 24*time.Hour)
	pool := x509.NewCertPool()
	pool.AddCert(ca.cert)
	tlsCfg := &tls.Config{
		Certificates: []tls.Certificate{{Certificate: [][]byte{chain[0].Raw}, PrivateKey: serverKey, Leaf: chain[0]}},
		ClientAuth:   tls.VerifyClientCertIfGiven,
		ClientCAs:    pool,
		MinVersion:   tls.VersionTLS12,
		// Client SVIDs are checked at the server's (fake) time, as
		// they were issued.
		Time: func() time.Time { return s.now() },
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s.addr = l.Addr().String()
	srv := grpc.NewServer(grpc.Creds(credentials.NewTLS(tlsCfg)))
	sigilv1.RegisterNodeServer(srv, s)
	go srv.Serve(l)
	t.Cleanup(srv.Stop)
	return s
}

func (s *fakeServer) bundleLocked() *sigilv1.Bundle {
	b := &sigilv1.Bundle{TrustDomain: testTD.Name()}
	for _, ca := range s.bundleCAs {
		b.X509Authorities = append(b.X509Authorities, &sigilv1.X509Authority{Certificate: ca.cert.Raw})
	}
	return b
}

// callerID is the agent ID of the caller's client certificate.
func callerID(ctx context.Context) (spiffeid.ID, error) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return spiffeid.ID{}, status.Error(codes.Unauthenticated, "no peer")
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(info.State.PeerCertificates) == 0 {
		return spiffeid.ID{}, status.Error(codes.Unauthenticated, "no client certificate")
	}
	id, err := spiffeid.FromURI(info.State.PeerCertificates[0].URIs[0])
	if err != nil {
		return spiffeid.ID{}, status.Error(codes.Unauthenticated, err.Error())
	}
	return id, nil
}

func parseCSR(der []byte) (crypto.PublicKey, error) {
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return nil, err
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, err
	}
	return csr.PublicKey, nil
}

func derChain(chain []*x509.Certificate) [][]byte {
	var out [][]byte
	for _, c := range chain {
		out = append(out, c.Raw)
	}
	return out
}

func (s *fakeServer) Attest(ctx context.Context, req *sigilv1.AttestRequest) (*sigilv1.AttestResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.attestCalls++
	if req.GetAttestationType() == reattestName {
		return s.attestAgainLocked(req)
	}
	if req.GetAttestationType() != jointoken.Name || string(req.GetPayload()) != s.token {
		return nil, status.Error(codes.PermissionDenied, "bad token")
	}
	if s.tokenUsed {
		return nil, status.Error(codes.PermissionDenied, "token already used")
	}
	pub, err := parseCSR(req.GetCsr())
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	s.tokenUsed = true
	id := spiffeid.RequireFromString("spiffe://example.org/sigil/agent/join_token/" + jointoken.AgentIDSegment(s.token))
	chain, err := s.ca.issue(id, pub, s.now(), s.agentTTL)
	if err != nil {
		return nil, err
	}
	return &sigilv1.AttestResponse{SpiffeId: id.String(), SvidChain: derChain(chain), Bundle: s.bundleLocked()}, nil
}

func (s *fakeServer) RenewAgent(ctx context.Context, req *sigilv1.RenewAgentRequest) (*sigilv1.RenewAgentResponse, error) {
	id, err := callerID(ctx)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.renewCalls++
	if err := s.refusalLocked(id); err != nil {
		return nil, err
	}
	pub, err := parseCSR(req.GetCsr())
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	chain, err := s.ca.issue(id, pub, s.now(), s.agentTTL)
	if err != nil {
		return nil, err
	}
	return &sigilv1.RenewAgentResponse{SvidChain: derChain(chain)}, nil
}

func (s *fakeServer) Sync(_ *sigilv1.SyncRequest, stream grpc.ServerStreamingServer[sigilv1.SyncResponse]) error {
	id, err := callerID(stream.Context())
	if err != nil {
		return err
	}
	ch := make(chan *sigilv1.SyncResponse, 100)
	s.mu.Lock()
	s.syncCalls++
	if err := s.refusalLocked(id); err != nil {
		s.mu.Unlock()
		return err
	}
	cut := s.cut
	var entries []*sigilv1.Entry
	for _, e := range s.entries {
		entries = append(entries, e)
	}
	sort.Slice(entries, func(i, j int) bool { return entries[i].Id < entries[j].Id })
	bundle := s.bundleLocked()
	var federated []*sigilv1.Bundle
	for _, b := range s.federated {
		federated = append(federated, b)
	}
	s.streams[ch] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.streams, ch)
		s.mu.Unlock()
	}()
	// The full set in chunks of two: reset first, synced last.
	msgs := []*sigilv1.SyncResponse{{Reset_: true, Bundle: bundle, FederatedBundles: federated}}
	for i := 0; i < len(entries); i += 2 {
		msgs = append(msgs, &sigilv1.SyncResponse{Upserted: entries[i:min(i+2, len(entries))]})
	}
	msgs[len(msgs)-1].Synced = true
	for _, m := range msgs {
		if err := stream.Send(m); err != nil {
			return err
		}
	}
	for {
		select {
		case <-stream.Context().Done():
			return nil
		case <-cut:
			s.mu.Lock()
			err := s.refusalLocked(id)
			s.mu.Unlock()
			return err
		case m := <-ch:
			if err := stream.Send(m); err != nil {
				return err
			}
		}
	}
}

func (s *fakeServer) BatchNewX509SVID(ctx context.Context, req *sigilv1.BatchNewX509SVIDRequest) (*sigilv1.BatchNewX509SVIDResponse, error) {
	id, err := callerID(ctx)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	gate := s.gate
	s.mu.Unlock()
	if gate != nil {
		gate(len(req.GetRequests()))
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.refusalLocked(id); err != nil {
		return nil, err
	}
	resp := &sigilv1.BatchNewX509SVIDResponse{}
	for _, r := range req.GetRequests() {
		res := &sigilv1.X509SVIDResult{EntryId: r.GetEntryId()}
		resp.Results = append(resp.Results, res)
		e, ok := s.entries[r.GetEntryId()]
		if !ok {
			res.Status = &sigilv1.Status{Code: int32(codes.PermissionDenied), Message: "not authorized for entry"}
			continue
		}
		pub, err := parseCSR(r.GetCsr())
		if err != nil {
			res.Status = &sigilv1.Status{Code: int32(codes.InvalidArgument), Message: err.Error()}
			continue
		}
		chain, err := s.signer.issue(spiffeid.RequireFromString(e.SpiffeId), pub, s.now().Add(-time.Minute), time.Hour)
		if err != nil {
			res.Status = &sigilv1.Status{Code: int32(codes.Internal), Message: err.Error()}
			continue
		}
		s.issuedKeys[e.Id] = pub
		res.Status = &sigilv1.Status{Code: int32(codes.OK)}
		res.Chain = derChain(chain)
		res.ExpiresAt = chain[0].NotAfter.Unix()
	}
	return resp, nil
}

// refusalLocked is the server's answer to a call of agent id that it
// refuses, as the real server's auth interceptor words it, or nil.
func (s *fakeServer) refusalLocked(id spiffeid.ID) error {
	switch {
	case s.banned:
		return status.Errorf(codes.PermissionDenied, "agent %s is banned", id)
	case s.evicted:
		return status.Errorf(codes.PermissionDenied, "agent %s is not attested (evicted?)", id)
	}
	return nil
}

// cutStreams ends the open Sync streams with refusalLocked's answer, as
// the real server does when it bans or evicts an agent.
func (s *fakeServer) cutStreams() {
	s.mu.Lock()
	defer s.mu.Unlock()
	close(s.cut)
	s.cut = make(chan struct{})
}

func (s *fakeServer) pushLocked(m *sigilv1.SyncResponse) {
	for ch := range s.streams {
		ch <- m
	}
}

func (s *fakeServer) upsert(e *sigilv1.Entry) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.entries[e.Id] = e
	s.pushLocked(&sigilv1.SyncResponse{Upserted: []*sigilv1.Entry{e}})
}

func (s *fakeServer) remove(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.entries, id)
	s.pushLocked(&sigilv1.SyncResponse{Deleted: []string{id}})
}

// setFederated sets (nil removes) the federated bundle of td and pushes
// the change.
func (s *fakeServer) setFederated(td string, b *sigilv1.Bundle) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if b == nil {
		delete(s.federated, td)
		s.pushLocked(&sigilv1.SyncResponse{RemovedFederatedBundles: []string{td}})
		return
	}
	s.federated[td] = b
	s.pushLocked(&sigilv1.SyncResponse{FederatedBundles: []*sigilv1.Bundle{b}})
}

// addCA adds a CA to the bundle and pushes the new bundle.
func (s *fakeServer) addCA(ca *testCA) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.bundleCAs = append(s.bundleCAs, ca)
	s.pushLocked(&sigilv1.SyncResponse{Bundle: s.bundleLocked()})
}

func (s *fakeServer) counts() (attest, renew, syncs int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.attestCalls, s.renewCalls, s.syncCalls
}

// runningAgent is an agent running in the background for a test.
type runningAgent struct {
	*Agent
	cancel context.CancelFunc
	done   chan struct{}
	err    error // Run's result, once done is closed
}

func (r *runningAgent) stop(t *testing.T) {
	t.Helper()
	r.cancel()
	select {
	case <-r.done:
		if r.err != nil {
			t.Fatalf("Run returned %v", r.err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
}

func (s *fakeServer) config(t *testing.T, dataDir string) Config {
	cfg := DefaultConfig()
	cfg.TrustDomain = testTD
	cfg.ServerAddress = s.addr
	cfg.DataDir = dataDir
	cfg.SocketPath = filepath.Join(t.TempDir(), "api.sock")
	withPlugins(&cfg, s.token)
	cfg.TrustBundle = []*x509.Certificate{s.ca.cert}
	cfg.Logger = zaptest.NewLogger(t)
	return cfg
}

func startAgent(t *testing.T, cfg Config) *runningAgent {
	t.Helper()
	a, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &runningAgent{Agent: a, cancel: cancel, done: make(chan struct{})}
	go func() {
		r.err = a.Run(ctx)
		close(r.done)
	}()
	t.Cleanup(func() {
		cancel()
		<-r.done
	})
	select {
	case <-a.Ready():
	case <-r.done:
		t.Fatalf("Run returned before ready: %v", r.err)
	case <-time.After(15 * time.Second):
		t.Fatal("agent not ready")
	}
	return r
}

func TestAgentAttestsPersistsAndRestarts(t *testing.T) {
	srv := newFakeServer(t)
	dir := filepath.Join(t.TempDir(), "data")
	cfg := srv.config(t, dir)
	var audited []audit.Event
	var auditMu sync.Mutex
	cfg.AuditSink = audit.SinkFunc(func(ev audit.Event) { auditMu.Lock(); audited = append(audited, ev); auditMu.Unlock() })
	r := startAgent(t, cfg)
	wantID := "spiffe://example.org/sigil/agent/join_token/" + jointoken.AgentIDSegment(srv.token)
	if got := r.SPIFFEID().String(); got != wantID {
		t.Fatalf("SPIFFEID = %s, want %s", got, wantID)
	}
	auditMu.Lock()
	if len(audited) != 1 || audited[0].What != "agent_attested" || audited[0].Subject != wantID {
		t.Errorf("audit events %+v, want one agent_attested for %s", audited, wantID)
	}
	auditMu.Unlock()
	if err := r.Healthy(); err != nil {
		t.Fatalf("Healthy = %v", err)
	}
	fi, err := os.Stat(dir)
	if err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("data dir: %v %v", fi.Mode(), err)
	}
	for name, perm := range map[string]os.FileMode{svidFileName: 0o644, keyFileName: 0o600, bundleFileName: 0o644} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if fi.Mode().Perm() != perm {
			t.Fatalf("%s mode %v, want %v", name, fi.Mode().Perm(), perm)
		}
	}
	keyPEM, _ := os.ReadFile(filepath.Join(dir, keyFileName))
	if !strings.Contains(string(keyPEM), "BEGIN PRIVATE KEY") {
		t.Fatal("key is not PKCS#8 PEM")
	}
	r.stop(t)

	// Restart without a join token: the saved identity is used.
	cfg2 := srv.config(t, dir)
	withPlugins(&cfg2, "")
	cfg2.TrustBundle = nil
	r2 := startAgent(t, cfg2)
	if got := r2.SPIFFEID().String(); got != wantID {
		t.Fatalf("after restart SPIFFEID = %s, want %s", got, wantID)
	}
	if attest, _, _ := srv.counts(); attest != 1 {
		t.Fatalf("Attest called %d times, want 1", attest)
	}
	r2.stop(t)
}

func TestAgentWithoutIdentityOrTokenFails(t *testing.T) {
	srv := newFakeServer(t)
	cfg := srv.config(t, t.TempDir())
	withPlugins(&cfg, "")
	a, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	err = a.Run(context.Background())
	if err == nil || !strings.Contains(err.Error(), "join token") {
		t.Fatalf("Run = %v, want a join token error", err)
	}
}

func TestAgentRefusesServerOutsideBundle(t *testing.T) {
	srv := newFakeServer(t)
	cfg := srv.config(t, t.TempDir())
	cfg.TrustBundle = []*x509.Certificate{newTestCA(t, time.Now()).cert}
	a, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := a.Run(ctx); err != nil {
		t.Fatalf("Run = %v", err)
	}
	if attest, _, _ := srv.counts(); attest != 0 {
		t.Fatal("agent attested to a server it cannot authenticate")
	}
}

func waitSnapshot(t *testing.T, sub workloadapi.X509Subscription, cond func(*workloadapi.X509Snapshot) bool) *workloadapi.X509Snapshot {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case s := <-sub.Updates():
			if cond(s) {
				return s
			}
		case <-deadline:
			t.Fatal("snapshot condition not met")
			return nil
		}
	}
}

func TestAgentMintsOverSyncAndWithdrawsDeleted(t *testing.T) {
	srv := newFakeServer(t)
	srv.upsert(entry("e1", "web", 1, "uid:1"))
	r := startAgent(t, srv.config(t, t.TempDir()))

	sub := r.Cache().SubscribeX509([]*sigilv1.Selector{sel("uid:1")})
	defer sub.Close()
	s := waitSnapshot(t, sub, func(s *workloadapi.X509Snapshot) bool { return len(s.Identities) == 1 })
	id := s.Identities[0]
	if id.SPIFFEID.String() != "spiffe://example.org/web" || id.EntryID != "e1" {
		t.Fatalf("identity %s for %s", id.SPIFFEID, id.EntryID)
	}
	srv.mu.Lock()
	issued := srv.issuedKeys["e1"]
	srv.mu.Unlock()
	if !publicKeyEqual(leafOf(t, id).PublicKey, keyOf(t, id).Public()) || !publicKeyEqual(issued, keyOf(t, id).Public()) {
		t.Fatal("SVID is not over the key the agent generated")
	}

	// An entry pushed later reaches the subscriber.
	start := time.Now()
	srv.upsert(entry("e2", "api", 2, "uid:1"))
	s = waitSnapshot(t, sub, func(s *workloadapi.X509Snapshot) bool { return len(s.Identities) == 2 })
	if got := ids(s); !equalStrings(got, []string{"e1", "e2"}) {
		t.Fatalf("identities %v", got)
	}
	t.Logf("pushed entry reached the subscriber in %v", time.Since(start))

	srv.remove("e1")
	s = waitSnapshot(t, sub, func(s *workloadapi.X509Snapshot) bool { return len(s.Identities) == 1 })
	if got := ids(s); !equalStrings(got, []string{"e2"}) {
		t.Fatalf("after delete: identities %v", got)
	}
	r.stop(t)
}

func TestAgentHoldsSVIDUntilCAIsInBundle(t *testing.T) {
	srv := newFakeServer(t)
	r := startAgent(t, srv.config(t, t.TempDir()))

	ca2 := newTestCA(t, time.Now())
	srv.mu.Lock()
	srv.signer = ca2 // a new CA signs before the agent's bundle has it
	srv.mu.Unlock()
	sub := r.Cache().SubscribeX509([]*sigilv1.Selector{sel("uid:2")})
	defer sub.Close()
	// Synced with nothing matching: an empty first snapshot.
	if s := waitSnapshot(t, sub, func(*workloadapi.X509Snapshot) bool { return true }); len(s.Identities) != 0 {
		t.Fatalf("identities %v", ids(s))
	}
	srv.upsert(entry("e3", "db", 1, "uid:2"))
	eventually.True(t, 10*time.Second, func() bool {
		srv.mu.Lock()
		defer srv.mu.Unlock()
		_, issued := srv.issuedKeys["e3"]
		return issued
	}, "the agent did not have e3's SVID signed by the new CA")
	// The SVID exists; none reaches the subscriber in this window.
	select {
	case s := <-sub.Updates():
		t.Fatalf("SVID handed out before its CA is in the bundle: %v", ids(s))
	case <-time.After(300 * time.Millisecond):
	}
	srv.addCA(ca2)
	s := waitSnapshot(t, sub, func(s *workloadapi.X509Snapshot) bool { return len(s.Identities) == 1 })
	if err := leafOf(t, s.Identities[0]).CheckSignatureFrom(ca2.cert); err != nil {
		t.Fatalf("SVID not from the new CA: %v", err)
	}
	if !s.Bundle.HasX509Authority(ca2.cert) {
		t.Fatal("snapshot bundle lacks the new CA")
	}
	// The new bundle was saved.
	saved, err := loadBundle(r.cfg.DataDir, testTD)
	if err != nil || saved == nil || !saved.HasX509Authority(ca2.cert) {
		t.Fatalf("saved bundle lacks the new CA: %v", err)
	}
	r.stop(t)
}

// agentClockInPast is a fake clock for tests that move the agent SVID
// past its renewal time. Both ends of the node API's TLS check the
// certificates against the wall clock, so an SVID issued at fake time
// must not start in the wall clock's future: the fake clock starts half
// an hour in the past and the test moves it less than that.
func agentClockInPast() *clock.Fake {
	return clock.NewFake(time.Now().Add(-30 * time.Minute))
}

// agentRenewalTTL is the agent SVID lifetime for those tests: renewal is
// due 20 to 24 minutes in (RenewAt), well before it expires, and
// agentRenewalDue moves the fake clock past it, still behind the wall
// clock.
const (
	agentRenewalTTL = 40 * time.Minute
	agentRenewalDue = 25 * time.Minute
)

// waitAgentLoopOnClock waits until the agent's loops are blocked on clk
// (the agent SVID's renewal timer), so that advancing clk fires it.
func waitAgentLoopOnClock(t *testing.T, clk *clock.Fake) {
	t.Helper()
	eventually.True(t, 10*time.Second, func() bool { return clk.Waiters() > 0 },
		"the agent did not start its renewal timer")
}

func TestAgentRenewsItsSVID(t *testing.T) {
	srv := newFakeServer(t)
	clk := agentClockInPast()
	srv.now = clk.Now
	srv.agentTTL = agentRenewalTTL
	dir := t.TempDir()
	cfg := srv.config(t, dir)
	cfg.Clock = clk
	r := startAgent(t, cfg)
	// Read the saved SVID without loadIdentity, which would complete (and
	// so race with) a save in progress.
	savedSerial := func() string {
		data, err := os.ReadFile(filepath.Join(dir, svidFileName))
		if err != nil {
			return ""
		}
		certs, err := parsePEMCerts(data)
		if err != nil {
			return ""
		}
		return certs[0].SerialNumber.String()
	}
	first := savedSerial()
	if first == "" {
		t.Fatal("no saved SVID")
	}
	srv.mu.Lock()
	srv.agentTTL = time.Hour
	srv.mu.Unlock()
	waitAgentLoopOnClock(t, clk)
	if _, renew, _ := srv.counts(); renew != 0 {
		t.Fatalf("%d renew calls before the renewal time", renew)
	}
	clk.Add(agentRenewalDue)
	eventually.NoError(t, 10*time.Second, func() error {
		_, renew, syncs := srv.counts()
		if cur := savedSerial(); renew >= 1 && cur != "" && cur != first && syncs >= 2 {
			return nil
		}
		return fmt.Errorf("agent SVID not renewed (renew calls %d, sync calls %d)", renew, syncs)
	})
	// The renewed identity is in use: minting works on the new connection.
	sub := r.Cache().SubscribeX509([]*sigilv1.Selector{sel("uid:3")})
	defer sub.Close()
	srv.upsert(entry("e4", "svc", 1, "uid:3"))
	waitSnapshot(t, sub, func(s *workloadapi.X509Snapshot) bool { return len(s.Identities) == 1 })
	if err := r.Healthy(); err != nil {
		t.Fatalf("Healthy = %v", err)
	}
	r.stop(t)
}

func TestAgentReportsBan(t *testing.T) {
	srv := newFakeServer(t)
	clk := agentClockInPast()
	srv.now = clk.Now
	srv.agentTTL = agentRenewalTTL
	cfg := srv.config(t, t.TempDir())
	cfg.Clock = clk
	r := startAgent(t, cfg)
	srv.mu.Lock()
	srv.banned = true
	srv.mu.Unlock()
	waitAgentLoopOnClock(t, clk)
	clk.Add(agentRenewalDue)
	eventually.NoError(t, 10*time.Second, func() error {
		err := r.Healthy()
		if err != nil && strings.Contains(err.Error(), "evicted or banned") {
			return nil
		}
		return fmt.Errorf("Healthy = %v, want an eviction error", err)
	})
	r.stop(t)
}

func TestConfigValidate(t *testing.T) {
	good := func() Config {
		c := DefaultConfig()
		c.TrustDomain = testTD
		c.ServerAddress = "127.0.0.1:8081"
		c.DataDir = "/tmp/x"
		withPlugins(&c, "")
		return c
	}
	if err := func() error { c := good(); return c.Validate() }(); err != nil {
		t.Fatalf("good config refused: %v", err)
	}
	cases := []struct {
		name   string
		mutate func(*Config)
		want   string
	}{
		{"no trust domain", func(c *Config) { c.TrustDomain = spiffeid.TrustDomain{} }, "trust domain"},
		{"no server", func(c *Config) { c.ServerAddress = "" }, "server address"},
		{"bad server", func(c *Config) { c.ServerAddress = "nohost" }, "host:port"},
		{"no data dir", func(c *Config) { c.DataDir = "" }, "data directory"},
		{"negative batch", func(c *Config) { c.SyncBatchSize = -1 }, "negative"},
		{"negative workload attestor timeout", func(c *Config) { c.WorkloadAttestorTimeout = -time.Second }, "workload attestor timeout"},
		{"huge batch", func(c *Config) { c.SyncBatchSize = MaxSyncBatchSize + 1 }, "maximum"},
		{"short report interval", func(c *Config) { c.HealthReportInterval = time.Second }, "health report interval 1s is outside 5s..10m0s"},
		{"long report interval", func(c *Config) { c.HealthReportInterval = time.Hour }, "health report interval"},
		{"missing bundle file", func(c *Config) { c.TrustBundlePath = "/nonexistent/bundle.pem" }, "trust bundle"},
		{"no node attestor", func(c *Config) { c.NodeAttestor = nil }, "no node attestor"},
		{"no workload attestor", func(c *Config) { c.WorkloadAttestors = nil }, "no workload attestor"},
		{"nil workload attestor", func(c *Config) { c.WorkloadAttestors = append(c.WorkloadAttestors, nil) }, "workload attestor 1 is nil"},
		{"duplicate workload attestor", func(c *Config) { c.WorkloadAttestors = append(c.WorkloadAttestors, unix.New()) }, `two workload attestors are named "unix"`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg := good()
			c.mutate(&cfg)
			err := cfg.Validate()
			if err == nil || !strings.Contains(err.Error(), c.want) || !strings.HasPrefix(err.Error(), "agent: ") {
				t.Fatalf("Validate = %v, want agent: ...%s...", err, c.want)
			}
		})
	}
	if d := DefaultConfig(); d.SocketPath != DefaultSocketPath || d.SyncBatchSize != 500 || d.HealthReportInterval != 30*time.Second {
		t.Fatalf("DefaultConfig = %+v", d)
	}
}

func TestLoadIdentityRecoversInterruptedSave(t *testing.T) {
	dir := t.TempDir()
	ca := newTestCA(t, time.Now())
	id := spiffeid.RequireFromString("spiffe://example.org/sigil/agent/join_token/x")
	mk := func() *identity {
		key, _, err := newKeyAndCSR()
		if err != nil {
			t.Fatal(err)
		}
		return newIdentity(ca.sign(t, id, key.Public(), time.Now(), time.Hour), key)
	}
	old, next := mk(), mk()
	if err := saveIdentity(dir, old); err != nil {
		t.Fatal(err)
	}
	// Crash after the new key was renamed into place but before the
	// certificate was.
	keyPEM, _ := encodeKey(next.key)
	if err := os.WriteFile(filepath.Join(dir, keyFileName), keyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, svidFileName+newSuffix), encodeCerts(next.chain), 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := loadIdentity(dir, testTD)
	if err != nil {
		t.Fatal(err)
	}
	if got.chain[0].SerialNumber.Cmp(next.chain[0].SerialNumber) != 0 {
		t.Fatal("did not recover the new identity")
	}
	if _, err := os.Stat(filepath.Join(dir, svidFileName+newSuffix)); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("leftover .new file")
	}
	if got, err := loadIdentity(t.TempDir(), testTD); got != nil || err != nil {
		t.Fatalf("empty dir: %v %v", got, err)
	}
}

func TestSavedIdentityValid(t *testing.T) {
	dir := t.TempDir()
	now := time.Now()
	if SavedIdentityValid(dir, testTD, now) {
		t.Fatal("an empty directory holds a valid identity")
	}
	ca := newTestCA(t, now)
	key, _, err := newKeyAndCSR()
	if err != nil {
		t.Fatal(err)
	}
	id := spiffeid.RequireFromString("spiffe://example.org/sigil/agent/join_token/x")
	if err := saveIdentity(dir, newIdentity(ca.sign(t, id, key.Public(), now, time.Hour), key)); err != nil {
		t.Fatal(err)
	}
	if !SavedIdentityValid(dir, testTD, now.Add(59*time.Minute)) {
		t.Fatal("a saved SVID within its lifetime is not valid")
	}
	if SavedIdentityValid(dir, testTD, now.Add(2*time.Hour)) {
		t.Fatal("an expired saved SVID is valid")
	}
}

func TestAgentRenewsWorkloadSVIDsByClock(t *testing.T) {
	srv := newFakeServer(t)
	clk := clock.NewFake(time.Now())
	srv.now = clk.Now
	srv.agentTTL = 24 * time.Hour
	srv.upsert(entry("e1", "web", 1, "uid:1"))
	cfg := srv.config(t, t.TempDir())
	cfg.Clock = clk
	r := startAgent(t, cfg)
	sub := r.Cache().SubscribeX509([]*sigilv1.Selector{sel("uid:1")})
	defer sub.Close()
	first := waitSnapshot(t, sub, func(s *workloadapi.X509Snapshot) bool { return len(s.Identities) == 1 }).Identities[0]

	// Before half-life nothing is renewed.
	clk.Add(20 * time.Minute)
	select {
	case s := <-sub.Updates():
		t.Fatalf("early rotation: %v", ids(s))
	case <-time.After(200 * time.Millisecond):
	}
	// Past 60 % of the lifetime the SVID has been rotated.
	clk.Add(20 * time.Minute)
	s := waitSnapshot(t, sub, func(s *workloadapi.X509Snapshot) bool { return len(s.Identities) == 1 })
	second := s.Identities[0]
	if leafOf(t, second).SerialNumber.Cmp(leafOf(t, first).SerialNumber) == 0 {
		t.Fatal("same SVID after renewal time")
	}
	if publicKeyEqual(keyOf(t, second).Public(), keyOf(t, first).Public()) {
		t.Fatal("renewal reused the key")
	}
	r.stop(t)
}

// After a full sync of releaseAfterSync entries or more the agent
// returns its free heap to the kernel once; after a smaller one it does
// not.
func TestAgentReleasesHeapAfterLargeSync(t *testing.T) {
	for _, n := range []int{releaseAfterSync - 1, releaseAfterSync} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			srv := newFakeServer(t)
			for i := range n {
				srv.upsert(entry(fmt.Sprintf("e%05d", i), fmt.Sprintf("w/%d", i), int64(i), fmt.Sprintf("uid:%d", 100_000+i)))
			}
			cfg := srv.config(t, t.TempDir())
			cfg.SVIDCache.MaxSVIDs = 10
			core, logs := observer.New(zap.InfoLevel)
			cfg.Logger = zap.New(core)
			a, err := New(cfg)
			if err != nil {
				t.Fatal(err)
			}
			var released atomic.Int32
			a.releaseHeap = func() { released.Add(1) }
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- a.Run(ctx) }()
			defer func() { cancel(); <-done }()
			select {
			case <-a.Ready():
			case err := <-done:
				t.Fatalf("Run returned before ready: %v", err)
			case <-time.After(30 * time.Second):
				t.Fatal("agent not ready")
			}
			if e, _ := a.cache.stats(); e != n {
				t.Fatalf("%d entries synced, want %d", e, n)
			}
			// The sync loop logs the sync after it decided.
			eventually.True(t, 10*time.Second, func() bool { return logs.FilterMessage("entries synced").Len() > 0 }, "sync not logged")
			want := int32(0)
			if n >= releaseAfterSync {
				want = 1
			}
			if got := released.Load(); got != want {
				t.Fatalf("a full sync of %d entries released the heap %d times, want %d", n, got, want)
			}
		})
	}
}
