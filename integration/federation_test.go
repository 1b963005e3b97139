package integration

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/federation"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/internal/eventually"
)

// fedDomain is one trust domain of a federation test: a single server
// serving a bundle endpoint, and one agent.
type fedDomain struct {
	td       spiffeid.TrustDomain
	s        *server
	a        *agent
	endpoint string // host:port of the bundle endpoint
	env      []string
}

// newFedDomain writes the configuration of a server of td (with extra in
// its server block) and of its agent under dir; start starts both.
func newFedDomain(t *testing.T, dir, td, endpoint, extra string, env []string) *fedDomain {
	t.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	s := &server{
		t:      t,
		dir:    dir,
		config: filepath.Join(dir, "server.hcl"),
		admin:  filepath.Join(dir, "admin", "admin.sock"),
		addr:   freeAddr(t),
		health: freeAddr(t),
	}
	cfg := fmt.Sprintf(`server {
  trust_domain   = %q
  node_name      = "s1"
  data_dir       = %q
  bind_address   = %q
  admin_socket   = %q
  health_address = %q
  log_level      = "debug"
%s
}
`, td, filepath.Join(dir, "data"), s.addr, s.admin, s.health, extra)
	if err := os.WriteFile(s.config, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return &fedDomain{td: spiffeid.RequireTrustDomainFromString(td), s: s, endpoint: endpoint, env: env}
}

func (d *fedDomain) start(t *testing.T) {
	t.Helper()
	name := d.td.Name()
	d.s.p = startProc(t, "server "+name, filepath.Join(d.s.dir, "server.log"), d.env, sigilBin, "server", "-config", d.s.config)
	waitReady(t, d.s.p, "http://"+d.s.health+"/ready")

	dir := filepath.Join(d.s.dir, "agent")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	token, id := d.s.token()
	bundle := filepath.Join(dir, "bootstrap.pem")
	if err := os.WriteFile(bundle, []byte(d.s.cli("bundle", "show")), 0o644); err != nil {
		t.Fatal(err)
	}
	a := &agent{t: t, dir: dir, config: filepath.Join(dir, "agent.hcl"), socket: filepath.Join(dir, "public", "api.sock"), health: freeAddr(t), id: id}
	cfg := fmt.Sprintf(`agent {
  trust_domain      = %q
  server_address    = %q
  data_dir          = %q
  socket_path       = %q
  join_token        = %q
  trust_bundle_path = %q
  health_address    = %q
  log_level         = "debug"
}
`, name, d.s.addr, filepath.Join(dir, "data"), a.socket, token, bundle, a.health)
	if err := os.WriteFile(a.config, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	a.p = startProc(t, "agent "+name, filepath.Join(dir, "agent.log"), nil, sigilBin, "agent", "-config", a.config)
	waitReady(t, a.p, "http://"+a.health+"/ready")
	d.a = a
}

// id is a SPIFFE ID of the domain.
func (d *fedDomain) id(path string) string { return spiffeid.RequireFromPath(d.td, path).String() }

// entry creates an entry parented to the domain's agent that federates
// with the given trust domains.
func (d *fedDomain) entry(t *testing.T, spiffeID string, federatesWith []string, selectors ...string) string {
	t.Helper()
	args := []string{"entry", "create", "-spiffe-id", spiffeID, "-parent-id", d.a.id, "-output", "json"}
	for _, sel := range selectors {
		args = append(args, "-selector", sel)
	}
	for _, td := range federatesWith {
		args = append(args, "-federates-with", td)
	}
	out := d.s.cli(args...)
	var res struct {
		Results []struct {
			Entry entryJSON `json:"entry"`
		} `json:"results"`
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil || len(res.Results) != 1 || res.Results[0].Entry.ID == "" {
		t.Fatalf("entry create output %q: %v", out, err)
	}
	return res.Results[0].Entry.ID
}

// bundles is FederationAdmin.ListBundles on the domain's admin socket, by
// trust domain.
func (d *fedDomain) bundles(t *testing.T) map[string]*sigilv1.BundleStatus {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+d.s.admin, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := sigilv1.NewFederationAdminClient(conn).ListBundles(ctx, &sigilv1.ListBundlesRequest{})
	if err != nil {
		t.Fatalf("ListBundles on %s: %v", d.td.Name(), err)
	}
	m := map[string]*sigilv1.BundleStatus{}
	for _, b := range resp.Bundles {
		m[b.TrustDomain] = b
	}
	return m
}

// bundleListLine is the line of `sigil bundle list` about td ("" when
// there is none).
func (d *fedDomain) bundleListLine(t *testing.T, td string) string {
	t.Helper()
	for _, l := range strings.Split(d.s.cli("bundle", "list"), "\n") {
		if f := strings.Fields(l); len(f) > 0 && f[0] == td {
			return l
		}
	}
	return ""
}

// fedWebCert makes a self-signed certificate for 127.0.0.1, the https_web
// endpoint's certificate, and writes it and its key under dir.
func fedWebCert(t *testing.T, dir string) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(time.Now().UnixNano()),
		Subject:               pkix.Name{CommonName: "aws.example bundle endpoint (test)"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, "web.pem"), filepath.Join(dir, "web.key")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

// fedX509Context fetches the X.509 context of this test process from
// socket.
func fedX509Context(socket string) (*workloadapi.X509Context, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return workloadapi.FetchX509Context(ctx, workloadapi.WithAddr("unix://"+socket))
}

// fedAuthorityIDs lists the X.509 authorities (hex SubjectKeyId) the
// context holds for td; ok is false when it holds no bundle of td.
func fedAuthorityIDs(xc *workloadapi.X509Context, td spiffeid.TrustDomain) (ids []string, ok bool) {
	b, ok := xc.Bundles.Get(td)
	if !ok {
		return nil, false
	}
	for _, c := range b.X509Authorities() {
		ids = append(ids, hex.EncodeToString(c.SubjectKeyId))
	}
	return ids, true
}

// prepared is the ID of the prepared key of kind ("" when none).
func (v authorityView) prepared(kind string) string {
	for _, s := range v.Slots {
		if s.Kind == kind && s.State == "prepared" {
			return s.ID
		}
	}
	return ""
}

// TestFederationBetweenTrustDomains: two independent trust domains,
// aws.example (bundle endpoint https_web, with a certificate the test
// makes and gcp.example's server trusts through SSL_CERT_FILE) and
// gcp.example (https_spiffe), each a server and an agent, federated both
// ways with the CLI from each other's `bundle show -format spiffe`.
// go-spiffe workloads in each complete mTLS with the other, each
// authorizing the other's SPIFFE ID; a JWT-SVID minted in gcp.example
// validates through aws.example's ValidateJWTSVID; `bundle list` shows the
// federated bundles and that aws.example fetched gcp.example's current
// sequence. Then gcp.example's CA rotates (prepare, wait until the aws
// workload holds the new key, activate after the propagation delay, taint
// the old key so the gcp workload moves to the new one) under a continuous
// request loop with no failed request. A relationship to an unreachable
// endpoint is accepted, shows its error and does not block entry
// creation; deleting a relationship takes its bundle away from the
// workloads.
func TestFederationBetweenTrustDomains(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	started := time.Now()
	root := t.TempDir()
	const propagation = 2 * time.Second // gcp.example's partner_refresh_bound, above its ca_propagation_delay
	common := `
  ca_ttl               = "10m"
  x509_svid_ttl        = "2m"
  agent_svid_ttl       = "5m"
  jwt_svid_ttl         = "1m"
  ca_propagation_delay = "1s"`
	certFile, keyFile := fedWebCert(t, filepath.Join(root, "web"))
	aEP, bEP := freeAddr(t), freeAddr(t)
	A := newFedDomain(t, filepath.Join(root, "aws"), "aws.example", aEP, common+fmt.Sprintf(`
  federation {
    bundle_endpoint {
      address      = %q
      profile      = "https_web"
      cert_file    = %q
      key_file     = %q
      refresh_hint = "1s"
    }
    min_refresh           = "1s"
    fetch_timeout         = "3s"
    partner_refresh_bound = "2s"
  }`, aEP, certFile, keyFile), nil)
	B := newFedDomain(t, filepath.Join(root, "gcp"), "gcp.example", bEP, common+fmt.Sprintf(`
  federation {
    bundle_endpoint {
      address      = %q
      profile      = "https_spiffe"
      refresh_hint = "1s"
    }
    min_refresh           = "1s"
    fetch_timeout         = "3s"
    partner_refresh_bound = "2s"
  }`, bEP), []string{"SSL_CERT_FILE=" + certFile})
	A.start(t)
	B.start(t)

	// Federate both ways with the bootstrap bundles.
	aDoc, bDoc := filepath.Join(root, "aws.bundle.json"), filepath.Join(root, "gcp.bundle.json")
	for _, x := range []struct {
		d    *fedDomain
		path string
	}{{A, aDoc}, {B, bDoc}} {
		doc := x.d.s.cli("bundle", "show", "-format", "spiffe")
		if !json.Valid([]byte(doc)) || !strings.Contains(doc, `"x509-svid"`) {
			t.Fatalf("bundle show -format spiffe on %s: %s", x.d.td.Name(), doc)
		}
		if err := os.WriteFile(x.path, []byte(doc), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	B.s.cli("federation", "create", "-trust-domain", "aws.example", "-bundle-endpoint-url", "https://"+aEP,
		"-profile", "https_web", "-bundle-file", aDoc)
	A.s.cli("federation", "create", "-trust-domain", "gcp.example", "-bundle-endpoint-url", "https://"+bEP,
		"-profile", "https_spiffe", "-endpoint-spiffe-id", "spiffe://gcp.example/sigil/server", "-bundle-file", bDoc)
	// One fetch each way through the real endpoints succeeds.
	A.s.cli("federation", "refresh", "-trust-domain", "gcp.example")
	B.s.cli("federation", "refresh", "-trust-domain", "aws.example")
	fedInterop(t, A, B, certFile, keyFile, bDoc)

	// Entries: the two loop workloads (told apart by executable path) and
	// this test process in each domain.
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	bins := filepath.Join(root, "bin")
	os.MkdirAll(bins, 0o755)
	webBin, cliBin := filepath.Join(bins, "fedweb"), filepath.Join(bins, "fedclient")
	loop, err := os.ReadFile(mtlsloopBin(t))
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{webBin, cliBin} {
		if err := os.WriteFile(p, loop, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	uid := uidSelector(t)
	webID, cliID := B.id("/fed/web"), A.id("/fed/client")
	verifierID, minterID := A.id("/it/verifier"), B.id("/it/minter")
	B.entry(t, webID, []string{"aws.example"}, uid, "unix:path:"+webBin)
	A.entry(t, cliID, []string{"spiffe://gcp.example"}, uid, "unix:path:"+cliBin) // the CLI strips the scheme
	A.entry(t, verifierID, []string{"gcp.example"}, uid, "unix:path:"+exe)
	B.entry(t, minterID, []string{"aws.example"}, uid, "unix:path:"+exe)

	// Each agent serves the other domain's bundle, as its server holds it,
	// to this process.
	for _, x := range []struct{ here, there *fedDomain }{{A, B}, {B, A}} {
		eventually.NoError(t, 20*time.Second, func() error {
			want := x.there.s.authorities()
			xc, err := fedX509Context(x.here.a.socket)
			if err != nil {
				return err
			}
			got, ok := fedAuthorityIDs(xc, x.there.td)
			if !ok {
				return fmt.Errorf("the workload in %s holds no bundle of %s", x.here.td.Name(), x.there.td.Name())
			}
			for _, b := range want.Bundle {
				if b.Kind == "x509" && !slices.Contains(got, b.ID) {
					return fmt.Errorf("the workload in %s holds %v for %s, without %s", x.here.td.Name(), got, x.there.td.Name(), b.ID)
				}
			}
			return nil
		})
	}

	// mTLS across the trust domains: a server in gcp.example accepting
	// only the aws.example client, a client accepting only that server.
	addr := freeAddr(t)
	lp := &loopPair{t: t, webStatus: filepath.Join(root, "web.json"), cliStatus: filepath.Join(root, "client.json")}
	lp.web = startProc(t, "fedweb", filepath.Join(root, "fedweb.log"), []string{"SPIFFE_ENDPOINT_SOCKET=unix://" + B.a.socket},
		webBin, "serve", addr, cliID, lp.webStatus)
	lp.client = startProc(t, "fedclient", filepath.Join(root, "fedclient.log"), []string{"SPIFFE_ENDPOINT_SOCKET=unix://" + A.a.socket},
		cliBin, "dial", addr, webID, lp.cliStatus)
	eventually.NoError(t, 30*time.Second, func() error {
		w, c := lp.status()
		if w.Failures+c.Failures > 0 {
			return eventually.Stop(fmt.Errorf("failed cross-domain requests: web %+v client %+v", w, c))
		}
		if w.Requests <= 5 || c.Requests <= 5 {
			return fmt.Errorf("no cross-domain mTLS traffic yet: web %+v client %+v", w, c)
		}
		return nil
	})

	// A JWT-SVID minted in gcp.example validates in aws.example.
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	jwt, err := workloadapi.FetchJWTSVID(ctx, jwtsvid.Params{Audience: verifierID}, workloadapi.WithAddr("unix://"+B.a.socket))
	if err != nil {
		t.Fatalf("JWT-SVID from gcp.example: %v", err)
	}
	got, err := workloadapi.ValidateJWTSVID(ctx, jwt.Marshal(), verifierID, workloadapi.WithAddr("unix://"+A.a.socket))
	if err != nil {
		t.Fatalf("aws.example's ValidateJWTSVID refused gcp.example's JWT-SVID: %v", err)
	}
	if got.ID.String() != minterID {
		t.Fatalf("validated JWT-SVID of %s, want %s", got.ID, minterID)
	}

	// bundle list: the federated bundles on both sides, and on
	// gcp.example that aws.example (which fetches with its server SVID)
	// has fetched the current sequence.
	for _, x := range []struct{ here, there *fedDomain }{{A, B}, {B, A}} {
		l := x.here.bundleListLine(t, x.there.td.Name())
		if !strings.Contains(l, "federated") {
			t.Errorf("bundle list on %s about %s: %q", x.here.td.Name(), x.there.td.Name(), l)
		}
		if st := x.here.bundles(t)[x.there.td.Name()]; st == nil || st.Local || !st.Present || st.X509Authorities < 1 || st.Status.GetLastError() != "" || st.Status.GetLastSuccessAt() == 0 {
			t.Errorf("ListBundles on %s about %s: %v", x.here.td.Name(), x.there.td.Name(), st)
		}
	}
	var seq uint64
	eventually.NoError(t, 15*time.Second, func() error {
		local := B.bundles(t)["gcp.example"]
		if local == nil || !local.Local {
			return eventually.Stop(fmt.Errorf("no local bundle in ListBundles on gcp.example: %v", local))
		}
		seq = local.SequenceNumber
		for _, p := range local.PartnerFetches {
			if p.TrustDomain == "aws.example" && p.SequenceNumber == seq {
				return nil
			}
		}
		return fmt.Errorf("aws.example has not fetched sequence %d of gcp.example: %v", seq, local.PartnerFetches)
	})
	if l := B.bundleListLine(t, "gcp.example"); !strings.Contains(l, "aws.example@") {
		t.Errorf("bundle list on gcp.example does not show partner aws.example: %q", l)
	}

	// While the endpoint is served, the propagation delay is raised to the
	// partner refresh bound (2s, above the configured 1s).
	var show struct {
		PropagationDelay string `json:"propagation_delay"`
	}
	if out := B.s.cli("authority", "show", "-output", "json"); json.Unmarshal([]byte(out), &show) != nil || show.PropagationDelay != "2" {
		t.Errorf("gcp.example's propagation delay %q, want 2 (seconds: the partner refresh bound): %s", show.PropagationDelay, out)
	}

	// CA rotation in gcp.example under the request loop.
	before, _ := lp.status()
	old := B.s.authorities().active("x509")
	out := B.s.cli("authority", "prepare")
	prepared := time.Now()
	next := B.s.authorities().prepared("x509")
	if !strings.Contains(out, "Prepared x509 key") || next == "" {
		t.Fatalf("prepare: %s", out)
	}
	eventually.NoError(t, 15*time.Second, func() error {
		if _, c := lp.status(); !slices.Contains(c.PeerBundle, next) {
			return fmt.Errorf("the aws.example client holds %v for gcp.example, without the prepared key %s", c.PeerBundle, next)
		}
		return nil
	})
	t.Logf("gcp.example's prepared CA key reached the aws.example workload in %v", time.Since(prepared).Round(time.Millisecond))
	if d := time.Until(prepared.Add(propagation + 300*time.Millisecond)); d > 0 {
		time.Sleep(d)
	}
	if out := B.s.cli("authority", "activate"); strings.Contains(out, "Warning") || !strings.Contains(out, next) {
		t.Errorf("activate after the propagation delay: %s", out)
	}
	B.s.cli("authority", "taint", "-id", old)
	eventually.NoError(t, 15*time.Second, func() error {
		if w, _ := lp.status(); w.SVIDAuthority != next {
			return fmt.Errorf("the gcp.example server workload holds an SVID of %s, want the new key %s", w.SVIDAuthority, next)
		}
		return nil
	})
	// Handshakes with the new key: the aws.example client verifies the
	// gcp.example server's new SVID.
	_, moved := lp.status()
	time.Sleep(1500 * time.Millisecond)
	web, client := lp.stop()
	lp.checkNoFailures(web, client)
	if n := client.Requests - before.Requests; n < 50 {
		t.Errorf("only %d requests during the rotation", n)
	}
	if n := client.Requests - moved.Requests; n < 10 {
		t.Errorf("only %d requests after the server moved to the new key", n)
	}
	t.Logf("cross-domain loop: client %d requests (%d during the rotation), web %d, failures %d+%d",
		client.Requests, client.Requests-before.Requests, web.Requests, client.Failures, web.Failures)

	// A relationship to an unreachable endpoint is accepted and shows its
	// error; entries can name it.
	down := "https://" + freeAddr(t)
	A.s.cli("federation", "create", "-trust-domain", "down.example", "-bundle-endpoint-url", down, "-profile", "https_web")
	A.entry(t, A.id("/it/down"), []string{"down.example"}, uid, "unix:path:/nonexistent/down")
	eventually.NoError(t, 15*time.Second, func() error {
		st := A.bundles(t)["down.example"]
		if st == nil || st.Present || st.Status.GetLastError() == "" {
			return fmt.Errorf("ListBundles about down.example: %v", st)
		}
		if l := A.bundleListLine(t, "down.example"); !strings.Contains(l, "refused") {
			return fmt.Errorf("bundle list about down.example shows no connection error: %q (status %v)", l, st.Status)
		}
		return nil
	})
	if out, err := A.s.cliErr("federation", "refresh", "-trust-domain", "down.example", "-timeout", "5s"); err == nil || !strings.Contains(out, "refused") {
		t.Errorf("federation refresh of an unreachable endpoint: %v %s", err, out)
	}

	// Deleting the relationship takes gcp.example's bundle away from the
	// aws.example workloads; its JWT-SVIDs no longer validate there.
	A.s.cli("federation", "delete", "-trust-domain", "gcp.example")
	eventually.NoError(t, 15*time.Second, func() error {
		xc, err := fedX509Context(A.a.socket)
		if err != nil {
			return err
		}
		if ids, ok := fedAuthorityIDs(xc, B.td); ok {
			return fmt.Errorf("the aws.example workload still holds gcp.example's bundle %v", ids)
		}
		return nil
	})
	if _, ok := A.bundles(t)["gcp.example"]; ok {
		t.Error("ListBundles on aws.example still lists gcp.example after the relationship was deleted")
	}
	if _, err := workloadapi.ValidateJWTSVID(ctx, jwt.Marshal(), verifierID, workloadapi.WithAddr("unix://"+A.a.socket)); err == nil {
		t.Error("a gcp.example JWT-SVID still validates in aws.example after the relationship was deleted")
	}
	// The other direction is untouched.
	if st := B.bundles(t)["aws.example"]; st == nil || !st.Present {
		t.Errorf("gcp.example lost aws.example's bundle: %v", st)
	}
	t.Logf("federation test took %v", time.Since(started).Round(time.Millisecond))
}

// fedInterop checks Sigil's endpoints and client against go-spiffe's
// reference implementation: federation.FetchBundle reads A's https_web
// and B's https_spiffe endpoint (authenticated with B's bootstrap bundle
// document), and B's server reads, through a relationship, an https_web
// endpoint served by federation.Handler for a third trust domain.
func fedInterop(t *testing.T, A, B *fedDomain, certFile, keyFile, bDoc string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	certPEM, err := os.ReadFile(certFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(certPEM)
	for _, x := range []struct {
		d   *fedDomain
		opt federation.FetchOption
	}{
		{A, federation.WithWebPKIRoots(pool)},
		{B, federation.WithSPIFFEAuth(fedLoadBundle(t, B.td, bDoc), spiffeid.RequireFromPath(B.td, "/sigil/server"))},
	} {
		got, err := federation.FetchBundle(ctx, x.d.td, "https://"+x.d.endpoint, x.opt)
		if err != nil {
			t.Fatalf("go-spiffe FetchBundle from %s's endpoint: %v", x.d.td.Name(), err)
		}
		var ids []string
		for _, c := range got.X509Authorities() {
			ids = append(ids, hex.EncodeToString(c.SubjectKeyId))
		}
		for _, b := range x.d.s.authorities().Bundle {
			if b.Kind == "x509" && !slices.Contains(ids, b.ID) {
				t.Errorf("go-spiffe read %s's endpoint without authority %s (got %v)", x.d.td.Name(), b.ID, ids)
			}
		}
		if _, ok := got.SequenceNumber(); !ok {
			t.Errorf("%s's bundle document has no spiffe_sequence", x.d.td.Name())
		}
		if hint, ok := got.RefreshHint(); !ok || hint != time.Second {
			t.Errorf("%s's bundle document has refresh hint %v (%v), want 1s", x.d.td.Name(), hint, ok)
		}
	}

	// A go-spiffe endpoint for spire.example, with the same web
	// certificate (which B's server trusts through SSL_CERT_FILE).
	spireTD := spiffeid.RequireTrustDomainFromString("spire.example")
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "spire.example CA"},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign, BasicConstraintsValid: true, IsCA: true,
		URIs: []*url.URL{spireTD.ID().URL()},
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, caKey.Public(), caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	jwtKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	spire := spiffebundle.New(spireTD)
	spire.AddX509Authority(caCert)
	if err := spire.AddJWTAuthority("spire-kid-1", jwtKey.Public()); err != nil {
		t.Fatal(err)
	}
	spire.SetSequenceNumber(7)
	spire.SetRefreshHint(time.Second)
	h, err := federation.NewHandler(spireTD, spire)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h, TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}}, ReadHeaderTimeout: 5 * time.Second}
	go srv.ServeTLS(l, "", "")
	t.Cleanup(func() { srv.Close() })
	B.s.cli("federation", "create", "-trust-domain", spireTD.Name(), "-bundle-endpoint-url", "https://"+l.Addr().String(), "-profile", "https_web")
	B.s.cli("federation", "refresh", "-trust-domain", spireTD.Name())
	st := B.bundles(t)[spireTD.Name()]
	if st == nil || !st.Present || st.X509Authorities != 1 || st.JwtAuthorities != 1 || st.SequenceNumber != 7 || st.RefreshHint != 1 {
		t.Errorf("the bundle B fetched from go-spiffe's handler: %v", st)
	}
}

// fedLoadBundle parses the bundle document at path.
func fedLoadBundle(t *testing.T, td spiffeid.TrustDomain, path string) *spiffebundle.Bundle {
	t.Helper()
	b, err := spiffebundle.Load(td, path)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return b
}

// fedFreePortBlock finds n consecutive free loopback ports and returns the
// first.
func fedFreePortBlock(t *testing.T, n int) int {
	t.Helper()
	for try := 0; try < 50; try++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		base := l.Addr().(*net.TCPAddr).Port
		l.Close()
		if base+n > 65535 {
			continue
		}
		free := true
		for p := base; p < base+n && free; p++ {
			l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p))
			if err != nil {
				free = false
				continue
			}
			l.Close()
		}
		if free {
			return base
		}
	}
	t.Fatalf("no block of %d free loopback ports", n)
	return 0
}

// TestFederationExample runs examples/federation/run.sh with the sigil
// binary under test: two trust domains federated both ways and the
// example client in one calling the example greeter in the other over
// mTLS, three times.
func TestFederationExample(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	_, file, _, _ := runtime.Caller(0)
	script := filepath.Join(filepath.Dir(filepath.Dir(file)), "examples", "federation", "run.sh")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", script)
	cmd.Env = append(os.Environ(), "SIGIL="+sigilBin, "WORK="+filepath.Join(t.TempDir(), "work"),
		"BASE_PORT="+strconv.Itoa(fedFreePortBlock(t, 21)))
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("run.sh: %v\n%s", err, out)
	}
	want := "200 OK: hello spiffe://aws.example/example/client, from spiffe://gcp.example/example/greeter"
	if n := strings.Count(string(out), want); n != 3 || !strings.Contains(string(out), "federation example: OK") {
		t.Fatalf("run.sh output (%d answers):\n%s", n, out)
	}
}

