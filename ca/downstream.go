package ca

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"fmt"
	"time"
)

// ErrNoIntermediates is returned by SignDownstreamCA when the CA
// certificate's basic constraints allow no intermediate CA below it (path
// length 0): a CA certificate it signed would not verify. The CA
// certificates of a server allow one level of intermediates only when the
// server was configured to sign downstream clusters' CAs
// (Config.AllowIntermediates), from the next key on.
var ErrNoIntermediates = errors.New("ca: the active CA certificate allows no intermediate CAs; set allow_downstream and rotate the CA (sigil authority prepare, activate)")

// ErrIntermediateCA is returned by SignDownstreamCA when c's certificate
// was itself signed by an upstream authority: it allows no CA below it
// (nesting is one level deep), and no setting changes that.
var ErrIntermediateCA = errors.New("ca: the active CA certificate is an intermediate of this cluster's own upstream authority and allows no CA below it: point the downstream cluster at the upstream's cluster instead")

// AllowsIntermediates reports whether a CA certificate signed by c
// verifies: the basic constraints of c's certificate allow at least one
// level of CA below it.
func (c *CA) AllowsIntermediates() bool {
	return allowsIntermediates(c.cert)
}

func allowsIntermediates(cert *x509.Certificate) bool {
	if !cert.IsCA || !cert.BasicConstraintsValid || cert.KeyUsage&x509.KeyUsageCertSign == 0 {
		return false
	}
	// MaxPathLen -1 is "no limit"; 0 (with or without MaxPathLenZero)
	// is "leaves only".
	return cert.MaxPathLen != 0 && !cert.MaxPathLenZero
}

// SignDownstreamCA signs, with c's key, the CA certificate of a server of
// a downstream Sigil cluster of the same trust domain (the nested
// topology): the certificate UpstreamCATemplate builds for req (the CSR
// verified, its URI SAN the trust domain ID, path length 0, name
// constraints to the trust domain), valid from now-Backdate (not before
// c's own NotBefore) for req.TTL, cut at c's NotAfter.
//
// It returns the new certificate first, then c's chain (Chain: c's
// certificate and its upstream intermediates; the caller drops what its
// bundle holds as trust anchors). It refuses a trust domain other than
// c's, a CA certificate that allows no intermediates (ErrNoIntermediates,
// or ErrIntermediateCA for a CA signed by an upstream authority), an
// expired CA, and a bad CSR (UpstreamCATemplate's errors).
func (c *CA) SignDownstreamCA(ctx context.Context, req X509CARequest) ([]*x509.Certificate, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("ca: %w", err)
	}
	if req.TrustDomain != c.td {
		return nil, fmt.Errorf("ca: downstream CA for trust domain %q, this CA is of %q", req.TrustDomain, c.td)
	}
	if !c.AllowsIntermediates() {
		if c.Upstream() {
			return nil, ErrIntermediateCA
		}
		return nil, ErrNoIntermediates
	}
	now := c.cfg.Clock.Now()
	if !now.Before(c.cert.NotAfter) {
		return nil, fmt.Errorf("ca: CA certificate expired at %s", c.cert.NotAfter.UTC().Format(time.RFC3339))
	}
	tmpl, pub, err := UpstreamCATemplate(req, now, c.cfg.Backdate, c.cert.NotAfter)
	if err != nil {
		return nil, err
	}
	if tmpl.NotBefore.Before(c.cert.NotBefore) {
		tmpl.NotBefore = c.cert.NotBefore
	}
	tmpl.AuthorityKeyId = c.subjectKeyID
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.cert, pub, c.signer)
	if err != nil {
		return nil, fmt.Errorf("ca: signing downstream CA certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("ca: parsing downstream CA certificate: %w", err)
	}
	return append([]*x509.Certificate{cert}, c.Chain()...), nil
}
