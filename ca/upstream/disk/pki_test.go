package disk

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/sigil-id/sigil/ca"
	"github.com/sigil-id/sigil/clock"
)

// The test PKI: real certificates and keys made by each test.

var td = spiffeid.RequireTrustDomainFromString("example.org")

// issued is a certificate and its key.
type issued struct {
	cert *x509.Certificate
	key  crypto.Signer
}

// certOpts shapes a test CA certificate.
type certOpts struct {
	cn        string
	notBefore time.Time
	notAfter  time.Time
	// pathLen: -1 none, else the path length.
	pathLen     int
	notCA       bool
	keyUsage    x509.KeyUsage
	permitURIs  []string
	excludeURIs []string
	// key signs the certificate's public half; a new P-256 key if nil.
	key crypto.Signer
}

func caOpts(cn string, now time.Time) certOpts {
	return certOpts{cn: cn, notBefore: now.Add(-time.Hour), notAfter: now.Add(365 * 24 * time.Hour), pathLen: -1, keyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign}
}

// serial numbers the test certificates.
var serial atomic.Int64

// newCert makes a certificate per o, signed by parent (self-signed if
// parent is nil).
func newCert(t testing.TB, o certOpts, parent *issued) *issued {
	t.Helper()
	key := o.key
	if key == nil {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		key = k
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(serial.Add(1)),
		Subject:               pkix.Name{Organization: []string{"Operator"}, CommonName: o.cn},
		NotBefore:             o.notBefore,
		NotAfter:              o.notAfter,
		KeyUsage:              o.keyUsage,
		BasicConstraintsValid: true,
		IsCA:                  !o.notCA,
		PermittedURIDomains:   o.permitURIs,
		ExcludedURIDomains:    o.excludeURIs,
	}
	if o.pathLen >= 0 {
		tmpl.MaxPathLen, tmpl.MaxPathLenZero = o.pathLen, o.pathLen == 0
	} else {
		tmpl.MaxPathLen = -1
	}
	signerCert, signerKey := tmpl, key
	if parent != nil {
		signerCert, signerKey = parent.cert, parent.key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, signerCert, key.Public(), signerKey)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &issued{cert: c, key: key}
}

func pemCerts(certs ...*x509.Certificate) []byte {
	var b []byte
	for _, c := range certs {
		b = append(b, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	return b
}

func pemKey(t testing.TB, k crypto.Signer) []byte {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
}

func writeFile(t testing.TB, path string, data []byte) string {
	t.Helper()
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// files is an upstream's files in a directory of their own.
type files struct {
	dir                  string
	cert, bundle, keyPEM string
}

// writeUpstream writes cert_file (certs), key_file (key) and, if roots is
// not empty, bundle_file.
func writeUpstream(t testing.TB, key crypto.Signer, certs []*x509.Certificate, roots []*x509.Certificate) files {
	t.Helper()
	dir := t.TempDir()
	f := files{dir: dir, cert: filepath.Join(dir, "ca.pem"), keyPEM: filepath.Join(dir, "ca.key")}
	writeFile(t, f.cert, pemCerts(certs...))
	writeFile(t, f.keyPEM, pemKey(t, key))
	if len(roots) > 0 {
		f.bundle = writeFile(t, filepath.Join(dir, "root.pem"), pemCerts(roots...))
	}
	return f
}

func (f files) config(c clock.Clock) Config {
	cfg := DefaultConfig()
	cfg.CertFile, cfg.BundleFile, cfg.KeyFile = f.cert, f.bundle, f.keyPEM
	cfg.TrustDomain = td
	cfg.Clock = c
	return cfg
}

// csr is a Sigil server's CA key and its CSR to the upstream.
type csr struct {
	key *ecdsa.PrivateKey
	der []byte
}

func newCSR(t testing.TB, trustDomain spiffeid.TrustDomain) csr {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject: pkix.Name{Organization: []string{"Sigil"}, CommonName: "Sigil CA s1", SerialNumber: "s1"},
		URIs:    []*url.URL{trustDomain.ID().URL()},
	}, k)
	if err != nil {
		t.Fatal(err)
	}
	return csr{key: k, der: der}
}

func mint(t testing.TB, a *Authority, ttl time.Duration) (*ca.X509CAResponse, csr) {
	t.Helper()
	r := newCSR(t, td)
	resp, err := a.MintX509CA(context.Background(), ca.X509CARequest{CSR: r.der, TrustDomain: td, TTL: ttl})
	if err != nil {
		t.Fatal(err)
	}
	return resp, r
}

// svid signs an SVID-like leaf (spiffe://example.org/workload, no CA
// bit, digitalSignature, serverAuth and clientAuth) with the new CA.
func svid(t testing.TB, caCert *x509.Certificate, caKey crypto.Signer, now time.Time) *x509.Certificate {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(serial.Add(1)),
		NotBefore:             now.Add(-time.Minute),
		NotAfter:              now.Add(time.Hour),
		URIs:                  []*url.URL{spiffeid.RequireFromPath(td, "/workload").URL()},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment | x509.KeyUsageKeyAgreement,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, k.Public(), caKey)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// verifyBoth checks that an SVID signed by the minted CA verifies to the
// roots with crypto/x509 and with `openssl verify -CAfile root.pem
// -untrusted chain.pem leaf.pem` (at the wall clock: now must be near it).
func verifyBoth(t testing.TB, resp *ca.X509CAResponse, r csr, now time.Time) {
	t.Helper()
	leaf := svid(t, resp.Chain[0], r.key, now)
	opts := x509.VerifyOptions{Roots: x509.NewCertPool(), Intermediates: x509.NewCertPool(), CurrentTime: now,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	for _, c := range resp.Roots {
		opts.Roots.AddCert(c)
	}
	for _, c := range resp.Chain {
		opts.Intermediates.AddCert(c)
	}
	if _, err := leaf.Verify(opts); err != nil {
		t.Fatalf("Go verification of an SVID under the minted CA: %v", err)
	}
	openssl, err := exec.LookPath("openssl")
	if err != nil {
		t.Fatal("openssl is not in PATH: apt-get install -y openssl")
	}
	dir := t.TempDir()
	root := writeFile(t, filepath.Join(dir, "root.pem"), pemCerts(resp.Roots...))
	chain := writeFile(t, filepath.Join(dir, "chain.pem"), pemCerts(resp.Chain...))
	leafFile := writeFile(t, filepath.Join(dir, "leaf.pem"), pemCerts(leaf))
	out, err := exec.Command(openssl, "verify", "-CAfile", root, "-untrusted", chain, leafFile).CombinedOutput()
	if err != nil || !strings.Contains(string(out), ": OK") {
		t.Fatalf("openssl verify: %v\n%s", err, out)
	}
}