// fedFakeEndpoint is an HTTPS bundle endpoint the test controls: it
// answers every request with what serve says now.
type fedFakeEndpoint struct {
	mu    sync.Mutex
	serve http.HandlerFunc
	url   string
}

func newFedFakeEndpoint(t *testing.T, cfg *tls.Config) *fedFakeEndpoint {
	t.Helper()
	e := &fedFakeEndpoint{}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		e.mu.Lock()
		h := e.serve
		e.mu.Unlock()
		h(w, r)
	}), TLSConfig: cfg, ReadHeaderTimeout: 5 * time.Second}
	go srv.ServeTLS(l, "", "")
	t.Cleanup(func() { srv.Close() })
	e.url = "https://" + l.Addr().String()
	return e
}

func (e *fedFakeEndpoint) set(h http.HandlerFunc) {
	e.mu.Lock()
	e.serve = h
	e.mu.Unlock()
}

// fedDoc is a SPIFFE bundle document of td with one X.509 authority, one
// JWT authority, a sequence number and a 1 s refresh hint.
func fedDoc(t *testing.T, td spiffeid.TrustDomain, ca *x509.Certificate, seq uint64) []byte {
	t.Helper()
	b := spiffebundle.New(td)
	b.AddX509Authority(ca)
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err := b.AddJWTAuthority("kid-"+strconv.FormatUint(seq, 10), k.Public()); err != nil {
		t.Fatal(err)
	}
	b.SetSequenceNumber(seq)
	b.SetRefreshHint(time.Second)
	doc, err := b.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return doc
}

