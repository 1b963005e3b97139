package ca

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"net/url"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/sigil-id/sigil/internal/p256der"
)

// MinRSABits is the smallest RSA modulus accepted for an SVID key.
const MinRSABits = 2048

// maxDNSNames bounds the DNS SANs of one SVID.
const maxDNSNames = 64

// MaxCSRSize is the largest DER CSR VerifyCSR accepts, in bytes. An SVID
// CSR is a few hundred bytes (ECDSA P-256) to about 1.5 KiB (RSA 4096);
// the cap leaves room for large RSA keys and a few extensions while
// bounding what a caller can make the server parse and verify.
const MaxCSRSize = 16 << 10

// VerifyCSR parses a DER PKCS#10 request, checks its signature, and returns
// its public key. Nothing else of the CSR (subject, SANs, extensions) is
// used: the identity of an SVID comes from the caller, never from the CSR.
// A CSR larger than MaxCSRSize is refused before it is parsed. The
// request agents send (P-256, ECDSA with SHA-256, empty subject, no
// attributes) is checked without crypto/x509's parser (csrfast.go), with
// the same outcome.
func VerifyCSR(der []byte) (crypto.PublicKey, error) {
	k, err := VerifyCSRKey(der)
	if err != nil {
		return nil, err
	}
	return k.pub, nil
}

// CSRKey is the public key of a CSR whose signature VerifyCSRKey checked,
// to be given to X509SVIDParams.CSRKey: for a request of the agents'
// profile, with its uncompressed P-256 point as the request carried it
// (and as the key's checks accepted it), which the SVID's encoder then
// writes as it is instead of encoding the key again. Its zero value is
// no key.
type CSRKey struct {
	pub crypto.PublicKey
	// point is the P-256 point of a request of the fast path, copied
	// (the request's bytes may change after the check); hasPoint says
	// whether there is one.
	point    [p256der.PointLen]byte
	hasPoint bool
}

// Public returns the key.
func (k CSRKey) Public() crypto.PublicKey { return k.pub }

