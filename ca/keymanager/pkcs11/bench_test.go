package pkcs11

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/sigil-id/sigil/ca"
	"github.com/sigil-id/sigil/ca/keymanager/memory"
)

// The benchmarks compare the CA key in a SoftHSM2 token with the CA key
// in memory: the raw rate of one P-256 signature, and X.509-SVIDs signed
// per second (CSR check, certificate, signature) with each, as
// `make bench` reports them side by side.

func benchSign(b *testing.B, k crypto.Signer) {
	digest := sha256.Sum256([]byte("sigil"))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := k.Sign(rand.Reader, digest[:], crypto.SHA256); err != nil {
			b.Fatal(err)
		}
	}
}

// softHSMKeyManager returns the authorities KeyManager of a fresh
// SoftHSM2 token.
func softHSMKeyManager(b *testing.B) ca.KeyManager {
	return keyManager(b, open(b, config(token(b), "s1")), ca.KeyScopeAuthorities)
}

// BenchmarkSignSoftHSM is one ECDSA P-256 signature of a digest with a key
// in a SoftHSM2 token, through the PKCS#11 key manager.
func BenchmarkSignSoftHSM(b *testing.B) {
	k, err := softHSMKeyManager(b).GenerateKey(context.Background(), "bench", ca.KeyTypeECP256)
	if err != nil {
		b.Fatal(err)
	}
	benchSign(b, k)
}

// BenchmarkSignMemory is BenchmarkSignSoftHSM with the key in memory
// (the memory key manager).
func BenchmarkSignMemory(b *testing.B) {
	k, err := memory.New().GenerateKey(context.Background(), "bench", ca.KeyTypeECP256)
	if err != nil {
		b.Fatal(err)
	}
	benchSign(b, k)
}

func benchSVIDs(b *testing.B, km ca.KeyManager) {
	cfg := ca.DefaultConfig()
	cfg.TrustDomain, cfg.ServerID, cfg.KeyManager = td, "s1", km
	c, err := ca.New(context.Background(), cfg)
	if err != nil {
		b.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		b.Fatal(err)
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		b.Fatal(err)
	}
	id := spiffeid.RequireFromPath(td, "/ns/prod/sa/web")
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := c.SignX509SVIDFromCSR(ctx, csr, id, nil, 0); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "svids/s")
}

// BenchmarkSignX509SVIDSoftHSM is X.509-SVID issuance with the CA key in a
// SoftHSM2 token.
func BenchmarkSignX509SVIDSoftHSM(b *testing.B) { benchSVIDs(b, softHSMKeyManager(b)) }

// BenchmarkSignX509SVIDMemory is X.509-SVID issuance with the CA key in
// memory.
func BenchmarkSignX509SVIDMemory(b *testing.B) { benchSVIDs(b, memory.New()) }
