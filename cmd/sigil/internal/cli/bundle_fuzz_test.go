package cli

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/proto"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
)

// fuzzCACert returns a self-signed CA certificate and its key.
func fuzzCACert(tb testing.TB) ([]byte, crypto.Signer) {
	tb.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "fuzz CA"},
		NotBefore:             time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC),
		NotAfter:              time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		tb.Fatal(err)
	}
	return der, key
}

// FuzzBundleFormats renders arbitrary bundle messages in the two formats
// of `sigil bundle show`. Neither may panic. The PEM output holds exactly
// the authorities' certificates, in order. SPIFFE bundle JSON that is
// produced parses back (with go-spiffe) to a bundle of the same trust
// domain holding the same certificates, only JWT keys sent under their key
// ID, the same sequence number and the same refresh hint.
func FuzzBundleFormats(f *testing.F) {
	der, key := fuzzCACert(f)
	der2, _ := fuzzCACert(f)
	pub, err := x509.MarshalPKIXPublicKey(key.Public())
	if err != nil {
		f.Fatal(err)
	}
	for _, b := range []*sigilv1.Bundle{
		{TrustDomain: "example.org", X509Authorities: []*sigilv1.X509Authority{{Certificate: der}, {Certificate: der2}},
			JwtAuthorities: []*sigilv1.JWTAuthority{{KeyId: "k1", PublicKey: pub}}, RefreshHint: 300, SequenceNumber: 7},
		{TrustDomain: "example.org", X509Authorities: []*sigilv1.X509Authority{{Certificate: der}, {Certificate: der}}},
		{TrustDomain: "example.org", JwtAuthorities: []*sigilv1.JWTAuthority{{KeyId: "", PublicKey: pub}}},
		{TrustDomain: "example.org", JwtAuthorities: []*sigilv1.JWTAuthority{{KeyId: "k", PublicKey: []byte("x")}}},
		{TrustDomain: "Example.Org", X509Authorities: []*sigilv1.X509Authority{{Certificate: []byte("x")}}},
		{TrustDomain: "example.org", RefreshHint: 1 << 40},
		{TrustDomain: "example.org", X509Authorities: []*sigilv1.X509Authority{{Certificate: der}}, RefreshHint: 1 << 40},
		{TrustDomain: "example.org", X509Authorities: []*sigilv1.X509Authority{{Certificate: der}}, RefreshHint: 9223372036},
		{},
	} {
		data, err := proto.Marshal(b)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}

	f.Fuzz(func(t *testing.T, data []byte) {
		b := &sigilv1.Bundle{}
		if proto.Unmarshal(data, b) != nil {
			return
		}
		var buf bytes.Buffer
		if err := WriteBundlePEM(&buf, b); err == nil {
			out := buf.Bytes()
			for i, a := range b.X509Authorities {
				var blk *pem.Block
				blk, out = pem.Decode(out)
				if blk == nil || blk.Type != "CERTIFICATE" || !bytes.Equal(blk.Bytes, a.Certificate) {
					t.Fatalf("PEM block %d is not authority %d", i, i)
				}
			}
			if len(bytes.TrimSpace(out)) != 0 {
				t.Fatalf("PEM output has %d extra bytes", len(out))
			}
		} else if len(b.X509Authorities) != 0 {
			t.Fatalf("PEM refused %d authorities: %v", len(b.X509Authorities), err)
		}

		doc, err := SPIFFEBundle(b)
		if err != nil {
			return
		}
		td, err := spiffeid.TrustDomainFromString(b.TrustDomain)
		if err != nil {
			t.Fatalf("rendered a bundle of invalid trust domain %q", b.TrustDomain)
		}
		sb, err := spiffebundle.Parse(td, doc)
		if err != nil {
			t.Fatalf("rendered SPIFFE bundle does not parse: %v\n%s", err, doc)
		}
		in := map[string]bool{}
		for _, a := range b.X509Authorities {
			in[string(a.Certificate)] = true
		}
		outCerts := map[string]bool{}
		for _, c := range sb.X509Authorities() {
			if !in[string(c.Raw)] {
				t.Fatal("SPIFFE bundle holds a certificate not in the bundle")
			}
			outCerts[string(c.Raw)] = true
		}
		if len(outCerts) != len(in) {
			t.Fatalf("SPIFFE bundle holds %d of %d certificates", len(outCerts), len(in))
		}
		for kid, k := range sb.JWTAuthorities() {
			found := false
			for _, a := range b.JwtAuthorities {
				if p, err := x509.ParsePKIXPublicKey(a.PublicKey); err == nil && a.KeyId == kid {
					found = found || p.(interface{ Equal(crypto.PublicKey) bool }).Equal(k)
				}
			}
			if !found {
				t.Fatalf("SPIFFE bundle holds key ID %q with a key not sent under it", kid)
			}
		}
		if seq, ok := sb.SequenceNumber(); b.SequenceNumber != 0 && (!ok || seq != b.SequenceNumber) {
			t.Fatalf("sequence number %d, want %d", seq, b.SequenceNumber)
		}
		if hint, ok := sb.RefreshHint(); b.RefreshHint > 0 && (!ok || int64(hint/time.Second) != b.RefreshHint) {
			t.Fatalf("refresh hint %v, want %d seconds", hint, b.RefreshHint)
		}
	})
}