// VerifyCSRKey is VerifyCSR, returning the key as a CSRKey: the same
// checks, the same errors.
func VerifyCSRKey(der []byte) (CSRKey, error) {
	if len(der) == 0 {
		return CSRKey{}, errors.New("ca: CSR is empty")
	}
	if len(der) > MaxCSRSize {
		return CSRKey{}, fmt.Errorf("ca: CSR of %d bytes is too large (at most %d)", len(der), MaxCSRSize)
	}
	if r, ok := splitFastCSR(der); ok {
		// A P-256 request of the agents' profile (csrfast.go).
		pub, err := verifyFastCSR(r)
		if err != nil {
			return CSRKey{}, err
		}
		k := CSRKey{pub: pub, hasPoint: true}
		copy(k.point[:], r.point)
		return k, nil
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return CSRKey{}, fmt.Errorf("ca: malformed CSR: %w", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return CSRKey{}, fmt.Errorf("ca: CSR signature is invalid: %w", err)
	}
	if err := checkPublicKey(csr.PublicKey); err != nil {
		return CSRKey{}, err
	}
	return CSRKey{pub: csr.PublicKey}, nil
}

// X509SVIDParams is what an X.509-SVID is minted from.
type X509SVIDParams struct {
	// PublicKey is the subject's key; nil when CSRKey is set.
	PublicKey crypto.PublicKey
	// CSRKey, from VerifyCSRKey, is the subject's key in place of
	// PublicKey (the same certificate, without encoding a P-256 key's
	// point again).
	CSRKey   CSRKey
	SPIFFEID spiffeid.ID
	DNSNames []string
	TTL      time.Duration // 0 = Config.X509SVIDTTL
	// EntryID is the registration entry the SVID is minted for ("" for
	// agent and server SVIDs); only Config.X509SVIDTemplate sees it.
	EntryID string
}

// SignX509SVID mints an X.509-SVID: exactly one URI SAN (the SPIFFE ID),
// the DNS SANs of p (the first one also the subject CN), a random positive
// serial of 127 bits, NotBefore = now-Backdate (but not before the CA's
// NotBefore), NotAfter = now+TTL but never past the CA certificate's
// NotAfter, KeyUsage DigitalSignature (plus KeyEncipherment for RSA keys),
// EKU ServerAuth+ClientAuth, AuthorityKeyId = the CA's SubjectKeyId, and
// BasicConstraints CA=false.
//
// It returns the chain leaf first: just the leaf when the CA certificate is
// self-signed (a root of the bundle); the leaf, the CA certificate and the
// certificates up to the upstream root when an upstream authority signed
// it.
//
// It refuses a zero SPIFFE ID, an ID outside the CA's trust domain or
// without a path, an unsupported public key, a negative TTL, and signing
// with a CA that has expired.
//
// Without an operator template (Config.X509SVIDTemplate), and with an
// ECDSA P-256/P-384 or RSA CA key, the certificate is encoded and signed
// once by the fast path (fastsvid.go): the bytes x509.CreateCertificate
// writes, without its check of every signature (see SECURITY.md); other
// certificates go through x509.CreateCertificate.
func (c *CA) SignX509SVID(ctx context.Context, p X509SVIDParams) (chain []*x509.Certificate, err error) {
	start := time.Now()
	defer func() { c.cfg.Meter.X509SVIDSigned(time.Since(start), err) }()

	der, _, _, err := c.signX509SVID(ctx, p)
	if err != nil {
		return nil, err
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("ca: parsing new X509-SVID: %w", err)
	}
	if len(c.svidChain) == 0 {
		return []*x509.Certificate{leaf}, nil
	}
	chain = make([]*x509.Certificate, 0, 1+len(c.svidChain))
	return append(append(chain, leaf), c.svidChain...), nil
}

// RawX509SVID is an X.509-SVID as SignX509SVIDRaw returns it: DER, with
// the two fields of the leaf its callers record.
type RawX509SVID struct {
	// Chain is the DER chain, leaf first: the Raw of the certificates
	// SignX509SVID returns.
	Chain [][]byte
	// Serial is the leaf's serial number.
	Serial *big.Int
	// NotAfter is the leaf's expiry, to the second (as encoded).
	NotAfter time.Time
}

// SignX509SVIDRaw mints the X.509-SVID SignX509SVID mints, with the same
// checks and the same bytes, and returns it as DER without parsing it
// back: for the node API, which sends the DER and records only the
// serial and expiry. A certificate the fast path did not encode (an
// operator template, a CA key it does not sign with) is still parsed,
// and its serial and expiry read from it.
func (c *CA) SignX509SVIDRaw(ctx context.Context, p X509SVIDParams) (svid RawX509SVID, err error) {
	start := time.Now()
	defer func() { c.cfg.Meter.X509SVIDSigned(time.Since(start), err) }()

	der, f, fast, err := c.signX509SVID(ctx, p)
	if err != nil {
		return svid, err
	}
	if fast {
		// Encoded by the fast path from f: its serial, and its
		// NotAfter as written (seconds, UTC).
		svid.Serial = f.serial
		svid.NotAfter = f.notAfter.Truncate(time.Second).UTC()
	} else {
		leaf, err := x509.ParseCertificate(der)
		if err != nil {
			return svid, fmt.Errorf("ca: parsing new X509-SVID: %w", err)
		}
		svid.Serial, svid.NotAfter = leaf.SerialNumber, leaf.NotAfter
	}
	svid.Chain = make([][]byte, 1, 1+len(c.svidChain))
	svid.Chain[0] = der
	for _, cert := range c.svidChain {
		svid.Chain = append(svid.Chain, cert.Raw)
	}
	return svid, nil
}

// signX509SVID checks p and signs its X.509-SVID: it returns the DER leaf
// and, when the fast path encoded it, the fields it encoded and fast true
// (false when x509.CreateCertificate signed the template, with the
// operator's template applied when there is one). The fields are
// returned by value: a pointer to them cost an allocation per SVID.
func (c *CA) signX509SVID(ctx context.Context, p X509SVIDParams) (der []byte, f svidFields, fast bool, err error) {
	if err := ctx.Err(); err != nil {
		return nil, svidFields{}, false, fmt.Errorf("ca: %w", err)
	}
	if p.SPIFFEID.IsZero() {
		return nil, svidFields{}, false, errors.New("ca: SPIFFE ID is empty")
	}
	if p.SPIFFEID.TrustDomain() != c.td {
		return nil, svidFields{}, false, fmt.Errorf("ca: SPIFFE ID %q is not in trust domain %q", p.SPIFFEID, c.td)
	}
	if p.SPIFFEID.Path() == "" {
		return nil, svidFields{}, false, fmt.Errorf("ca: SPIFFE ID %q has no path: the trust domain ID is not a workload identity", p.SPIFFEID)
	}
	p, point, err := p.withKey()
	if err != nil {
		return nil, svidFields{}, false, err
	}
	if err := checkPublicKey(p.PublicKey); err != nil {
		return nil, svidFields{}, false, err
	}
	if err := checkDNSNames(p.DNSNames); err != nil {
		return nil, svidFields{}, false, err
	}
	f, err = c.x509SVIDFields(p)
	if err != nil {
		return nil, svidFields{}, false, err
	}
	if c.cfg.X509SVIDTemplate == nil {
		if enc := c.svidEncoder(); enc != nil {
			der, err = enc.createFields(f, p.PublicKey, point, c.signer, c.cfg.KeyObserver)
			switch {
			case err == nil:
				return der, f, true, nil
			case !errors.Is(err, errNotFast):
				return nil, svidFields{}, false, fmt.Errorf("ca: signing X509-SVID for %q: %w", p.SPIFFEID, err)
			}
		}
	}
	tmpl := c.templateOf(f, p)
	// Operator template (template.go): nil = none, nothing done.
	if tmpl, err = c.cfg.X509SVIDTemplate.apply(tmpl, p); err != nil {
		return nil, svidFields{}, false, err
	}
	der, err = x509.CreateCertificate(rand.Reader, tmpl, c.cert, p.PublicKey, c.signer)
	if err != nil {
		return nil, svidFields{}, false, fmt.Errorf("ca: signing X509-SVID for %q: %w", p.SPIFFEID, err)
	}
	return der, svidFields{}, false, nil
}

// withKey returns p with CSRKey's key as its PublicKey, and the key's
// point as the CSR carried it (nil when there is none); an error when
// both PublicKey and CSRKey are set.
func (p X509SVIDParams) withKey() (X509SVIDParams, []byte, error) {
	if p.CSRKey.pub == nil {
		return p, nil, nil
	}
	if p.PublicKey != nil {
		return p, nil, errors.New("ca: both PublicKey and CSRKey are set")
	}
	p.PublicKey = p.CSRKey.pub
	if !p.CSRKey.hasPoint {
		return p, nil, nil
	}
	return p, p.CSRKey.point[:], nil
}

// x509SVIDTemplate returns the certificate template of the X.509-SVID of
// p (already checked) before any operator template: what SignX509SVID
// documents, with a fresh serial and the validity computed from now.
func (c *CA) x509SVIDTemplate(p X509SVIDParams) (*x509.Certificate, error) {
	p, _, err := p.withKey()
	if err != nil {
		return nil, err
	}
	f, err := c.x509SVIDFields(p)
	if err != nil {
		return nil, err
	}
	return c.templateOf(f, p), nil
}

// templateOf is the certificate template of the X.509-SVID of p with
// fields f.
func (c *CA) templateOf(f svidFields, p X509SVIDParams) *x509.Certificate {
	var subject pkix.Name
	subject.CommonName = f.cn
	return &x509.Certificate{
		SerialNumber:          f.serial,
		Subject:               subject,
		NotBefore:             f.notBefore,
		NotAfter:              f.notAfter,
		KeyUsage:              f.keyUsage,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		IsCA:                  false,
		URIs:                  []*url.URL{p.SPIFFEID.URL()},
		DNSNames:              p.DNSNames,
		AuthorityKeyId:        c.subjectKeyID,
	}
}

// x509SVIDFields returns the fields of the X.509-SVID of p (already
// checked) that differ from one SVID to the next, before any operator
// template: a fresh serial, the validity computed from now, the key usage
// of p's key, the first DNS name as common name, the SPIFFE ID. The
// rest, the same for every SVID of the CA, is what x509SVIDTemplate adds
// and what the fast encoder holds encoded.
func (c *CA) x509SVIDFields(p X509SVIDParams) (svidFields, error) {
	ttl := p.TTL
	switch {
	case ttl < 0:
		return svidFields{}, fmt.Errorf("ca: TTL %v is negative", ttl)
	case ttl == 0:
		ttl = c.cfg.X509SVIDTTL
	}

	now := c.cfg.Clock.Now()
	if !now.Before(c.cert.NotAfter) {
		return svidFields{}, fmt.Errorf("ca: CA certificate expired at %s", c.cert.NotAfter.UTC().Format(time.RFC3339))
	}
	// Backdating covers clock skew; it is bounded by a tenth of the TTL
	// so that a short-lived SVID's half-life (its renewal point) stays
	// after its issuance.
	backdate := min(c.cfg.Backdate, ttl/10)
	notBefore := now.Add(-backdate)
	if notBefore.Before(c.cert.NotBefore) {
		notBefore = c.cert.NotBefore
	}
	notAfter := now.Add(ttl)
	if notAfter.After(c.cert.NotAfter) {
		notAfter = c.cert.NotAfter
	}

	serial, err := newSerial()
	if err != nil {
		return svidFields{}, err
	}
	keyUsage := x509.KeyUsageDigitalSignature
	if _, ok := p.PublicKey.(*rsa.PublicKey); ok {
		keyUsage |= x509.KeyUsageKeyEncipherment
	}
	f := svidFields{
		serial:    serial,
		notBefore: notBefore,
		notAfter:  notAfter,
		keyUsage:  keyUsage,
		uri:       p.SPIFFEID.String(),
		dns:       p.DNSNames,
	}
	if len(p.DNSNames) > 0 {
		f.cn = p.DNSNames[0]
	}
	return f, nil
}

// svidEncoder returns the CA's fast X.509-SVID encoder, built on first
// use, or nil when x509.CreateCertificate must sign this CA's SVIDs.
func (c *CA) svidEncoder() *svidEncoder {
	c.fastOnce.Do(func() {
		c.fast, _ = newSVIDEncoder(c.cert, c.signer, c.subjectKeyID)
	})
	return c.fast
}

// SignX509SVIDFromCSR verifies the DER PKCS#10 request csrDER and mints an
// X.509-SVID for id with the CSR's public key. Only the public key of the
// CSR is used; its subject and SANs are ignored.
func (c *CA) SignX509SVIDFromCSR(ctx context.Context, csrDER []byte, id spiffeid.ID, dns []string, ttl time.Duration) ([]*x509.Certificate, error) {
	start := time.Now()
	pub, err := VerifyCSR(csrDER)
	if err != nil {
		c.cfg.Meter.X509SVIDSigned(time.Since(start), err)
		return nil, err
	}
	return c.SignX509SVID(ctx, X509SVIDParams{PublicKey: pub, SPIFFEID: id, DNSNames: dns, TTL: ttl})
}

// checkPublicKey accepts the key types an SVID may carry: ECDSA on P-256,
// P-384 or P-521, RSA of at least MinRSABits, and Ed25519.
func checkPublicKey(pub crypto.PublicKey) error {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		if k == nil {
			break
		}
		switch k.Curve {
		case elliptic.P256(), elliptic.P384(), elliptic.P521():
			return nil
		}
		return fmt.Errorf("ca: unsupported ECDSA curve %s", k.Curve.Params().Name)
	case *rsa.PublicKey:
		if k == nil || k.N == nil {
			break
		}
		if k.N.BitLen() < MinRSABits {
			return fmt.Errorf("ca: RSA key of %d bits is too small (minimum %d)", k.N.BitLen(), MinRSABits)
		}
		return nil
	case ed25519.PublicKey:
		if len(k) == ed25519.PublicKeySize {
			return nil
		}
		return errors.New("ca: malformed Ed25519 public key")
	case nil:
		return errors.New("ca: public key is missing")
	}
	return fmt.Errorf("ca: unsupported public key type %T", pub)
}

// checkDNSNames rejects DNS SANs that are empty, too long, or not plain
// printable ASCII without spaces.
func checkDNSNames(names []string) error {
	if len(names) > maxDNSNames {
		return fmt.Errorf("ca: %d DNS names (maximum %d)", len(names), maxDNSNames)
	}
	for _, n := range names {
		if n == "" {
			return errors.New("ca: DNS name is empty")
		}
		if len(n) > 253 {
			return fmt.Errorf("ca: DNS name of %d characters is too long", len(n))
		}
		for i := 0; i < len(n); i++ {
			if b := n[i]; b <= ' ' || b >= 0x7f {
				return fmt.Errorf("ca: DNS name %q has an invalid character", n)
			}
		}
	}
	return nil
}
