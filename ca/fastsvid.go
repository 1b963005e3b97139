package ca

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/x509"
	"encoding/asn1"
	"errors"
	"fmt"
	"math/big"
	"math/bits"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"

	"github.com/sigil-id/sigil/internal/p256der"
)

// This file is the fast path of SignX509SVID: it encodes an X.509-SVID's
// TBSCertificate itself, from parts of the CA encoded once (issuer name,
// signature algorithm, the extensions every SVID shares), and signs it
// once. x509.CreateCertificate encodes the same bytes through
// encoding/asn1 and then verifies its own signature, which costs more
// than the signature; the fast path verifies only the signatures
// svidEncoder.mustVerify picks (see SECURITY.md, "Signing X.509-SVIDs").
//
// The output is byte for byte what x509.CreateCertificate produces for
// the template SignX509SVID builds (fastsvid_test.go proves it for every
// key type, with deterministic randomness); anything else (an operator
// template, a CA key type not listed in newSVIDEncoder) takes
// x509.CreateCertificate.

// errNotFast says the fast path cannot encode a certificate; the caller
// falls back to x509.CreateCertificate, which encodes it or explains why
// not.
var errNotFast = errors.New("ca: certificate not supported by the fast X.509-SVID encoder")

// verifySampleInterval: besides the signatures svidEncoder.mustVerify
// always checks, one signature in verifySampleInterval by an in-process
// key is verified.
const verifySampleInterval = 256

// Object identifiers the fast path writes.
var (
	oidSigECDSAWithSHA256 = asn1.ObjectIdentifier{1, 2, 840, 10045, 4, 3, 2}
	oidSigECDSAWithSHA384 = asn1.ObjectIdentifier{1, 2, 840, 10045, 4, 3, 3}
	oidSigSHA256WithRSA   = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 1, 11}
	oidCommonName         = asn1.ObjectIdentifier{2, 5, 4, 3}
	oidExtKeyUsage        = asn1.ObjectIdentifier{2, 5, 29, 15}
	oidExtExtKeyUsage     = asn1.ObjectIdentifier{2, 5, 29, 37}
	oidExtBasicConstr     = asn1.ObjectIdentifier{2, 5, 29, 19}
	oidExtAuthorityKeyID  = asn1.ObjectIdentifier{2, 5, 29, 35}
	oidExtSubjectAltName  = asn1.ObjectIdentifier{2, 5, 29, 17}
	oidEKUServerAuth      = asn1.ObjectIdentifier{1, 3, 6, 1, 5, 5, 7, 3, 1}
	oidEKUClientAuth      = asn1.ObjectIdentifier{1, 3, 6, 1, 5, 5, 7, 3, 2}
)

// svidEncoder holds what every X.509-SVID of one CA shares, DER-encoded
// once, and the state of the signature checks. It is safe for concurrent
// use.
type svidEncoder struct {
	// cert is the CA certificate: its public key checks signatures.
	cert *x509.Certificate
	// sigAlg is the algorithm x509.CreateCertificate picks for the CA
	// key, hash its digest, algID its DER AlgorithmIdentifier.
	sigAlg x509.SignatureAlgorithm
	hash   crypto.Hash
	algID  []byte
	// issuer is the CA's DER subject Name.
	issuer []byte
	// extsDS and extsDSKE are the DER extensions that precede the
	// subject alternative names, for KeyUsage DigitalSignature and
	// DigitalSignature|KeyEncipherment: key usage, extended key usage,
	// basic constraints, authority key identifier.
	extsDS, extsDSKE []byte
	// maxSigLen bounds the length of a signature by the CA key.
	maxSigLen int

	// checked is set once a signature has verified; cleared when the
	// signer fails, so the next signature is verified again.
	checked atomic.Bool
	// distrust is set when a signature failed to verify: from then on
	// every signature is verified.
	distrust atomic.Bool
	// count numbers the signatures, for the sample.
	count atomic.Uint64
}

