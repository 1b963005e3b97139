package oidc

import (
	"context"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"strings"
	"testing"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/sigil-id/sigil/internal/jwkstest"
)

// BenchmarkVerifyES256 measures Verify on a GitHub Actions-shaped ES256
// token with the keys cached, beside BenchmarkRawES256Verify.
func BenchmarkVerifyES256(b *testing.B) {
	f := newFakeIssuer(b)
	st := newState()
	v := newTestVerifier(b, st.clk, githubIssuer(f.srv.URL))
	tok := exchange(jwkstest.Sign(b, jose.ES256, ecKey, "ec-1", githubClaims(f.srv.URL)))
	if _, err := v.Verify(context.Background(), st, tok); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := v.Verify(context.Background(), st, tok); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkRawES256Verify is SHA-256 and ECDSA P-256 verification of the
// same signing input.
func BenchmarkRawES256Verify(b *testing.B) {
	testKeys(b)
	tok := jwkstest.Sign(b, jose.ES256, ecKey, "ec-1", githubClaims("https://issuer.example"))
	input := tok[:strings.LastIndexByte(tok, '.')]
	d := sha256.Sum256([]byte(input))
	sig, err := ecdsa.SignASN1(rand.Reader, ecKey, d[:])
	if err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		d := sha256.Sum256([]byte(input))
		if !ecdsa.VerifyASN1(&ecKey.PublicKey, d[:], sig) {
			b.Fatal("verify failed")
		}
	}
}
