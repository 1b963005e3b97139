package ca_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"testing"
)

// BenchmarkRawVerifyPlusSign is the issuance limit once an X.509-SVID
// costs exactly one CSR verification and one CA signature: one P-256
// ECDSA verification plus one P-256 ECDSA signature of a SHA-256 digest,
// with nothing around them. SignX509SVID's benchmarks are read as a
// fraction of it.
func BenchmarkRawVerifyPlusSign(b *testing.B) {
	csrKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		b.Fatal(err)
	}
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		b.Fatal(err)
	}
	csrDigest := sha256.Sum256([]byte("sigil csr"))
	csrSig, err := ecdsa.SignASN1(rand.Reader, csrKey, csrDigest[:])
	if err != nil {
		b.Fatal(err)
	}
	tbsDigest := sha256.Sum256([]byte("sigil tbs"))
	b.ReportAllocs()
	for b.Loop() {
		if !ecdsa.VerifyASN1(&csrKey.PublicKey, csrDigest[:], csrSig) {
			b.Fatal("CSR signature does not verify")
		}
		if _, err := ecdsa.SignASN1(rand.Reader, caKey, tbsDigest[:]); err != nil {
			b.Fatal(err)
		}
	}
}
