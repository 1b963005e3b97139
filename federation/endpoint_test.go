package federation

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	gofederation "github.com/spiffe/go-spiffe/v2/federation"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/clock"
	"github.com/sigil-id/sigil/internal/eventually"
	"github.com/sigil-id/sigil/mtls/mtlstest"
)

const endpointIDA = "spiffe://a.example/sigil/server"

// bundleSource is a mutable local bundle for an endpoint.
type bundleSource struct {
	mu    sync.Mutex
	b     *sigilv1.Bundle
	err   error
	calls atomic.Int64
}

func (s *bundleSource) set(b *sigilv1.Bundle) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.b = b
}

func (s *bundleSource) get() (*sigilv1.Bundle, error) {
	s.calls.Add(1)
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b, s.err
}

// spiffeEndpoint is an https_spiffe endpoint of a.example serving a
// bundle of ca with sequence seq.
func spiffeEndpoint(t *testing.T, ca *mtlstest.CA, src *bundleSource, mod func(*EndpointConfig)) *Endpoint {
	t.Helper()
	svid := tlsCert(ca.SVID(endpointIDA, time.Hour))
	cfg := EndpointConfig{
		Profile:     ProfileHTTPSSPIFFE,
		Bundle:      src.get,
		RefreshHint: 90 * time.Second,
		SVID:        func() (*tls.Certificate, error) { return svid, nil },
	}
	if mod != nil {
		mod(&cfg)
	}
	e, err := NewEndpoint(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func TestGoSpiffeFetchesOurSPIFFEEndpoint(t *testing.T) {
	ca := mtlstest.NewCA("a.example")
	want := testBundle(t, ca, 42, 2)
	src := &bundleSource{b: want}
	url, _ := serve(t, spiffeEndpoint(t, ca, src, nil))

	sb, err := gofederation.FetchBundle(context.Background(), tdA, url,
		gofederation.WithSPIFFEAuth(ca.Bundle(), spiffeid.RequireFromString(endpointIDA)))
	if err != nil {
		t.Fatal(err)
	}
	seq, _ := sb.SequenceNumber()
	hint, _ := sb.RefreshHint()
	if seq != 42 || hint != 90*time.Second {
		t.Fatalf("sequence %d, refresh hint %v; want 42, 90s", seq, hint)
	}
	if len(sb.X509Authorities()) != 1 || !sb.X509Authorities()[0].Equal(ca.Cert()) {
		t.Fatalf("X.509 authorities %v", sb.X509Authorities())
	}
	for _, j := range want.JwtAuthorities {
		pub, ok := sb.FindJWTAuthority(j.KeyId)
		if !ok {
			t.Fatalf("no JWT authority %q", j.KeyId)
		}
		if !bytes.Equal(pkixKey(t, pub), j.PublicKey) {
			t.Fatalf("JWT authority %q differs", j.KeyId)
		}
	}

	// The endpoint is not authenticated by another trust domain's
	// bundle or another ID.
	other := mtlstest.NewCA("a.example")
	if _, err := gofederation.FetchBundle(context.Background(), tdA, url,
		gofederation.WithSPIFFEAuth(other.Bundle(), spiffeid.RequireFromString(endpointIDA))); err == nil {
		t.Fatal("go-spiffe accepted the endpoint with another CA")
	}
	if _, err := gofederation.FetchBundle(context.Background(), tdA, url,
		gofederation.WithSPIFFEAuth(ca.Bundle(), spiffeid.RequireFromString("spiffe://a.example/other"))); err == nil {
		t.Fatal("go-spiffe accepted the endpoint with another ID")
	}
}

func TestGoSpiffeFetchesOurWebEndpoint(t *testing.T) {
	ca := mtlstest.NewCA("a.example")
	pki := newWebPKI(t)
	certPEM, keyPEM, _ := pki.issue(t)
	certFile, keyFile := writePair(t, t.TempDir(), certPEM, keyPEM, time.Now())
	e, err := NewEndpoint(EndpointConfig{
		Profile:  ProfileHTTPSWeb,
		Bundle:   (&bundleSource{b: testBundle(t, ca, 3, 1)}).get,
		CertFile: certFile,
		KeyFile:  keyFile,
	})
	if err != nil {
		t.Fatal(err)
	}
	url, _ := serve(t, e)
	sb, err := gofederation.FetchBundle(context.Background(), tdA, url, gofederation.WithWebPKIRoots(pki.pool()))
	if err != nil {
		t.Fatal(err)
	}
	seq, _ := sb.SequenceNumber()
	hint, _ := sb.RefreshHint()
	if seq != 3 || hint != DefaultRefreshHint || len(sb.X509Authorities()) != 1 || len(sb.JWTAuthorities()) != 1 {
		t.Fatalf("sequence %d, hint %v, %d X.509 and %d JWT authorities", seq, hint, len(sb.X509Authorities()), len(sb.JWTAuthorities()))
	}
	// Web PKI: another root is refused.
	if _, err := gofederation.FetchBundle(context.Background(), tdA, url, gofederation.WithWebPKIRoots(newWebPKI(t).pool())); err == nil {
		t.Fatal("go-spiffe accepted the endpoint with another root")
	}
}

func TestEndpointHandler(t *testing.T) {
	ca := mtlstest.NewCA("a.example")
	src := &bundleSource{b: testBundle(t, ca, 1, 4)}
	var oks, errs atomic.Int64
	core, logs := observer.New(zap.InfoLevel)
	e := spiffeEndpoint(t, ca, src, func(c *EndpointConfig) {
		c.Logger = zap.New(core)
		c.OnRequest = func(ok bool) {
			if ok {
				oks.Add(1)
			} else {
				errs.Add(1)
			}
		}
	})
	url, stop := serve(t, e)
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}} // the test looks at HTTP only
	defer client.CloseIdleConnections()
	do := func(method string) (*http.Response, []byte) {
		t.Helper()
		req, err := http.NewRequest(method, url, nil)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return resp, body
	}

	resp, first := do(http.MethodGet)
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("GET: %s, Content-Type %q", resp.Status, resp.Header.Get("Content-Type"))
	}
	// Encoded once per sequence number: the same bytes every time even
	// though go-spiffe writes JWT keys in map order.
	for range 10 {
		if _, again := do(http.MethodGet); !bytes.Equal(again, first) {
			t.Fatal("the document was encoded again for the same sequence number")
		}
	}
	resp, body := do(http.MethodHead)
	if resp.StatusCode != 200 || len(body) != 0 || resp.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("HEAD: %s, %d bytes", resp.Status, len(body))
	}
	for _, m := range []string{http.MethodPost, http.MethodPut, http.MethodDelete} {
		if resp, _ := do(m); resp.StatusCode != http.StatusMethodNotAllowed || resp.Header.Get("Allow") != "GET, HEAD" {
			t.Fatalf("%s: %s, Allow %q", m, resp.Status, resp.Header.Get("Allow"))
		}
	}

	// A new sequence number is a new document.
	next := testBundle(t, ca, 2, 1)
	src.set(next)
	_, body = do(http.MethodGet)
	got, err := Decode(tdA, body)
	if err != nil {
		t.Fatal(err)
	}
	next.RefreshHint = 90
	if !Equal(got, next) {
		t.Fatalf("served %v after the change, want %v", got, next)
	}

	// A bundle that cannot be read is a 500.
	src.mu.Lock()
	src.err = errTest
	src.mu.Unlock()
	for range 2 {
		if resp, _ := do(http.MethodGet); resp.StatusCode != http.StatusInternalServerError {
			t.Fatalf("GET with a failing bundle: %s", resp.Status)
		}
	}
	if n := logs.FilterMessage("bundle endpoint cannot serve the bundle").Len(); n != 1 {
		t.Fatalf("the failure was logged %d times, want once", n)
	}
	stop() // every handler has returned
	if oks.Load() != 13 || errs.Load() != 5 {
		t.Fatalf("OnRequest saw %d ok and %d errors, want 13 and 5", oks.Load(), errs.Load())
	}
}

