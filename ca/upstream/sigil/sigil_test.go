package sigil

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"io"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/attestor/node"
	"github.com/sigil-id/sigil/attestor/node/jointoken"
	_ "github.com/sigil-id/sigil/attestor/workload/unix" // the unix selector type of the entries
	"github.com/sigil-id/sigil/ca"
	"github.com/sigil-id/sigil/ca/keymanager/memory"
	"github.com/sigil-id/sigil/internal/eventually"
	"github.com/sigil-id/sigil/mtls/mtlstest"
	"github.com/sigil-id/sigil/server"
)

var td = spiffeid.RequireTrustDomainFromString("example.org")

// shortDir is a directory short enough for unix sockets.
func shortDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "sgu")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// upstream is a real in-process server of the upstream cluster, with
// allow_downstream, and an agent attested to it (over its node API) that
// mints SVIDs for its entries.
type upstream struct {
	t     *testing.T
	srv   *server.Server
	admin sigilv1.AdminClient
	agent sigilv1.NodeClient
	id    string // the agent's SPIFFE ID
}

func startUpstream(t *testing.T) *upstream {
	t.Helper()
	dir := shortDir(t)
	cfg := server.DefaultConfig()
	cfg.TrustDomain = td
	cfg.NodeName = "up1"
	cfg.DataDir = filepath.Join(dir, "data")
	cfg.BindAddress = "127.0.0.1:0"
	cfg.AdminSocket = filepath.Join(dir, "admin", "admin.sock")
	cfg.Logger = zap.NewNop()
	cfg.AllowDownstream = true
	cfg.NodeVerifiers = []node.Verifier{jointoken.NewServerVerifier()}
	cfg.KeyStore = memory.NewStore()
	srv, err := server.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Error("upstream server did not stop")
		}
	})
	select {
	case <-srv.Ready():
	case err := <-done:
		t.Fatalf("upstream server: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("upstream server not ready")
	}
	conn, err := grpc.NewClient("unix://"+cfg.AdminSocket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	u := &upstream{t: t, srv: srv, admin: sigilv1.NewAdminClient(conn)}
	u.attest()
	return u
}

func (u *upstream) bundle() *x509bundle.Bundle {
	return x509bundle.FromX509Authorities(td, u.srv.Bundle())
}

// nodeConn dials the node API over TLS with cert (none when nil).
func (u *upstream) nodeConn(cert *tls.Certificate) *grpc.ClientConn {
	u.t.Helper()
	pool := x509.NewCertPool()
	for _, c := range u.srv.Bundle() {
		pool.AddCert(c)
	}
	tc := &tls.Config{InsecureSkipVerify: true, // verified below
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			c, err := x509.ParseCertificate(raw[0])
			if err != nil {
				return err
			}
			_, err = c.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
			return err
		}}
	if cert != nil {
		tc.Certificates = []tls.Certificate{*cert}
	}
	conn, err := grpc.NewClient(u.srv.NodeAddr().String(), grpc.WithTransportCredentials(credentials.NewTLS(tc)))
	if err != nil {
		u.t.Fatal(err)
	}
	u.t.Cleanup(func() { conn.Close() })
	return conn
}

func newKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func csrFor(t testing.TB, key *ecdsa.PrivateKey, uris ...string) []byte {
	t.Helper()
	tmpl := &x509.CertificateRequest{Subject: pkix.Name{Organization: []string{"Sigil"}, CommonName: "Sigil CA down1", SerialNumber: "down1"}}
	for _, s := range uris {
		pu, err := url.Parse(s)
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

// attest attests an agent with a join token.
func (u *upstream) attest() {
	u.t.Helper()
	tok, err := u.admin.CreateJoinToken(context.Background(), &sigilv1.CreateJoinTokenRequest{})
	if err != nil {
		u.t.Fatal(err)
	}
	key := newKey(u.t)
	resp, err := sigilv1.NewNodeClient(u.nodeConn(nil)).Attest(context.Background(), &sigilv1.AttestRequest{
		AttestationType: jointoken.Name, Payload: []byte(tok.Token), Csr: csrFor(u.t, key),
	})
	if err != nil {
		u.t.Fatalf("attest: %v", err)
	}
	u.id = resp.SpiffeId
	u.agent = sigilv1.NewNodeClient(u.nodeConn(&tls.Certificate{Certificate: resp.SvidChain, PrivateKey: key}))
}

// svid registers an entry for id under the agent (marked downstream or
// not) and has the agent mint its X.509-SVID, as it would for a workload.
func (u *upstream) svid(id string, downstream bool) *x509svid.SVID {
	u.t.Helper()
	e := &sigilv1.Entry{SpiffeId: id, ParentId: u.id, Downstream: downstream, Selectors: []*sigilv1.Selector{{Type: "unix", Value: "uid:0"}}}
	cr, err := u.admin.BatchCreateEntry(context.Background(), &sigilv1.BatchCreateEntryRequest{Entries: []*sigilv1.Entry{e}})
	if err != nil || cr.Results[0].Status.Code != 0 {
		u.t.Fatalf("create entry: %v %v", err, cr)
	}
	key := newKey(u.t)
	resp, err := u.agent.BatchNewX509SVID(context.Background(), &sigilv1.BatchNewX509SVIDRequest{Requests: []*sigilv1.X509SVIDRequest{
		{EntryId: cr.Results[0].Entry.Id, Csr: csrFor(u.t, key)},
	}})
	if err != nil || resp.Results[0].Status.Code != 0 {
		u.t.Fatalf("mint SVID: %v %v", err, resp)
	}
	var certs []*x509.Certificate
	for _, der := range resp.Results[0].Chain {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			u.t.Fatal(err)
		}
		certs = append(certs, c)
	}
	return &x509svid.SVID{ID: spiffeid.RequireFromString(id), Certificates: certs, PrivateKey: key}
}

// workloadAPI serves svid and the upstream's bundle on a Workload API
// socket, as the upstream agent on this machine would.
func (u *upstream) workloadAPI(svid *x509svid.SVID) *mtlstest.WorkloadAPI {
	u.t.Helper()
	w, err := mtlstest.StartWorkloadAPI(shortDir(u.t))
	if err != nil {
		u.t.Fatal(err)
	}
	u.t.Cleanup(w.Stop)
	if err := w.SetX509([]*x509svid.SVID{svid}, u.bundle()); err != nil {
		u.t.Fatal(err)
	}
	return w
}

func newUpstream(t *testing.T, addr, socket string, timeout time.Duration) *Upstream {
	t.Helper()
	cfg := DefaultConfig()
	cfg.TrustDomain = td
	cfg.ServerAddresses = []string{addr}
	cfg.WorkloadAPISocket = socket
	cfg.Timeout = timeout
	up, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { up.Close() })
	return up
}

