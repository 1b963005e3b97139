package server

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/federation"
	"github.com/sigil-id/sigil/raftstore"
)

// fedHarness is a single server with the FederationAdmin and
// AuthorityAdmin clients.
type fedHarness struct {
	*harness
	fed  sigilv1.FederationAdminClient
	auth sigilv1.AuthorityAdminClient
	cfg  Config
}

// startFedServer starts a single server of trust domain td; mod changes
// its configuration and pre the server before it runs.
func startFedServer(t *testing.T, td spiffeid.TrustDomain, mod func(*Config), pre func(*Server)) *fedHarness {
	t.Helper()
	dir := t.TempDir()
	core, logs := observer.New(zap.DebugLevel)
	cfg := DefaultConfig()
	cfg.TrustDomain = td
	cfg.NodeName = "s1"
	cfg.DataDir = filepath.Join(dir, "data")
	cfg.BindAddress = "127.0.0.1:0"
	cfg.AdminSocket = filepath.Join(dir, "admin", "admin.sock")
	cfg.Logger = zap.New(core)
	withPlugins(t, &cfg, "memory")
	if mod != nil {
		mod(&cfg)
	}
	srv, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if pre != nil {
		pre(srv)
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
	return &fedHarness{harness: h, fed: sigilv1.NewFederationAdminClient(conn), auth: sigilv1.NewAuthorityAdminClient(conn), cfg: srv.cfg}
}

// testCA returns a self-signed CA certificate (DER) and its key.
func testCA(t *testing.T, cn string, ips ...net.IP) ([]byte, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, IPAddresses: ips,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	return der, key
}

// testBundleDoc is a SPIFFE bundle document of td with one X.509
// authority.
func testBundleDoc(t *testing.T, td string, seq uint64) ([]byte, []byte) {
	t.Helper()
	der, _ := testCA(t, td)
	c, _ := x509.ParseCertificate(der)
	doc, err := federation.Encode(&sigilv1.Bundle{TrustDomain: td, SequenceNumber: seq, RefreshHint: 60,
		X509Authorities: []*sigilv1.X509Authority{{Certificate: der, NotAfter: c.NotAfter.Unix()}}})
	if err != nil {
		t.Fatal(err)
	}
	return doc, der
}

func wantCode(t *testing.T, what string, err error, code codes.Code) {
	t.Helper()
	if status.Code(err) != code {
		t.Fatalf("%s: %v, want %s", what, err, code)
	}
}

func (h *fedHarness) audited(what string) bool {
	return h.logs.FilterField(zap.String("audit", what)).Len() > 0
}

// TestFederationAdminRelationshipsAndBundles drives the FederationAdmin
// service on one server: relationships and bundles are created, read,
// listed, updated and deleted, bad requests get clear codes, every write
// is audited, and Admin.GetBundle serves federated bundles.
func TestFederationAdminRelationshipsAndBundles(t *testing.T) {
	h := startFedServer(t, testTD, nil, nil)
	ctx := context.Background()
	doc, der := testBundleDoc(t, "partner.test", 7)
	rel := &sigilv1.FederationRelationship{
		TrustDomain: "partner.test", BundleEndpointUrl: "https://127.0.0.1:1/bundle",
		Profile: federation.ProfileHTTPSSPIFFE, EndpointSpiffeId: "spiffe://partner.test/sigil/server",
	}

	// Refusals.
	_, err := h.fed.CreateRelationship(ctx, &sigilv1.CreateRelationshipRequest{})
	wantCode(t, "create without relationship", err, codes.InvalidArgument)
	own := &sigilv1.FederationRelationship{TrustDomain: testTD.Name(), BundleEndpointUrl: "https://127.0.0.1:1", Profile: federation.ProfileHTTPSWeb}
	_, err = h.fed.CreateRelationship(ctx, &sigilv1.CreateRelationshipRequest{Relationship: own})
	wantCode(t, "create with the own trust domain", err, codes.InvalidArgument)
	plain := &sigilv1.FederationRelationship{TrustDomain: "partner.test", BundleEndpointUrl: "http://127.0.0.1:1", Profile: federation.ProfileHTTPSWeb}
	_, err = h.fed.CreateRelationship(ctx, &sigilv1.CreateRelationshipRequest{Relationship: plain})
	wantCode(t, "create with an http URL", err, codes.InvalidArgument)
	other := &sigilv1.FederationRelationship{TrustDomain: "other.test", BundleEndpointUrl: "https://127.0.0.1:1", Profile: federation.ProfileHTTPSWeb}
	_, err = h.fed.CreateRelationship(ctx, &sigilv1.CreateRelationshipRequest{Relationship: other, BootstrapBundle: []byte(`{"keys":[]}`)})
	wantCode(t, "create with an empty bootstrap bundle", err, codes.InvalidArgument)
	_, err = h.fed.UpdateRelationship(ctx, &sigilv1.UpdateRelationshipRequest{Relationship: rel})
	wantCode(t, "update of a missing relationship", err, codes.NotFound)

	// Create (the endpoint is unreachable: accepted all the same).
	created, err := h.fed.CreateRelationship(ctx, &sigilv1.CreateRelationshipRequest{Relationship: rel, BootstrapBundle: doc})
	if err != nil {
		t.Fatal(err)
	}
	if created.CreatedAt == 0 || created.ModifyIndex == 0 || created.BundleEndpointUrl != rel.BundleEndpointUrl || created.FromConfig {
		t.Fatalf("created relationship: %v", created)
	}
	_, err = h.fed.CreateRelationship(ctx, &sigilv1.CreateRelationshipRequest{Relationship: rel})
	wantCode(t, "second create", err, codes.AlreadyExists)
	b, err := h.admin.GetBundle(ctx, &sigilv1.GetBundleRequest{TrustDomain: "partner.test"})
	if err != nil {
		t.Fatal(err)
	}
	if len(b.X509Authorities) != 1 || !bytes.Equal(b.X509Authorities[0].Certificate, der) || b.SequenceNumber != 7 || b.ModifyIndex == 0 {
		t.Fatalf("bootstrap bundle: %v", b)
	}
	_, err = h.admin.GetBundle(ctx, &sigilv1.GetBundleRequest{TrustDomain: "nope.test"})
	wantCode(t, "bundle of an unknown trust domain", err, codes.NotFound)
	_, err = h.admin.GetBundle(ctx, &sigilv1.GetBundleRequest{TrustDomain: "spiffe://partner.test"})
	wantCode(t, "bundle of a SPIFFE ID", err, codes.InvalidArgument)
	if ownB, err := h.admin.GetBundle(ctx, &sigilv1.GetBundleRequest{TrustDomain: testTD.Name()}); err != nil || ownB.TrustDomain != testTD.Name() {
		t.Fatalf("own bundle by name: %v %v", ownB, err)
	}

	// Update and read.
	upd := &sigilv1.FederationRelationship{TrustDomain: "partner.test", BundleEndpointUrl: "https://127.0.0.1:2/b", Profile: federation.ProfileHTTPSWeb}
	if _, err := h.fed.UpdateRelationship(ctx, &sigilv1.UpdateRelationshipRequest{Relationship: upd}); err != nil {
		t.Fatal(err)
	}
	got, err := h.fed.GetRelationship(ctx, &sigilv1.GetRelationshipRequest{TrustDomain: "partner.test"})
	if err != nil || got.BundleEndpointUrl != upd.BundleEndpointUrl || got.Profile != federation.ProfileHTTPSWeb || got.CreatedAt != created.CreatedAt {
		t.Fatalf("updated relationship: %v %v", got, err)
	}
	_, err = h.fed.GetRelationship(ctx, &sigilv1.GetRelationshipRequest{TrustDomain: "nope.test"})
	wantCode(t, "get of a missing relationship", err, codes.NotFound)

	// A bundle without relationship, set from PEM.
	staticDER, _ := testCA(t, "static")
	pemDoc := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: staticDER})
	_, err = h.fed.SetBundle(ctx, &sigilv1.SetBundleRequest{TrustDomain: "static.test", Document: pemDoc, Format: "xml"})
	wantCode(t, "set with an unknown format", err, codes.InvalidArgument)
	_, err = h.fed.SetBundle(ctx, &sigilv1.SetBundleRequest{TrustDomain: testTD.Name(), Document: pemDoc, Format: "pem"})
	wantCode(t, "set of the own trust domain", err, codes.InvalidArgument)
	_, err = h.fed.SetBundle(ctx, &sigilv1.SetBundleRequest{TrustDomain: "static.test", Document: []byte("{not json")})
	wantCode(t, "set of garbage", err, codes.InvalidArgument)
	sb, err := h.fed.SetBundle(ctx, &sigilv1.SetBundleRequest{TrustDomain: "static.test", Document: pemDoc, Format: "pem"})
	if err != nil || len(sb.X509Authorities) != 1 || len(sb.JwtAuthorities) != 0 || sb.ModifyIndex == 0 {
		t.Fatalf("set bundle: %v %v", sb, err)
	}

	// A relationship without bundle yet.
	nob := &sigilv1.FederationRelationship{TrustDomain: "later.test", BundleEndpointUrl: "https://127.0.0.1:1", Profile: federation.ProfileHTTPSWeb}
	if _, err := h.fed.CreateRelationship(ctx, &sigilv1.CreateRelationshipRequest{Relationship: nob}); err != nil {
		t.Fatal(err)
	}
	list, err := h.fed.ListBundles(ctx, &sigilv1.ListBundlesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var tds []string
	for _, bs := range list.Bundles {
		tds = append(tds, bs.TrustDomain)
	}
	if !slices.Equal(tds, []string{testTD.Name(), "later.test", "partner.test", "static.test"}) {
		t.Fatalf("listed bundles %v", tds)
	}
	if l := list.Bundles[0]; !l.Local || !l.Present || l.X509Authorities == 0 || l.JwtAuthorities == 0 || l.Relationship != nil {
		t.Fatalf("local bundle status: %v", l)
	}
	if l := list.Bundles[1]; l.Local || l.Present || l.Relationship.GetTrustDomain() != "later.test" {
		t.Fatalf("bundle status of a relationship without bundle: %v", l)
	}
	if p := list.Bundles[2]; !p.Present || p.SequenceNumber != 7 || p.X509Authorities != 1 || p.Relationship.GetBundleEndpointUrl() != upd.BundleEndpointUrl {
		t.Fatalf("partner bundle status: %v", p)
	}
	if s := list.Bundles[3]; !s.Present || s.Relationship != nil || s.UpdatedAt == 0 {
		t.Fatalf("static bundle status: %v", s)
	}
	rels, err := h.fed.ListRelationships(ctx, &sigilv1.ListRelationshipsRequest{})
	if err != nil || len(rels.Relationships) != 2 {
		t.Fatalf("relationships: %v %v", rels, err)
	}

	// Deletes.
	_, err = h.fed.DeleteBundle(ctx, &sigilv1.DeleteBundleRequest{TrustDomain: "partner.test"})
	wantCode(t, "delete of a refreshed bundle", err, codes.FailedPrecondition)
	if _, err := h.fed.DeleteBundle(ctx, &sigilv1.DeleteBundleRequest{TrustDomain: "static.test"}); err != nil {
		t.Fatal(err)
	}
	_, err = h.fed.DeleteBundle(ctx, &sigilv1.DeleteBundleRequest{TrustDomain: "static.test"})
	wantCode(t, "second delete of a bundle", err, codes.NotFound)
	if _, err := h.fed.DeleteRelationship(ctx, &sigilv1.DeleteRelationshipRequest{TrustDomain: "partner.test"}); err != nil {
		t.Fatal(err)
	}
	_, err = h.fed.DeleteRelationship(ctx, &sigilv1.DeleteRelationshipRequest{TrustDomain: "partner.test"})
	wantCode(t, "second delete of a relationship", err, codes.NotFound)
	_, err = h.admin.GetBundle(ctx, &sigilv1.GetBundleRequest{TrustDomain: "partner.test"})
	wantCode(t, "bundle after its relationship was deleted", err, codes.NotFound)

	for _, what := range []string{"federation_relationship_created", "federation_relationship_updated", "federation_relationship_deleted",
		"federated_bundle_set", "federated_bundle_deleted"} {
		if !h.audited(what) {
			t.Errorf("no %s audit record", what)
		}
	}
}

