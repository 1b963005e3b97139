package agent

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"math/big"
	"net/url"
	"time"

	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"

	"github.com/sigil-id/sigil/internal/p256der"
)

// This file parses the leaves a server returns without
// x509.ParseCertificate when they differ from a leaf it has already
// parsed only where SVIDs of one issuer differ. Every X.509-SVID a CA
// signs has the same version, signature algorithm, issuer, subject and
// extensions but one; a new SVID differs in its serial number, validity,
// public key, the URI of its subject alternative name and its signature.
// x509.ParseCertificate decodes and checks every field again (names,
// times through time.Parse, extensions, the key's point) and allocates
// about 3.7 KB for it, the largest part of the agent's CPU per SVID after
// its key and request signature.
//
// parseLeafLike parses a leaf against such a reference leaf: the parts
// that must not differ are compared byte for byte with the reference,
// the parts that may differ are checked as x509.ParseCertificate checks
// them (more strictly where that is simpler: a positive serial, UTCTime
// with seconds, no bytes after the extensions or the signature), and the
// public key must be the agent's own, byte for byte. The result is the
// reference's parsed certificate with those fields replaced, which is
// what x509.ParseCertificate returns for the same bytes
// (TestParseLeafLikeMatchesParseCertificate and FuzzParseLeafLike compare
// them with reflect.DeepEqual). Anything else, including every leaf
// x509.ParseCertificate would refuse, is not parsed here (ok false) and
// goes through x509.ParseCertificate, which parses or refuses it with its
// own error.

// oidSubjectAltName is the DER content of the object identifier
// 2.5.29.17 (subject alternative name).
var oidSubjectAltName = []byte{0x55, 0x1d, 0x11}

// leafTemplate is what parseLeafLike compares a leaf with: the parts of a
// reference leaf (parsed by x509.ParseCertificate) that every SVID of its
// issuer shares, DER-encoded as they appeared in it.
type leafTemplate struct {
	ref *x509.Certificate
	// version is the TBSCertificate's [0] version element, sigAlg the
	// signature AlgorithmIdentifier element (the same inside and outside
	// the TBSCertificate), issuer and subject the Name elements.
	version, sigAlg, issuer, subject []byte
	// exts are the extension elements before the subject alternative
	// names, which are the last extension.
	exts []byte
	// sanCritical: the subject alternative names extension is marked
	// critical (DER BOOLEAN TRUE).
	sanCritical bool
	// host is the host of the reference's URI, which x509 has checked as
	// a domain name.
	host string
}

// newLeafTemplate returns the template of ref, a leaf x509.ParseCertificate
// returned, or nil when ref is not of the form parseLeafLike handles:
// version 3, ECDSA with SHA-256, a P-256 key, and extensions ending with
// a subject alternative names extension holding one URI and nothing else.
func newLeafTemplate(ref *x509.Certificate) *leafTemplate {
	if ref == nil || ref.Version != 3 || ref.SignatureAlgorithm != x509.ECDSAWithSHA256 ||
		len(ref.URIs) != 1 || len(ref.DNSNames) != 0 || len(ref.EmailAddresses) != 0 || len(ref.IPAddresses) != 0 ||
		len(ref.UnhandledCriticalExtensions) != 0 || len(ref.Extensions) == 0 ||
		!bytes.HasPrefix(ref.RawSubjectPublicKeyInfo, p256der.SPKIPrefix) {
		return nil
	}
	t := &leafTemplate{ref: ref, host: ref.URIs[0].Host}
	tbs := cryptobyte.String(ref.RawTBSCertificate)
	var serial, validity, spki, exts cryptobyte.String
	if !tbs.ReadASN1(&tbs, cbasn1.SEQUENCE) ||
		!tbs.ReadASN1Element((*cryptobyte.String)(&t.version), cbasn1.Tag(0).Constructed().ContextSpecific()) ||
		!tbs.ReadASN1Element(&serial, cbasn1.INTEGER) ||
		!tbs.ReadASN1Element((*cryptobyte.String)(&t.sigAlg), cbasn1.SEQUENCE) ||
		!tbs.ReadASN1Element((*cryptobyte.String)(&t.issuer), cbasn1.SEQUENCE) ||
		!tbs.ReadASN1Element(&validity, cbasn1.SEQUENCE) ||
		!tbs.ReadASN1Element((*cryptobyte.String)(&t.subject), cbasn1.SEQUENCE) ||
		!tbs.ReadASN1Element(&spki, cbasn1.SEQUENCE) ||
		!tbs.ReadASN1(&exts, cbasn1.Tag(3).Constructed().ContextSpecific()) || !tbs.Empty() ||
		!exts.ReadASN1(&exts, cbasn1.SEQUENCE) {
		return nil
	}
	// Every extension but the last is kept as it is; the last must be
	// the subject alternative names.
	rest := exts
	for {
		var ext cryptobyte.String
		before := rest
		if !rest.ReadASN1Element(&ext, cbasn1.SEQUENCE) {
			return nil
		}
		if rest.Empty() {
			t.exts = exts[:len(exts)-len(before)]
			var oid cryptobyte.String
			if !ext.ReadASN1(&ext, cbasn1.SEQUENCE) || !ext.ReadASN1(&oid, cbasn1.OBJECT_IDENTIFIER) ||
				!bytes.Equal(oid, oidSubjectAltName) {
				return nil
			}
			if ext.PeekASN1Tag(cbasn1.BOOLEAN) && (!ext.ReadASN1Boolean(&t.sanCritical) || !t.sanCritical) {
				return nil // an explicit FALSE is not DER
			}
			break
		}
	}
	last := ref.Extensions[len(ref.Extensions)-1]
	if !last.Id.Equal(asn1.ObjectIdentifier{2, 5, 29, 17}) || last.Critical != t.sanCritical {
		return nil
	}
	return t
}

