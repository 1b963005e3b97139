// Package mtlstest provides what tests of mTLS code need without a running
// agent: an in-memory certificate authority per trust domain that mints
// X.509-SVIDs and JWT-SVIDs, a mutable SVID and bundle source whose SVID
// can be rotated mid-test, and a fake SPIFFE Workload API server on a unix
// socket that go-spiffe clients (and mtls.NewSource) talk to.
package mtlstest

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"math/big"
	"net/url"
	"sync"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// CA is the certificate authority of one trust domain.
type CA struct {
	td     spiffeid.TrustDomain
	cert   *x509.Certificate
	key    *ecdsa.PrivateKey
	jwtKey *ecdsa.PrivateKey
	jwtKID string

	mu     sync.Mutex
	serial int64
}

// NewCA makes a CA for the trust domain td (e.g. "example.org"). It panics
// on a malformed name, as test helpers do.
func NewCA(td string) *CA {
	t := spiffeid.RequireTrustDomainFromString(td)
	key := mustKey()
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{Organization: []string{"mtlstest"}, CommonName: td + " CA"},
		URIs:                  []*url.URL{t.ID().URL()},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		panic(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &CA{td: t, cert: cert, key: key, jwtKey: mustKey(), jwtKID: "mtlstest-" + td, serial: 1}
}

func mustKey() *ecdsa.PrivateKey {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		panic(err)
	}
	return k
}

// TrustDomain is the CA's trust domain.
func (ca *CA) TrustDomain() spiffeid.TrustDomain { return ca.td }

// Cert is the CA certificate.
func (ca *CA) Cert() *x509.Certificate { return ca.cert }

// Bundle is the X.509 bundle of the trust domain.
func (ca *CA) Bundle() *x509bundle.Bundle {
	return x509bundle.FromX509Authorities(ca.td, []*x509.Certificate{ca.cert})
}

// JWTBundle is the JWT bundle of the trust domain.
func (ca *CA) JWTBundle() *jwtbundle.Bundle {
	return jwtbundle.FromJWTAuthorities(ca.td, map[string]crypto.PublicKey{ca.jwtKID: ca.jwtKey.Public()})
}

// SVID mints an X.509-SVID for id (which must be in the CA's trust
// domain) valid for ttl from now.
func (ca *CA) SVID(id string, ttl time.Duration) *x509svid.SVID {
	sid := spiffeid.RequireFromString(id)
	if sid.TrustDomain() != ca.td {
		panic(fmt.Sprintf("mtlstest: %s is not in trust domain %s", id, ca.td))
	}
	key := mustKey()
	ca.mu.Lock()
	ca.serial++
	serial := ca.serial
	ca.mu.Unlock()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial),
		Subject:      pkix.Name{Organization: []string{"mtlstest"}},
		URIs:         []*url.URL{sid.URL()},
		NotBefore:    time.Now().Add(-time.Minute),
		NotAfter:     time.Now().Add(ttl),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment | x509.KeyUsageKeyAgreement,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, key.Public(), ca.key)
	if err != nil {
		panic(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &x509svid.SVID{ID: sid, Certificates: []*x509.Certificate{cert}, PrivateKey: key}
}

// JWT mints a JWT-SVID token for id with the audiences, valid for ttl.
func (ca *CA) JWT(id string, ttl time.Duration, audience ...string) string {
	sid := spiffeid.RequireFromString(id)
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: ca.jwtKey},
		(&jose.SignerOptions{}).WithType("JWT").WithHeader(jose.HeaderKey("kid"), ca.jwtKID))
	if err != nil {
		panic(err)
	}
	now := time.Now()
	tok, err := jwt.Signed(signer).Claims(jwt.Claims{
		Subject:  sid.String(),
		Audience: audience,
		IssuedAt: jwt.NewNumericDate(now),
		Expiry:   jwt.NewNumericDate(now.Add(ttl)),
	}).Serialize()
	if err != nil {
		panic(err)
	}
	return tok
}

// Source is a mutable X.509-SVID and bundle source: it implements
// x509svid.Source and x509bundle.Source and lets a test rotate the SVID.
type Source struct {
	mu      sync.RWMutex
	svid    *x509svid.SVID
	bundles *x509bundle.Set
}

// NewSource serves svid, trusting the given bundles.
func NewSource(svid *x509svid.SVID, bundles ...*x509bundle.Bundle) *Source {
	return &Source{svid: svid, bundles: x509bundle.NewSet(bundles...)}
}

// SetSVID rotates the SVID: handshakes from now on present it.
func (s *Source) SetSVID(svid *x509svid.SVID) {
	s.mu.Lock()
	s.svid = svid
	s.mu.Unlock()
}

// SetBundles replaces the trusted bundles.
func (s *Source) SetBundles(bundles ...*x509bundle.Bundle) {
	s.mu.Lock()
	s.bundles = x509bundle.NewSet(bundles...)
	s.mu.Unlock()
}

// GetX509SVID implements x509svid.Source.
func (s *Source) GetX509SVID() (*x509svid.SVID, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.svid == nil {
		return nil, fmt.Errorf("mtlstest: no SVID")
	}
	return s.svid, nil
}

// GetX509BundleForTrustDomain implements x509bundle.Source.
func (s *Source) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.bundles.GetX509BundleForTrustDomain(td)
}