// TestFederationRefreshBundleReportsAttempt: RefreshBundle makes the
// refresher (this single server leads) fetch at once and returns the
// attempt's status, here the error of an unreachable endpoint; the
// relationship and its bootstrap bundle stay.
func TestFederationRefreshBundleReportsAttempt(t *testing.T) {
	h := startFedServer(t, testTD, nil, nil)
	ctx := context.Background()
	doc, _ := testBundleDoc(t, "partner.test", 1)
	addr := joinFreeAddrOn(t, "127.0.0.1") // nothing listens there
	rel := &sigilv1.FederationRelationship{TrustDomain: "partner.test", BundleEndpointUrl: "https://" + addr, Profile: federation.ProfileHTTPSWeb}
	if _, err := h.fed.CreateRelationship(ctx, &sigilv1.CreateRelationshipRequest{Relationship: rel, BootstrapBundle: doc}); err != nil {
		t.Fatal(err)
	}
	_, err := h.fed.RefreshBundle(ctx, &sigilv1.RefreshBundleRequest{TrustDomain: "nope.test"})
	wantCode(t, "refresh of a missing relationship", err, codes.NotFound)
	_, err = h.fed.RefreshBundle(ctx, &sigilv1.RefreshBundleRequest{TrustDomain: "partner.test", TimeoutMs: -1})
	wantCode(t, "refresh with a negative timeout", err, codes.InvalidArgument)
	st, err := h.fed.RefreshBundle(ctx, &sigilv1.RefreshBundleRequest{TrustDomain: "partner.test", TimeoutMs: 20000})
	if err != nil {
		t.Fatal(err)
	}
	if st.Status == nil || st.Status.LastError == "" || st.Status.LastAttemptAt < st.Status.RefreshRequestedAt || !st.Present || st.SequenceNumber != 1 {
		t.Fatalf("status after a failed refresh: %v", st)
	}
	// A second request at once (most likely in the same second as the
	// attempt that answered the first) waits for an attempt of its own.
	st2, err := h.fed.RefreshBundle(ctx, &sigilv1.RefreshBundleRequest{TrustDomain: "partner.test", TimeoutMs: 20000})
	if err != nil {
		t.Fatal(err)
	}
	if st2.Status.RefreshRequests != st.Status.RefreshRequests+1 || st2.Status.RefreshesDone < st2.Status.RefreshRequests {
		t.Fatalf("second refresh answered by %d of %d requests (first: %d of %d)",
			st2.Status.RefreshesDone, st2.Status.RefreshRequests, st.Status.RefreshesDone, st.Status.RefreshRequests)
	}
	if !h.audited("federation_refresh_requested") {
		t.Error("no federation_refresh_requested audit record")
	}
}

