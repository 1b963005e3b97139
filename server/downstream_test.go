package server

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"net/url"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/audit"
	"github.com/sigil-id/sigil/ca"
	upmemory "github.com/sigil-id/sigil/ca/upstream/memory"
	"github.com/sigil-id/sigil/clock"
	"github.com/sigil-id/sigil/mtls/mtlstest"
)

// auditLog keeps the audit events of a test server.
type auditLog struct {
	mu     sync.Mutex
	events []audit.Event
}

func (l *auditLog) Audit(ev audit.Event) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.events = append(l.events, ev)
}

// count returns how many events named what were recorded.
func (l *auditLog) count(what string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, ev := range l.events {
		if ev.What == what {
			n++
		}
	}
	return n
}

// startDownstreamServer starts a single-node server in dir (kept across
// restarts) with AllowDownstream set to allow, the clock clk (nil: the
// real one) and its audit events in log.
func startDownstreamServer(t *testing.T, dir string, clk clock.Clock, allow bool, log *auditLog) *harness {
	t.Helper()
	return startServerConfig(t, clk, nil, func(cfg *Config) {
		cfg.DataDir = filepath.Join(dir, "data")
		cfg.AdminSocket = filepath.Join(dir, "admin", "admin.sock")
		withPlugins(t, cfg, "disk") // the keys under dir too, for restarts
		cfg.AllowDownstream = allow
		if log != nil {
			cfg.AuditSink = log
		}
	})
}

// downstreamClient dials the server's node API over TLS, presenting cert
// (none when nil), and returns its Downstream client.
func (h *harness) downstreamClient(cert *tls.Certificate) sigilv1.DownstreamClient {
	h.t.Helper()
	pool := h.pool()
	tc := &tls.Config{InsecureSkipVerify: true, // verified below, as an SVID of the bundle
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			certs, err := parseCerts(raw)
			if err != nil {
				return err
			}
			inter := x509.NewCertPool()
			for _, c := range certs[1:] {
				inter.AddCert(c)
			}
			_, err = certs[0].Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
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
	return sigilv1.NewDownstreamClient(conn)
}

// mintSVID mints an X.509-SVID for id with the server's active CA, as
// an agent of the cluster would get it for a workload.
func (h *harness) mintSVID(id string) *tls.Certificate {
	h.t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		h.t.Fatal(err)
	}
	chain, err := h.srv.x509CA().SignX509SVID(context.Background(), ca.X509SVIDParams{
		PublicKey: key.Public(), SPIFFEID: spiffeid.RequireFromString(id), TTL: 30 * time.Minute,
	})
	if err != nil {
		h.t.Fatal(err)
	}
	return tlsCert(chain, key)
}

func tlsCert(chain []*x509.Certificate, key crypto.Signer) *tls.Certificate {
	cert := &tls.Certificate{PrivateKey: key, Leaf: chain[0]}
	for _, c := range chain {
		cert.Certificate = append(cert.Certificate, c.Raw)
	}
	return cert
}

// createEntryDownstream creates an entry for spiffeID, marked downstream
// or not.
func (h *harness) createEntryDownstream(spiffeID string, downstream bool) *sigilv1.Entry {
	h.t.Helper()
	e := &sigilv1.Entry{SpiffeId: spiffeID, ParentId: "spiffe://example.org/node/1", Downstream: downstream,
		Selectors: []*sigilv1.Selector{{Type: "unix", Value: "uid:1000"}}}
	resp, err := h.admin.BatchCreateEntry(context.Background(), &sigilv1.BatchCreateEntryRequest{Entries: []*sigilv1.Entry{e}})
	if err != nil {
		h.t.Fatal(err)
	}
	if st := resp.Results[0].Status; st.Code != 0 {
		h.t.Fatalf("create entry: %s", st.Message)
	}
	return resp.Results[0].Entry
}

