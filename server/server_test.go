package server

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/attestor/node/jointoken"
	"github.com/sigil-id/sigil/clock"
)

var testTD = spiffeid.RequireTrustDomainFromString("example.org")

type harness struct {
	t      testing.TB
	srv    *Server
	admin  sigilv1.AdminClient
	logs   *observer.ObservedLogs
	dir    string
	cancel context.CancelFunc
	done   chan error
}

func startServer(t testing.TB) *harness {
	t.Helper()
	return startServerWith(t, nil, nil)
}

// startServerWith starts a single-node server in a temporary directory;
// clk, when not nil, is its clock, and setLimits, when not nil, changes its
// node API limits before it runs.
func startServerWith(t testing.TB, clk clock.Clock, setLimits func(*nodeLimits)) *harness {
	t.Helper()
	return startServerConfig(t, clk, setLimits, nil)
}

// startServerConfig is startServerWith with a change to the
// configuration, when mutate is not nil, before the server is built.
func startServerConfig(t testing.TB, clk clock.Clock, setLimits func(*nodeLimits), mutate func(*Config)) *harness {
	t.Helper()
	dir := t.TempDir()
	core, logs := observer.New(zap.DebugLevel)
	cfg := DefaultConfig()
	cfg.TrustDomain = testTD
	cfg.NodeName = "s1"
	cfg.DataDir = filepath.Join(dir, "data")
	cfg.BindAddress = "127.0.0.1:0"
	cfg.AdminSocket = filepath.Join(dir, "admin", "admin.sock")
	cfg.Logger = zap.New(core)
	cfg.Clock = clk
	withPlugins(t, &cfg, "disk")
	if mutate != nil {
		mutate(&cfg)
	}
	srv, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if setLimits != nil {
		setLimits(&srv.nodeLimits)
	}
	ctx, cancel := context.WithCancel(context.Background())
	h := &harness{t: t, srv: srv, logs: logs, dir: dir, cancel: cancel, done: make(chan error, 1)}
	go func() { h.done <- srv.Run(ctx) }()
	select {
	case <-srv.Ready():
	case err := <-h.done:
		t.Fatalf("server exited: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("server not ready")
	}
	conn, err := grpc.NewClient("unix://"+cfg.AdminSocket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	h.admin = sigilv1.NewAdminClient(conn)
	t.Cleanup(func() {
		conn.Close()
		h.stop()
	})
	return h
}

func (h *harness) stop() {
	if h.cancel == nil {
		return
	}
	h.cancel()
	h.cancel = nil
	select {
	case err := <-h.done:
		if err != nil {
			h.t.Errorf("server run: %v", err)
		}
	case <-time.After(10 * time.Second):
		h.t.Error("server did not stop")
	}
}

func (h *harness) pool() *x509.CertPool {
	p := x509.NewCertPool()
	for _, c := range h.srv.Bundle() {
		p.AddCert(c)
	}
	return p
}

type testAgent struct {
	id    string
	key   *ecdsa.PrivateKey
	chain [][]byte
	node  sigilv1.NodeClient
}

func newCSR(t testing.TB, key *ecdsa.PrivateKey, subject string) []byte {
	t.Helper()
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: subject}}, key)
	if err != nil {
		t.Fatal(err)
	}
	return csr
}

