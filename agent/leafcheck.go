package agent

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/x509"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// This file decides how much of a returned X.509-SVID's verification the
// agent repeats for each SVID. The invariant it keeps for every SVID is
// that its issuer is in the agent's bundle: a CA key reaches the bundle
// before any SVID it signed is handed out. Verifying a chain with
// x509svid.Verify costs an ECDSA verification per certificate (about as
// much CPU as the server's check of the request and its signature
// together), although every SVID of a batch comes from the same issuer.
//
// So the agent verifies fully (x509svid.Verify against its bundle) the
// first SVID of each issuer under each bundle and every SVID that does
// not match a verified issuer exactly. The others are checked against the
// issuer a full verification found (the same issuing certificate and
// intermediates, the issuer's name and key identifier, validity now, no
// CA rights, name constraints: verifiedIssuer.matches), and the signature
// of one in leafVerifyInterval of them is checked with the issuer's key
// (with interval 1, every one: one ECDSA verification, no chain
// building). A sampled signature that fails makes the agent check every
// signature from then on, the rest of its batch included.
// SECURITY.md ("Checking the SVIDs the servers return") argues why the
// unsampled signatures may be left to the relying parties.

// leafVerifyInterval: the signature of one SVID in leafVerifyInterval
// that matches a verified issuer is checked.
const leafVerifyInterval = 16

// leafVerifier holds the issuers verified against the current bundle. It
// is safe for concurrent use.
type leafVerifier struct {
	// interval: the signature of one SVID in interval that matches a
	// verified issuer is checked (1: every one).
	interval uint64
	count    atomic.Uint64
	// full is set for good when a sampled signature failed: every
	// signature is checked from then on.
	full atomic.Bool

	mu sync.Mutex
	// bundle is the bundle the issuers were verified against; issuers
	// are forgotten when it changes.
	bundle  *x509bundle.Bundle
	issuers map[string]*verifiedIssuer
	// templates are the chains, as the servers sent them, of the SVIDs
	// that verified fully under bundle, with the template of their leaf
	// (at most maxTemplates, the latest last; replaced, never changed in
	// place): returned chains like them are parsed against them
	// (parseChain).
	templates []*chainTemplate
}

// maxTemplates bounds leafVerifier.templates.
const maxTemplates = 4

// chainTemplate is a chain a server sent (leaf first) whose SVID verified
// fully, and the template of its leaf.
type chainTemplate struct {
	sent []*x509.Certificate
	leaf *leafTemplate
}

// parseChain parses der, the chain a server returned for job, leaf first,
// to be verified under bundle (nil: not verified now). When the
// certificates after the leaf are those of a chain that verified fully
// under bundle, byte for byte, and the leaf
// differs from that chain's leaf only as SVIDs of one issuer do and
// carries the job's key (leafTemplate.parseLeafLike), the leaf is parsed
// against it and the other certificates are the ones parsed before;
// otherwise every certificate is parsed by x509.ParseCertificate. Either
// way the result is what x509.ParseCertificate returns, or its error.
func (v *leafVerifier) parseChain(der [][]byte, job *mintJob, bundle *x509bundle.Bundle) ([]*x509.Certificate, error) {
	key, _ := job.key.(*ecdsa.PrivateKey)
	if len(der) == 0 || job.spki == nil || key == nil || bundle == nil {
		return parseDERChain(der)
	}
	v.mu.Lock()
	v.setBundleLocked(bundle)
	templates := v.templates
	v.mu.Unlock()
	for i := len(templates) - 1; i >= 0; i-- {
		t := templates[i]
		if len(t.sent) != len(der) || !sameRaw(der[1:], t.sent[1:]) {
			continue
		}
		if leaf, ok := t.leaf.parseLeafLike(der[0], job.spki, &key.PublicKey); ok {
			chain := make([]*x509.Certificate, len(der))
			chain[0] = leaf
			copy(chain[1:], t.sent[1:])
			return chain, nil
		}
	}
	return parseDERChain(der)
}

// setBundleLocked forgets the issuers and templates verified under
// another bundle than bundle. v.mu is held.
func (v *leafVerifier) setBundleLocked(bundle *x509bundle.Bundle) {
	if v.bundle != bundle {
		v.bundle, v.issuers, v.templates = bundle, make(map[string]*verifiedIssuer), nil
	}
}

// sameRaw reports whether der are the DER of certs, one for one.
func sameRaw(der [][]byte, certs []*x509.Certificate) bool {
	for i, d := range der {
		if !bytes.Equal(d, certs[i].Raw) {
			return false
		}
	}
	return true
}