// downstreamCSR is the CSR a downstream server's new CA key sends, with
// the URI SANs uris.
func downstreamCSR(t testing.TB, key crypto.Signer, uris ...string) []byte {
	t.Helper()
	tmpl := &x509.CertificateRequest{Subject: pkix.Name{Organization: []string{"Sigil"}, CommonName: "Sigil CA down-1", SerialNumber: "down-1"}}
	for _, u := range uris {
		pu, err := url.Parse(u)
		if err != nil {
			t.Fatal(err)
		}
		tmpl.URIs = append(tmpl.URIs, pu)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func newKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func wantStatus(t *testing.T, err error, code codes.Code, msg string) {
	t.Helper()
	if status.Code(err) != code {
		t.Fatalf("error %v, want %s", err, code)
	}
	if msg != "" && !strings.Contains(status.Convert(err).Message(), msg) {
		t.Fatalf("error %q does not say %q", status.Convert(err).Message(), msg)
	}
}

// TestDownstreamOffIsUnimplemented: a server without allow_downstream
// answers every caller Unimplemented, saying why, and signs nothing.
func TestDownstreamOffIsUnimplemented(t *testing.T) {
	log := &auditLog{}
	h := startDownstreamServer(t, t.TempDir(), nil, false, log)
	h.createEntryDownstream("spiffe://example.org/down", true)
	csr := downstreamCSR(t, newKey(t), "spiffe://example.org")
	for name, cert := range map[string]*tls.Certificate{
		"no certificate":     nil,
		"downstream SVID":    h.mintSVID("spiffe://example.org/down"),
		"agent SVID":         h.agentCert(),
		"non-downstream one": h.mintSVID("spiffe://example.org/web"),
	} {
		t.Run(name, func(t *testing.T) {
			_, err := h.downstreamClient(cert).MintX509CA(context.Background(), &sigilv1.MintX509CARequest{Csr: csr})
			wantStatus(t, err, codes.Unimplemented, "allow_downstream is off")
		})
	}
	if n := log.count("downstream_ca_signed"); n != 0 {
		t.Fatalf("%d downstream CAs signed", n)
	}
}

// agentCert attests an agent and returns its SVID.
func (h *harness) agentCert() *tls.Certificate {
	h.t.Helper()
	a := h.attest()
	return &tls.Certificate{Certificate: a.chain, PrivateKey: a.key}
}

// serverCert is the server's own SVID (its node API certificate).
func (h *harness) serverCert() *tls.Certificate { return h.srv.svid.Load() }

// TestDownstreamRefusesCallers: only the SVID of a workload whose SPIFFE
// ID is an entry marked downstream may ask; any other caller is refused
// before anything is signed, and the refusal is audited.
func TestDownstreamRefusesCallers(t *testing.T) {
	log := &auditLog{}
	h := startDownstreamServer(t, t.TempDir(), nil, true, log)
	h.createEntryDownstream("spiffe://example.org/down", true)
	h.createEntryDownstream("spiffe://example.org/web", false)
	csr := downstreamCSR(t, newKey(t), "spiffe://example.org")
	other := mtlstest.NewCA("other.org").SVID("spiffe://other.org/down", time.Hour)
	forged := mtlstest.NewCA("example.org").SVID("spiffe://example.org/down", time.Hour)
	for _, tc := range []struct {
		name string
		cert *tls.Certificate
		code codes.Code
		msg  string
	}{
		{"no certificate", nil, codes.Unauthenticated, "X.509-SVID of a downstream workload is required"},
		{"agent SVID", h.agentCert(), codes.PermissionDenied, "is an agent"},
		{"server SVID", h.serverCert(), codes.PermissionDenied, "is a server"},
		{"workload not marked downstream", h.mintSVID("spiffe://example.org/web"), codes.PermissionDenied, "not the spiffe_id of any entry marked downstream"},
		{"workload without an entry", h.mintSVID("spiffe://example.org/nobody"), codes.PermissionDenied, "not the spiffe_id of any entry marked downstream"},
		{"another trust domain", svidCert(other), codes.Unauthenticated, "X.509-SVID is not valid"},
		{"a CA outside the bundle", svidCert(forged), codes.Unauthenticated, "X.509-SVID is not valid"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := log.count("downstream_ca_refused")
			_, err := h.downstreamClient(tc.cert).MintX509CA(context.Background(), &sigilv1.MintX509CARequest{Csr: csr})
			wantStatus(t, err, tc.code, tc.msg)
			if log.count("downstream_ca_refused") != before+1 {
				t.Fatal("the refusal was not audited")
			}
		})
	}
	if n := log.count("downstream_ca_signed"); n != 0 {
		t.Fatalf("%d downstream CAs signed", n)
	}
	// An agent connection stays an agent connection: the downstream SVID
	// does not open the Node service either.
	_, err := h.nodeClient(h.mintSVID("spiffe://example.org/down")).BatchNewX509SVID(context.Background(), &sigilv1.BatchNewX509SVIDRequest{})
	wantStatus(t, err, codes.PermissionDenied, "is not an agent")
}

func svidCert(s interface {
	Marshal() ([]byte, []byte, error)
}) *tls.Certificate {
	certs, key, err := s.Marshal()
	if err != nil {
		panic(err)
	}
	c, err := tls.X509KeyPair(certs, key)
	if err != nil {
		panic(err)
	}
	return &c
}

// TestDownstreamRefusesBadRequests: a downstream caller's CSR with a
// wrong URI SAN, a bad signature, too many bytes, or a negative TTL is
// refused with InvalidArgument before the CA key is used.
func TestDownstreamRefusesBadRequests(t *testing.T) {
	log := &auditLog{}
	clk := clock.NewFake(time.Now())
	h := startDownstreamServer(t, t.TempDir(), clk, true, log)
	h.createEntryDownstream("spiffe://example.org/down", true)
	c := h.downstreamClient(h.mintSVID("spiffe://example.org/down"))
	key := newKey(t)
	good := downstreamCSR(t, key, "spiffe://example.org")
	badSig := append([]byte(nil), good...)
	badSig[len(badSig)-3] ^= 0xff
	for _, tc := range []struct {
		name string
		req  *sigilv1.MintX509CARequest
		msg  string
	}{
		{"wrong URI SAN", &sigilv1.MintX509CARequest{Csr: downstreamCSR(t, key, "spiffe://example.org/down")}, "exactly one URI SAN"},
		{"another trust domain's URI SAN", &sigilv1.MintX509CARequest{Csr: downstreamCSR(t, key, "spiffe://other.org")}, "exactly one URI SAN"},
		{"two URI SANs", &sigilv1.MintX509CARequest{Csr: downstreamCSR(t, key, "spiffe://example.org", "spiffe://example.org/x")}, "exactly one URI SAN"},
		{"bad signature", &sigilv1.MintX509CARequest{Csr: badSig}, "CSR"},
		{"garbage", &sigilv1.MintX509CARequest{Csr: []byte("not a CSR")}, "malformed CSR"},
		{"empty", &sigilv1.MintX509CARequest{}, "CSR is empty"},
		{"oversized CSR", &sigilv1.MintX509CARequest{Csr: make([]byte, ca.MaxCSRSize+1)}, "too large"},
		{"negative TTL", &sigilv1.MintX509CARequest{Csr: good, TtlSeconds: -1}, "negative"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clk.Add(time.Minute) // a fresh token of the caller's rate limit
			_, err := c.MintX509CA(context.Background(), tc.req)
			wantStatus(t, err, codes.InvalidArgument, tc.msg)
		})
	}
	if n := log.count("downstream_ca_signed"); n != 0 {
		t.Fatalf("%d downstream CAs signed", n)
	}
	if n := log.count("downstream_ca_refused"); n != 8 {
		t.Fatalf("%d refusals audited, want 8", n)
	}
}