// TestFederationSyncSendsFederatedBundles: an agent's sync stream carries
// the federated bundles its entries federate with: one that appears
// after the entry, a change of it (by modify_index), nothing for a
// bundle no entry names, and a removal when the bundle is deleted or no
// entry needs it any more; a new stream gets the full set.
func TestFederationSyncSendsFederatedBundles(t *testing.T) {
	h := startFedServer(t, testTD, nil, nil)
	ctx := context.Background()
	a := h.attest()
	later := &sigilv1.FederationRelationship{TrustDomain: "later.test", BundleEndpointUrl: "https://127.0.0.1:1", Profile: federation.ProfileHTTPSWeb}
	if _, err := h.fed.CreateRelationship(ctx, &sigilv1.CreateRelationshipRequest{Relationship: later}); err != nil {
		t.Fatal(err)
	}
	// federates_with passes through the admin API; an unknown trust
	// domain is refused by the store.
	e := &sigilv1.Entry{SpiffeId: "spiffe://example.org/w", ParentId: a.id, Selectors: []*sigilv1.Selector{{Type: "unix", Value: "uid:1"}},
		FederatesWith: []string{"later.test"}}
	resp, err := h.admin.BatchCreateEntry(ctx, &sigilv1.BatchCreateEntryRequest{Entries: []*sigilv1.Entry{e,
		{SpiffeId: "spiffe://example.org/x", ParentId: a.id, Selectors: []*sigilv1.Selector{{Type: "unix", Value: "uid:2"}}, FederatesWith: []string{"unknown.test"}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	if resp.Results[0].Status.Code != 0 || !slices.Equal(resp.Results[0].Entry.FederatesWith, []string{"later.test"}) {
		t.Fatalf("entry with federates_with: %v", resp.Results[0])
	}
	if codes.Code(resp.Results[1].Status.Code) != codes.InvalidArgument || !strings.Contains(resp.Results[1].Status.Message, "unknown.test") {
		t.Fatalf("entry federating with an unknown trust domain: %v", resp.Results[1].Status)
	}
	entryID := resp.Results[0].Entry.Id

	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	stream, err := a.node.Sync(sctx, &sigilv1.SyncRequest{})
	if err != nil {
		t.Fatal(err)
	}
	first, err := stream.Recv()
	if err != nil || !first.Reset_ || len(first.FederatedBundles) != 0 || len(first.Upserted) != 1 {
		t.Fatalf("first message: %v %v", first, err)
	}
	// next returns the next message that carries federated bundles or
	// removals.
	next := func() *sigilv1.SyncResponse {
		t.Helper()
		for {
			m, err := stream.Recv()
			if err != nil {
				t.Fatal(err)
			}
			if len(m.FederatedBundles) > 0 || len(m.RemovedFederatedBundles) > 0 {
				return m
			}
		}
	}

	// The bundle appears.
	doc1, _ := testBundleDoc(t, "later.test", 1)
	if _, err := h.fed.SetBundle(ctx, &sigilv1.SetBundleRequest{TrustDomain: "later.test", Document: doc1}); err != nil {
		t.Fatal(err)
	}
	m := next()
	if len(m.FederatedBundles) != 1 || m.FederatedBundles[0].TrustDomain != "later.test" || m.FederatedBundles[0].SequenceNumber != 1 {
		t.Fatalf("federated bundle pushed: %v", m)
	}
	idx1 := m.FederatedBundles[0].ModifyIndex

	// A bundle no entry names is not sent; a change of the named one is.
	docS, _ := testBundleDoc(t, "static.test", 1)
	if _, err := h.fed.SetBundle(ctx, &sigilv1.SetBundleRequest{TrustDomain: "static.test", Document: docS}); err != nil {
		t.Fatal(err)
	}
	doc2, _ := testBundleDoc(t, "later.test", 2)
	if _, err := h.fed.SetBundle(ctx, &sigilv1.SetBundleRequest{TrustDomain: "later.test", Document: doc2}); err != nil {
		t.Fatal(err)
	}
	m = next()
	if len(m.FederatedBundles) != 1 || m.FederatedBundles[0].TrustDomain != "later.test" || m.FederatedBundles[0].ModifyIndex <= idx1 {
		t.Fatalf("changed federated bundle: %v", m)
	}

	// A new stream gets the full set.
	sctx2, cancel2 := context.WithTimeout(ctx, 30*time.Second)
	defer cancel2()
	stream2, err := a.node.Sync(sctx2, &sigilv1.SyncRequest{})
	if err != nil {
		t.Fatal(err)
	}
	full, err := stream2.Recv()
	if err != nil || !full.Reset_ || len(full.FederatedBundles) != 1 || full.FederatedBundles[0].SequenceNumber != 2 {
		t.Fatalf("full set: %v %v", full, err)
	}
	cancel2()

	// Relationship deleted (with its bundle): removed.
	if _, err := h.fed.DeleteRelationship(ctx, &sigilv1.DeleteRelationshipRequest{TrustDomain: "later.test"}); err != nil {
		t.Fatal(err)
	}
	m = next()
	if !slices.Equal(m.RemovedFederatedBundles, []string{"later.test"}) || len(m.FederatedBundles) != 0 {
		t.Fatalf("removal after the relationship's deletion: %v", m)
	}

	// The entry now federates with static.test, then with nothing.
	upd := resp.Results[0].Entry
	upd.FederatesWith = []string{"static.test"}
	if r, err := h.admin.BatchUpdateEntry(ctx, &sigilv1.BatchUpdateEntryRequest{Entries: []*sigilv1.Entry{upd}}); err != nil || r.Results[0].Status.Code != 0 {
		t.Fatalf("update entry: %v %v", r, err)
	}
	m = next()
	if len(m.FederatedBundles) != 1 || m.FederatedBundles[0].TrustDomain != "static.test" {
		t.Fatalf("bundle of the updated entry: %v", m)
	}
	if _, err := h.admin.BatchDeleteEntry(ctx, &sigilv1.BatchDeleteEntryRequest{Ids: []string{entryID}}); err != nil {
		t.Fatal(err)
	}
	m = next()
	if !slices.Equal(m.RemovedFederatedBundles, []string{"static.test"}) {
		t.Fatalf("removal after the entry's deletion: %v", m)
	}
}

// TestFederationSyncHotPathAllocatesNothing: with no entry that
// federates, the sync stream's federated-bundle step allocates nothing.
func TestFederationSyncHotPathAllocatesNothing(t *testing.T) {
	var entries []raftstore.SyncEntry
	for _, id := range []string{"a", "b"} {
		e, err := raftstore.NewSyncEntry(&sigilv1.Entry{Id: id})
		if err != nil {
			t.Fatal(err)
		}
		entries = append(entries, e)
	}
	var f federatedSent
	allocs := testing.AllocsPerRun(100, func() {
		if send, rm := f.update(nil, entries, false); send != nil || rm != nil {
			t.Fatal("something to send")
		}
	})
	if allocs != 0 {
		t.Fatalf("%v allocations per loop", allocs)
	}
}

// webCertFiles writes a self-signed certificate for 127.0.0.1 and its key
// to dir, and returns the paths and a pool that trusts it.
func webCertFiles(t *testing.T, dir string) (string, string, *x509.CertPool) {
	t.Helper()
	der, key := testCA(t, "127.0.0.1", net.ParseIP("127.0.0.1"))
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile := filepath.Join(dir, "web.crt"), filepath.Join(dir, "web.key")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(c)
	return certFile, keyFile, pool
}

func certSet(b *sigilv1.Bundle) []string {
	var out []string
	for _, a := range b.GetX509Authorities() {
		out = append(out, string(a.Certificate))
	}
	slices.Sort(out)
	return out
}

// metricValue returns the value of the metric series name{labels}, or -1.
func metricValue(t *testing.T, s *Server, name string, labels map[string]string) float64 {
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
			switch {
			case m.Counter != nil:
				return m.Counter.GetValue()
			case m.Gauge != nil:
				return m.Gauge.GetValue()
			}
		}
	}
	return -1
}

// TestFederationTwoTrustDomains: two servers of different trust domains
// federate both ways through their bundle endpoints on loopback, one
// https_spiffe and one https_web: each one's bundle reaches the other's
// store, the https_spiffe side records the authenticated partner's
// fetch, an agent whose entry federates with the other trust domain gets
// its bundle on the sync stream, then the other side's new CA key with its
// next refresh, and deleting the relationship removes the bundle.
func TestFederationTwoTrustDomains(t *testing.T) {
	tdA := spiffeid.RequireTrustDomainFromString("a.test")
	tdB := spiffeid.RequireTrustDomainFromString("b.test")
	certFile, keyFile, webPool := webCertFiles(t, t.TempDir())
	addrA, addrB := joinFreeAddrOn(t, "127.0.0.1"), joinFreeAddrOn(t, "127.0.0.1")
	a := startFedServer(t, tdA, func(c *Config) {
		c.Federation.BundleEndpoint = BundleEndpointConfig{Address: addrA, Profile: federation.ProfileHTTPSSPIFFE, RefreshHint: time.Second}
	}, func(s *Server) { s.fed.rootCAs = webPool })
	b := startFedServer(t, tdB, func(c *Config) {
		c.Federation.BundleEndpoint = BundleEndpointConfig{Address: addrB, Profile: federation.ProfileHTTPSWeb, CertFile: certFile, KeyFile: keyFile, RefreshHint: time.Second}
	}, nil)
	ctx := context.Background()

	// The endpoint SVID: spiffe://a.test/sigil/server, from A's CA.
	svid := a.srv.fed.svid.Load()
	if svid == nil || len(svid.Leaf.URIs) != 1 || svid.Leaf.URIs[0].String() != "spiffe://a.test/sigil/server" {
		t.Fatalf("endpoint SVID: %v", svid)
	}
	if !bytes.Equal(svid.Leaf.AuthorityKeyId, a.srv.x509CA().Certificate().SubjectKeyId) {
		t.Fatal("the endpoint SVID is not signed by the server's X.509 CA")
	}
	if ttl := svid.Leaf.NotAfter.Sub(svid.Leaf.NotBefore); ttl > a.cfg.AgentSVIDTTL+time.Minute || ttl < a.cfg.AgentSVIDTTL-time.Minute {
		t.Fatalf("endpoint SVID lifetime %v, want about %v", ttl, a.cfg.AgentSVIDTTL)
	}

	// A polls B (https_web); B polls A (https_spiffe, bootstrapped with
	// A's bundle).
	ownA, err := a.admin.GetBundle(ctx, &sigilv1.GetBundleRequest{})
	if err != nil {
		t.Fatal(err)
	}
	docA, err := federation.Encode(ownA)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.fed.CreateRelationship(ctx, &sigilv1.CreateRelationshipRequest{Relationship: &sigilv1.FederationRelationship{
		TrustDomain: "b.test", BundleEndpointUrl: "https://" + addrB, Profile: federation.ProfileHTTPSWeb,
	}}); err != nil {
		t.Fatal(err)
	}
	if _, err := b.fed.CreateRelationship(ctx, &sigilv1.CreateRelationshipRequest{Relationship: &sigilv1.FederationRelationship{
		TrustDomain: "a.test", BundleEndpointUrl: "https://" + addrA, Profile: federation.ProfileHTTPSSPIFFE,
		EndpointSpiffeId: "spiffe://a.test/sigil/server",
	}, BootstrapBundle: docA}); err != nil {
		t.Fatal(err)
	}
	ownB, err := b.admin.GetBundle(ctx, &sigilv1.GetBundleRequest{})
	if err != nil {
		t.Fatal(err)
	}
	clusterWait(t, "B's bundle in A's store", func() bool {
		got, err := a.srv.store.Read().FederatedBundle("b.test")
		return err == nil && slices.Equal(certSet(got), certSet(ownB)) && got.SequenceNumber == ownB.SequenceNumber
	})
	clusterWait(t, "a successful fetch of A's endpoint by B", func() bool {
		st, err := b.srv.store.Read().FederationStatus("a.test")
		return err == nil && st.LastSuccessAt > 0 && st.LastError == ""
	})
	if got, err := b.srv.store.Read().FederatedBundle("a.test"); err != nil || !slices.Equal(certSet(got), certSet(ownA)) {
		t.Fatalf("A's bundle in B's store: %v %v", got, err)
	}
	// B fetched with its endpoint SVID, which A verifies against B's
	// bundle: A records the partner's fetch.
	clusterWait(t, "B's fetch recorded by A", func() bool {
		list, err := a.fed.ListBundles(ctx, &sigilv1.ListBundlesRequest{})
		if err != nil {
			return false
		}
		for _, pf := range list.Bundles[0].PartnerFetches {
			if pf.TrustDomain == "b.test" && pf.SequenceNumber >= ownA.SequenceNumber && pf.FetchedAt > 0 {
				return true
			}
		}
		return false
	})
	// The metrics (an endpoint counts a request after its answer).
	clusterWait(t, "the federation metrics", func() bool {
		return metricValue(t, a.srv, "sigil_federation_refreshes_total", map[string]string{"trust_domain": "b.test", "outcome": "changed"}) >= 1 &&
			metricValue(t, a.srv, "sigil_federation_bundle_age_seconds", map[string]string{"trust_domain": "b.test"}) >= 0 &&
			metricValue(t, b.srv, "sigil_federation_endpoint_requests_total", map[string]string{"profile": "https_web", "outcome": "ok"}) >= 1 &&
			metricValue(t, a.srv, "sigil_federation_endpoint_requests_total", map[string]string{"profile": "https_spiffe", "outcome": "ok"}) >= 1
	})

	// An agent of A whose entry federates with b.test gets B's bundle.
	ag := a.attest()
	e := &sigilv1.Entry{SpiffeId: "spiffe://a.test/client", ParentId: ag.id, Selectors: []*sigilv1.Selector{{Type: "unix", Value: "uid:1"}}, FederatesWith: []string{"b.test"}}
	if r, err := a.admin.BatchCreateEntry(ctx, &sigilv1.BatchCreateEntryRequest{Entries: []*sigilv1.Entry{e}}); err != nil || r.Results[0].Status.Code != 0 {
		t.Fatalf("create entry: %v %v", r, err)
	}
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	stream, err := ag.node.Sync(sctx, &sigilv1.SyncRequest{})
	if err != nil {
		t.Fatal(err)
	}
	first, err := stream.Recv()
	if err != nil || !first.Reset_ || len(first.FederatedBundles) != 1 || !slices.Equal(certSet(first.FederatedBundles[0]), certSet(ownB)) {
		t.Fatalf("first sync message: %v %v", first, err)
	}
	// A new CA key of B (prepared ahead of its schedule) reaches A's
	// agent through A's refresh of B's endpoint.
	prep, err := b.auth.PrepareAuthority(ctx, &sigilv1.AuthorityRequest{Kind: "x509"})
	if err != nil {
		t.Fatal(err)
	}
	ownB2, err := b.admin.GetBundle(ctx, &sigilv1.GetBundleRequest{})
	if err != nil || len(ownB2.X509Authorities) != len(ownB.X509Authorities)+1 {
		t.Fatalf("B's bundle after prepare (%s): %v %v", prep.Slot.Id, ownB2, err)
	}
	for {
		m, err := stream.Recv()
		if err != nil {
			t.Fatalf("waiting for B's new bundle: %v", err)
		}
		if len(m.FederatedBundles) > 0 {
			if got := m.FederatedBundles[0]; got.TrustDomain != "b.test" || !slices.Equal(certSet(got), certSet(ownB2)) || got.SequenceNumber != ownB2.SequenceNumber {
				t.Fatalf("B's new bundle on A's sync stream: %v", got)
			}
			break
		}
	}

	if _, err := a.fed.DeleteRelationship(ctx, &sigilv1.DeleteRelationshipRequest{TrustDomain: "b.test"}); err != nil {
		t.Fatal(err)
	}
	for {
		m, err := stream.Recv()
		if err != nil {
			t.Fatalf("waiting for the removal: %v", err)
		}
		if len(m.RemovedFederatedBundles) > 0 {
			if !slices.Equal(m.RemovedFederatedBundles, []string{"b.test"}) {
				t.Fatalf("removed %v", m.RemovedFederatedBundles)
			}
			break
		}
	}
}

// TestFederationEndpointSVIDRotatesWithCA: activating a new CA key
// re-mints the endpoint SVID from it.
func TestFederationEndpointSVIDRotatesWithCA(t *testing.T) {
	h := startFedServer(t, testTD, nil, nil)
	ctx := context.Background()
	before := h.srv.fed.svid.Load()
	prep, err := h.auth.PrepareAuthority(ctx, &sigilv1.AuthorityRequest{Kind: "x509"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.auth.ActivateAuthority(ctx, &sigilv1.AuthorityRequest{Kind: "x509", Id: prep.Slot.Id}); err != nil {
		t.Fatal(err)
	}
	after := h.srv.fed.svid.Load()
	if after == before || !bytes.Equal(after.Leaf.AuthorityKeyId, h.srv.x509CA().Certificate().SubjectKeyId) {
		t.Fatal("the endpoint SVID was not re-minted from the new CA")
	}
}

// TestFederationPropagationDelayRaised: while the bundle endpoint is
// served, the CA and JWT propagation delay is at least the partners'
// refresh bound; without an endpoint it is the configured one.
func TestFederationPropagationDelayRaised(t *testing.T) {
	for _, c := range []struct {
		name     string
		endpoint bool
		want     time.Duration
	}{{"no endpoint", false, time.Minute}, {"endpoint", true, 7 * time.Minute}} {
		t.Run(c.name, func(t *testing.T) {
			h := startFedServer(t, testTD, func(cfg *Config) {
				cfg.CAPropagationDelay = time.Minute
				cfg.Federation.PartnerRefreshBound = 7 * time.Minute
				if c.endpoint {
					cfg.Federation.BundleEndpoint.Address = "127.0.0.1:0"
				}
			}, nil)
			resp, err := h.auth.ShowAuthorities(context.Background(), &sigilv1.ShowAuthoritiesRequest{})
			if err != nil {
				t.Fatal(err)
			}
			if got := time.Duration(resp.PropagationDelay) * time.Second; got != c.want {
				t.Fatalf("propagation delay %v, want %v", got, c.want)
			}
			if got := h.srv.auth.jwt.Policy().Propagation; got != c.want {
				t.Fatalf("JWT propagation delay %v, want %v", got, c.want)
			}
		})
	}
	s := &Server{cfg: Config{CATTL: 24 * time.Hour, Federation: FederationConfig{BundleEndpoint: BundleEndpointConfig{Address: "x:1"}}}}
	if got := s.propagationDelay(); got != 4*time.Hour {
		t.Fatalf("default delay with an endpoint: %v, want the default 4h (above the 10m bound)", got)
	}
	// The default bound is twice the published refresh hint, at least 5m.
	for _, c := range []struct{ hint, want time.Duration }{
		{0, 10 * time.Minute}, {time.Minute, 5 * time.Minute}, {time.Hour, 2 * time.Hour},
	} {
		f := FederationConfig{BundleEndpoint: BundleEndpointConfig{Address: "x:1", RefreshHint: c.hint}}
		if got := f.partnerRefreshBound(); got != c.want {
			t.Errorf("default bound with refresh hint %v: %v, want %v", c.hint, got, c.want)
		}
	}
}

// TestFederationEndpointStartFailures: a taken bundle endpoint port, or
// https_web certificate files that do not load, fail the start before any
// state is written.
func TestFederationEndpointStartFailures(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	for _, c := range []struct {
		name string
		ep   BundleEndpointConfig
		want string
	}{
		{"port taken", BundleEndpointConfig{Address: l.Addr().String()}, "server: bundle endpoint listen"},
		{"missing certificate", BundleEndpointConfig{Address: "127.0.0.1:0", Profile: federation.ProfileHTTPSWeb, CertFile: "/nonexistent/web.crt", KeyFile: "/nonexistent/web.key"}, "server: bundle endpoint"},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			cfg := DefaultConfig()
			cfg.TrustDomain = testTD
			cfg.NodeName = "s1"
			cfg.DataDir = filepath.Join(dir, "data")
			cfg.BindAddress = "127.0.0.1:0"
			cfg.AdminSocket = filepath.Join(dir, "admin", "admin.sock")
			cfg.Federation.BundleEndpoint = c.ep
			withPlugins(t, &cfg, "memory")
			srv, err := New(cfg)
			if err != nil {
				t.Fatal(err)
			}
			err = srv.Run(context.Background())
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("run: %v, want an error with %q", err, c.want)
			}
			if _, err := os.Stat(cfg.DataDir); !os.IsNotExist(err) {
				t.Fatalf("data dir after a failed start: %v", err)
			}
		})
	}
}

// TestFederationConfigValidate: the federation block's bad values are
// refused with clear errors; the endpoint's profile defaults to
// https_spiffe.
func TestFederationConfigValidate(t *testing.T) {
	base := func() Config {
		cfg := DefaultConfig()
		cfg.TrustDomain = testTD
		withPlugins(t, &cfg, "memory")
		return cfg
	}
	doc, _ := testBundleDoc(t, "partner.test", 1)
	rel := func(td string) *sigilv1.FederationRelationship {
		return &sigilv1.FederationRelationship{TrustDomain: td, BundleEndpointUrl: "https://" + td, Profile: federation.ProfileHTTPSWeb}
	}
	for _, c := range []struct {
		name string
		mod  func(*Config)
		want string
	}{
		{"negative min", func(c *Config) { c.Federation.MinRefresh = -1 }, "min_refresh must not be negative"},
		{"min above max", func(c *Config) { c.Federation.MinRefresh, c.Federation.MaxRefresh = time.Hour, time.Minute }, "must not exceed max_refresh"},
		{"min above default max", func(c *Config) { c.Federation.MinRefresh = 2 * time.Hour }, "must not exceed max_refresh"},
		{"fields without address", func(c *Config) { c.Federation.BundleEndpoint.Profile = federation.ProfileHTTPSWeb }, "address is required"},
		{"bad address", func(c *Config) { c.Federation.BundleEndpoint.Address = "nope" }, "bundle_endpoint address"},
		{"bad profile", func(c *Config) {
			c.Federation.BundleEndpoint = BundleEndpointConfig{Address: "127.0.0.1:0", Profile: "https"}
		}, `profile "https"`},
		{"web without files", func(c *Config) {
			c.Federation.BundleEndpoint = BundleEndpointConfig{Address: "127.0.0.1:0", Profile: federation.ProfileHTTPSWeb, CertFile: "c"}
		}, "needs cert_file and key_file"},
		{"spiffe with files", func(c *Config) {
			c.Federation.BundleEndpoint = BundleEndpointConfig{Address: "127.0.0.1:0", CertFile: "c", KeyFile: "k"}
		}, "are for profile https_web"},
		{"bound too long", func(c *Config) {
			c.Federation.BundleEndpoint.Address = "127.0.0.1:0"
			c.Federation.PartnerRefreshBound = 13 * time.Hour
		}, "partner_refresh_bound"},
		{"bound below the refresh hint", func(c *Config) {
			c.Federation.BundleEndpoint = BundleEndpointConfig{Address: "127.0.0.1:0", RefreshHint: 10 * time.Minute}
			c.Federation.PartnerRefreshBound = 9 * time.Minute
		}, "shorter than the bundle endpoint's refresh_hint"},
		{"nil relationship", func(c *Config) { c.Federation.Relationships = []ConfigRelationship{{}} }, "relationship 0 is empty"},
		{"own trust domain", func(c *Config) {
			c.Federation.Relationships = []ConfigRelationship{{Relationship: rel(testTD.Name())}}
		}, "federates_with"},
		{"twice", func(c *Config) {
			c.Federation.Relationships = []ConfigRelationship{{Relationship: rel("partner.test")}, {Relationship: rel("partner.test")}}
		}, "declared twice"},
		{"bad bootstrap bundle", func(c *Config) {
			c.Federation.Relationships = []ConfigRelationship{{Relationship: rel("other.test"), BootstrapBundle: []byte("{")}}
		}, "bundle_file"},
	} {
		cfg := base()
		c.mod(&cfg)
		if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want an error with %q", c.name, err, c.want)
		}
	}
	cfg := base()
	cfg.Federation.BundleEndpoint.Address = "127.0.0.1:0"
	cfg.Federation.Relationships = []ConfigRelationship{{Relationship: rel("partner.test"), BootstrapBundle: doc}}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	if cfg.Federation.BundleEndpoint.Profile != federation.ProfileHTTPSSPIFFE {
		t.Fatalf("default profile %q", cfg.Federation.BundleEndpoint.Profile)
	}
}

