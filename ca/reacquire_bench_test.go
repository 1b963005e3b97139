package ca

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"io"
	"testing"

	"github.com/sigil-id/sigil/clock"
)

// nopSigner returns a fixed signature: what is left is the cost of the
// wrappers around it.
type nopSigner struct{ pub crypto.PublicKey }

func (s nopSigner) Public() crypto.PublicKey { return s.pub }
func (s nopSigner) Sign(io.Reader, []byte, crypto.SignerOpts) ([]byte, error) {
	return []byte{1}, nil
}

// nopKM is a KeyManager the benchmark never calls.
type nopKM struct{}

func (nopKM) GenerateKey(context.Context, string, KeyType) (crypto.Signer, error) {
	return nil, errors.New("not used")
}

func (nopKM) GetKey(context.Context, string) (crypto.Signer, error) {
	return nil, errors.New("not used")
}

// BenchmarkReacquiringSignOverhead is the cost reacquiring adds to a
// signature while the key works (an atomic load and a call), against the
// bare signer, both on a signer that does nothing.
func BenchmarkReacquiringSignOverhead(b *testing.B) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		b.Fatal(err)
	}
	bare := crypto.Signer(nopSigner{key.Public()})
	wrapped := reacquiring(bare, nopKM{}, "k", clock.New(), nil)
	digest := make([]byte, 32)
	for name, s := range map[string]crypto.Signer{"bare": bare, "reacquiring": wrapped} {
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := s.Sign(nil, digest, crypto.SHA256); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
