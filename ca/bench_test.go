package ca_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/sigil-id/sigil/ca"
	"github.com/sigil-id/sigil/clock"
)

// BenchmarkSignX509SVID measures issuance as the server does it: verify a
// P-256 CSR and mint an X.509-SVID with a P-256 CA key.
func BenchmarkSignX509SVID(b *testing.B) {
	c, csr, id := benchSetup(b)
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := c.SignX509SVIDFromCSR(ctx, csr, id, []string{"web.example.org"}, 0); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkSignX509SVIDParallel is BenchmarkSignX509SVID on every CPU.
func BenchmarkSignX509SVIDParallel(b *testing.B) {
	c, csr, id := benchSetup(b)
	ctx := context.Background()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := c.SignX509SVIDFromCSR(ctx, csr, id, []string{"web.example.org"}, 0); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkRawECDSAP256Sign is the machine limit: one P-256 signature of a
// 32-byte digest, with nothing around it.
func BenchmarkRawECDSAP256Sign(b *testing.B) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		b.Fatal(err)
	}
	digest := sha256.Sum256([]byte("sigil"))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ecdsa.SignASN1(rand.Reader, key, digest[:]); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkRawECDSAP256Verify is the cost of one P-256 verification; an
// issuance does two (the CSR, and crypto/x509's check of its own signature).
func BenchmarkRawECDSAP256Verify(b *testing.B) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		b.Fatal(err)
	}
	digest := sha256.Sum256([]byte("sigil"))
	sig, err := ecdsa.SignASN1(rand.Reader, key, digest[:])
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if !ecdsa.VerifyASN1(&key.PublicKey, digest[:], sig) {
			b.Fatal("bad signature")
		}
	}
}

func benchSetup(b *testing.B) (*ca.CA, []byte, spiffeid.ID) {
	b.Helper()
	cfg := testConfig(b, clock.New())
	c := newCA(b, cfg)
	csr := mustCSR(b, genKey(b, "p256"), nil)
	return c, csr, spiffeid.RequireFromPath(td, "/ns/prod/sa/web")
}
