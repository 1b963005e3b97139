package disk

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/sigil-id/sigil/ca"
)

const (
	// maxFileSize bounds each file read: certificate chains and keys are
	// a few kilobytes.
	maxFileSize = 1 << 20
	// maxCertFileCerts bounds the certificates of cert_file: a chain and
	// the roots at its end.
	maxCertFileCerts = ca.MaxUpstreamChain + ca.MaxUpstreamRoots
)

// material is what the files hold, checked: the signing certificate and
// key, the chain sent with each CA certificate and the roots.
type material struct {
	signer crypto.Signer
	// cert is the signing certificate, the first of cert_file.
	cert *x509.Certificate
	// chain is what follows a new CA certificate in an answer: the
	// certificates of cert_file that are not roots (neither self-signed
	// nor in roots), in order; the signing certificate first unless it is
	// itself a root.
	chain []*x509.Certificate
	roots []*x509.Certificate
	// notAfter is the earliest NotAfter of the path from the signing
	// certificate to its root: no CA certificate outlives it.
	notAfter time.Time
	// certFile and rootsFrom name the files in errors.
	certFile, rootsFrom string
}

// loadMaterial reads cert_file and bundle_file, gets the key, and checks
// them all at now (see check).
func loadMaterial(certFile, bundleFile string, key func() (crypto.Signer, error), td spiffeid.TrustDomain, now time.Time) (*material, error) {
	data, err := readFile("cert_file", certFile)
	if err != nil {
		return nil, err
	}
	certs, err := parseCerts("cert_file", certFile, data, maxCertFileCerts)
	if err != nil {
		return nil, err
	}
	m := &material{cert: certs[0], certFile: certFile}
	if bundleFile != "" {
		data, err := readFile("bundle_file", bundleFile)
		if err != nil {
			return nil, err
		}
		if m.roots, err = parseCerts("bundle_file", bundleFile, data, ca.MaxUpstreamRoots); err != nil {
			return nil, err
		}
		m.rootsFrom = "the roots of bundle_file " + bundleFile
	} else {
		i := len(certs)
		for i > 0 && selfSigned(certs[i-1]) {
			i--
		}
		m.roots = certs[i:]
		m.rootsFrom = "the self-signed roots at the end of cert_file " + certFile
		switch {
		case len(m.roots) == 0:
			return nil, fmt.Errorf("ca/upstream/disk: cert_file %s does not end with a self-signed root certificate and bundle_file is not set: set bundle_file to a PEM file of the upstream root certificates", certFile)
		case len(m.roots) > ca.MaxUpstreamRoots:
			return nil, fmt.Errorf("ca/upstream/disk: cert_file %s ends with %d self-signed certificates, more than the %d roots an upstream may have", certFile, len(m.roots), ca.MaxUpstreamRoots)
		}
	}
	for i, r := range m.roots {
		if !r.BasicConstraintsValid || !r.IsCA {
			return nil, fmt.Errorf("ca/upstream/disk: %s: root %d (%s) is not a CA certificate", m.rootsFrom, i+1, describe(r))
		}
	}
	for _, c := range certs {
		if !selfSigned(c) && !slices.ContainsFunc(m.roots, c.Equal) {
			m.chain = append(m.chain, c)
		}
	}
	if n := len(m.chain) + 1; n > ca.MaxUpstreamChain {
		return nil, fmt.Errorf("ca/upstream/disk: cert_file %s holds %d certificates that are not roots: with the Sigil CA certificate the chain would have %d, more than %d", certFile, len(m.chain), n, ca.MaxUpstreamChain)
	}
	signer, err := key()
	if err != nil {
		return nil, err
	}
	if !samePublicKey(signer.Public(), m.cert.PublicKey) {
		return nil, fmt.Errorf("ca/upstream/disk: the key does not match the signing certificate %s (the first certificate of cert_file %s): give the key of that certificate, or put the certificate of this key first", describe(m.cert), certFile)
	}
	m.signer = signer
	if m.notAfter, err = m.check(td, now); err != nil {
		return nil, err
	}
	return m, nil
}

