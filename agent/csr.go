package agent

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"fmt"

	"github.com/sigil-id/sigil/internal/p256der"
)

// This file encodes the PKCS#10 request of a workload SVID's key itself.
// x509.CreateCertificateRequest verifies the signature it has just made
// before it returns the request (it guards against a faulty crypto.Signer);
// for a P-256 key the agent generated in its own memory a moment before,
// that check costs twice the signature and guards against nothing the
// server's check of the request (its proof of possession) does not catch:
// a request whose signature is wrong is refused, and the entry is minted
// again. The bytes are those CreateCertificateRequest writes for an empty
// template and no random source (csr_test.go compares them).
//
// The request's signature is deterministic (RFC 6979: the nonce is derived
// from the key and the digest with HMAC-SHA-256), as crypto/ecdsa makes it
// when no random source is given. crypto/ecdsa's randomized signature is
// "hedged": it derives its nonce with an HMAC-DRBG over SHA-512 from fresh
// randomness, the key and the digest, which costs about a third of the
// signature here. What the hedge adds over RFC 6979 is protection against
// fault attacks on a key that signs the same message more than once; each
// key the agent generates signs exactly one message, its own request,
// once (a failed mint generates a new key), and the request itself is
// public. The key is still generated from crypto/rand; only the nonce of
// its single signature is derived deterministically.

// newMintKeyAndCSR generates a P-256 key and a PKCS#10 request over it
// with an empty subject and no attributes, signed once (see above).
func newMintKeyAndCSR() (crypto.Signer, []byte, error) {
	key, _, csr, err := newMintRequest()
	if err != nil {
		return nil, nil, err
	}
	return key, csr, nil
}

// newMintRequest is newMintKeyAndCSR with the DER SubjectPublicKeyInfo of
// the key, which the returned SVID must carry byte for byte to be parsed
// without x509.ParseCertificate (leafparse.go).
func newMintRequest() (key *ecdsa.PrivateKey, spki, csr []byte, err error) {
	key, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("generate key: %w", err)
	}
	csr, spki, err = p256Request(key)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("create CSR: %w", err)
	}
	return key, spki, csr, nil
}

// p256CSR is the PKCS#10 request of key (a P-256 key) with an empty
// subject and no attributes, signed with deterministic ECDSA (RFC 6979)
// and SHA-256.
func p256CSR(key *ecdsa.PrivateKey) ([]byte, error) {
	csr, _, err := p256Request(key)
	return csr, err
}

// The request's DER, written directly (the lengths are fixed but the
// signature's): SEQUENCE { CertificationRequestInfo, AlgorithmIdentifier,
// BIT STRING signature }, where the CertificationRequestInfo is SEQUENCE
// { INTEGER 0, an empty Name, the SubjectPublicKeyInfo, an empty [0] set
// of attributes }.
const (
	// p256SPKILen is the length of a P-256 key's DER
	// SubjectPublicKeyInfo.
	p256SPKILen = 26 + p256der.PointLen
	// p256InfoLen is the length of the CertificationRequestInfo: its
	// header (2 bytes) and version (3), empty Name (2), key and empty
	// attributes (2).
	p256InfoLen = 2 + 3 + 2 + p256SPKILen + 2
	// maxP256SigLen bounds a DER ECDSA P-256 signature: SEQUENCE of two
	// INTEGERs of at most 33 bytes each.
	maxP256SigLen = 2 + 2*(2+33)
	// p256CSRCap is room for the longest request: a header of at most 3
	// bytes, the info, the algorithm, and the BIT STRING's header (2)
	// and unused-bits byte (1) before the signature.
	p256CSRCap = 3 + p256InfoLen + 12 + 3 + maxP256SigLen
)

