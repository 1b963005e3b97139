package ca_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/sigil-id/sigil/ca"
	"github.com/sigil-id/sigil/clock"
)

// BenchmarkSignJWTSVID mints a JWT-SVID; BenchmarkSignJWTSVID/raw signs
// the same input with the same key (SHA-256 and ECDSA P-256 to ASN.1),
// the limit: the difference is what the signer adds per token.
func BenchmarkSignJWTSVID(b *testing.B) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		b.Fatal(err)
	}
	td := spiffeid.RequireTrustDomainFromString("example.org")
	s, err := ca.NewJWTSigner(td, "kid1", key, time.Now().Add(time.Hour), 0, clock.New())
	if err != nil {
		b.Fatal(err)
	}
	p := ca.JWTSVIDParams{SPIFFEID: spiffeid.RequireFromPath(td, "/ns/default/sa/web"), Audience: []string{"spiffe://example.org/db"}}
	tok, _, err := s.SignJWTSVID(context.Background(), p)
	if err != nil {
		b.Fatal(err)
	}
	input := []byte(tok[:strings.LastIndexByte(tok, '.')])
	b.Run("mint", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, _, err := s.SignJWTSVID(context.Background(), p); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("raw", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			d := sha256.Sum256(input)
			if _, err := key.Sign(rand.Reader, d[:], nil); err != nil {
				b.Fatal(err)
			}
		}
	})
}