// check checks m at now: the signing certificate is a CA with certSign,
// valid now, and allows one more CA below it; it verifies to the roots;
// and on the way, no certificate's path length or URI name constraints
// forbid a CA of trust domain td under the signing certificate. It
// returns the earliest NotAfter of that path; it does not change m, which
// may be in use by other goroutines.
func (m *material) check(td spiffeid.TrustDomain, now time.Time) (notAfter time.Time, err error) {
	c := m.cert
	where := fmt.Sprintf("cert_file %s: the signing certificate %s", m.certFile, describe(c))
	switch {
	case !c.BasicConstraintsValid || !c.IsCA:
		return time.Time{}, fmt.Errorf("ca/upstream/disk: %s is not a CA certificate (its basic constraints do not say CA:TRUE)", where)
	case c.KeyUsage&x509.KeyUsageCertSign == 0:
		return time.Time{}, fmt.Errorf("ca/upstream/disk: %s lacks the certSign key usage: it may not sign certificates", where)
	case now.Before(c.NotBefore):
		return time.Time{}, fmt.Errorf("ca/upstream/disk: %s is not valid before %s", where, c.NotBefore.UTC().Format(time.RFC3339))
	case !now.Before(c.NotAfter):
		return time.Time{}, fmt.Errorf("ca/upstream/disk: %s expired at %s: replace cert_file with a renewed certificate", where, c.NotAfter.UTC().Format(time.RFC3339))
	case c.MaxPathLen == 0:
		return time.Time{}, fmt.Errorf("ca/upstream/disk: %s has path length 0: it may sign leaf certificates only, not the CA certificates of Sigil's servers; use a CA certificate with a path length of at least 1 (or none)", where)
	}
	opts := x509.VerifyOptions{
		Roots:         x509.NewCertPool(),
		Intermediates: x509.NewCertPool(),
		CurrentTime:   now,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	}
	for _, r := range m.roots {
		opts.Roots.AddCert(r)
	}
	for _, i := range m.chain {
		opts.Intermediates.AddCert(i)
	}
	chains, err := c.Verify(opts)
	if err != nil {
		return time.Time{}, fmt.Errorf("ca/upstream/disk: %s does not verify to %s now: %w", where, m.rootsFrom, err)
	}
	var first error
	for _, ch := range chains {
		err := checkPath(ch, td)
		if err == nil {
			notAfter = ch[0].NotAfter
			for _, x := range ch[1:] {
				if x.NotAfter.Before(notAfter) {
					notAfter = x.NotAfter
				}
			}
			return notAfter, nil
		}
		if first == nil {
			first = err
		}
	}
	return time.Time{}, fmt.Errorf("ca/upstream/disk: cert_file %s: %w", m.certFile, first)
}

// checkPath checks that the path from the signing certificate (ch[0]) to
// a root allows a CA of trust domain td below the signing certificate:
// the certificate at position p has room for p+1 CAs below it, and no URI
// name constraint excludes td.
func checkPath(ch []*x509.Certificate, td spiffeid.TrustDomain) error {
	for p, c := range ch {
		if c.BasicConstraintsValid && c.MaxPathLen >= 0 && c.MaxPathLen < p+1 {
			return fmt.Errorf("certificate %s, %d above the signing certificate, has path length %d: it allows no Sigil CA certificate under the signing certificate (that needs at least %d)", describe(c), p, c.MaxPathLen, p+1)
		}
		if err := permitsTrustDomain(c, td); err != nil {
			return fmt.Errorf("certificate %s has URI name constraints that %w", describe(c), err)
		}
	}
	return nil
}