// p256Request is p256CSR with the key's DER SubjectPublicKeyInfo (a slice
// of the request's buffer with no room to grow). The request is written
// into one buffer, without cryptobyte's builders (an allocation per
// nested element): the bytes are those x509.CreateCertificateRequest
// writes (csr_test.go compares them).
func p256Request(key *ecdsa.PrivateKey) (csr, spki []byte, err error) {
	if key.Curve != elliptic.P256() {
		return nil, nil, fmt.Errorf("key on curve %s, want P-256", key.Curve.Params().Name)
	}
	// The uncompressed point, 0x04 || X || Y, written from the key's
	// coordinates: PublicKey.Bytes converts the key to crypto/ecdsa's
	// internal form and back to affine coordinates, a field inversion
	// (as much CPU as a tenth of the signature) for the same bytes.
	if key.X == nil || key.Y == nil || key.X.Sign() < 0 || key.Y.Sign() < 0 || key.X.BitLen() > 256 || key.Y.BitLen() > 256 {
		return nil, nil, errors.New("invalid P-256 public key")
	}
	if len(p256der.SPKIPrefix) != 26 || len(p256der.ECDSAWithSHA256) != 12 {
		return nil, nil, errors.New("internal error: unexpected DER prefixes")
	}
	// The info starts after 3 bytes kept for the request's header.
	buf := make([]byte, p256CSRCap)
	info := buf[3 : 3+p256InfoLen]
	n := copy(info, []byte{0x30, p256InfoLen - 2, 0x02, 0x01, 0x00, 0x30, 0x00})
	spki = info[n : n+p256SPKILen : n+p256SPKILen]
	n += copy(spki, p256der.SPKIPrefix)
	info[n] = 0x04
	key.X.FillBytes(info[n+1 : n+33])
	key.Y.FillBytes(info[n+33 : n+65])
	n += p256der.PointLen
	info[n], info[n+1] = 0xa0, 0x00
	digest := sha256.Sum256(info)
	// A nil random source: RFC 6979 (see above).
	sig, err := key.Sign(nil, digest[:], crypto.SHA256)
	if err != nil {
		return nil, nil, err
	}
	if len(sig) > maxP256SigLen {
		return nil, nil, fmt.Errorf("signature of %d bytes", len(sig))
	}
	body := p256InfoLen + len(p256der.ECDSAWithSHA256) + 3 + len(sig)
	start := 3
	if body < 0x80 {
		start -= 2
		buf[start], buf[start+1] = 0x30, byte(body)
	} else {
		start -= 3
		buf[start], buf[start+1], buf[start+2] = 0x30, 0x81, byte(body)
	}
	tail := buf[3+p256InfoLen:]
	m := copy(tail, p256der.ECDSAWithSHA256)
	tail[m], tail[m+1], tail[m+2] = 0x03, byte(1+len(sig)), 0 // no unused bits
	m += 3
	m += copy(tail[m:], sig)
	return buf[start : 3+p256InfoLen+m : 3+p256InfoLen+m], spki, nil
}

// p256PKCS8Prefix is the DER of a P-256 key's PKCS#8 PrivateKeyInfo up
// to its private scalar: SEQUENCE { version 0, SEQUENCE { id-ecPublicKey,
// prime256v1 }, OCTET STRING { ECPrivateKey SEQUENCE { version 1, OCTET
// STRING (32 bytes) ...
var p256PKCS8Prefix = []byte{
	0x30, 0x81, 0x87, 0x02, 0x01, 0x00, 0x30, 0x13,
	0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, // 1.2.840.10045.2.1
	0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, // 1.2.840.10045.3.1.7
	0x04, 0x6d, 0x30, 0x6b, 0x02, 0x01, 0x01, 0x04, 0x20,
}

// p256PKCS8PublicPrefix follows the private scalar: [1] { BIT STRING (no
// unused bits) the uncompressed point }.
var p256PKCS8PublicPrefix = []byte{0xa1, 0x44, 0x03, 0x42, 0x00}

// marshalPKCS8 is x509.MarshalPKCS8PrivateKey(key), encoded directly for
// a P-256 ECDSA key (the bytes are the same, csr_test.go compares them;
// the generic encoder goes through encoding/asn1's reflection, a tenth
// of the agent's CPU per SVID beside the signatures).
func marshalPKCS8(key crypto.Signer) ([]byte, error) {
	k, ok := key.(*ecdsa.PrivateKey)
	if !ok || k.Curve != elliptic.P256() {
		return x509.MarshalPKCS8PrivateKey(key)
	}
	d, err := k.Bytes()
	if err != nil {
		return nil, err
	}
	point, err := k.PublicKey.Bytes()
	if err != nil {
		return nil, err
	}
	out := make([]byte, 0, len(p256PKCS8Prefix)+len(d)+len(p256PKCS8PublicPrefix)+len(point))
	out = append(out, p256PKCS8Prefix...)
	out = append(out, d...)
	out = append(out, p256PKCS8PublicPrefix...)
	return append(out, point...), nil
}

// marshalPKCS8Known is marshalPKCS8(key) for a P-256 key whose DER
// SubjectPublicKeyInfo spki the agent encoded itself (p256Request): the
// point is taken from spki and the scalar from key.D, without converting
// the key to crypto/ecdsa's internal form twice. Other keys go through
// marshalPKCS8.
func marshalPKCS8Known(key crypto.Signer, spki []byte) ([]byte, error) {
	k, ok := key.(*ecdsa.PrivateKey)
	if !ok || k.Curve != elliptic.P256() || len(spki) != len(p256der.SPKIPrefix)+p256der.PointLen ||
		!bytes.Equal(spki[:len(p256der.SPKIPrefix)], p256der.SPKIPrefix) ||
		k.D == nil || k.D.Sign() <= 0 || k.D.BitLen() > 256 {
		return marshalPKCS8(key)
	}
	point := spki[len(p256der.SPKIPrefix):]
	out := make([]byte, len(p256PKCS8Prefix)+32+len(p256PKCS8PublicPrefix)+p256der.PointLen)
	n := copy(out, p256PKCS8Prefix)
	k.D.FillBytes(out[n : n+32])
	n += 32
	n += copy(out[n:], p256PKCS8PublicPrefix)
	copy(out[n:], point)
	return out, nil
}