// addTemplate records sent, a chain whose SVID verified fully under
// bundle, as a template for parseChain, unless its leaf has no template
// or a template with the same certificates after the leaf is known.
func (v *leafVerifier) addTemplate(sent []*x509.Certificate, bundle *x509bundle.Bundle) {
	lt := newLeafTemplate(sent[0])
	if lt == nil {
		return
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.bundle != bundle {
		return
	}
	for _, t := range v.templates {
		if len(t.sent) == len(sent) && bytes.Equal(t.sent[0].RawIssuer, sent[0].RawIssuer) &&
			bytes.Equal(t.sent[0].AuthorityKeyId, sent[0].AuthorityKeyId) && sameRaw(rawOf(sent[1:]), t.sent[1:]) {
			return
		}
	}
	templates := append(make([]*chainTemplate, 0, maxTemplates), v.templates...)
	if len(templates) == maxTemplates {
		templates = templates[1:]
	}
	v.templates = append(templates, &chainTemplate{sent: sent, leaf: lt})
}

func rawOf(certs []*x509.Certificate) [][]byte {
	der := make([][]byte, len(certs))
	for i, c := range certs {
		der[i] = c.Raw
	}
	return der
}

// verifiedIssuer is the certificate that signed a fully verified SVID,
// with what a later SVID of the same issuer is checked against.
type verifiedIssuer struct {
	cert *x509.Certificate
	// notBefore and notAfter bound when every certificate above the
	// leaf in the verified chain is valid.
	notBefore, notAfter time.Time
	// sigAlg is the verified SVID's signature algorithm.
	sigAlg x509.SignatureAlgorithm
	// constrained are the certificates of the verified chain above the
	// leaf that carry name constraints.
	constrained []*x509.Certificate
}

// newLeafVerifier returns a verifier that checks the signature of one
// SVID in interval that matches a verified issuer (interval 1 or less:
// every one).
func newLeafVerifier(interval uint64) *leafVerifier {
	return &leafVerifier{interval: max(interval, 1)}
}

// appendIssuerKey appends to b the name of the issuer a chain claims: the
// certificates the server sent after the leaf and the leaf's issuer name
// and key identifier. verify looks the name up in a stack buffer, so that
// an SVID of a known issuer costs no allocation for it.
func appendIssuerKey(b []byte, chain []*x509.Certificate) []byte {
	leaf := chain[0]
	for _, c := range chain[1:] {
		b = append(b, c.Raw...)
	}
	b = append(b, 0)
	b = append(b, leaf.RawIssuer...)
	b = append(b, 0)
	return append(b, leaf.AuthorityKeyId...)
}

// verify checks chain (leaf first) against bundle at now, as described
// above. It returns the verification error (nil: the SVID may be
// installed) and whether a sampled SVID's signature failed although it
// matched a verified issuer (sampleFailed): v has switched to checking
// every signature, and the caller must check the rest of the batch again.
func (v *leafVerifier) verify(chain []*x509.Certificate, bundle *x509bundle.Bundle, now time.Time) (sampleFailed bool, err error) {
	var buf [512]byte
	key := appendIssuerKey(buf[:0], chain)
	v.mu.Lock()
	v.setBundleLocked(bundle)
	iss := v.issuers[string(key)]
	v.mu.Unlock()
	if iss != nil && iss.matches(chain[0], now) {
		if v.interval > 1 && !v.full.Load() && v.count.Add(1)%v.interval != 0 {
			return false, nil // not in the sample
		}
		if err := chain[0].CheckSignatureFrom(iss.cert); err != nil {
			// The check without the signature would have let this
			// SVID through: check every signature from now on.
			sampleFailed = v.interval > 1 && !v.full.Swap(true)
			return sampleFailed, fmt.Errorf("could not verify leaf certificate: %w", err)
		}
		return false, nil
	}
	_, chains, err := x509svid.Verify(chain, bundle, x509svid.WithTime(now))
	if err != nil {
		return false, err
	}
	if len(chains) > 0 && len(chains[0]) > 1 {
		iss = newVerifiedIssuer(chains[0])
		v.mu.Lock()
		if v.bundle == bundle {
			v.issuers[string(key)] = iss
		}
		v.mu.Unlock()
		v.addTemplate(chain, bundle)
	}
	return false, nil
}

// newVerifiedIssuer records the issuer of a verified chain (leaf first,
// then up to a bundle authority).
func newVerifiedIssuer(chain []*x509.Certificate) *verifiedIssuer {
	iss := &verifiedIssuer{cert: chain[1], sigAlg: chain[0].SignatureAlgorithm}
	for i, c := range chain[1:] {
		if i == 0 || c.NotBefore.After(iss.notBefore) {
			iss.notBefore = c.NotBefore
		}
		if i == 0 || c.NotAfter.Before(iss.notAfter) {
			iss.notAfter = c.NotAfter
		}
		if hasNameConstraints(c) {
			iss.constrained = append(iss.constrained, c)
		}
	}
	return iss
}

func hasNameConstraints(c *x509.Certificate) bool {
	return len(c.PermittedDNSDomains) > 0 || len(c.ExcludedDNSDomains) > 0 ||
		len(c.PermittedIPRanges) > 0 || len(c.ExcludedIPRanges) > 0 ||
		len(c.PermittedEmailAddresses) > 0 || len(c.ExcludedEmailAddresses) > 0 ||
		len(c.PermittedURIDomains) > 0 || len(c.ExcludedURIDomains) > 0
}

// matches reports whether leaf, at now, would verify under the issuer's
// chain given a valid signature: it names the issuer (name and key
// identifier), every certificate is valid at now, it has the verified
// SVID's signature algorithm, it is no CA (x509svid's rules) and has no
// critical extension it does not understand, and its names are within
// the chain's name constraints. The check is conservative: what it cannot
// decide simply (IP or email names, constraints other than permitted URI
// domains or on DNS names the leaf does not have) is left to the full
// verification.
func (iss *verifiedIssuer) matches(leaf *x509.Certificate, now time.Time) bool {
	switch {
	case len(leaf.AuthorityKeyId) == 0 || !bytes.Equal(leaf.AuthorityKeyId, iss.cert.SubjectKeyId),
		!bytes.Equal(leaf.RawIssuer, iss.cert.RawSubject),
		now.Before(leaf.NotBefore), now.After(leaf.NotAfter),
		now.Before(iss.notBefore), now.After(iss.notAfter),
		leaf.SignatureAlgorithm != iss.sigAlg,
		leaf.IsCA, leaf.KeyUsage&(x509.KeyUsageCertSign|x509.KeyUsageCRLSign) != 0,
		len(leaf.UnhandledCriticalExtensions) > 0,
		len(leaf.IPAddresses) > 0, len(leaf.EmailAddresses) > 0:
		return false
	}
	for _, c := range iss.constrained {
		if len(c.ExcludedURIDomains) > 0 || len(c.PermittedEmailAddresses) > 0 || len(c.ExcludedEmailAddresses) > 0 {
			return false
		}
		if len(leaf.DNSNames) > 0 && (len(c.PermittedDNSDomains) > 0 || len(c.ExcludedDNSDomains) > 0) {
			return false
		}
		if len(c.PermittedURIDomains) > 0 {
			for _, u := range leaf.URIs {
				ok := false
				for _, d := range c.PermittedURIDomains {
					ok = ok || u.Host == d
				}
				if !ok {
					return false
				}
			}
		}
	}
	return true
}

// checkMints is checkMint for a batch, with the verification done by v
// (nil: every SVID verified fully). When a sampled SVID fails although it
// matched a verified issuer, every SVID of the batch is verified fully.
func checkMints(jobs []*mintJob, outs []mintOutcome, v *leafVerifier, bundle *x509bundle.Bundle, now time.Time) (results []mintResult, sampleFailed bool) {
	results = make([]mintResult, len(jobs))
	for i, job := range jobs {
		if v == nil {
			results[i] = checkMint(job, outs[i], bundle, now)
			continue
		}
		r := mintResult{job: job, out: outs[i]}
		parseOutcome(&r.out, v, job, bundle)
		if r.out.err == nil && !r.out.denied {
			r.s, r.err = checkSVID(job, r.out.chain)
			if r.err == nil && bundle != nil {
				r.bundle = bundle
				var failed bool
				failed, r.verErr = v.verify(r.s.verifyChain, bundle, now)
				sampleFailed = sampleFailed || failed
			}
		}
		results[i] = r
	}
	if sampleFailed {
		for i := range results {
			if r := &results[i]; r.s != nil && r.err == nil && r.bundle != nil && r.verErr == nil {
				_, _, r.verErr = x509svid.Verify(r.s.verifyChain, bundle, x509svid.WithTime(now))
			}
		}
	}
	return results, sampleFailed
}