// permitsTrustDomain reports an error if the URI name constraints of c
// exclude the URIs of trust domain td (spiffe://<td>/...), with the
// matching rules of crypto/x509: a constraint "example.org" matches that
// host and its subdomains, ".example.org" its subdomains only, "" every
// host.
func permitsTrustDomain(c *x509.Certificate, td spiffeid.TrustDomain) error {
	host := td.Name()
	if len(c.PermittedURIDomains) > 0 && !slices.ContainsFunc(c.PermittedURIDomains, func(d string) bool { return uriDomainMatch(d, host) }) {
		return fmt.Errorf("permit only URIs of %q, not of the trust domain %s", c.PermittedURIDomains, host)
	}
	for _, d := range c.ExcludedURIDomains {
		if uriDomainMatch(d, host) {
			return fmt.Errorf("exclude URIs of %q, which covers the trust domain %s", d, host)
		}
	}
	return nil
}

// uriDomainMatch reports whether the URI name constraint constraint
// matches host, as crypto/x509 does.
func uriDomainMatch(constraint, host string) bool {
	if constraint == "" {
		return true
	}
	c, h := strings.ToLower(constraint), strings.ToLower(host)
	if !strings.HasSuffix(h, c) {
		return false
	}
	return c[0] == '.' || len(h) == len(c) || h[len(h)-len(c)-1] == '.'
}

// selfSigned reports whether c is issued by itself and its signature
// verifies with its own key.
func selfSigned(c *x509.Certificate) bool {
	return bytes.Equal(c.RawIssuer, c.RawSubject) && c.CheckSignature(c.SignatureAlgorithm, c.RawTBSCertificate, c.Signature) == nil
}

// samePublicKey reports whether a and b are the same public key.
func samePublicKey(a, b crypto.PublicKey) bool {
	k, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && k.Equal(b)
}

// describe names c in errors and logs: its subject, or its serial number
// when the subject is empty.
func describe(c *x509.Certificate) string {
	if s := c.Subject.String(); s != "" {
		return fmt.Sprintf("%q", s)
	}
	return "with serial number " + c.SerialNumber.String()
}

// readFile reads the file path of configuration field: a regular file of
// at most maxFileSize bytes.
func readFile(field, path string) ([]byte, error) {
	// Looked at before it is opened: opening a FIFO would block.
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("ca/upstream/disk: %s %w", field, pathError(path, err))
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("ca/upstream/disk: %s %s is not a regular file", field, path)
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("ca/upstream/disk: %s %w", field, pathError(path, err))
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("ca/upstream/disk: %s %w", field, pathError(path, err))
	}
	if len(data) > maxFileSize {
		clear(data)
		return nil, fmt.Errorf("ca/upstream/disk: %s %s is larger than %d bytes", field, path, maxFileSize)
	}
	return data, nil
}

// pathError names path once: "PATH: no such file or directory".
func pathError(path string, err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		err = pe.Err
	}
	return fmt.Errorf("%s: %w", path, err)
}

// parseCerts parses the PEM certificates of data, the content of the file
// path of configuration field: one or more CERTIFICATE blocks (text
// between blocks is ignored), at most max.
func parseCerts(field, path string, data []byte, max int) ([]*x509.Certificate, error) {
	where := field + " " + path
	var certs []*x509.Certificate
	rest := data
	blocks := 0
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		blocks++
		if b.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("ca/upstream/disk: %s: PEM block %d is a %q, not a CERTIFICATE", where, blocks, b.Type)
		}
		if len(certs) == max {
			return nil, fmt.Errorf("ca/upstream/disk: %s holds more than %d certificates", where, max)
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("ca/upstream/disk: %s: certificate %d: %w", where, blocks, err)
		}
		certs = append(certs, c)
	}
	// pem.Decode skips a damaged block and stops at a cut one: every
	// BEGIN line must have given a block.
	if bytes.Count(data, []byte("-----BEGIN ")) != blocks {
		return nil, fmt.Errorf("ca/upstream/disk: %s: a PEM block is damaged or cut short", where)
	}
	if len(certs) == 0 {
		return nil, fmt.Errorf("ca/upstream/disk: %s holds no PEM certificate", where)
	}
	return certs, nil
}