// TestDownstreamRateLimit: one caller gets downstreamBurst calls at once,
// then one a second (ResourceExhausted in between).
func TestDownstreamRateLimit(t *testing.T) {
	clk := clock.NewFake(time.Now())
	h := startDownstreamServer(t, t.TempDir(), clk, true, nil)
	h.createEntryDownstream("spiffe://example.org/down", true)
	h.createEntryDownstream("spiffe://example.org/down2", true)
	c := h.downstreamClient(h.mintSVID("spiffe://example.org/down"))
	req := &sigilv1.MintX509CARequest{Csr: []byte("not a CSR")} // refused after the rate limit
	for i := 0; i < downstreamBurst; i++ {
		_, err := c.MintX509CA(context.Background(), req)
		wantStatus(t, err, codes.InvalidArgument, "")
	}
	_, err := c.MintX509CA(context.Background(), req)
	wantStatus(t, err, codes.ResourceExhausted, "faster than 1 per second")
	// Another caller has its own bucket.
	_, err = h.downstreamClient(h.mintSVID("spiffe://example.org/down2")).MintX509CA(context.Background(), req)
	wantStatus(t, err, codes.InvalidArgument, "")
	clk.Add(time.Second)
	_, err = c.MintX509CA(context.Background(), req)
	wantStatus(t, err, codes.InvalidArgument, "")
	_, err = c.MintX509CA(context.Background(), req)
	wantStatus(t, err, codes.ResourceExhausted, "")
}

