package ca_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509"
	"testing"

	"github.com/sigil-id/sigil/ca"
)

// FuzzVerifyCSR: VerifyCSR never panics, refuses anything over MaxCSRSize,
// and an accepted CSR parses, carries a supported public key equal to the
// one returned, and has a valid signature by that key.
func FuzzVerifyCSR(f *testing.F) {
	// RSA seeds are committed in testdata/fuzz/FuzzVerifyCSR: generating
	// RSA keys here would slow every fuzz worker's start.
	for _, kind := range []string{"p256", "p384", "ed25519", "p224"} {
		f.Add(mustCSR(f, genKey(f, kind), nil))
	}
	f.Add([]byte{})
	f.Add([]byte("garbage"))
	f.Add([]byte{0x30, 0x82, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, der []byte) {
		pub, err := ca.VerifyCSR(der)
		if err != nil {
			if pub != nil {
				t.Fatal("a public key with an error")
			}
			return
		}
		if len(der) > ca.MaxCSRSize {
			t.Fatalf("accepted a CSR of %d bytes", len(der))
		}
		csr, perr := x509.ParseCertificateRequest(der)
		if perr != nil {
			t.Fatalf("accepted a CSR that does not parse: %v", perr)
		}
		if err := csr.CheckSignature(); err != nil {
			t.Fatalf("accepted a CSR with a bad signature: %v", err)
		}
		type equaler interface{ Equal(x crypto.PublicKey) bool }
		switch k := pub.(type) {
		case *ecdsa.PublicKey, *rsa.PublicKey, ed25519.PublicKey:
			if !k.(equaler).Equal(csr.PublicKey) {
				t.Fatal("returned key is not the CSR's")
			}
		default:
			t.Fatalf("accepted key type %T", pub)
		}
	})
}