// fedCA makes a CA certificate (and key) of td.
func fedCA(t *testing.T, td spiffeid.TrustDomain) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: td.Name() + " CA"},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign, BasicConstraintsValid: true, IsCA: true,
		URIs: []*url.URL{td.ID().URL()},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return c, key
}

// TestFederationBadEndpoints: a real server federated with endpoints the
// test controls. Each bad answer (an error status, garbage, an oversized
// body, an empty key set, an older sequence, a slow answer past the fetch
// timeout, an https_spiffe endpoint presenting another SPIFFE ID) is
// refused with a clear error that `bundle list`, `federation refresh`
// (exit status 1), the log and the error counter show, and the last good
// bundle stays; a good answer afterwards is taken.
func TestFederationBadEndpoints(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	root := t.TempDir()
	certFile, keyFile := fedWebCert(t, filepath.Join(root, "web"))
	d := newFedDomain(t, filepath.Join(root, "gcp"), "gcp.example", "", `
  federation {
    min_refresh   = "1s"
    fetch_timeout = "2s"
  }`, []string{"SSL_CERT_FILE=" + certFile})
	d.s.p = startProc(t, "server gcp.example", filepath.Join(d.s.dir, "server.log"), d.env, sigilBin, "server", "-config", d.s.config)
	waitReady(t, d.s.p, "http://"+d.s.health+"/ready")

	webCert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	partner := spiffeid.RequireTrustDomainFromString("partner.example")
	ca, _ := fedCA(t, partner)
	good := fedDoc(t, partner, ca, 5)
	ep := newFedFakeEndpoint(t, &tls.Config{Certificates: []tls.Certificate{webCert}})
	ep.set(func(w http.ResponseWriter, _ *http.Request) { w.Write(good) })
	d.s.cli("federation", "create", "-trust-domain", partner.Name(), "-bundle-endpoint-url", ep.url, "-profile", "https_web")
	d.s.cli("federation", "refresh", "-trust-domain", partner.Name())
	if st := d.bundles(t)[partner.Name()]; st == nil || !st.Present || st.SequenceNumber != 5 || st.X509Authorities != 1 || st.JwtAuthorities != 1 {
		t.Fatalf("after a good fetch: %v", st)
	}

	errorsCounted := func() float64 {
		return fedMetric(t, "http://"+d.s.health+"/metrics", `sigil_federation_refreshes_total{outcome="error",trust_domain="partner.example"}`)
	}
	oversized := append([]byte(`{"keys":[`), bytes.Repeat([]byte(" "), 2<<20)...)
	for _, c := range []struct {
		name  string
		serve http.HandlerFunc
		want  string
	}{
		{"error status", func(w http.ResponseWriter, _ *http.Request) { http.Error(w, "boom", 500) }, "the endpoint answered 500"},
		{"garbage", func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("<html>not a bundle</html>")) }, "not a JWKS document"},
		{"oversized", func(w http.ResponseWriter, _ *http.Request) { w.Write(oversized) }, "larger than the limit of 1048576 bytes"},
		{"empty key set", func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte(`{"keys":[],"spiffe_sequence":9}`)) }, "no keys"},
		{"older sequence", func(w http.ResponseWriter, _ *http.Request) { w.Write(fedDoc(t, partner, ca, 4)) }, "sequence number 4 is below the current bundle's 5"},
		{"slow", func(w http.ResponseWriter, r *http.Request) {
			select {
			case <-r.Context().Done():
			case <-time.After(5 * time.Second):
			}
			w.Write(good)
		}, "no complete answer within the fetch timeout of 2s"},
	} {
		t.Run(c.name, func(t *testing.T) {
			before := errorsCounted()
			ep.set(c.serve)
			// The refresher polls every second (the documents' hint, the
			// minimum after a failure): wait for an attempt that meets the
			// bad answer (an attempt in flight when the endpoint changed
			// may still have met the good one).
			var st *sigilv1.BundleStatus
			eventually.NoError(t, 15*time.Second, func() error {
				if st = d.bundles(t)[partner.Name()]; !strings.Contains(st.GetStatus().GetLastError(), c.want) {
					return fmt.Errorf("last error %q, want one with %q", st.GetStatus().GetLastError(), c.want)
				}
				return nil
			})
			if !st.Present || st.SequenceNumber != 5 || st.X509Authorities != 1 || st.JwtAuthorities != 1 {
				t.Errorf("after a bad fetch the bundle is %v, want the last good one (sequence 5)", st)
			}
			out, err := d.s.cliErr("federation", "refresh", "-trust-domain", partner.Name(), "-timeout", "10s")
			if err == nil || !strings.Contains(out, c.want) {
				t.Errorf("federation refresh: %v, want exit status 1 and an error with %q:\n%s", err, c.want, out)
			}
			if l := d.bundleListLine(t, partner.Name()); !strings.Contains(l, c.want) {
				t.Errorf("bundle list does not show the error: %q", l)
			}
			if after := errorsCounted(); after <= before {
				t.Errorf("sigil_federation_refreshes_total{outcome=error} went from %v to %v", before, after)
			}
			if log, _ := os.ReadFile(d.s.p.log); !strings.Contains(string(log), c.want) {
				t.Errorf("the server log does not have the error %q", c.want)
			}
		})
	}

	// An https_spiffe endpoint whose SVID (signed by the partner's CA)
	// has another SPIFFE ID than the relationship names.
	other := spiffeid.RequireTrustDomainFromString("other.example")
	oca, okey := fedCA(t, other)
	leafKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	leafTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		URIs: []*url.URL{spiffeid.RequireFromPath(other, "/not-the-endpoint").URL()},
	}
	leafDER, err := x509.CreateCertificate(rand.Reader, leafTmpl, oca, leafKey.Public(), okey)
	if err != nil {
		t.Fatal(err)
	}
	sep := newFedFakeEndpoint(t, &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{leafDER}, PrivateKey: leafKey}}})
	sep.set(func(w http.ResponseWriter, _ *http.Request) { w.Write(fedDoc(t, other, oca, 2)) })
	otherDoc := filepath.Join(root, "other.json")
	if err := os.WriteFile(otherDoc, fedDoc(t, other, oca, 1), 0o644); err != nil {
		t.Fatal(err)
	}
	d.s.cli("federation", "create", "-trust-domain", other.Name(), "-bundle-endpoint-url", sep.url, "-profile", "https_spiffe",
		"-endpoint-spiffe-id", "spiffe://other.example/sigil/server", "-bundle-file", otherDoc)
	want := `the endpoint's SVID has SPIFFE ID "spiffe://other.example/not-the-endpoint", want "spiffe://other.example/sigil/server"`
	if out, err := d.s.cliErr("federation", "refresh", "-trust-domain", other.Name(), "-timeout", "10s"); err == nil || !strings.Contains(out, want) {
		t.Fatalf("https_spiffe endpoint with another SPIFFE ID: %v\n%s", err, out)
	}
	if st := d.bundles(t)[other.Name()]; st == nil || st.SequenceNumber != 1 {
		t.Errorf("the bootstrap bundle of other.example was replaced: %v", st)
	}

	// A good answer again is taken.
	next, _ := fedCA(t, partner)
	ep.set(func(w http.ResponseWriter, _ *http.Request) { w.Write(fedDoc(t, partner, next, 6)) })
	eventually.NoError(t, 15*time.Second, func() error {
		if st := d.bundles(t)[partner.Name()]; st.GetSequenceNumber() != 6 || st.GetStatus().GetLastError() != "" {
			return fmt.Errorf("after the endpoint recovered: %v", st)
		}
		return nil
	})
}

// fedMetric reads one sample (name with its labels, as the text
// exposition format prints it) from a /metrics URL; 0 when absent.
func fedMetric(t *testing.T, url, sample string) float64 {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, sample+" ") {
			v, err := strconv.ParseFloat(strings.TrimSpace(strings.TrimPrefix(l, sample)), 64)
			if err != nil {
				t.Fatalf("metric line %q: %v", l, err)
			}
			return v
		}
	}
	return 0
}