// newSVIDEncoder returns the encoder of the CA of cert, signed by signer
// whose public key is the certificate's, or nil (with the reason, for
// tests) when the fast path does not apply to this CA: a key type
// x509.CreateCertificate signs otherwise than ECDSA P-256/SHA-256, ECDSA
// P-384/SHA-384 or RSA PKCS#1 v1.5/SHA-256, or a signer that does not
// match the certificate.
func newSVIDEncoder(cert *x509.Certificate, signer crypto.Signer, authorityKeyID []byte) (*svidEncoder, error) {
	if cert == nil || signer == nil || len(cert.RawSubject) == 0 {
		return nil, errors.New("ca: fast encoder: no CA certificate or signer")
	}
	if !samePublicKey(signer.Public(), cert.PublicKey) {
		return nil, errors.New("ca: fast encoder: signer does not match the CA certificate")
	}
	e := &svidEncoder{cert: cert, issuer: cert.RawSubject}
	var b cryptobyte.Builder
	switch k := signer.Public().(type) {
	case *ecdsa.PublicKey:
		// SEQUENCE { INTEGER r, INTEGER s }, each at most one byte
		// longer than the order.
		e.maxSigLen = 2*(2+(k.Curve.Params().BitSize+7)/8+1) + 3
		switch k.Curve {
		case elliptic.P256():
			e.sigAlg, e.hash = x509.ECDSAWithSHA256, crypto.SHA256
			b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) { b.AddASN1ObjectIdentifier(oidSigECDSAWithSHA256) })
		case elliptic.P384():
			e.sigAlg, e.hash = x509.ECDSAWithSHA384, crypto.SHA384
			b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) { b.AddASN1ObjectIdentifier(oidSigECDSAWithSHA384) })
		default:
			return nil, fmt.Errorf("ca: fast encoder: CA curve %s not supported", k.Curve.Params().Name)
		}
	case *rsa.PublicKey:
		e.maxSigLen = k.Size()
		e.sigAlg, e.hash = x509.SHA256WithRSA, crypto.SHA256
		b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
			b.AddASN1ObjectIdentifier(oidSigSHA256WithRSA)
			b.AddASN1NULL()
		})
	default:
		return nil, fmt.Errorf("ca: fast encoder: CA key type %T not supported", k)
	}
	var err error
	if e.algID, err = b.Bytes(); err != nil {
		return nil, fmt.Errorf("ca: fast encoder: %w", err)
	}
	if e.extsDS, err = fixedExtensions(x509.KeyUsageDigitalSignature, authorityKeyID); err != nil {
		return nil, err
	}
	if e.extsDSKE, err = fixedExtensions(x509.KeyUsageDigitalSignature|x509.KeyUsageKeyEncipherment, authorityKeyID); err != nil {
		return nil, err
	}
	return e, nil
}

// fixedExtensions encodes, in x509.CreateCertificate's order, the
// extensions of an SVID with key usage ku that precede its subject
// alternative names: key usage (critical), extended key usage server
// and client authentication, basic constraints CA=false (critical), and
// the authority key identifier when aki is not empty.
func fixedExtensions(ku x509.KeyUsage, aki []byte) ([]byte, error) {
	// Key usage: a BIT STRING with bit i set for usage 1<<i, without
	// trailing zero bits, as crypto/x509 writes it.
	ku16 := uint16(ku)
	kuBytes := []byte{bits.Reverse8(byte(ku16)), bits.Reverse8(byte(ku16 >> 8))}
	if kuBytes[1] == 0 {
		kuBytes = kuBytes[:1]
	}
	last := kuBytes[len(kuBytes)-1]
	if last == 0 {
		return nil, errors.New("ca: fast encoder: empty key usage")
	}
	unused := byte(bits.TrailingZeros8(last))

	var b cryptobyte.Builder
	addExtension(&b, oidExtKeyUsage, true, func(b *cryptobyte.Builder) {
		b.AddASN1(cbasn1.BIT_STRING, func(b *cryptobyte.Builder) {
			b.AddUint8(unused)
			b.AddBytes(kuBytes)
		})
	})
	addExtension(&b, oidExtExtKeyUsage, false, func(b *cryptobyte.Builder) {
		b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
			b.AddASN1ObjectIdentifier(oidEKUServerAuth)
			b.AddASN1ObjectIdentifier(oidEKUClientAuth)
		})
	})
	// CA=false and no path length: both fields take their DEFAULT and
	// are omitted, leaving an empty SEQUENCE.
	addExtension(&b, oidExtBasicConstr, true, func(b *cryptobyte.Builder) {
		b.AddASN1(cbasn1.SEQUENCE, func(*cryptobyte.Builder) {})
	})
	if len(aki) > 0 {
		addExtension(&b, oidExtAuthorityKeyID, false, func(b *cryptobyte.Builder) {
			b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
				b.AddASN1(cbasn1.Tag(0).ContextSpecific(), func(b *cryptobyte.Builder) { b.AddBytes(aki) })
			})
		})
	}
	der, err := b.Bytes()
	if err != nil {
		return nil, fmt.Errorf("ca: fast encoder: %w", err)
	}
	return der, nil
}