// parseLeafLike parses der, a leaf whose public key must be spki (the
// DER SubjectPublicKeyInfo of pub), as x509.ParseCertificate would when
// der differs from t's reference only in its serial number, validity,
// subject public key, the URI of its subject alternative name and its
// signature. ok is false when it does not (or when x509.ParseCertificate
// would refuse it): the caller parses it with x509.ParseCertificate.
func (t *leafTemplate) parseLeafLike(der, spki []byte, pub *ecdsa.PublicKey) (cert *x509.Certificate, ok bool) {
	input := cryptobyte.String(der)
	var certSeq, tbsElem, tbs, serial, validity, subjectPK, extsField, exts, ext, oid, sanValue, sans, uri, outerAlg, sig cryptobyte.String
	var sanCritical bool
	var notBefore, notAfter time.Time
	if !input.ReadASN1Element(&certSeq, cbasn1.SEQUENCE) || !input.Empty() ||
		!certSeq.ReadASN1(&certSeq, cbasn1.SEQUENCE) ||
		!certSeq.ReadASN1Element(&tbsElem, cbasn1.SEQUENCE) ||
		!certSeq.ReadASN1Element(&outerAlg, cbasn1.SEQUENCE) || !bytes.Equal(outerAlg, t.sigAlg) ||
		!certSeq.ReadASN1(&sig, cbasn1.BIT_STRING) || !certSeq.Empty() ||
		len(sig) < 2 || sig[0] != 0 { // no unused bits
		return nil, false
	}
	tbs = tbsElem
	if !tbs.ReadASN1(&tbs, cbasn1.SEQUENCE) ||
		!skipEqual(&tbs, t.version) ||
		!tbs.ReadASN1(&serial, cbasn1.INTEGER) || !positiveMinimal(serial) ||
		!skipEqual(&tbs, t.sigAlg) {
		return nil, false
	}
	issuer, subject := tbs, cryptobyte.String(nil)
	if !skipEqual(&tbs, t.issuer) ||
		!tbs.ReadASN1(&validity, cbasn1.SEQUENCE) ||
		!readUTCTime(&validity, &notBefore) || !readUTCTime(&validity, &notAfter) || !validity.Empty() {
		return nil, false
	}
	subject = tbs
	if !skipEqual(&tbs, t.subject) {
		return nil, false
	}
	if !tbs.ReadASN1Element(&subjectPK, cbasn1.SEQUENCE) || !bytes.Equal(subjectPK, spki) ||
		!tbs.ReadASN1(&extsField, cbasn1.Tag(3).Constructed().ContextSpecific()) || !tbs.Empty() ||
		!extsField.ReadASN1(&exts, cbasn1.SEQUENCE) || !extsField.Empty() ||
		!skipEqual(&exts, t.exts) ||
		!exts.ReadASN1(&ext, cbasn1.SEQUENCE) || !exts.Empty() ||
		!ext.ReadASN1(&oid, cbasn1.OBJECT_IDENTIFIER) || !bytes.Equal(oid, oidSubjectAltName) {
		return nil, false
	}
	if ext.PeekASN1Tag(cbasn1.BOOLEAN) && !ext.ReadASN1Boolean(&sanCritical) {
		return nil, false
	}
	if sanCritical != t.sanCritical ||
		!ext.ReadASN1(&sanValue, cbasn1.OCTET_STRING) || !ext.Empty() {
		return nil, false
	}
	rest := sanValue
	if !rest.ReadASN1(&sans, cbasn1.SEQUENCE) || !rest.Empty() ||
		!sans.ReadASN1(&uri, cbasn1.Tag(6).ContextSpecific()) || !sans.Empty() ||
		!isASCII(uri) {
		return nil, false
	}
	u, err := url.Parse(string(uri))
	if err != nil || u.Host != t.host {
		return nil, false
	}

	l := new(parsedLeaf)
	c := &l.cert
	*c = *t.ref
	c.Raw = der
	c.RawTBSCertificate = tbsElem
	c.RawIssuer = issuer[:len(t.issuer)]
	c.RawSubject = subject[:len(t.subject)]
	c.RawSubjectPublicKeyInfo = subjectPK
	c.Signature = sig[1:]
	c.SerialNumber = l.serial.SetBytes(serial)
	c.NotBefore, c.NotAfter = notBefore, notAfter
	l.pub = ecdsa.PublicKey{Curve: pub.Curve, X: pub.X, Y: pub.Y}
	c.PublicKey = &l.pub
	l.uri = *u
	l.uris[0] = &l.uri
	c.URIs = l.uris[:]
	var certExts []pkix.Extension
	if n := len(t.ref.Extensions); n <= len(l.exts) {
		certExts = l.exts[:n:n]
	} else {
		certExts = make([]pkix.Extension, n)
	}
	copy(certExts, t.ref.Extensions)
	certExts[len(certExts)-1].Value = sanValue
	c.Extensions = certExts
	return c, true
}