// TestMintX509CA: with the SVID of an entry marked downstream from the
// Workload API, the upstream authority gets a CA certificate from a real
// upstream server that verifies to the upstream's roots, and a leaf the
// new CA signs verifies through it; Roots are the Workload API's bundle
// and follow its changes.
func TestMintX509CA(t *testing.T) {
	u := startUpstream(t)
	w := u.workloadAPI(u.svid("spiffe://example.org/downstream/server", true))
	up := newUpstream(t, u.srv.NodeAddr().String(), w.Path(), DefaultTimeout)

	key := newKey(t)
	resp, err := up.MintX509CA(context.Background(), ca.X509CARequest{CSR: csrFor(t, key, td.IDString()), TrustDomain: td, TTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	newCA := resp.Chain[0]
	if !newCA.IsCA || newCA.Subject.CommonName != "Sigil CA down1" {
		t.Fatalf("got %v (CA %v)", newCA.Subject, newCA.IsCA)
	}
	if d := time.Until(newCA.NotAfter); d > time.Hour || d < 50*time.Minute {
		t.Errorf("lifetime left %v, want about the hour asked for", d)
	}
	roots := x509.NewCertPool()
	for _, r := range u.srv.Bundle() {
		roots.AddCert(r)
	}
	leafTmpl := &x509.Certificate{
		SerialNumber: newCA.SerialNumber, NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		URIs:        []*url.URL{spiffeid.RequireFromString("spiffe://example.org/web").URL()},
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, leafTmpl, newCA, newKey(t).Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(der)
	inter := x509.NewCertPool()
	for _, c := range resp.Chain {
		inter.AddCert(c)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter}); err != nil {
		t.Fatalf("a leaf of the new CA does not verify to the upstream's bundle: %v", err)
	}

	got, err := up.Roots(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if !sameCerts(got, u.srv.Bundle()) {
		t.Fatalf("Roots: %d certificates, want the upstream bundle's %d", len(got), len(u.srv.Bundle()))
	}
	// The upstream rotates: the agent's bundle gains a root, and Roots
	// follows it.
	extra := mtlstest.NewCA("example.org").Cert()
	b := u.bundle()
	b.AddX509Authority(extra)
	if err := w.SetX509([]*x509svid.SVID{u.svid("spiffe://example.org/downstream/server2", true)}, b); err != nil {
		t.Fatal(err)
	}
	eventually.True(t, 10*time.Second, func() bool {
		got, err := up.Roots(context.Background())
		return err == nil && len(got) == len(u.srv.Bundle())+1
	}, "Roots did not follow the Workload API's bundle")

	if err := up.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := up.Roots(context.Background()); err == nil || !strings.Contains(err.Error(), "closed") {
		t.Fatalf("Roots after Close: %v", err)
	}
}

func sameCerts(a, b []*x509.Certificate) bool {
	if len(a) != len(b) {
		return false
	}
	for _, c := range a {
		found := false
		for _, d := range b {
			if c.Equal(d) {
				found = true
			}
		}
		if !found {
			return false
		}
	}
	return true
}

// TestUpstreamRefusesNonDownstream: the SVID of an entry that is not
// marked downstream gets the upstream's PermissionDenied, named.
func TestUpstreamRefusesNonDownstream(t *testing.T) {
	u := startUpstream(t)
	w := u.workloadAPI(u.svid("spiffe://example.org/web", false))
	up := newUpstream(t, u.srv.NodeAddr().String(), w.Path(), DefaultTimeout)
	_, err := up.MintX509CA(context.Background(), ca.X509CARequest{CSR: csrFor(t, newKey(t), td.IDString()), TrustDomain: td, TTL: time.Hour})
	if err == nil || !strings.Contains(err.Error(), "PermissionDenied") || !strings.Contains(err.Error(), "not the spiffe_id of any entry marked downstream") {
		t.Fatalf("error %v, want the upstream's refusal", err)
	}
}

// TestUpstreamDown: a closed port fails at once with the address in the
// error; an upstream that accepts and never answers fails at the timeout.
func TestUpstreamDown(t *testing.T) {
	u := startUpstream(t)
	w := u.workloadAPI(u.svid("spiffe://example.org/downstream/server", true))
	req := ca.X509CARequest{CSR: csrFor(t, newKey(t), td.IDString()), TrustDomain: td, TTL: time.Hour}

	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := l.Addr().String()
	l.Close()
	up := newUpstream(t, closed, w.Path(), time.Minute)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err = up.MintX509CA(ctx, req)
	if err == nil || !strings.Contains(err.Error(), "MintX509CA at "+closed) || !strings.Contains(err.Error(), "Unavailable") {
		t.Fatalf("error %v, want Unavailable naming %s", err, closed)
	}
	if ctx.Err() != nil {
		t.Fatal("a closed port took the whole deadline")
	}

	// A listener that accepts connections and never speaks TLS.
	silent, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	go func() {
		for {
			c, err := silent.Accept()
			if err != nil {
				return
			}
			t.Cleanup(func() { c.Close() })
		}
	}()
	up = newUpstream(t, silent.Addr().String(), w.Path(), 300*time.Millisecond)
	_, err = up.MintX509CA(context.Background(), req)
	if err == nil || !strings.Contains(err.Error(), "DeadlineExceeded") {
		t.Fatalf("error %v, want DeadlineExceeded", err)
	}
}

// TestUpstreamMustBeAServer: a peer on the upstream address whose SVID
// (valid in the bundle) is not a Sigil server's is refused in the TLS
// handshake: the CSR never reaches it.
func TestUpstreamMustBeAServer(t *testing.T) {
	u := startUpstream(t)
	w := u.workloadAPI(u.svid("spiffe://example.org/downstream/server", true))
	impostor := u.svid("spiffe://example.org/impostor", false)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	certs, key, err := impostor.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.X509KeyPair(certs, key)
	if err != nil {
		t.Fatal(err)
	}
	called := make(chan struct{}, 1)
	gs := grpc.NewServer(grpc.Creds(credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{cert}, ClientAuth: tls.RequestClientCert})))
	sigilv1.RegisterDownstreamServer(gs, &recordingDownstream{called: called})
	go gs.Serve(l)
	defer gs.Stop()
	up := newUpstream(t, l.Addr().String(), w.Path(), 5*time.Second)
	_, err = up.MintX509CA(context.Background(), ca.X509CARequest{CSR: csrFor(t, newKey(t), td.IDString()), TrustDomain: td, TTL: time.Hour})
	if err == nil || !strings.Contains(err.Error(), "is not a Sigil server of example.org") {
		t.Fatalf("error %v, want the impostor refused", err)
	}
	select {
	case <-called:
		t.Fatal("the impostor received the request")
	default:
	}
}

type recordingDownstream struct {
	sigilv1.UnimplementedDownstreamServer
	called chan struct{}
}

func (r *recordingDownstream) MintX509CA(context.Context, *sigilv1.MintX509CARequest) (*sigilv1.MintX509CAResponse, error) {
	r.called <- struct{}{}
	return &sigilv1.MintX509CAResponse{}, nil
}

// TestWorkloadAPIProblems: a missing socket, a Workload API that issues
// no identity, and one that serves another trust domain's SVID each give
// a clear error.
func TestWorkloadAPIProblems(t *testing.T) {
	req := ca.X509CARequest{CSR: csrFor(t, newKey(t), td.IDString()), TrustDomain: td, TTL: time.Hour}
	missing := filepath.Join(shortDir(t), "api.sock")
	up := newUpstream(t, "127.0.0.1:1", missing, 5*time.Second)
	if _, err := up.MintX509CA(context.Background(), req); err == nil || !strings.Contains(err.Error(), "Workload API socket "+missing+" does not exist") {
		t.Fatalf("missing socket: %v", err)
	}
	if _, err := up.Roots(context.Background()); err == nil || !strings.Contains(err.Error(), "does not exist") {
		t.Fatalf("missing socket, Roots: %v", err)
	}

	w, err := mtlstest.StartWorkloadAPI(shortDir(t))
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	w.DenyIdentity()
	up = newUpstream(t, "127.0.0.1:1", w.Path(), 300*time.Millisecond)
	if _, err := up.MintX509CA(context.Background(), req); err == nil || !strings.Contains(err.Error(), "no X.509-SVID from the Workload API") {
		t.Fatalf("no identity: %v", err)
	}

	other := mtlstest.NewCA("other.org")
	if err := w.SetX509([]*x509svid.SVID{other.SVID("spiffe://other.org/down", time.Hour)}, other.Bundle()); err != nil {
		t.Fatal(err)
	}
	up = newUpstream(t, "127.0.0.1:1", w.Path(), 5*time.Second)
	if _, err := up.MintX509CA(context.Background(), req); err == nil || !strings.Contains(err.Error(), "nested clusters share one trust domain") {
		t.Fatalf("other trust domain: %v", err)
	}
}

// TestMintX509CARefusesBadRequests: a request for another trust domain
// or with a bad CSR is refused before anything is dialed.
func TestMintX509CARefusesBadRequests(t *testing.T) {
	up := newUpstream(t, "127.0.0.1:1", "/nonexistent/api.sock", time.Second)
	if _, err := up.MintX509CA(context.Background(), ca.X509CARequest{CSR: csrFor(t, newKey(t), "spiffe://other.org"),
		TrustDomain: spiffeid.RequireTrustDomainFromString("other.org"), TTL: time.Hour}); err == nil || !strings.Contains(err.Error(), "trust domain") {
		t.Fatalf("other trust domain: %v", err)
	}
	if _, err := up.MintX509CA(context.Background(), ca.X509CARequest{CSR: []byte("junk"), TrustDomain: td, TTL: time.Hour}); err == nil || !strings.Contains(err.Error(), "malformed CSR") {
		t.Fatalf("junk CSR: %v", err)
	}
}

func TestConfigValidate(t *testing.T) {
	base := func() Config {
		c := DefaultConfig()
		c.TrustDomain = td
		c.ServerAddresses = []string{"127.0.0.1:8081"}
		c.WorkloadAPISocket = "/run/up/api.sock"
		return c
	}
	for _, tc := range []struct {
		name   string
		change func(*Config)
		want   string
	}{
		{"no trust domain", func(c *Config) { c.TrustDomain = spiffeid.TrustDomain{} }, "trust domain is required"},
		{"no address", func(c *Config) { c.ServerAddresses = nil }, "server_address is required"},
		{"bad address", func(c *Config) { c.ServerAddresses = []string{"no-port"} }, "is not host:port"},
		{"no socket", func(c *Config) { c.WorkloadAPISocket = "" }, "workload_api_socket is required"},
		{"relative socket", func(c *Config) { c.WorkloadAPISocket = "api.sock" }, "absolute path"},
		{"negative timeout", func(c *Config) { c.Timeout = -time.Second }, "negative"},
	} {
		c := base()
		tc.change(&c)
		if err := c.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", tc.name, err, tc.want)
		}
	}
	c := base()
	c.Timeout = 0
	if err := c.Validate(); err != nil || c.Timeout != DefaultTimeout {
		t.Fatalf("defaults: %v, timeout %v", err, c.Timeout)
	}
}

