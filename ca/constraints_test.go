package ca_test

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"math/big"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/sigil-id/sigil/ca"
	"github.com/sigil-id/sigil/ca/keymanager/memory"
	"github.com/sigil-id/sigil/clock"
)

var oidNameConstraints = asn1.ObjectIdentifier{2, 5, 29, 30}

// constrainedCA is a CA made by ca.New on the real clock (so that openssl
// verifies at the current time), with its signing key, which only a test
// can take from the key manager.
func constrainedCA(t *testing.T) (*ca.CA, crypto.Signer) {
	t.Helper()
	km := memory.New()
	cfg := testConfig(t, clock.New())
	cfg.KeyManager = km
	c := newCA(t, cfg)
	key, err := km.GetKey(context.Background(), "x509-ca")
	if err != nil {
		t.Fatal(err)
	}
	return c, key
}

// forge signs tmpl with the CA's key, as an attacker holding the key (or a
// bug in the signing path) would.
func forge(t *testing.T, tmpl, parent *x509.Certificate, pub crypto.PublicKey, signer crypto.Signer) *x509.Certificate {
	t.Helper()
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, signer)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

func leafTemplate(serial int64, uri string) *x509.Certificate {
	u, _ := url.Parse(uri)
	return &x509.Certificate{
		SerialNumber: big.NewInt(serial),
		NotBefore:    time.Now().Add(-time.Minute),
		NotAfter:     time.Now().Add(time.Hour),
		URIs:         []*url.URL{u},
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
}

func writePEM(t *testing.T, dir, name string, certs ...*x509.Certificate) string {
	t.Helper()
	var b []byte
	for _, c := range certs {
		b = append(b, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// goVerify verifies leaf (with intermediates) against root with Go's
// verifier, and as an X.509-SVID with go-spiffe.
func goVerify(root, leaf *x509.Certificate, intermediates ...*x509.Certificate) (x509Err, svidErr error) {
	roots, inter := x509.NewCertPool(), x509.NewCertPool()
	roots.AddCert(root)
	for _, c := range intermediates {
		inter.AddCert(c)
	}
	_, x509Err = leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	chain := append([]*x509.Certificate{leaf}, intermediates...)
	_, _, svidErr = x509svid.Verify(chain, x509bundle.FromX509Authorities(td, []*x509.Certificate{root}))
	return x509Err, svidErr
}

// opensslVerify runs `openssl verify` on leaf against root; the error is
// nil when openssl accepts the chain.
func opensslVerify(t *testing.T, root, leaf *x509.Certificate, intermediates ...*x509.Certificate) (string, error) {
	t.Helper()
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Fatal("openssl is required (apt-get install -y openssl)")
	}
	dir := t.TempDir()
	args := []string{"verify", "-CAfile", writePEM(t, dir, "ca.pem", root)}
	if len(intermediates) > 0 {
		args = append(args, "-untrusted", writePEM(t, dir, "inter.pem", intermediates...))
	}
	args = append(args, writePEM(t, dir, "leaf.pem", leaf))
	out, err := exec.Command("openssl", args...).CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

// TestCACertificateConstraints: the CA certificate has MaxPathLen 0 and a
// critical name constraints extension permitting URIs of its own trust
// domain only, and excluding every IP address.
func TestCACertificateConstraints(t *testing.T) {
	c, _ := constrainedCA(t)
	cert := c.Certificate()
	if cert.MaxPathLen != 0 || !cert.MaxPathLenZero {
		t.Errorf("MaxPathLen = %d (zero %v), want 0", cert.MaxPathLen, cert.MaxPathLenZero)
	}
	if len(cert.PermittedURIDomains) != 1 || cert.PermittedURIDomains[0] != "example.org" {
		t.Errorf("PermittedURIDomains = %v", cert.PermittedURIDomains)
	}
	if len(cert.PermittedDNSDomains)+len(cert.ExcludedDNSDomains)+len(cert.ExcludedURIDomains) != 0 {
		t.Errorf("unexpected DNS/URI constraints %v %v %v", cert.PermittedDNSDomains, cert.ExcludedDNSDomains, cert.ExcludedURIDomains)
	}
	if len(cert.ExcludedIPRanges) != 2 {
		t.Errorf("ExcludedIPRanges = %v, want 0.0.0.0/0 and ::/0", cert.ExcludedIPRanges)
	}
	critical := false
	for _, e := range cert.Extensions {
		if e.Id.Equal(oidNameConstraints) {
			critical = e.Critical
		}
	}
	if !critical || !cert.PermittedDNSDomainsCritical {
		t.Error("the name constraints extension is missing or not critical")
	}
}

// TestCAConstraintsRefuseForgedCertificates: certificates made with a
// Sigil CA's key for another trust domain, with an IP address, or as an
// intermediate CA are refused by Go's verifier, go-spiffe and openssl,
// while the SVIDs the CA issues (DNS SANs included) verify.
func TestCAConstraintsRefuseForgedCertificates(t *testing.T) {
	c, key := constrainedCA(t)
	root := c.Certificate()
	leafKey := genKey(t, "p256")

	// Control: an issued workload SVID with DNS SANs verifies everywhere.
	chain, err := c.SignX509SVID(context.Background(), ca.X509SVIDParams{
		PublicKey: leafKey.Public(),
		SPIFFEID:  spiffeid.RequireFromString("spiffe://example.org/web"),
		DNSNames:  []string{"web.example.com", "web"},
	})
	if err != nil {
		t.Fatal(err)
	}
	if xe, se := goVerify(root, chain[0]); xe != nil || se != nil {
		t.Fatalf("issued SVID with DNS names: x509 %v, x509svid %v", xe, se)
	}
	if out, err := opensslVerify(t, root, chain[0]); err != nil {
		t.Fatalf("openssl verify of an issued SVID: %v: %s", err, out)
	}
	// An agent SVID (reserved path) is in the trust domain too.
	agent, err := c.SignX509SVID(context.Background(), ca.X509SVIDParams{
		PublicKey: leafKey.Public(),
		SPIFFEID:  spiffeid.RequireFromString("spiffe://example.org/sigil/agent/join_token/abc"),
	})
	if err != nil {
		t.Fatal(err)
	}
	if xe, se := goVerify(root, agent[0]); xe != nil || se != nil {
		t.Fatalf("issued agent SVID: x509 %v, x509svid %v", xe, se)
	}

	// A leaf for another trust domain.
	foreign := forge(t, leafTemplate(100, "spiffe://other.org/web"), root, leafKey.Public(), key)
	xe, _ := goVerify(root, foreign)
	if xe == nil || !strings.Contains(xe.Error(), "constraint") {
		t.Errorf("Go verified a leaf of another trust domain: %v", xe)
	}
	// go-spiffe would refuse it anyway (wrong trust domain); check with a
	// bundle of other.org holding this CA, as a federation mistake would.
	if _, _, err := x509svid.Verify([]*x509.Certificate{foreign}, x509bundle.FromX509Authorities(otherTD, []*x509.Certificate{root})); err == nil {
		t.Error("go-spiffe verified a leaf of another trust domain")
	}
	if out, err := opensslVerify(t, root, foreign); err == nil || !strings.Contains(out, "subtree violation") {
		t.Errorf("openssl verify of a leaf of another trust domain: %v: %s", err, out)
	}

	// A leaf of this trust domain with an IP address.
	withIP := leafTemplate(101, "spiffe://example.org/web")
	withIP.IPAddresses = []net.IP{net.ParseIP("10.1.2.3")}
	ipLeaf := forge(t, withIP, root, leafKey.Public(), key)
	if xe, se := goVerify(root, ipLeaf); xe == nil || se == nil {
		t.Errorf("Go verified a leaf with an IP SAN: x509 %v, x509svid %v", xe, se)
	}
	if out, err := opensslVerify(t, root, ipLeaf); err == nil || !strings.Contains(out, "subtree violation") {
		t.Errorf("openssl verify of a leaf with an IP SAN: %v: %s", err, out)
	}

	// An intermediate CA signed with the key, and a leaf of this trust
	// domain under it.
	interKey := genKey(t, "p256")
	interTmpl := leafTemplate(102, "spiffe://example.org")
	interTmpl.IsCA, interTmpl.BasicConstraintsValid = true, true
	interTmpl.KeyUsage = x509.KeyUsageCertSign
	interTmpl.ExtKeyUsage = nil
	interTmpl.Subject = pkix.Name{CommonName: "rogue intermediate"}
	inter := forge(t, interTmpl, root, interKey.Public(), key)
	under := forge(t, leafTemplate(103, "spiffe://example.org/web"), inter, leafKey.Public(), interKey)
	xe, se := goVerify(root, under, inter)
	if xe == nil || se == nil {
		t.Errorf("Go verified a leaf under an intermediate CA: x509 %v, x509svid %v", xe, se)
	} else if !strings.Contains(xe.Error(), "too many intermediates") {
		t.Errorf("Go refused the intermediate for another reason: %v", xe)
	}
	if out, err := opensslVerify(t, root, under, inter); err == nil || !strings.Contains(out, "path length") {
		t.Errorf("openssl verify of a leaf under an intermediate CA: %v: %s", err, out)
	}
}

// TestLoadsCACertificateWithoutConstraints: a CA certificate persisted by
// an older version (no name constraints, no path length) is still loaded
// after an upgrade, and the SVIDs it signs verify.
func TestLoadsCACertificateWithoutConstraints(t *testing.T) {
	ctx := context.Background()
	km := memory.New()
	certPath := filepath.Join(t.TempDir(), "ca.pem")
	cfg := testConfig(t, clock.New())
	cfg.KeyManager = km
	cfg.CertPath = certPath

	key, err := km.GenerateKey(ctx, "x509-ca", ca.KeyTypeECP256)
	if err != nil {
		t.Fatal(err)
	}
	spki, err := x509.MarshalPKIXPublicKey(key.Public())
	if err != nil {
		t.Fatal(err)
	}
	legacyTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(7),
		Subject:               pkix.Name{Organization: []string{"Sigil"}, CommonName: "Sigil CA server-1", SerialNumber: "server-1"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(23 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		URIs:                  []*url.URL{td.ID().URL()},
		SubjectKeyId:          spki[len(spki)-20:],
	}
	legacy := forge(t, legacyTmpl, legacyTmpl, key.Public(), key)
	if len(legacy.PermittedURIDomains) != 0 || legacy.MaxPathLenZero {
		t.Fatal("the legacy certificate has constraints")
	}
	writePEM(t, filepath.Dir(certPath), filepath.Base(certPath), legacy)

	c := newCA(t, cfg)
	if !c.Certificate().Equal(legacy) {
		t.Fatal("the CA certificate of an older version was replaced instead of loaded")
	}
	chain, err := c.SignX509SVID(ctx, ca.X509SVIDParams{PublicKey: genKey(t, "p256").Public(), SPIFFEID: spiffeid.RequireFromString("spiffe://example.org/web")})
	if err != nil {
		t.Fatal(err)
	}
	if xe, se := goVerify(legacy, chain[0]); xe != nil || se != nil {
		t.Fatalf("SVID of the loaded legacy CA: x509 %v, x509svid %v", xe, se)
	}
}