// TestDownstreamPathLenZeroRefused: a server whose active CA certificate
// allows no intermediates (made before allow_downstream was set) refuses
// with FailedPrecondition naming the fix.
func TestDownstreamPathLenZeroRefused(t *testing.T) {
	dir := t.TempDir()
	h := startDownstreamServer(t, dir, nil, false, nil)
	if h.srv.x509CA().AllowsIntermediates() {
		t.Fatal("a server without allow_downstream made a CA that allows intermediates")
	}
	h.stop()
	log := &auditLog{}
	h = startDownstreamServer(t, dir, nil, true, log)
	h.createEntryDownstream("spiffe://example.org/down", true)
	_, err := h.downstreamClient(h.mintSVID("spiffe://example.org/down")).MintX509CA(context.Background(),
		&sigilv1.MintX509CARequest{Csr: downstreamCSR(t, newKey(t), "spiffe://example.org")})
	wantStatus(t, err, codes.FailedPrecondition, "allows no intermediate CAs; set allow_downstream and rotate the CA (sigil authority prepare, activate)")
	if log.count("downstream_ca_refused") != 1 || log.count("downstream_ca_signed") != 0 {
		t.Fatal("the refusal was not audited, or something was signed")
	}
}

func TestDownstreamTTL(t *testing.T) {
	e := func(ttl int32) *sigilv1.Entry { return &sigilv1.Entry{X509SvidTtl: ttl} }
	for _, tc := range []struct {
		name    string
		req     int64
		entries []*sigilv1.Entry
		want    time.Duration
	}{
		{"default is the CA TTL", 0, []*sigilv1.Entry{e(0)}, 24 * time.Hour},
		{"shorter request", 3600, []*sigilv1.Entry{e(0)}, time.Hour},
		{"cut at the CA TTL", 1 << 40, []*sigilv1.Entry{e(0)}, 24 * time.Hour},
		{"cut at the entry's TTL", 0, []*sigilv1.Entry{e(600)}, 10 * time.Minute},
		{"the largest entry TTL", 0, []*sigilv1.Entry{e(600), e(1200)}, 20 * time.Minute},
		{"an entry without TTL lifts the bound", 0, []*sigilv1.Entry{e(600), e(0)}, 24 * time.Hour},
	} {
		got, err := downstreamTTL(tc.req, 24*time.Hour, tc.entries)
		if err != nil || got != tc.want {
			t.Errorf("%s: %v, %v; want %v", tc.name, got, err, tc.want)
		}
	}
	if _, err := downstreamTTL(-5, time.Hour, nil); err == nil {
		t.Error("a negative TTL is accepted")
	}
}

