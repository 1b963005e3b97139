package ca

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha256"
	"errors"

	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"

	"github.com/sigil-id/sigil/internal/p256der"
)

// This file is the fast path of VerifyCSR: the request agents send for a
// workload SVID, a P-256 key signed with ECDSA and SHA-256, an empty
// subject and no attributes (what x509.CreateCertificateRequest writes
// for an empty template). x509.ParseCertificateRequest decodes it through
// encoding/asn1's reflection and builds a CertificateRequest the server
// throws away; here the request is split with cryptobyte into the signed
// part, the key and the signature, and the signature is checked with
// ecdsa.VerifyASN1 over the SHA-256 of the signed part, which is exactly
// what CertificateRequest.CheckSignature does for such a request.
//
// The fast path accepts only that one profile, byte for byte (a request
// whose every byte but the key's point and the signature is fixed), so
// it accepts nothing x509.ParseCertificateRequest and CheckSignature
// refuse (csrfast_test.go and FuzzFastCSR check it). Any other request,
// including a P-256 one with a subject or attributes, takes the full
// path; a request of this profile whose key is not a point of P-256 or
// whose signature does not verify is refused here, with the error the
// full path gives.

// fastCSR is a request of the fast path's profile, split: tbs is the
// signed CertificationRequestInfo, point the key's uncompressed point
// (not yet checked to be on the curve), sig the DER ECDSA signature.
type fastCSR struct {
	tbs, point, sig []byte
}

// splitFastCSR splits der when it is a request of the fast path's
// profile: SEQUENCE { SEQUENCE { INTEGER 0, SEQUENCE {}, P-256 SPKI,
// [0] {} }, ecdsa-with-SHA256, BIT STRING (no unused bits) }, with
// nothing after it. It reports false for anything else.
func splitFastCSR(der []byte) (fastCSR, bool) {
	var out fastCSR
	in := cryptobyte.String(der)
	var req, tbs, info cryptobyte.String
	if !in.ReadASN1(&req, cbasn1.SEQUENCE) || !in.Empty() ||
		!req.ReadASN1Element(&tbs, cbasn1.SEQUENCE) {
		return out, false
	}
	out.tbs = tbs
	if !tbs.ReadASN1(&info, cbasn1.SEQUENCE) {
		return out, false
	}
	// Version 0, an empty subject, the SPKI prefix, the point, no
	// attributes, and nothing else.
	head := []byte{0x02, 0x01, 0x00, 0x30, 0x00}
	if len(info) != len(head)+len(p256der.SPKIPrefix)+p256der.PointLen+2 ||
		!bytes.HasPrefix(info, head) || !bytes.HasPrefix(info[len(head):], p256der.SPKIPrefix) {
		return out, false
	}
	info = info[len(head)+len(p256der.SPKIPrefix):]
	if info[p256der.PointLen] != 0xa0 || info[p256der.PointLen+1] != 0x00 {
		return out, false
	}
	out.point = info[:p256der.PointLen]
	var alg []byte
	if !req.ReadBytes(&alg, len(p256der.ECDSAWithSHA256)) || !bytes.Equal(alg, p256der.ECDSAWithSHA256) {
		return out, false
	}
	var bits cryptobyte.String
	var unused uint8
	if !req.ReadASN1(&bits, cbasn1.BIT_STRING) || !req.Empty() ||
		!bits.ReadUint8(&unused) || unused != 0 || bits.Empty() {
		return out, false
	}
	out.sig = bits
	return out, true
}

// verifyFastCSR checks the request r: its point is a point of P-256 and
// its signature verifies. It returns the key.
func verifyFastCSR(r fastCSR) (*ecdsa.PublicKey, error) {
	pub, err := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), r.point)
	if err != nil {
		return nil, errors.New("ca: malformed CSR: public key is not a point of P-256")
	}
	digest := sha256.Sum256(r.tbs)
	if !ecdsa.VerifyASN1(pub, digest[:], r.sig) {
		return nil, errors.New("ca: CSR signature is invalid: ECDSA verification failure")
	}
	return pub, nil
}