// parsedLeaf is what parseLeafLike returns a certificate in: the
// certificate and the values it points to that differ between SVIDs, in
// one allocation instead of one each.
type parsedLeaf struct {
	cert   x509.Certificate
	pub    ecdsa.PublicKey
	serial big.Int
	uri    url.URL
	uris   [1]*url.URL
	// exts holds the certificate's extensions when they fit (an SVID
	// has about six).
	exts [6]pkix.Extension
}

// skipEqual advances s over want if s starts with it.
func skipEqual(s *cryptobyte.String, want []byte) bool {
	if !bytes.HasPrefix(*s, want) {
		return false
	}
	*s = (*s)[len(want):]
	return true
}

// positiveMinimal reports whether b, the content of a DER INTEGER, is a
// minimally encoded positive number.
func positiveMinimal(b []byte) bool {
	switch {
	case len(b) == 0, b[0]&0x80 != 0: // empty or negative
		return false
	case len(b) > 1 && b[0] == 0 && b[1]&0x80 == 0: // a redundant zero byte
		return false
	case len(b) == 1 && b[0] == 0: // zero
		return false
	}
	return true
}

func isASCII(b []byte) bool {
	for _, c := range b {
		if c >= 0x80 {
			return false
		}
	}
	return true
}

// readUTCTime reads a UTCTime of the form YYMMDDHHMMSSZ, the only one DER
// allows, into out as x509.ParseCertificate does (years 50-99 are
// 1950-1999). Anything else, including a GeneralizedTime, is refused.
func readUTCTime(s *cryptobyte.String, out *time.Time) bool {
	var v cryptobyte.String
	if !s.ReadASN1(&v, cbasn1.UTCTime) || len(v) != 13 || v[12] != 'Z' {
		return false
	}
	var f [6]int
	for i := range f {
		hi, lo := v[2*i], v[2*i+1]
		if hi < '0' || hi > '9' || lo < '0' || lo > '9' {
			return false
		}
		f[i] = int(hi-'0')*10 + int(lo-'0')
	}
	year := 2000 + f[0]
	if f[0] >= 50 {
		year = 1900 + f[0]
	}
	month, day, hour, minute, sec := time.Month(f[1]), f[2], f[3], f[4], f[5]
	if month < 1 || month > 12 || day < 1 || hour > 23 || minute > 59 || sec > 59 {
		return false
	}
	t := time.Date(year, month, day, hour, minute, sec, 0, time.UTC)
	if t.Day() != day { // past the end of the month
		return false
	}
	*out = t
	return true
}