// TestFederationClusterRefreshOnLeaderOnly: in a three-server cluster
// only the leader runs the refresher and writes the configuration's
// relationships (with their bootstrap bundles); a refresh asked on a
// follower is made by the leader; when the leader stops, the new leader
// takes over.
func TestFederationClusterRefreshOnLeaderOnly(t *testing.T) {
	doc, _ := testBundleDoc(t, "partner.test", 3)
	mc := newMemCluster(t)
	fedCfg := func(c *Config) {
		c.Federation.Relationships = []ConfigRelationship{{
			Relationship:    &sigilv1.FederationRelationship{TrustDomain: "partner.test", BundleEndpointUrl: "https://127.0.0.1:1", Profile: federation.ProfileHTTPSWeb},
			BootstrapBundle: doc,
		}}
	}
	first := mc.start("s1", mc.config("s1", "", fedCfg))
	first.waitReady()
	for _, name := range []string{"s2", "s3"} {
		mc.start(name, mc.config(name, "", func(c *Config) {
			fedCfg(c)
			c.JoinAddresses = []string{first.cfg.ClusterAddress}
		})).waitReady()
	}
	checkOne := func() *memNode {
		t.Helper()
		var l *memNode
		clusterWait(t, "the refresher on the leader only", func() bool {
			l = mc.leader()
			n := 0
			for _, m := range mc.live() {
				if m.srv.isRefreshing() {
					n++
					if m != l {
						return false
					}
				}
			}
			return n == 1 && l.srv.isRefreshing()
		})
		return l
	}
	l := checkOne()
	var follower *memNode
	for _, n := range mc.live() {
		clusterWait(t, "the configured relationship on "+n.name, func() bool {
			rel, err := n.srv.store.Read().FederationRelationship("partner.test")
			_, berr := n.srv.store.Read().FederatedBundle("partner.test")
			return err == nil && rel.FromConfig && berr == nil
		})
		if n != l {
			follower = n
		}
	}
	// A refresh asked on a follower is made by the leader; the follower
	// answers with the attempt's status (the endpoint is unreachable).
	st, err := sigilv1.NewFederationAdminClient(follower.admin).RefreshBundle(context.Background(),
		&sigilv1.RefreshBundleRequest{TrustDomain: "partner.test", TimeoutMs: 20000})
	if err != nil {
		t.Fatal(err)
	}
	if st.Status.GetLastError() == "" || !st.Present || st.SequenceNumber != 3 || !st.Relationship.GetFromConfig() {
		t.Fatalf("refresh through a follower: %v", st)
	}
	clusterWait(t, "the leader's failed refreshes counted", func() bool {
		return metricValue(t, l.srv, "sigil_federation_refreshes_total", map[string]string{"trust_domain": "partner.test", "outcome": "error"}) >= 1
	})
	l.stop()
	if l2 := checkOne(); l2 == l {
		t.Fatal("the stopped leader still leads")
	}
}