// addExtension appends an Extension: its OID, critical when it is, and
// the OCTET STRING wrapping what value writes.
func addExtension(b *cryptobyte.Builder, oid asn1.ObjectIdentifier, critical bool, value cryptobyte.BuilderContinuation) {
	b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddASN1ObjectIdentifier(oid)
		if critical {
			b.AddASN1Boolean(true)
		}
		b.AddASN1(cbasn1.OCTET_STRING, value)
	})
}

// svidFields are the parts of an X.509-SVID that differ from one SVID
// of a CA to the next, as SignX509SVID sets them: the fast path encodes
// them without an x509.Certificate template (a large structure, most of
// the garbage of an issuance beside the signatures').
type svidFields struct {
	serial              *big.Int
	notBefore, notAfter time.Time
	keyUsage            x509.KeyUsage
	// cn is the subject's common name ("" for an empty subject), uri the
	// SPIFFE ID.
	cn, uri string
	dns     []string
}

// fieldsOfTemplate returns the fields of tmpl, an X.509-SVID template as
// SignX509SVID builds it; errNotFast when it has not exactly one URI.
func fieldsOfTemplate(tmpl *x509.Certificate) (svidFields, error) {
	if len(tmpl.URIs) != 1 {
		return svidFields{}, errNotFast
	}
	return svidFields{
		serial:    tmpl.SerialNumber,
		notBefore: tmpl.NotBefore,
		notAfter:  tmpl.NotAfter,
		keyUsage:  tmpl.KeyUsage,
		cn:        tmpl.Subject.CommonName,
		uri:       tmpl.URIs[0].String(),
		dns:       tmpl.DNSNames,
	}, nil
}

// encodeTBS returns the DER TBSCertificate of an X.509-SVID with fields f
// for the subject key pub, after certHeadroom bytes of room and with the
// capacity for the rest of the certificate; errNotFast when f has
// anything the fast path does not write as x509.CreateCertificate does.
func (e *svidEncoder) encodeTBS(f svidFields, pub crypto.PublicKey, point []byte) ([]byte, error) {
	var fixed []byte
	switch f.keyUsage {
	case x509.KeyUsageDigitalSignature:
		fixed = e.extsDS
	case x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment:
		fixed = e.extsDSKE
	default:
		return nil, errNotFast
	}
	if f.serial == nil || f.serial.Sign() <= 0 {
		return nil, errNotFast
	}
	if !isASCII(f.uri) || !isASCII(f.cn) {
		return nil, errNotFast
	}
	for _, n := range f.dns {
		if !isASCII(n) {
			return nil, errNotFast
		}
	}
	spkiPrefix, spki, err := marshalSPKI(pub, point)
	if err != nil {
		return nil, errNotFast
	}
	notBefore, notAfter := f.notBefore.UTC(), f.notAfter.UTC()
	if !encodableTime(notBefore) || !encodableTime(notAfter) {
		return nil, errNotFast
	}

	// Room for the certificate: the headers and fixed fields (128 bytes
	// are more than they take), the variable ones, the algorithm twice
	// and the signature.
	size := certHeadroom + 128 + len(e.issuer) + len(fixed) + len(spkiPrefix) + len(spki) + len(f.uri) + len(f.cn) + dnsLen(f.dns) +
		2*len(e.algID) + e.maxSigLen
	return e.appendTBS(make([]byte, 0, size), f.serial, notBefore, notAfter, f.cn, spkiPrefix, spki, fixed, f.dns, f.uri), nil
}

// certHeadroom is the room encodeTBS leaves before the TBSCertificate for
// the header of the Certificate SEQUENCE (create writes it there once the
// signature's length is known): a tag and a length of up to 5 bytes.
const certHeadroom = 6