func TestNewEndpointRefuses(t *testing.T) {
	ca := mtlstest.NewCA("a.example")
	get := (&bundleSource{b: testBundle(t, ca, 1, 0)}).get
	svid := func() (*tls.Certificate, error) { return nil, errTest }
	dir := t.TempDir()
	for name, tc := range map[string]struct {
		cfg  EndpointConfig
		want string
	}{
		"no bundle":     {EndpointConfig{Profile: ProfileHTTPSSPIFFE, SVID: svid}, "Bundle is required"},
		"no profile":    {EndpointConfig{Bundle: get}, "profile is required"},
		"bad profile":   {EndpointConfig{Bundle: get, Profile: "https"}, `profile "https"`},
		"no svid":       {EndpointConfig{Bundle: get, Profile: ProfileHTTPSSPIFFE}, "needs SVID"},
		"spiffe files":  {EndpointConfig{Bundle: get, Profile: ProfileHTTPSSPIFFE, SVID: svid, CertFile: "c"}, "https_web only"},
		"partner half":  {EndpointConfig{Bundle: get, Profile: ProfileHTTPSSPIFFE, SVID: svid, OnPartnerFetch: func(spiffeid.TrustDomain, uint64) {}}, "go together"},
		"negative hint": {EndpointConfig{Bundle: get, Profile: ProfileHTTPSSPIFFE, SVID: svid, RefreshHint: -time.Second}, "negative refresh hint"},
		"web no files":  {EndpointConfig{Bundle: get, Profile: ProfileHTTPSWeb}, "needs cert_file and key_file"},
		"web missing":   {EndpointConfig{Bundle: get, Profile: ProfileHTTPSWeb, CertFile: dir + "/c.pem", KeyFile: dir + "/k.pem"}, "c.pem"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := NewEndpoint(tc.cfg)
			wantErr(t, err, "federation: endpoint: ", tc.want)
		})
	}
}

