package awskms

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"testing"

	"github.com/sigil-id/sigil/ca"
)

// BenchmarkSign measures signatures per second through the AWS SDK against
// the loopback fake KMS: the client-side cost of a KMS signature (request
// signing, JSON, HTTP), without the network latency of a real region.
func BenchmarkSign(b *testing.B) {
	for _, kt := range []ca.KeyType{ca.KeyTypeECP256, ca.KeyTypeRSA2048} {
		b.Run(string(kt), func(b *testing.B) {
			f := newFixture(b)
			s, err := openKM(b, f.store, ca.KeyScopeAuthorities).GenerateKey(context.Background(), "bench", kt)
			if err != nil {
				b.Fatal(err)
			}
			d := sha256.Sum256([]byte("bench"))
			b.ResetTimer()
			for b.Loop() {
				if _, err := s.Sign(rand.Reader, d[:], crypto.SHA256); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