// appendTBS appends to dst, after certHeadroom bytes of room, the DER
// TBSCertificate of an X.509-SVID with these fields, exactly as
// x509.CreateCertificate writes it (see encodeTBS); it returns the slice
// from dst's start. The lengths of every element are computed first and
// each element written once, in one buffer.
func (e *svidEncoder) appendTBS(dst []byte, serial *big.Int, notBefore, notAfter time.Time, cn string, spkiPrefix, spki, fixed []byte, dns []string, uri string) []byte {
	// INTEGER serial: its big-endian bytes, with a leading zero when
	// the top bit is set (serial > 0).
	serialBytes := (serial.BitLen() + 7) / 8
	serialLen := serialBytes
	if serial.BitLen()%8 == 0 {
		serialLen++
	}
	validityLen := derLen(timeLen(notBefore)) + derLen(timeLen(notAfter))
	subjectLen := 0
	cnTag := byte(0x13) // PrintableString
	if cn != "" {
		if !isPrintableString(cn) {
			cnTag = 0x0c // UTF8String
		}
		subjectLen = derLen(derLen(len(oidCommonNameDER) + derLen(len(cn))))
	}
	sanListLen := derLen(len(uri))
	for _, n := range dns {
		sanListLen += derLen(len(n))
	}
	sanExtLen := len(oidSANDER) + derLen(derLen(sanListLen))
	if cn == "" {
		sanExtLen += len(derTrue)
	}
	extsLen := len(fixed) + derLen(sanExtLen)
	tbsLen := len(tbsVersion) + derLen(serialLen) + len(e.algID) + len(e.issuer) + derLen(validityLen) +
		derLen(subjectLen) + len(spkiPrefix) + len(spki) + derLen(derLen(extsLen))

	b := append(dst, make([]byte, certHeadroom)...)
	b = appendHeader(b, 0x30, tbsLen)
	b = append(b, tbsVersion...)
	b = appendHeader(b, 0x02, serialLen)
	if serialLen > serialBytes {
		b = append(b, 0)
	}
	b = append(b, make([]byte, serialBytes)...)
	serial.FillBytes(b[len(b)-serialBytes:])
	b = append(b, e.algID...)
	b = append(b, e.issuer...)
	b = appendHeader(b, 0x30, validityLen)
	b = appendTime(b, notBefore)
	b = appendTime(b, notAfter)
	b = appendHeader(b, 0x30, subjectLen)
	if cn != "" {
		b = appendHeader(b, 0x31, derLen(len(oidCommonNameDER)+derLen(len(cn))))
		b = appendHeader(b, 0x30, len(oidCommonNameDER)+derLen(len(cn)))
		b = append(b, oidCommonNameDER...)
		b = appendHeader(b, cnTag, len(cn))
		b = append(b, cn...)
	}
	b = append(append(b, spkiPrefix...), spki...)
	b = appendHeader(b, 0xa3, derLen(extsLen))
	b = appendHeader(b, 0x30, extsLen)
	b = append(b, fixed...)
	b = appendHeader(b, 0x30, sanExtLen)
	b = append(b, oidSANDER...)
	if cn == "" {
		// RFC 5280 4.2.1.6: the SANs are critical when the subject is
		// empty.
		b = append(b, derTrue...)
	}
	b = appendHeader(b, 0x04, derLen(sanListLen))
	b = appendHeader(b, 0x30, sanListLen)
	for _, n := range dns {
		b = appendHeader(b, 0x82, len(n)) // [2] dNSName
		b = append(b, n...)
	}
	b = appendHeader(b, 0x86, len(uri)) // [6] uniformResourceIdentifier
	b = append(b, uri...)
	return b
}

// DER pieces appendTBS writes as they are.
var (
	// tbsVersion is [0] EXPLICIT INTEGER 2 (v3).
	tbsVersion = []byte{0xa0, 0x03, 0x02, 0x01, 0x02}
	// oidCommonNameDER is the OBJECT IDENTIFIER 2.5.4.3.
	oidCommonNameDER = []byte{0x06, 0x03, 0x55, 0x04, 0x03}
	// oidSANDER is the OBJECT IDENTIFIER 2.5.29.17.
	oidSANDER = []byte{0x06, 0x03, 0x55, 0x1d, 0x11}
	// derTrue is the BOOLEAN true.
	derTrue = []byte{0x01, 0x01, 0xff}
)

