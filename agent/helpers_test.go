package agent

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"github.com/sigil-id/sigil/workloadapi"
	"math/big"
	"net/url"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

var (
	testTD     = spiffeid.RequireTrustDomainFromString("example.org")
	testSerial atomic.Int64
)

// testCA is a CA made for a test.
type testCA struct {
	cert *x509.Certificate
	key  crypto.Signer
}

func newTestCA(t testing.TB, now time.Time) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(testSerial.Add(1)),
		Subject:               pkix.Name{CommonName: "test CA", Organization: []string{"sigil test"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		URIs:                  []*url.URL{testTD.ID().URL()},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &testCA{cert: cert, key: key}
}

// sign issues an SVID for id over pub, valid from notBefore for ttl.
func (ca *testCA) sign(t testing.TB, id spiffeid.ID, pub crypto.PublicKey, notBefore time.Time, ttl time.Duration) []*x509.Certificate {
	t.Helper()
	chain, err := ca.issue(id, pub, notBefore, ttl)
	if err != nil {
		t.Fatal(err)
	}
	return chain
}

func (ca *testCA) issue(id spiffeid.ID, pub crypto.PublicKey, notBefore time.Time, ttl time.Duration) ([]*x509.Certificate, error) {
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(testSerial.Add(1)),
		NotBefore:    notBefore,
		NotAfter:     notBefore.Add(ttl),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment | x509.KeyUsageKeyAgreement,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		URIs:         []*url.URL{id.URL()},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, pub, ca.key)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return []*x509.Certificate{cert}, nil
}

// certs parses the SVID's chain from its DER, as the tests read it.
func (s *svid) certs(t testing.TB) []*x509.Certificate {
	t.Helper()
	certs, err := x509.ParseCertificates(s.chainDER)
	if err != nil || len(certs) == 0 {
		t.Fatalf("SVID chain DER does not parse: %v", err)
	}
	return certs
}

// leafAKI is the AuthorityKeyId of the SVID's leaf.
func (s *svid) leafAKI() string { return string(s.aki) }

// leafOf is the leaf certificate of an identity the cache handed out.
func leafOf(t testing.TB, id workloadapi.X509Identity) *x509.Certificate {
	t.Helper()
	certs, err := id.Certificates()
	if err != nil {
		t.Fatal(err)
	}
	return certs[0]
}

// keyOf is the private key of an identity the cache handed out.
func keyOf(t testing.TB, id workloadapi.X509Identity) crypto.Signer {
	t.Helper()
	k, err := id.Signer()
	if err != nil {
		t.Fatal(err)
	}
	return k
}