// servedSerial returns the serial number of the certificate the endpoint
// at url presents.
func servedSerial(t *testing.T, url string, roots *x509.CertPool) int64 {
	t.Helper()
	conn, err := tls.Dial("tcp", strings.TrimSuffix(strings.TrimPrefix(url, "https://"), "/bundle"), &tls.Config{RootCAs: roots, ServerName: "127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates[0].SerialNumber.Int64()
}

func TestWebEndpointReloadsCertificate(t *testing.T) {
	ca := mtlstest.NewCA("a.example")
	pki := newWebPKI(t)
	dir := t.TempDir()
	start := time.Now()
	certPEM, keyPEM, serial1 := pki.issue(t)
	certFile, keyFile := writePair(t, dir, certPEM, keyPEM, start)
	clk := clock.NewFake(start)
	core, logs := observer.New(zap.InfoLevel)
	e, err := NewEndpoint(EndpointConfig{
		Profile:  ProfileHTTPSWeb,
		Bundle:   (&bundleSource{b: testBundle(t, ca, 1, 0)}).get,
		CertFile: certFile,
		KeyFile:  keyFile,
		Clock:    clk,
		Logger:   zap.New(core),
	})
	if err != nil {
		t.Fatal(err)
	}
	url, _ := serve(t, e)
	if got := servedSerial(t, url, pki.pool()); got != serial1 {
		t.Fatalf("serves serial %d, want %d", got, serial1)
	}

	certPEM2, keyPEM2, serial2 := pki.issue(t)
	writePair(t, dir, certPEM2, keyPEM2, start.Add(time.Minute))
	// The files are looked at no more than once a second.
	clk.Add(500 * time.Millisecond)
	if got := servedSerial(t, url, pki.pool()); got != serial1 {
		t.Fatalf("serves serial %d before a second passed, want still %d", got, serial1)
	}
	clk.Add(600 * time.Millisecond)
	if got := servedSerial(t, url, pki.pool()); got != serial2 {
		t.Fatalf("serves serial %d after the files changed, want %d", got, serial2)
	}
	if logs.FilterMessage("bundle endpoint certificate reloaded").Len() != 1 {
		t.Fatalf("logs: %v", logs.All())
	}

	// A pair that does not load keeps the certificate, and is logged once.
	certPEM3, _, _ := pki.issue(t)
	writePair(t, dir, certPEM3, keyPEM2, start.Add(2*time.Minute)) // key of another certificate
	for range 3 {
		clk.Add(2 * time.Second)
		if got := servedSerial(t, url, pki.pool()); got != serial2 {
			t.Fatalf("serves serial %d after a bad pair, want still %d", got, serial2)
		}
	}
	if n := logs.FilterMessageSnippet("do not load").Len(); n != 1 {
		t.Fatalf("bad pair logged %d times, want once: %v", n, logs.All())
	}
	// Removed files: the certificate stays too.
	if err := os.Remove(certFile); err != nil {
		t.Fatal(err)
	}
	clk.Add(2 * time.Second)
	if got := servedSerial(t, url, pki.pool()); got != serial2 {
		t.Fatalf("serves serial %d after the file was removed, want still %d", got, serial2)
	}
}

// partnerFetches records OnPartnerFetch calls.
type partnerFetches struct {
	mu  sync.Mutex
	got []string
}

func (p *partnerFetches) record(td spiffeid.TrustDomain, seq uint64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.got = append(p.got, td.Name()+"@"+strconv.FormatUint(seq, 10))
}

func (p *partnerFetches) list() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.got...)
}