// TestDownstreamMintX509CA: the SVID of a workload of an entry marked
// downstream, over real TLS, gets a CA certificate for its CSR's key
// that verifies to the bundle's roots, and a leaf the new CA signs
// verifies through it.
func TestDownstreamMintX509CA(t *testing.T) {
	log := &auditLog{}
	h := startDownstreamServer(t, t.TempDir(), nil, true, log)
	if !h.srv.x509CA().AllowsIntermediates() {
		t.Fatal("a server with allow_downstream made a CA that allows no intermediates")
	}
	h.createEntryDownstream("spiffe://example.org/down", true)
	key := newKey(t)
	start := time.Now()
	resp, err := h.downstreamClient(h.mintSVID("spiffe://example.org/down")).MintX509CA(context.Background(),
		&sigilv1.MintX509CARequest{Csr: downstreamCSR(t, key, "spiffe://example.org"), TtlSeconds: 3600})
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.CaChain) != 1 {
		t.Fatalf("chain of %d certificates: the signer is a root of the bundle and must not be in it", len(resp.CaChain))
	}
	chain, err := parseCerts(resp.CaChain)
	if err != nil {
		t.Fatal(err)
	}
	roots, err := parseCerts(resp.Roots)
	if err != nil {
		t.Fatal(err)
	}
	if len(roots) != len(h.srv.Bundle()) || !containsCert(roots, h.srv.x509CA().Certificate()) {
		t.Fatalf("%d roots, want the bundle's %d with the signer", len(roots), len(h.srv.Bundle()))
	}
	if err := ca.CheckUpstreamResponse(&ca.X509CAResponse{Chain: chain, Roots: roots}, testTD, key.Public(), time.Now()); err != nil {
		t.Fatalf("the answer fails the downstream server's checks: %v", err)
	}
	newCA := chain[0]
	if d := newCA.NotAfter.Sub(start); d < time.Hour-time.Minute || d > time.Hour+time.Minute {
		t.Errorf("lifetime %v, want the 1h asked for", d)
	}
	if newCA.Subject.CommonName != "Sigil CA down-1" {
		t.Errorf("subject %v, want the CSR's", newCA.Subject)
	}

	// A leaf signed by the new CA verifies through it to the bundle.
	leafTmpl := &x509.Certificate{
		SerialNumber: newCA.SerialNumber, NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		URIs:        []*url.URL{spiffeid.RequireFromString("spiffe://example.org/web").URL()},
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	leafKey := newKey(t)
	der, err := x509.CreateCertificate(rand.Reader, leafTmpl, newCA, leafKey.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(der)
	inter := x509.NewCertPool()
	inter.AddCert(newCA)
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: h.pool(), Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Fatalf("a leaf of the downstream CA does not verify to the bundle: %v", err)
	}
	if log.count("downstream_ca_signed") != 1 {
		t.Fatal("the signature was not audited")
	}
	// The node guard counts the downstream caller's connection (still
	// open) as authenticated: it is not held to the limits of callers
	// without an SVID.
	if n := h.srv.nodeGuard.unauthConnCount(); n != 0 {
		t.Errorf("%d unauthenticated node API connections, want the downstream caller's counted as authenticated", n)
	}

	// The entry's x509_svid_ttl bounds the lifetime.
	h.createEntryDownstreamTTL("spiffe://example.org/short", 600)
	resp, err = h.downstreamClient(h.mintSVID("spiffe://example.org/short")).MintX509CA(context.Background(),
		&sigilv1.MintX509CARequest{Csr: downstreamCSR(t, key, "spiffe://example.org")})
	if err != nil {
		t.Fatal(err)
	}
	chain, _ = parseCerts(resp.CaChain)
	if d := chain[0].NotAfter.Sub(start); d > 11*time.Minute {
		t.Errorf("lifetime %v, want the entry's 10m", d)
	}
}

func parseCerts(raw [][]byte) ([]*x509.Certificate, error) {
	out := make([]*x509.Certificate, len(raw))
	for i, r := range raw {
		c, err := x509.ParseCertificate(r)
		if err != nil {
			return nil, err
		}
		out[i] = c
	}
	return out, nil
}

// createEntryDownstreamTTL creates an entry marked downstream with an
// x509_svid_ttl.
func (h *harness) createEntryDownstreamTTL(spiffeID string, ttl int32) {
	h.t.Helper()
	e := &sigilv1.Entry{SpiffeId: spiffeID, ParentId: "spiffe://example.org/node/1", Downstream: true, X509SvidTtl: ttl,
		Selectors: []*sigilv1.Selector{{Type: "unix", Value: "uid:1000"}}}
	resp, err := h.admin.BatchCreateEntry(context.Background(), &sigilv1.BatchCreateEntryRequest{Entries: []*sigilv1.Entry{e}})
	if err != nil || resp.Results[0].Status.Code != 0 {
		h.t.Fatalf("create entry: %v %v", err, resp)
	}
}

// TestDownstreamChainedServerRefuses: a server whose own CA certificate
// an upstream authority signed refuses to sign below it, even with
// allow_downstream (nesting is one level deep), saying so.
func TestDownstreamChainedServerRefuses(t *testing.T) {
	up, err := upmemory.New(clock.New(), upmemory.Options{})
	if err != nil {
		t.Fatal(err)
	}
	log := &auditLog{}
	h := startServerConfig(t, nil, nil, func(c *Config) {
		c.UpstreamAuthority = up
		c.AllowDownstream = true
		c.AuditSink = log
	})
	if !h.srv.x509CA().Upstream() {
		t.Fatal("the server's CA is not signed upstream")
	}
	h.createEntryDownstream("spiffe://example.org/down", true)
	_, err = h.downstreamClient(h.mintSVID("spiffe://example.org/down")).MintX509CA(context.Background(),
		&sigilv1.MintX509CARequest{Csr: downstreamCSR(t, newKey(t), "spiffe://example.org")})
	wantStatus(t, err, codes.FailedPrecondition, "intermediate of this cluster's own upstream authority")
	if log.count("downstream_ca_signed") != 0 || log.count("downstream_ca_refused") != 1 {
		t.Fatal("something was signed, or the refusal was not audited")
	}
}
