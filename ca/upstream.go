package ca

import (
	"context"
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/url"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// UpstreamAuthority signs this server's CA certificates, so that they
// chain to a PKI the operator already runs (ca/upstream/disk) or to an
// upstream Sigil cluster of the same trust domain (ca/upstream/sigil).
// With one, a server's CA certificate is an intermediate: the SVIDs it
// signs carry it in their chain, and the trust bundle lists the upstream's
// roots instead, so trust in the upstream roots survives every rotation of
// the servers' CA keys.
//
// Implementations live in ca/upstream/<name>, are built from configuration
// and must be safe for concurrent use. A server calls MintX509CA when it
// prepares a new CA key, before the key is published or signs anything,
// and Roots periodically (the leader mirrors them into the bundle). Both
// must honour ctx: an upstream that does not answer delays the preparation
// of the next key (and raises a rotation-health alert), never the signing
// of SVIDs with the active one.
type UpstreamAuthority interface {
	// MintX509CA signs a CA certificate for the key of req.CSR. The
	// certificate must be built with UpstreamCATemplate (or satisfy
	// everything CheckUpstreamResponse checks).
	MintX509CA(ctx context.Context, req X509CARequest) (*X509CAResponse, error)
	// Roots returns the upstream's current trust anchors: the
	// certificates the chains of MintX509CA verify to. It may return
	// more than one during the upstream's own rotations.
	Roots(ctx context.Context) ([]*x509.Certificate, error)
}

// X509CARequest asks an upstream authority for a CA certificate.
type X509CARequest struct {
	// CSR is a DER PKCS#10 request signed with the new CA key (proof of
	// possession). Its subject is copied into the certificate; its one
	// URI SAN is the trust domain's ID.
	CSR []byte
	// TrustDomain is the trust domain the CA issues SVIDs of.
	TrustDomain spiffeid.TrustDomain
	// TTL is the requested lifetime. The upstream may shorten it, never
	// past the NotAfter of its own signing certificate.
	TTL time.Duration
}

// X509CAResponse is what an upstream authority answers.
type X509CAResponse struct {
	// Chain is the new CA certificate first, then the upstream's
	// intermediates, up to and excluding a certificate of Roots.
	Chain []*x509.Certificate
	// Roots are the upstream's trust anchors; Chain verifies to one of
	// them.
	Roots []*x509.Certificate
}

// Limits on what an upstream authority may answer.
const (
	// MaxUpstreamChain bounds the certificates of a CA chain.
	MaxUpstreamChain = 8
	// MaxUpstreamRoots bounds the roots of an upstream authority.
	MaxUpstreamRoots = 64
)

// UpstreamCATemplate is the certificate an upstream authority signs for
// req: the subject of the CSR, the trust domain ID as the only URI SAN, a
// CA that signs leaves only (path length 0) with a critical name
// constraint to URIs of the trust domain and no IP addresses, key usage
// certSign and cRLSign, a SubjectKeyId derived from the key, a random
// serial, NotBefore = now-backdate and NotAfter = now+req.TTL cut at
// notAfterLimit (the signer's own NotAfter). It verifies the CSR's
// signature and checks its URI SAN first.
func UpstreamCATemplate(req X509CARequest, now time.Time, backdate time.Duration, notAfterLimit time.Time) (*x509.Certificate, crypto.PublicKey, error) {
	if req.TrustDomain.IsZero() {
		return nil, nil, errors.New("ca: upstream: no trust domain")
	}
	if req.TTL <= 0 {
		return nil, nil, fmt.Errorf("ca: upstream: CA TTL %v is not positive", req.TTL)
	}
	pub, err := VerifyCSR(req.CSR)
	if err != nil {
		return nil, nil, err
	}
	csr, err := x509.ParseCertificateRequest(req.CSR)
	if err != nil {
		return nil, nil, fmt.Errorf("ca: upstream: parsing CSR: %w", err)
	}
	if len(csr.URIs) != 1 || csr.URIs[0].String() != req.TrustDomain.IDString() {
		return nil, nil, fmt.Errorf("ca: upstream: the CSR must carry exactly one URI SAN, %s", req.TrustDomain.IDString())
	}
	serial, err := newSerial()
	if err != nil {
		return nil, nil, err
	}
	ski, err := subjectKeyID(pub)
	if err != nil {
		return nil, nil, err
	}
	notAfter := now.Add(req.TTL)
	if notAfter.After(notAfterLimit) {
		notAfter = notAfterLimit
	}
	if !notAfter.After(now) {
		return nil, nil, fmt.Errorf("ca: upstream: the signing certificate expires at %s", notAfterLimit.UTC().Format(time.RFC3339))
	}
	tmpl := &x509.Certificate{
		SerialNumber:                serial,
		Subject:                     csr.Subject,
		NotBefore:                   now.Add(-backdate),
		NotAfter:                    notAfter,
		KeyUsage:                    x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid:       true,
		IsCA:                        true,
		MaxPathLen:                  0,
		MaxPathLenZero:              true,
		PermittedDNSDomainsCritical: true,
		PermittedURIDomains:         []string{req.TrustDomain.Name()},
		ExcludedIPRanges:            []*net.IPNet{{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}, {IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}},
		URIs:                        []*url.URL{req.TrustDomain.ID().URL()},
		SubjectKeyId:                ski,
	}
	return tmpl, pub, nil
}

// CheckUpstreamResponse checks what an upstream authority answered for a
// CA key whose public key is pub, at time now: a chain of at most
// MaxUpstreamChain certificates and at most MaxUpstreamRoots roots, each a
// CA certificate; the first certificate is for pub, a CA with the trust
// domain ID as its only URI SAN and a SubjectKeyId, valid now; and the
// chain verifies to one of the roots now. It returns the error that names
// what is wrong.
func CheckUpstreamResponse(resp *X509CAResponse, td spiffeid.TrustDomain, pub crypto.PublicKey, now time.Time) error {
	if resp == nil || len(resp.Chain) == 0 {
		return errors.New("ca: upstream: empty CA chain")
	}
	if len(resp.Chain) > MaxUpstreamChain {
		return fmt.Errorf("ca: upstream: CA chain of %d certificates (at most %d)", len(resp.Chain), MaxUpstreamChain)
	}
	if len(resp.Roots) == 0 {
		return errors.New("ca: upstream: no roots")
	}
	if len(resp.Roots) > MaxUpstreamRoots {
		return fmt.Errorf("ca: upstream: %d roots (at most %d)", len(resp.Roots), MaxUpstreamRoots)
	}
	leaf := resp.Chain[0]
	if p, ok := pub.(interface{ Equal(crypto.PublicKey) bool }); !ok || !p.Equal(leaf.PublicKey) {
		return errors.New("ca: upstream: the CA certificate is not for the new CA key")
	}
	if !leaf.IsCA || !leaf.BasicConstraintsValid {
		return errors.New("ca: upstream: the CA certificate is not a CA")
	}
	if leaf.KeyUsage&x509.KeyUsageCertSign == 0 {
		return errors.New("ca: upstream: the CA certificate lacks the certSign key usage")
	}
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != td.IDString() {
		return fmt.Errorf("ca: upstream: the CA certificate must carry exactly one URI SAN, %s", td.IDString())
	}
	if len(leaf.SubjectKeyId) == 0 {
		return errors.New("ca: upstream: the CA certificate has no SubjectKeyId")
	}
	if now.Before(leaf.NotBefore) || !now.Before(leaf.NotAfter) {
		return fmt.Errorf("ca: upstream: the CA certificate is not valid now (%s to %s)",
			leaf.NotBefore.UTC().Format(time.RFC3339), leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	for i, c := range resp.Chain[1:] {
		if !c.IsCA || !c.BasicConstraintsValid {
			return fmt.Errorf("ca: upstream: chain certificate %d is not a CA", i+2)
		}
	}
	for i, c := range resp.Roots {
		if !c.IsCA || !c.BasicConstraintsValid {
			return fmt.Errorf("ca: upstream: root %d is not a CA", i+1)
		}
	}
	if err := verifyUpstreamChain(resp.Chain, resp.Roots, now); err != nil {
		return err
	}
	return nil
}

// verifyUpstreamChain verifies chain (CA certificate first) to roots at
// now.
func verifyUpstreamChain(chain, roots []*x509.Certificate, now time.Time) error {
	opts := x509.VerifyOptions{
		Roots:         x509.NewCertPool(),
		Intermediates: x509.NewCertPool(),
		CurrentTime:   now,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	}
	for _, r := range roots {
		opts.Roots.AddCert(r)
	}
	for _, c := range chain[1:] {
		opts.Intermediates.AddCert(c)
	}
	if _, err := chain[0].Verify(opts); err != nil {
		return fmt.Errorf("ca: upstream: the CA chain does not verify to the upstream roots: %w", err)
	}
	return nil
}
