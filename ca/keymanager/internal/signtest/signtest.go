// Package signtest checks the signers of a key manager the way the CA
// uses them, for the key managers' tests.
package signtest

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/sha512"
	"testing"
)

// SignVerify has s sign a digest the way the CA signs with its key type
// (ECDSA P-256 over SHA-256, P-384 over SHA-384; RSA over SHA-256 with
// PKCS #1 v1.5 and with PSS) and verifies each signature with the public
// key alone.
func SignVerify(t testing.TB, s crypto.Signer) {
	t.Helper()
	msg := []byte("signed by a sigil key manager")
	switch pub := s.Public().(type) {
	case *ecdsa.PublicKey:
		h, d256 := crypto.SHA256, sha256.Sum256(msg)
		d := d256[:]
		if pub.Curve.Params().BitSize == 384 {
			d384 := sha512.Sum384(msg)
			h, d = crypto.SHA384, d384[:]
		}
		sig, err := s.Sign(rand.Reader, d, h)
		if err != nil {
			t.Fatal(err)
		}
		if !ecdsa.VerifyASN1(pub, d, sig) {
			t.Fatal("the ECDSA signature does not verify")
		}
	case *rsa.PublicKey:
		d := sha256.Sum256(msg)
		sig, err := s.Sign(rand.Reader, d[:], crypto.SHA256)
		if err != nil {
			t.Fatal(err)
		}
		if err := rsa.VerifyPKCS1v15(pub, crypto.SHA256, d[:], sig); err != nil {
			t.Fatalf("the PKCS #1 v1.5 signature does not verify: %v", err)
		}
		pss := &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash, Hash: crypto.SHA256}
		if sig, err = s.Sign(rand.Reader, d[:], pss); err != nil {
			t.Fatal(err)
		}
		if err := rsa.VerifyPSS(pub, crypto.SHA256, d[:], sig, pss); err != nil {
			t.Fatalf("the PSS signature does not verify: %v", err)
		}
	default:
		t.Fatalf("public key of type %T", pub)
	}
}