func TestEndpointReportsOnlyVerifiedPartners(t *testing.T) {
	caA, caB := mtlstest.NewCA("a.example"), mtlstest.NewCA("b.example")
	rogueB := mtlstest.NewCA("b.example") // claims b.example, not in b's bundle
	caC := mtlstest.NewCA("c.example")    // not federated
	var fetches partnerFetches
	e := spiffeEndpoint(t, caA, &bundleSource{b: testBundle(t, caA, 7, 1)}, func(c *EndpointConfig) {
		c.PartnerAuthorities = func(td spiffeid.TrustDomain) []*x509.Certificate {
			if td == tdB {
				return []*x509.Certificate{caB.Cert()}
			}
			return nil
		}
		c.OnPartnerFetch = fetches.record
	})
	url, stop := serve(t, e)
	rel := &sigilv1.FederationRelationship{
		TrustDomain: "a.example", BundleEndpointUrl: url, Profile: ProfileHTTPSSPIFFE, EndpointSpiffeId: endpointIDA,
	}
	cur := testBundle(t, caA, 1, 0)
	fetchAs := func(cert *tls.Certificate) {
		t.Helper()
		cfg := FetchConfig{}
		if cert != nil {
			cfg.ClientSVID = func() (*tls.Certificate, error) { return cert, nil }
		}
		if _, err := Fetch(context.Background(), rel, cur, cfg); err != nil {
			t.Fatal(err)
		}
	}
	// Served, not reported: no certificate, a certificate of an
	// unfederated trust domain, one that claims b.example but does not
	// chain to its bundle, a failing client SVID.
	fetchAs(nil)
	fetchAs(tlsCert(caC.SVID("spiffe://c.example/sigil/server", time.Hour)))
	fetchAs(tlsCert(rogueB.SVID("spiffe://b.example/sigil/server", time.Hour)))
	if _, err := Fetch(context.Background(), rel, cur, FetchConfig{ClientSVID: func() (*tls.Certificate, error) { return nil, errTest }}); err != nil {
		t.Fatal(err)
	}
	// Reported: b.example's SVID.
	fetchAs(tlsCert(caB.SVID("spiffe://b.example/sigil/server", time.Hour)))
	eventually.True(t, 5*time.Second, func() bool { return len(fetches.list()) > 0 }, "no partner fetch reported")
	stop() // every handler has returned
	if got := fetches.list(); len(got) != 1 || got[0] != "b.example@7" {
		t.Fatalf("partner fetches %v, want [b.example@7]", got)
	}
}

func TestEndpointBoundsHeaders(t *testing.T) {
	ca := mtlstest.NewCA("a.example")
	url, _ := serve(t, spiffeEndpoint(t, ca, &bundleSource{b: testBundle(t, ca, 1, 0)}, nil))
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}} // the test looks at HTTP only
	defer client.CloseIdleConnections()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("X-Big", strings.Repeat("x", 64<<10))
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Fatalf("64 KiB of headers: %s", resp.Status)
	}
}

func TestSPIFFEEndpointWithoutSVID(t *testing.T) {
	ca := mtlstest.NewCA("a.example")
	var svid atomic.Pointer[tls.Certificate]
	core, logs := observer.New(zap.InfoLevel)
	e := spiffeEndpoint(t, ca, &bundleSource{b: testBundle(t, ca, 1, 0)}, func(c *EndpointConfig) {
		c.SVID = func() (*tls.Certificate, error) {
			if s := svid.Load(); s != nil {
				return s, nil
			}
			return nil, errTest
		}
		c.Logger = zap.New(core)
	})
	url, _ := serve(t, e)
	rel := &sigilv1.FederationRelationship{TrustDomain: "a.example", BundleEndpointUrl: url, Profile: ProfileHTTPSSPIFFE, EndpointSpiffeId: endpointIDA}
	for range 3 {
		if _, err := Fetch(context.Background(), rel, testBundle(t, ca, 0, 0), FetchConfig{}); err == nil {
			t.Fatal("fetched from an endpoint without certificate")
		}
	}
	if n := logs.FilterMessage("bundle endpoint has no certificate to serve").Len(); n != 1 {
		t.Fatalf("the SVID failure was logged %d times, want once", n)
	}
	svid.Store(tlsCert(ca.SVID(endpointIDA, time.Hour)))
	if _, err := Fetch(context.Background(), rel, testBundle(t, ca, 0, 0), FetchConfig{}); err != nil {
		t.Fatal(err)
	}
	if logs.FilterMessage("bundle endpoint has a certificate again").Len() != 1 {
		t.Fatalf("recovery not logged: %v", logs.All())
	}
}