// TestFederationSyncChunksLargeBundles: federated bundles too large for
// one message are spread over the messages of the full set, each under
// the chunk size, the last one Synced.
func TestFederationSyncChunksLargeBundles(t *testing.T) {
	h := startFedServer(t, testTD, nil, nil)
	ctx := context.Background()
	a := h.attest()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tds := []string{"big1.test", "big2.test", "big3.test", "big4.test"}
	for i, td := range tds {
		b := &sigilv1.Bundle{TrustDomain: td, SequenceNumber: 1}
		for j := range 1000 {
			tmpl := &x509.Certificate{SerialNumber: big.NewInt(int64(i*10000 + j + 1)), Subject: pkix.Name{CommonName: td},
				NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true}
			der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
			if err != nil {
				t.Fatal(err)
			}
			b.X509Authorities = append(b.X509Authorities, &sigilv1.X509Authority{Certificate: der, NotAfter: tmpl.NotAfter.Unix()})
		}
		doc, err := federation.Encode(b)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := h.fed.SetBundle(ctx, &sigilv1.SetBundleRequest{TrustDomain: td, Document: doc}); err != nil {
			t.Fatal(err)
		}
	}
	e := &sigilv1.Entry{SpiffeId: "spiffe://example.org/w", ParentId: a.id, Selectors: []*sigilv1.Selector{{Type: "unix", Value: "uid:1"}}, FederatesWith: tds}
	if r, err := h.admin.BatchCreateEntry(ctx, &sigilv1.BatchCreateEntryRequest{Entries: []*sigilv1.Entry{e}}); err != nil || r.Results[0].Status.Code != 0 {
		t.Fatalf("create entry: %v %v", r, err)
	}
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	stream, err := a.node.Sync(sctx, &sigilv1.SyncRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	msgs := 0
	for {
		m, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if msgs == 0 && !m.Reset_ {
			t.Fatal("the first message is not a reset")
		}
		msgs++
		if size := proto.Size(m); size > syncChunkBytes+64<<10 {
			t.Fatalf("message of %d bytes", size)
		}
		for _, b := range m.FederatedBundles {
			got = append(got, b.TrustDomain)
		}
		if m.Synced {
			break
		}
	}
	if msgs < 2 || !slices.Equal(got, tds) {
		t.Fatalf("%d messages with the federated bundles %v, want several with %v", msgs, got, tds)
	}
}
