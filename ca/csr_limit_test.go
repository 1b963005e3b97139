package ca_test

import (
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"strings"
	"testing"

	"github.com/sigil-id/sigil/ca"
)

// paddedCSR returns a valid Ed25519-signed CSR of exactly size bytes,
// padded with an opaque extension.
func paddedCSR(t testing.TB, key crypto.Signer, size int) []byte {
	t.Helper()
	pad := size - 200
	for range 8 {
		tmpl := &x509.CertificateRequest{ExtraExtensions: []pkix.Extension{{
			Id: asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 55555, 1}, Value: make([]byte, pad),
		}}}
		der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
		if err != nil {
			t.Fatal(err)
		}
		if len(der) == size {
			return der
		}
		pad += size - len(der)
	}
	t.Fatalf("could not build a CSR of %d bytes", size)
	return nil
}

// TestVerifyCSRSizeLimit: a well-signed CSR of MaxCSRSize bytes is
// accepted; one byte more, and an 8 MiB one, are refused before parsing
// with a message that names the limit.
func TestVerifyCSRSizeLimit(t *testing.T) {
	_, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	at := paddedCSR(t, key, ca.MaxCSRSize)
	pub, err := ca.VerifyCSR(at)
	if err != nil {
		t.Fatalf("CSR at the limit refused: %v", err)
	}
	if !key.Public().(ed25519.PublicKey).Equal(pub) {
		t.Fatal("wrong public key")
	}
	over := paddedCSR(t, key, ca.MaxCSRSize+1)
	if _, err := x509.ParseCertificateRequest(over); err != nil {
		t.Fatalf("the oversized CSR should be well-formed: %v", err)
	}
	for _, der := range [][]byte{over, paddedCSR(t, key, 8<<20)} {
		_, err := ca.VerifyCSR(der)
		if err == nil || !strings.Contains(err.Error(), "is too large (at most 16384)") || !strings.HasPrefix(err.Error(), "ca: ") {
			t.Fatalf("CSR of %d bytes: got %v", len(der), err)
		}
	}
}