func (h *harness) nodeClient(cert *tls.Certificate) sigilv1.NodeClient {
	tc := &tls.Config{RootCAs: h.pool(), ServerName: "ignored", InsecureSkipVerify: true, // verified below
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			c, err := x509.ParseCertificate(raw[0])
			if err != nil {
				return err
			}
			// Intermediates: the server's CA when an upstream signed it.
			inter := x509.NewCertPool()
			for _, der := range raw[1:] {
				ic, err := x509.ParseCertificate(der)
				if err != nil {
					return err
				}
				inter.AddCert(ic)
			}
			_, err = c.Verify(x509.VerifyOptions{Roots: h.pool(), Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
			return err
		}}
	if cert != nil {
		tc.Certificates = []tls.Certificate{*cert}
	}
	conn, err := grpc.NewClient(h.srv.NodeAddr().String(), grpc.WithTransportCredentials(credentials.NewTLS(tc)))
	if err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(func() { conn.Close() })
	return sigilv1.NewNodeClient(conn)
}

func (h *harness) token() (string, string) {
	resp, err := h.admin.CreateJoinToken(context.Background(), &sigilv1.CreateJoinTokenRequest{})
	if err != nil {
		h.t.Fatal(err)
	}
	return resp.Token, resp.AgentId
}

func (h *harness) attest() *testAgent {
	h.t.Helper()
	token, agentID := h.token()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	resp, err := h.nodeClient(nil).Attest(context.Background(), &sigilv1.AttestRequest{
		AttestationType: jointoken.Name, Payload: []byte(token), Csr: newCSR(h.t, key, "agent"),
	})
	if err != nil {
		h.t.Fatalf("attest: %v", err)
	}
	if resp.SpiffeId != agentID {
		h.t.Fatalf("agent id %s, token said %s", resp.SpiffeId, agentID)
	}
	cert := &tls.Certificate{Certificate: resp.SvidChain, PrivateKey: key}
	return &testAgent{id: resp.SpiffeId, key: key, chain: resp.SvidChain, node: h.nodeClient(cert)}
}

func (h *harness) createEntry(spiffeID, parentID string, sels ...string) *sigilv1.Entry {
	h.t.Helper()
	e := &sigilv1.Entry{SpiffeId: spiffeID, ParentId: parentID}
	for _, s := range sels {
		typ, val, _ := strings.Cut(s, ":")
		e.Selectors = append(e.Selectors, &sigilv1.Selector{Type: typ, Value: val})
	}
	resp, err := h.admin.BatchCreateEntry(context.Background(), &sigilv1.BatchCreateEntryRequest{Entries: []*sigilv1.Entry{e}})
	if err != nil {
		h.t.Fatal(err)
	}
	if st := resp.Results[0].Status; st.Code != 0 {
		h.t.Fatalf("create entry: %s", st.Message)
	}
	return resp.Results[0].Entry
}

func TestAttestAndIssue(t *testing.T) {
	h := startServer(t)
	a := h.attest()
	e := h.createEntry("spiffe://example.org/web", a.id, "unix:uid:1000")

	wkey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	resp, err := a.node.BatchNewX509SVID(context.Background(), &sigilv1.BatchNewX509SVIDRequest{Requests: []*sigilv1.X509SVIDRequest{
		{EntryId: e.Id, Csr: newCSR(t, wkey, "spiffe://example.org/evil")},
	}})
	if err != nil {
		t.Fatal(err)
	}
	r := resp.Results[0]
	if r.Status.Code != 0 {
		t.Fatalf("issue: %s", r.Status.Message)
	}
	leaf, err := x509.ParseCertificate(r.Chain[0])
	if err != nil {
		t.Fatal(err)
	}
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != "spiffe://example.org/web" {
		t.Fatalf("URI SANs %v", leaf.URIs)
	}
	if !leaf.PublicKey.(*ecdsa.PublicKey).Equal(wkey.Public()) {
		t.Fatal("SVID does not carry the CSR's key")
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: h.pool(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		t.Fatalf("SVID does not chain to the bundle: %v", err)
	}
	if h.logs.FilterMessage("x509-svid issued").Len() != 1 {
		t.Fatal("no audit log line for the issuance")
	}
}

func TestJoinTokenWorksOnce(t *testing.T) {
	h := startServer(t)
	token, _ := h.token()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	req := &sigilv1.AttestRequest{AttestationType: jointoken.Name, Payload: []byte(token), Csr: newCSR(t, key, "a")}
	c := h.nodeClient(nil)
	if _, err := c.Attest(context.Background(), req); err != nil {
		t.Fatal(err)
	}
	before, _ := h.admin.ListAgents(context.Background(), &sigilv1.ListAgentsRequest{})
	_, err := c.Attest(context.Background(), req)
	if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "join token") {
		t.Fatalf("reused token: got %v, want PermissionDenied about the join token", err)
	}
	after, _ := h.admin.ListAgents(context.Background(), &sigilv1.ListAgentsRequest{})
	if len(before.Agents) != 1 || len(after.Agents) != 1 {
		t.Fatalf("agents before %d after %d", len(before.Agents), len(after.Agents))
	}
	// A made-up token and a malformed one.
	for _, p := range []string{strings.Repeat("ab", 32), "not-a-token"} {
		req.Payload = []byte(p)
		if _, err := c.Attest(context.Background(), req); status.Code(err) != codes.PermissionDenied {
			t.Fatalf("token %q: got %v", p, err)
		}
	}
}

func TestExpiredJoinTokenRefused(t *testing.T) {
	clk := clock.NewFake(time.Now())
	h := startServerWith(t, clk, nil)
	resp, err := h.admin.CreateJoinToken(context.Background(), &sigilv1.CreateJoinTokenRequest{Ttl: 1})
	if err != nil {
		t.Fatal(err)
	}
	// The FSM compares the token's expiry with the command's timestamp,
	// which comes from the server's clock: move it just past the expiry
	// (one second is the shortest the API allows).
	clk.Set(time.Unix(resp.ExpiresAt, 0).Add(1100 * time.Millisecond))
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	_, err = h.nodeClient(nil).Attest(context.Background(), &sigilv1.AttestRequest{AttestationType: jointoken.Name, Payload: []byte(resp.Token), Csr: newCSR(t, key, "a")})
	if status.Code(err) != codes.PermissionDenied {
		t.Fatalf("expired token: got %v", err)
	}
	agents, _ := h.admin.ListAgents(context.Background(), &sigilv1.ListAgentsRequest{})
	if len(agents.Agents) != 0 {
		t.Fatalf("%d agents after refused attestation", len(agents.Agents))
	}
}

func TestUnauthorizedEntryRefused(t *testing.T) {
	h := startServer(t)
	a := h.attest()
	b := h.attest()
	eb := h.createEntry("spiffe://example.org/b", b.id, "unix:uid:1")
	wkey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	resp, err := a.node.BatchNewX509SVID(context.Background(), &sigilv1.BatchNewX509SVIDRequest{Requests: []*sigilv1.X509SVIDRequest{
		{EntryId: eb.Id, Csr: newCSR(t, wkey, "x")},
		{EntryId: "no-such-entry", Csr: newCSR(t, wkey, "x")},
	}})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range resp.Results {
		if codes.Code(r.Status.Code) != codes.PermissionDenied || len(r.Chain) != 0 {
			t.Fatalf("entry %s: status %v, %d certs", r.EntryId, r.Status, len(r.Chain))
		}
	}
	// No client certificate: only Attest is open.
	_, err = h.nodeClient(nil).BatchNewX509SVID(context.Background(), &sigilv1.BatchNewX509SVIDRequest{})
	if status.Code(err) != codes.Unauthenticated {
		t.Fatalf("anonymous batch: %v", err)
	}
}

func TestBadCSRRefused(t *testing.T) {
	h := startServer(t)
	a := h.attest()
	e := h.createEntry("spiffe://example.org/web", a.id, "unix:uid:1000")
	wkey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	csr := newCSR(t, wkey, "x")
	csr[len(csr)-3] ^= 0xff // break the signature
	resp, err := a.node.BatchNewX509SVID(context.Background(), &sigilv1.BatchNewX509SVIDRequest{Requests: []*sigilv1.X509SVIDRequest{
		{EntryId: e.Id, Csr: csr},
		{EntryId: e.Id, Csr: []byte("garbage")},
	}})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range resp.Results {
		if codes.Code(r.Status.Code) != codes.InvalidArgument || len(r.Chain) != 0 {
			t.Fatalf("bad CSR: status %v, %d certs", r.Status, len(r.Chain))
		}
	}
}

func TestEvictedAndBannedAgentsGetNothing(t *testing.T) {
	h := startServer(t)
	for _, op := range []string{"evict", "ban"} {
		t.Run(op, func(t *testing.T) {
			a := h.attest()
			e := h.createEntry("spiffe://example.org/"+op, a.id, "unix:uid:1000")
			wkey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			req := &sigilv1.BatchNewX509SVIDRequest{Requests: []*sigilv1.X509SVIDRequest{{EntryId: e.Id, Csr: newCSR(t, wkey, "x")}}}
			if _, err := a.node.BatchNewX509SVID(context.Background(), req); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			stream, err := a.node.Sync(ctx, &sigilv1.SyncRequest{})
			if err != nil {
				t.Fatal(err)
			}
			first, err := stream.Recv()
			if err != nil || !first.Reset_ || len(first.Upserted) != 1 {
				t.Fatalf("first sync message %v %v", first, err)
			}
			if op == "evict" {
				_, err = h.admin.EvictAgent(context.Background(), &sigilv1.EvictAgentRequest{SpiffeId: a.id})
			} else {
				_, err = h.admin.BanAgent(context.Background(), &sigilv1.BanAgentRequest{SpiffeId: a.id})
			}
			if err != nil {
				t.Fatal(err)
			}
			// The open stream ends, and the next call is refused.
			for {
				_, err = stream.Recv()
				if err != nil {
					break
				}
			}
			if status.Code(err) != codes.PermissionDenied {
				t.Fatalf("sync after %s: %v", op, err)
			}
			if _, err := a.node.BatchNewX509SVID(context.Background(), req); status.Code(err) != codes.PermissionDenied {
				t.Fatalf("batch after %s: %v", op, err)
			}
			if _, err := a.node.RenewAgent(context.Background(), &sigilv1.RenewAgentRequest{Csr: newCSR(t, a.key, "a")}); status.Code(err) != codes.PermissionDenied {
				t.Fatalf("renew after %s: %v", op, err)
			}
		})
	}
}

func TestSyncPushesDeltas(t *testing.T) {
	h := startServer(t)
	a := h.attest()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stream, err := a.node.Sync(ctx, &sigilv1.SyncRequest{})
	if err != nil {
		t.Fatal(err)
	}
	first, err := stream.Recv()
	if err != nil || !first.Reset_ || !first.Synced || first.Bundle == nil || len(first.Upserted) != 0 {
		t.Fatalf("first: %v %v", first, err)
	}
	e := h.createEntry("spiffe://example.org/w", a.id, "unix:uid:1")
	msg, err := stream.Recv()
	if err != nil || len(msg.Upserted) != 1 || msg.Upserted[0].Id != e.Id || msg.Reset_ {
		t.Fatalf("delta after create: %v %v", msg, err)
	}
	// Entries of another agent are not pushed.
	b := h.attest()
	h.createEntry("spiffe://example.org/other", b.id, "unix:uid:1")
	if _, err := h.admin.BatchDeleteEntry(context.Background(), &sigilv1.BatchDeleteEntryRequest{Ids: []string{e.Id}}); err != nil {
		t.Fatal(err)
	}
	msg, err = stream.Recv()
	if err != nil || len(msg.Deleted) != 1 || msg.Deleted[0] != e.Id || len(msg.Upserted) != 0 {
		t.Fatalf("delta after delete: %v %v", msg, err)
	}
}

func TestSyncChunksLargeSets(t *testing.T) {
	h := startServer(t)
	a := h.attest()
	const n = 2500
	var entries []*sigilv1.Entry
	for i := 0; i < n; i++ {
		entries = append(entries, &sigilv1.Entry{
			SpiffeId: "spiffe://example.org/w/" + strings.Repeat("x", 10) + "/" + strconv.Itoa(i), ParentId: a.id,
			Selectors: []*sigilv1.Selector{{Type: "unix", Value: "uid:" + strconv.Itoa(i)}},
		})
	}
	resp, err := h.admin.BatchCreateEntry(context.Background(), &sigilv1.BatchCreateEntryRequest{Entries: entries})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range resp.Results {
		if r.Status.Code != 0 {
			t.Fatal(r.Status.Message)
		}
	}
	stream, err := a.node.Sync(context.Background(), &sigilv1.SyncRequest{})
	if err != nil {
		t.Fatal(err)
	}
	got, msgs := 0, 0
	for {
		m, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if msgs == 0 && !m.Reset_ {
			t.Fatal("first message lacks reset")
		}
		if len(m.Upserted) > syncChunkEntries {
			t.Fatalf("chunk of %d entries", len(m.Upserted))
		}
		msgs++
		got += len(m.Upserted)
		if m.Synced {
			break
		}
	}
	if got != n || msgs < 3 {
		t.Fatalf("got %d entries in %d messages", got, msgs)
	}
}

func TestAdminRejectsBadEntries(t *testing.T) {
	h := startServer(t)
	a := h.attest()
	bad := []*sigilv1.Entry{
		{SpiffeId: "spiffe://example.org/sigil/agent/x", ParentId: a.id, Selectors: []*sigilv1.Selector{{Type: "unix", Value: "uid:1"}}},
		{SpiffeId: "not a spiffe id", ParentId: a.id, Selectors: []*sigilv1.Selector{{Type: "unix", Value: "uid:1"}}},
		{SpiffeId: "spiffe://example.org/w", ParentId: a.id, Selectors: []*sigilv1.Selector{{Type: "", Value: "uid:1"}}},
	}
	resp, err := h.admin.BatchCreateEntry(context.Background(), &sigilv1.BatchCreateEntryRequest{Entries: bad})
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range resp.Results {
		if codes.Code(r.Status.Code) != codes.InvalidArgument || r.Status.Message == "" {
			t.Fatalf("bad entry %d: %v", i, r.Status)
		}
	}
	list, err := h.admin.ListEntries(context.Background(), &sigilv1.ListEntriesRequest{})
	if err != nil || len(list.Entries) != 0 {
		t.Fatalf("entries after refused creates: %v %v", list, err)
	}
	if _, err := h.admin.EvictAgent(context.Background(), &sigilv1.EvictAgentRequest{SpiffeId: "spiffe://example.org/web"}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("evict non-agent: %v", err)
	}
}

// TestNoPrivateKeyInLogOrSnapshot checks the invariant that no CA or JWT
// signing key of the server ever enters the Raft log, a snapshot, an API
// response or a log line.
func TestNoPrivateKeyInLogOrSnapshot(t *testing.T) {
	h := startServer(t)
	a := h.attest()
	h.createEntry("spiffe://example.org/web", a.id, "unix:uid:1000")
	if err := h.srv.store.Raft().Snapshot().Error(); err != nil {
		t.Fatal(err)
	}
	bundle, err := h.admin.GetBundle(context.Background(), &sigilv1.GetBundleRequest{})
	if err != nil {
		t.Fatal(err)
	}
	bundleBytes, err := proto.Marshal(bundle)
	if err != nil {
		t.Fatal(err)
	}
	keys := privateScalars(t, filepath.Join(h.dir, "data", "keys"))
	h.stop()
	var raftFiles [][]byte
	err = filepath.WalkDir(filepath.Join(h.dir, "data", "raft"), func(path string, de fs.DirEntry, err error) error {
		if err != nil || de.IsDir() {
			return err
		}
		b, err := os.ReadFile(path)
		raftFiles = append(raftFiles, b)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(raftFiles) < 2 {
		t.Fatalf("found only %d raft files", len(raftFiles))
	}
	var logText strings.Builder
	for _, e := range h.logs.All() {
		logText.WriteString(e.Message)
		for _, f := range e.Context {
			fmt.Fprintf(&logText, " %s=%s%v", f.Key, f.String, f.Interface)
		}
	}
	for name, d := range keys {
		for i, b := range raftFiles {
			if bytes.Contains(b, d) {
				t.Errorf("private key %s found in raft file %d", name, i)
			}
		}
		if bytes.Contains(bundleBytes, d) {
			t.Errorf("private key %s in the bundle", name)
		}
		for _, enc := range []string{string(d), hex.EncodeToString(d), base64.StdEncoding.EncodeToString(d), base64.RawURLEncoding.EncodeToString(d)} {
			if strings.Contains(logText.String(), enc) {
				t.Errorf("private key %s in a log line", name)
			}
		}
	}
}

// privateScalars returns the private scalar of every ECDSA key file the
// disk key manager wrote, by file name. It fails unless it finds both a CA
// and a JWT signing key.
func privateScalars(t *testing.T, dir string) map[string][]byte {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(dir, "*.key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	out := make(map[string][]byte)
	var haveCA, haveJWT bool
	for _, f := range files {
		pemBytes, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		blk, _ := pem.Decode(pemBytes)
		if blk == nil {
			t.Fatalf("%s is not PEM", f)
		}
		k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		ek, ok := k.(*ecdsa.PrivateKey)
		if !ok {
			t.Fatalf("%s is not an ECDSA key", f)
		}
		d, err := ek.Bytes()
		if err != nil {
			t.Fatal(err)
		}
		name := filepath.Base(f)
		out[name] = d
		haveCA = haveCA || strings.HasPrefix(name, "x509-ca")
		haveJWT = haveJWT || strings.HasPrefix(name, "jwt")
	}
	if !haveCA || !haveJWT {
		t.Fatalf("key files %v: want a CA key and a JWT key", files)
	}
	return out
}