// TestServerAddressList: with several upstream addresses, a call goes to
// one that answers when the first is down.
func TestServerAddressList(t *testing.T) {
	u := startUpstream(t)
	w := u.workloadAPI(u.svid("spiffe://example.org/downstream/server", true))
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := l.Addr().String()
	l.Close()
	cfg := DefaultConfig()
	cfg.TrustDomain = td
	cfg.ServerAddresses = []string{closed, u.srv.NodeAddr().String()}
	cfg.WorkloadAPISocket = w.Path()
	up, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer up.Close()
	key := newKey(t)
	resp, err := up.MintX509CA(context.Background(), ca.X509CARequest{CSR: csrFor(t, key, td.IDString()), TrustDomain: td, TTL: time.Hour})
	if err != nil {
		t.Fatalf("with the first address down: %v", err)
	}
	if !key.PublicKey.Equal(resp.Chain[0].PublicKey) {
		t.Fatal("the CA certificate is not for the CSR's key")
	}
}

// TestUpstreamBack: an upstream that was down when the first call came
// answers the next calls once it is back, within seconds.
func TestUpstreamBack(t *testing.T) {
	u := startUpstream(t)
	w := u.workloadAPI(u.svid("spiffe://example.org/downstream/server", true))
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	up := newUpstream(t, addr, w.Path(), 5*time.Second)
	req := ca.X509CARequest{CSR: csrFor(t, newKey(t), td.IDString()), TrustDomain: td, TTL: time.Hour}
	if _, err := up.MintX509CA(context.Background(), req); err == nil || !strings.Contains(err.Error(), "Unavailable") {
		t.Fatalf("upstream down: %v", err)
	}
	// The upstream comes back at that address (a TCP relay to the server).
	l, err = net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go relay(l, u.srv.NodeAddr().String())
	eventually.NoError(t, 15*time.Second, func() error {
		_, err := up.MintX509CA(context.Background(), req)
		return err
	})
}

// relay forwards each connection accepted on l to target.
func relay(l net.Listener, target string) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			d, err := net.Dial("tcp", target)
			if err != nil {
				return
			}
			defer d.Close()
			done := make(chan struct{}, 2)
			go func() { io.Copy(d, c); done <- struct{}{} }()
			go func() { io.Copy(c, d); done <- struct{}{} }()
			<-done
		}()
	}
}