// derLen is the length of a DER element (tag number below 31) with n
// bytes of content.
func derLen(n int) int {
	switch {
	case n < 0x80:
		return 2 + n
	case n <= 0xff:
		return 3 + n
	case n <= 0xffff:
		return 4 + n
	case n <= 0xffffff:
		return 5 + n
	}
	return 6 + n
}

// appendHeader appends the tag and the DER length of an element with n
// bytes of content.
func appendHeader(b []byte, tag byte, n int) []byte {
	switch {
	case n < 0x80:
		return append(b, tag, byte(n))
	case n <= 0xff:
		return append(b, tag, 0x81, byte(n))
	case n <= 0xffff:
		return append(b, tag, 0x82, byte(n>>8), byte(n))
	case n <= 0xffffff:
		return append(b, tag, 0x83, byte(n>>16), byte(n>>8), byte(n))
	}
	return append(b, tag, 0x84, byte(n>>24), byte(n>>16), byte(n>>8), byte(n))
}

// timeLen is the content length of t as appendTime writes it.
func timeLen(t time.Time) int {
	if y := t.Year(); y >= 1950 && y < 2050 {
		return 13
	}
	return 15
}

// appendTime appends t (UTC, year 0 to 9999) as crypto/x509 writes a
// validity time: UTCTime YYMMDDHHMMSSZ for the years 1950 to 2049,
// GeneralizedTime YYYYMMDDHHMMSSZ otherwise; fractions of a second are
// dropped.
func appendTime(b []byte, t time.Time) []byte {
	year, month, day := t.Date()
	hour, minute, sec := t.Clock()
	if year >= 1950 && year < 2050 {
		b = append(b, 0x17, 13)
		b = append2(b, year%100)
	} else {
		b = append(b, 0x18, 15)
		b = append2(append2(b, year/100), year%100)
	}
	b = append2(b, int(month))
	b = append2(b, day)
	b = append2(b, hour)
	b = append2(b, minute)
	b = append2(b, sec)
	return append(b, 'Z')
}

// append2 appends v (0 to 99) as two decimal digits.
func append2(b []byte, v int) []byte {
	return append(b, byte('0'+v/10), byte('0'+v%10))
}

// create returns the DER certificate of tmpl, an X.509-SVID template as
// SignX509SVID builds it, for pub signed by signer (the CA key), or
// errNotFast: createFields with the template's fields.
func (e *svidEncoder) create(tmpl *x509.Certificate, pub crypto.PublicKey, signer crypto.Signer, obs KeyObserver) ([]byte, error) {
	f, err := fieldsOfTemplate(tmpl)
	if err != nil {
		return nil, err
	}
	return e.createFields(f, pub, nil, signer, obs)
}

// createFields returns the DER certificate of the X.509-SVID with fields
// f for pub signed by signer (the CA key), or errNotFast. The signature
// is checked when mustVerify says so; a signature that does not verify
// is an error, reported to obs as a failed signature, and from then on
// every signature is checked.
func (e *svidEncoder) createFields(f svidFields, pub crypto.PublicKey, point []byte, signer crypto.Signer, obs KeyObserver) ([]byte, error) {
	buf, err := e.encodeTBS(f, pub, point)
	if err != nil {
		return nil, err
	}
	tbs := buf[certHeadroom:]
	sig, err := signMessage(signer, tbs, e.hash)
	if err != nil {
		// The key may come back changed (re-acquired): check the next
		// signature.
		e.checked.Store(false)
		return nil, err
	}
	if e.mustVerify(signer) {
		if err := e.cert.CheckSignature(e.sigAlg, tbs, sig); err != nil {
			e.distrust.Store(true)
			err = fmt.Errorf("signature by the CA key does not verify with the CA certificate: %w", err)
			if obs != nil {
				obs.KeyFailed(KeyOpSign, err)
			}
			return nil, err
		}
		e.checked.Store(true)
	}
	// Certificate: SEQUENCE { tbs, the algorithm, BIT STRING (no
	// unused bits) sig }, its header written into the room before tbs.
	bodyLen := len(tbs) + len(e.algID) + derLen(1+len(sig))
	buf = append(buf, e.algID...)
	buf = appendHeader(buf, 0x03, 1+len(sig))
	buf = append(append(buf, 0), sig...)
	start := certHeadroom - (derLen(bodyLen) - bodyLen)
	appendHeader(buf[start:start], 0x30, bodyLen)
	return buf[start:], nil
}

