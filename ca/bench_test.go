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

// BenchmarkSignX509SVIDRaw is BenchmarkSignX509SVID as the node API mints
// since SignX509SVIDRaw: the CSR verified, the SVID signed and returned as
// DER, not parsed back.
func BenchmarkSignX509SVIDRaw(b *testing.B) {
	c, csr, id := benchSetup(b)
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		pub, err := ca.VerifyCSR(csr)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := c.SignX509SVIDRaw(ctx, ca.X509SVIDParams{PublicKey: pub, SPIFFEID: id, DNSNames: []string{"web.example.org"}}); err != nil {
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

// BenchmarkSignX509SVIDWithTemplate is BenchmarkSignX509SVID with an
// operator template: "per-certificate" uses the SPIFFE ID and the entry
// ID (rendered for each SVID), "rendered-once" uses no data (rendered
// when parsed).
func BenchmarkSignX509SVIDWithTemplate(b *testing.B) {
	for _, bc := range []struct{ name, text string }{
		{"per-certificate", svidTemplate},
		{"rendered-once", `{"subject": {"organization": "Example Corp", "organizationalUnit": "web"}, "policyIdentifiers": "1.3.6.1.4.1.55555.7.1"}`},
	} {
		b.Run(bc.name, func(b *testing.B) {
			x, err := ca.ParseX509SVIDTemplate(bc.text)
			if err != nil {
				b.Fatal(err)
			}
			cfg := testConfig(b, clock.New())
			cfg.X509SVIDTemplate = x
			c := newCA(b, cfg)
			csr := mustCSR(b, genKey(b, "p256"), nil)
			id := spiffeid.RequireFromPath(td, "/ns/prod/sa/web")
			ctx := context.Background()
			b.ReportAllocs()
			for b.Loop() {
				pub, err := ca.VerifyCSR(csr)
				if err != nil {
					b.Fatal(err)
				}
				if _, err := c.SignX509SVID(ctx, ca.X509SVIDParams{PublicKey: pub, SPIFFEID: id, DNSNames: []string{"web.example.org"}, EntryID: "entry-1"}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
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

// BenchmarkRawECDSAP256Verify is the cost of one P-256 verification. An
// issuance does one (the CSR's); one through x509.CreateCertificate (an
// operator template, or a CA key the fast path does not take) does a
// second, crypto/x509's check of its own signature.
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
