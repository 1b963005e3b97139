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

	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"

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

// p256Request is p256CSR with the key's DER SubjectPublicKeyInfo.
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
	spki = make([]byte, len(p256der.SPKIPrefix)+p256der.PointLen)
	n := copy(spki, p256der.SPKIPrefix)
	spki[n] = 0x04
	key.X.FillBytes(spki[n+1 : n+33])
	key.Y.FillBytes(spki[n+33 : n+65])
	// CertificationRequestInfo: version 0, an empty Name, the key, and
	// an empty [0] set of attributes.
	// 100 bytes of request info, about 190 in all.
	info := cryptobyte.NewBuilder(make([]byte, 0, 128))
	info.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddASN1Int64(0)
		b.AddASN1(cbasn1.SEQUENCE, func(*cryptobyte.Builder) {})
		b.AddBytes(spki)
		b.AddASN1(cbasn1.Tag(0).Constructed().ContextSpecific(), func(*cryptobyte.Builder) {})
	})
	tbs, err := info.Bytes()
	if err != nil {
		return nil, nil, err
	}
	digest := sha256.Sum256(tbs)
	// A nil random source: RFC 6979 (see above).
	sig, err := key.Sign(nil, digest[:], crypto.SHA256)
	if err != nil {
		return nil, nil, err
	}
	out := cryptobyte.NewBuilder(make([]byte, 0, 256))
	out.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddBytes(tbs)
		b.AddBytes(p256der.ECDSAWithSHA256)
		b.AddASN1(cbasn1.BIT_STRING, func(b *cryptobyte.Builder) {
			b.AddUint8(0) // no unused bits
			b.AddBytes(sig)
		})
	})
	csr, err = out.Bytes()
	if err != nil {
		return nil, nil, err
	}
	return csr, spki, nil
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