// signMessage is crypto.SignMessage(signer, rand.Reader, msg, hash): the
// signer's own SignMessage when it has one, else Sign over msg's digest,
// computed here with SHA-256 or SHA-384 into an array rather than through
// a hash.Hash and its Sum (two allocations fewer per certificate).
func signMessage(signer crypto.Signer, msg []byte, hash crypto.Hash) ([]byte, error) {
	if _, ok := signer.(crypto.MessageSigner); !ok {
		switch hash {
		case crypto.SHA256:
			d := sha256.Sum256(msg)
			return signer.Sign(rand.Reader, d[:], hash)
		case crypto.SHA384:
			d := sha512.Sum384(msg)
			return signer.Sign(rand.Reader, d[:], hash)
		}
	}
	return crypto.SignMessage(signer, rand.Reader, msg, hash)
}

// mustVerify reports whether the signature just made by signer is to be
// checked: always when the key is not an in-process crypto/ecdsa or
// crypto/rsa key (an HSM, a KMS, a TPM, a plugin's signer), when no
// signature of this CA has been checked since it was created or since
// its signer last failed, and once a signature has failed to verify;
// otherwise one in verifySampleInterval.
func (e *svidEncoder) mustVerify(signer crypto.Signer) bool {
	if !inProcessKey(signer) || !e.checked.Load() || e.distrust.Load() {
		return true
	}
	return e.count.Add(1)%verifySampleInterval == 0
}

// inProcessKey reports whether s signs with a crypto/ecdsa or crypto/rsa
// private key held in this process, looking through the CA's signer
// wrappers (re-acquire, key observer).
func inProcessKey(s crypto.Signer) bool {
	for {
		switch k := s.(type) {
		case *reacquiringSigner:
			s = k.state.Load().signer
		case observedSigner:
			s = k.Signer
		case *ecdsa.PrivateKey, *rsa.PrivateKey:
			return true
		default:
			return false
		}
	}
}

// encodableTime reports whether t has a year a DER time can carry.
func encodableTime(t time.Time) bool {
	y := t.Year()
	return y >= 0 && y <= 9999
}

// isASCII reports whether s is ASCII, as IA5String requires.
func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}

// isPrintableString reports whether encoding/asn1 writes the ASCII string
// s as a PrintableString (its characters, without '*' or '&'); it writes
// it as a UTF8String otherwise.
func isPrintableString(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9',
			'\'' <= c && c <= ')', '+' <= c && c <= '/',
			c == ' ', c == ':', c == '=', c == '?':
		default:
			return false
		}
	}
	return true
}

// dnsLen is the total length of names.
func dnsLen(names []string) int {
	n := 0
	for _, s := range names {
		n += len(s) + 4
	}
	return n
}

// marshalSPKI is x509.MarshalPKIXPublicKey(pub) in two pieces, prefix
// then rest, that appendTBS writes one after the other: for a P-256 ECDSA
// key, the key of nearly every SVID, the fixed prefix and the
// uncompressed point (the same bytes, without encoding/asn1's reflection,
// which costs a few microseconds per certificate, and without a buffer
// of their own); for any other key, nil and the whole encoding. point,
// when not nil, is pub's uncompressed point as a CSR of the fast path
// carried it (CSRKey: checked to be pub's, on the curve), written as it
// is rather than converted from pub again.
func marshalSPKI(pub crypto.PublicKey, point []byte) (prefix, rest []byte, err error) {
	k, ok := pub.(*ecdsa.PublicKey)
	if !ok || k.Curve != elliptic.P256() {
		rest, err = x509.MarshalPKIXPublicKey(pub)
		return nil, rest, err
	}
	if point != nil && len(point) == p256der.PointLen {
		return p256der.SPKIPrefix, point, nil
	}
	point, err = k.Bytes()
	if err != nil {
		return nil, nil, err
	}
	return p256der.SPKIPrefix, point, nil
}
