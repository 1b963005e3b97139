// Package trustbundle converts a trust domain's X.509 authorities between
// their forms: the node API's sigilv1.Bundle, go-spiffe's x509bundle and
// PEM files (a saved bundle, an SVID chain, `-trust-bundle-path`).
//
// Conversions into a bundle validate what they are given: the trust
// domain must be the expected one, the bundle must hold at least one
// authority, and every certificate must parse. Errors name the
// certificate that failed (counted from 1) and start with
// "trustbundle: ".
package trustbundle

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
)

// ErrEmpty is returned (wrapped) for a bundle or a PEM file that holds no
// certificate.
var ErrEmpty = errors.New("no X.509 authorities")

// FromProto returns the X.509 authorities of pb as a bundle of td. A
// bundle that names another trust domain, holds no X.509 authority or
// holds a certificate that does not parse is refused. A bundle that names
// no trust domain is taken as td's: the node API sends only td's bundle.
func FromProto(td spiffeid.TrustDomain, pb *sigilv1.Bundle) (*x509bundle.Bundle, error) {
	if td.IsZero() {
		return nil, errors.New("trustbundle: no trust domain given")
	}
	if name := pb.GetTrustDomain(); name != "" && name != td.Name() {
		return nil, fmt.Errorf("trustbundle: bundle is for trust domain %q, not %q", name, td.Name())
	}
	auths := pb.GetX509Authorities()
	if len(auths) == 0 {
		return nil, fmt.Errorf("trustbundle: bundle of %q: %w", td.Name(), ErrEmpty)
	}
	certs := make([]*x509.Certificate, 0, len(auths))
	for i, a := range auths {
		c, err := x509.ParseCertificate(a.GetCertificate())
		if err != nil {
			return nil, fmt.Errorf("trustbundle: bundle of %q: X.509 authority %d: %w", td.Name(), i+1, err)
		}
		certs = append(certs, c)
	}
	return x509bundle.FromX509Authorities(td, certs), nil
}

// EncodePEM returns certs as consecutive PEM CERTIFICATE blocks, in order.
func EncodePEM(certs []*x509.Certificate) []byte {
	var buf bytes.Buffer
	for _, c := range certs {
		// Writing to a bytes.Buffer cannot fail.
		_ = pem.Encode(&buf, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
	}
	return buf.Bytes()
}

// ParsePEM parses every CERTIFICATE block of data, in order. Blocks of
// other types (a private key kept in the same file, say) are skipped; a
// CERTIFICATE block that does not parse, or data without any
// certificate, is an error.
func ParsePEM(data []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	for n := 1; ; {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("trustbundle: certificate %d: %w", n, err)
		}
		certs = append(certs, cert)
		n++
	}
	if len(certs) == 0 {
		return nil, fmt.Errorf("trustbundle: no PEM CERTIFICATE block: %w", ErrEmpty)
	}
	return certs, nil
}
